"""Count-model baselines: the floor a pretrained model must clear (the positive control).

Two models are estimated from the train token shard and scored on exactly the targets
the pretraining stage reports its validation loss on:

    unigram   p(w) = (c(w) + 1) / (N + V)                      add-one (Laplace)
    bigram    p(w | v) = lam * c(v, w) / c(v) + (1 - lam) * p(w)  Jelinek-Mercer interpolation
              (an unseen context v uses the unigram alone)

``lam`` minimises the bigram's loss on the whole val split (scipy's bounded scalar
minimiser). The scored tokens are the pretraining stage's fixed validation windows:
``eval_batches`` micro-batches of ``micro_batch_size`` windows of ``seq_len`` targets drawn
with VAL_SEED from the val shard (see moebalance.data.windows), each target
predicted from the token before it; ``--settings`` takes those three keys of the config's
`pretrain` section (moebalance.config.BaselinesSettings). They are a subset of the tuning
data, so the bigram is, if anything, slightly favoured: a model clearing it clears a
fairly tuned one.

Bits per byte divide the summed loss by the UTF-8 bytes of the scored targets: the
tokenizer is byte-level BPE, so each character of a vocabulary entry stands for one
byte; special tokens (end-of-text) decode to no bytes.

Writes --out (JSON):

    {"split": "val", "tokens": N, "bytes": B, "scored_on": "...",
     "unigram": {"nats_per_token": x, "bits_per_byte": y},
     "bigram": {"nats_per_token": x, "bits_per_byte": y, "lambda": l}}
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from moebalance.atomic import write_json
from moebalance.config import BaselinesSettings, add_settings_argument, parse_settings
from moebalance.data.shards import open_split, read_meta
from moebalance.data.windows import VAL_SEED, check_fits, draw_windows
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "unigram and interpolated-bigram baselines on the held-out tokens the models are scored on"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CountModel:
    """Unigram and bigram counts of a token array, sparse in the pairs (no V x V table)."""

    vocab_size: int
    unigram_counts: np.ndarray   # c(w), shape (V,)
    context_counts: np.ndarray   # c(v) = number of pairs starting with v, shape (V,)
    pair_keys: np.ndarray        # sorted v * V + w of every seen pair
    pair_counts: np.ndarray      # c(v, w) of each key

    @classmethod
    def fit(cls, tokens: np.ndarray, vocab_size: int) -> CountModel:
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size < 2:
            raise ValueError(f"{tokens.size} train tokens: a bigram needs at least 2")
        if tokens.max() >= vocab_size:
            raise ValueError(f"token id {tokens.max()} >= vocab_size {vocab_size}")
        keys, counts = np.unique(tokens[:-1] * vocab_size + tokens[1:], return_counts=True)
        return cls(vocab_size, np.bincount(tokens, minlength=vocab_size),
                   np.bincount(tokens[:-1], minlength=vocab_size), keys, counts)

    def unigram_probs(self) -> np.ndarray:
        # Laplace (add-one) smoothing, Jurafsky & Martin, SLP 3rd ed. §3.5.1:
        # P(w) = (c(w) + 1) / (N + V)
        return (self.unigram_counts + 1) / (self.unigram_counts.sum() + self.vocab_size)

    def bigram_ml(self, prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c(v, w) / c(v), whether c(v) > 0) for each pair (v, w) = (prev[t], nxt[t])."""
        prev, nxt = np.asarray(prev, dtype=np.int64), np.asarray(nxt, dtype=np.int64)
        query = prev * self.vocab_size + nxt
        at = np.searchsorted(self.pair_keys, query).clip(max=len(self.pair_keys) - 1)
        pair = np.where(self.pair_keys[at] == query, self.pair_counts[at], 0)
        context = self.context_counts[prev]
        return pair / np.maximum(context, 1), context > 0

    def bigram_nll(self, prev: np.ndarray, nxt: np.ndarray, lam: float) -> np.ndarray:
        """-log p(nxt[t] | prev[t]) in nats under the interpolated bigram, per target."""
        unigram = self.unigram_probs()[np.asarray(nxt, dtype=np.int64)]
        ml, seen = self.bigram_ml(prev, nxt)
        # Jelinek & Mercer (1980) interpolation, Chen & Goodman (1999) §2.3:
        # p(w|v) = lam p_ML(w|v) + (1 - lam) p(w); unseen contexts v fall back to p(w)
        p = np.where(seen, lam * ml + (1 - lam) * unigram, unigram)
        return -np.log(p)

    def unigram_nll(self, nxt: np.ndarray) -> np.ndarray:
        return -np.log(self.unigram_probs()[np.asarray(nxt, dtype=np.int64)])


def tune_lambda(model: CountModel, tokens: np.ndarray) -> float:
    """The interpolation weight in [0, 1] minimising the bigram's mean loss on ``tokens``."""
    from scipy.optimize import minimize_scalar  # here: scipy would triple `baselines --help`

    prev, nxt = np.asarray(tokens[:-1]), np.asarray(tokens[1:])
    result = minimize_scalar(lambda lam: model.bigram_nll(prev, nxt, lam).mean(),
                             bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-4})
    return float(result.x)


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for, from a byte-level BPE ``tokenizers.Tokenizer``:
    one vocabulary character per byte; special (added) tokens stand for none."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for text, token_id in vocab.items():
        out[token_id] = 0 if text in special else len(text)
    return out


def scored_pairs(val_tokens: np.ndarray, seq_len: int, micro_batch_size: int,
                 eval_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """(context, target) of every target of the pretraining stage's validation windows."""
    check_fits(val_tokens, seq_len)
    batches_BW = [draw_windows(val_tokens, seq_len, micro_batch_size, VAL_SEED, 0, i)
                  for i in range(eval_batches)]
    prev = np.concatenate([windows_BW[:, :-1].ravel() for windows_BW in batches_BW])
    nxt = np.concatenate([windows_BW[:, 1:].ravel() for windows_BW in batches_BW])
    return prev, nxt


def baselines(model: CountModel, lam: float, prev: np.ndarray, nxt: np.ndarray,
              bytes_per_token: np.ndarray) -> dict:
    """The --out record for the scored pairs (prev, nxt)."""
    n_bytes = int(bytes_per_token[nxt].sum())
    if n_bytes == 0:
        raise ValueError("the scored tokens decode to no bytes")

    def scores(nll: np.ndarray) -> dict[str, float]:
        return {"nats_per_token": float(nll.mean()),
                "bits_per_byte": float(nll.sum() / math.log(2) / n_bytes)}

    return {"split": "val", "tokens": int(nxt.size), "bytes": n_bytes,
            "unigram": scores(model.unigram_nll(nxt)),
            "bigram": {**scores(model.bigram_nll(prev, nxt, lam)), "lambda": lam}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--tokens-dir", required=True,
                        help="token shards with train.bin, val.bin and meta.json (tokens stage)")
    inputs.add_argument("--tokenizer-dir", required=True,
                        help="tokenizer folder with tokenizer.json (bytes per token)")
    parser.add_argument_group("outputs").add_argument(
        "--out", required=True, help="JSON file to write (baselines.json)")
    add_settings_argument(parser, BaselinesSettings, "pretrain")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    windows = parse_settings(BaselinesSettings, args.settings)
    meta_path = Path(args.tokens_dir) / "meta.json"
    tok_path = Path(args.tokenizer_dir) / "tokenizer.json"
    for path, stage in ((meta_path, "tokens"), (tok_path, "tokenizer")):
        if not path.is_file():
            raise UsageError(f"missing {path}; run the {stage} stage first")
    try:
        train, val = open_split(args.tokens_dir, "train"), open_split(args.tokens_dir, "val")
        prev, nxt = scored_pairs(val, windows.seq_len, windows.micro_batch_size,
                                 windows.eval_batches)
    except (KeyError, ValueError) as err:
        raise UsageError(f"{args.tokens_dir}: {err}") from err
    params = {"tokens_dir": str(args.tokens_dir), **asdict(windows)}
    with stage_run(args, "baselines", params) as mlflow:
        log.info("counting %d train tokens", len(train))
        model = CountModel.fit(train, read_meta(args.tokens_dir)["vocab_size"])
        lam = tune_lambda(model, val)
        log.info("lambda %.4f tuned on %d val tokens", lam, len(val))
        result = baselines(model, lam, prev, nxt, token_bytes(Tokenizer.from_file(str(tok_path))))
        result["scored_on"] = (
            f"the pretrain validation targets: {windows.eval_batches} batches x "
            f"{windows.micro_batch_size} windows x {windows.seq_len} tokens of val.bin "
            "(VAL_SEED); "
            f"lambda tuned on all {len(val)} val tokens")
        write_json(result, args.out)
        log.info("unigram %.4f, bigram %.4f nats/token on %d tokens",
                 result["unigram"]["nats_per_token"], result["bigram"]["nats_per_token"],
                 result["tokens"])
        if mlflow is not None:
            mlflow.log_metrics({f"{name}_{key}": value for name in ("unigram", "bigram")
                                for key, value in result[name].items()})
            mlflow.log_artifact(str(args.out))
