"""Supervised fine-tuning of one pretrained (variant, seed) on the mined SFT pairs.

The model keeps its balancing strategy: the loss-free bias goes on being updated after
every optimizer step unless ``finetune.freeze_bias`` is set, and the auxiliary losses
stay on. The loss covers completion tokens only (prompt tokens are labelled -100).
The same trainer and telemetry as pretraining write model/, metrics.parquet and
routing.parquet under --out-dir (see :mod:`moebalance.training.stage`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from moebalance.data.encoding import encode_continuation
from moebalance.data.windows import VAL_SEED
from moebalance.errors import UsageError
from moebalance.training.stage import StageSettings, add_training_arguments, train_and_save

HELP = "fine-tune one pretrained variant on the SFT pairs (loss on completions only)"


class PairBatches:
    """Micro-batches of packed (prompt, completion) pairs, the prompts masked out of the loss.

    Each row is filled with whole examples ``prompt + completion + end-of-text`` drawn at
    random until it holds ``seq_len + 1`` tokens (the last one is cut; an example longer
    than a row keeps only its last ``seq_len + 1`` tokens). Packing, rather
    than padding, matters here: the routers count every token they route, and padding
    tokens would feed the bias update. Target positions are the completion and
    end-of-text tokens. Draws come from a generator seeded by ``(seed, step, index)``,
    so a batch is a pure function of the step (a resumed run sees the same data).
    """

    def __init__(self, tokenizer, prompts: list[str], completions: list[str], seq_len: int,
                 batch_size: int, seed: int) -> None:
        if not prompts:
            raise ValueError("no SFT pairs")
        # An example longer than a row keeps its end: the completion, which the loss needs.
        width = seq_len + 1
        self.examples = [(ids[-width:], target[-width:]) for ids, target in
                         (self.encode(tokenizer, p, c)
                          for p, c in zip(prompts, completions, strict=True))]
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed

    @staticmethod
    def encode(tokenizer, prompt: str, completion: str) -> tuple[np.ndarray, np.ndarray]:
        """(token ids of prompt + completion + eot, True where the token is a target).

        Prompt and completion are tokenized as one text, the way generation and the
        solution NLL see them (:func:`moebalance.data.encoding.encode_continuation`).
        """

        token_ids, first = encode_continuation(tokenizer, prompt, completion)
        ids = np.array(token_ids + [tokenizer.eos_token_id], dtype=np.int64)
        target = np.arange(len(ids)) >= first
        return ids, target

    def _row(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        width = self.seq_len + 1
        ids, target, filled = [], [], 0
        while filled < width:
            example_ids, example_target = self.examples[rng.integers(len(self.examples))]
            ids.append(example_ids)
            target.append(example_target)
            filled += len(example_ids)
        return np.concatenate(ids)[:width], np.concatenate(target)[:width]

    def micro_batch(self, step: int, index: int):
        import torch

        from moebalance.training.batches import IGNORE_INDEX

        rng = np.random.default_rng([self.seed, step, index])
        rows = [self._row(rng) for _ in range(self.batch_size)]
        ids_BW = torch.from_numpy(np.stack([ids for ids, _ in rows]))
        target_BW = torch.from_numpy(np.stack([target for _, target in rows]))
        labels_BS = ids_BW[:, 1:].masked_fill(~target_BW[:, 1:], IGNORE_INDEX)
        return {"input_ids": ids_BW[:, :-1], "labels": labels_BS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--pretrained", required=True, help="model folder of the pretrain stage")
    inputs.add_argument("--sft-dir", required=True,
                        help="directory with train.parquet and val.parquet (sft-data stage)")
    add_training_arguments(parser, "balancing/train")


def run(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from moebalance.model import load_model

    if not (Path(args.pretrained) / "config.json").is_file():
        raise UsageError(f"no pretrained model at {args.pretrained}; run the pretrain stage first")
    settings = StageSettings.parse(args.settings, with_model=False)
    train = settings.train
    pairs = {}
    for split in ("train", "val"):
        path = Path(args.sft_dir) / f"{split}.parquet"
        if not path.is_file():
            raise UsageError(f"missing SFT pairs {path}; run the sft-data stage first")
        pairs[split] = pq.read_table(path, columns=["prompt", "completion"]).to_pydict()
    tokenizer = AutoTokenizer.from_pretrained(args.pretrained)
    seed = args.seed if args.seed is not None else 0
    try:
        train_batches, val_batches = (
            PairBatches(tokenizer, pairs[split]["prompt"], pairs[split]["completion"],
                        train.seq_len, train.micro_batch_size, split_seed)
            for split, split_seed in (("train", seed), ("val", VAL_SEED)))
    except ValueError as err:
        raise UsageError(f"{args.sft_dir}: {err}") from err
    params = {**settings.to_dict(), "seed": seed, "pretrained": str(args.pretrained),
              "sft_dir": str(args.sft_dir), "source_hash": args.source_hash}
    train_and_save(args, "sft", params, lambda: load_model(args.pretrained), settings,
                   train_batches, val_batches, tokenizer_dir=args.pretrained)
