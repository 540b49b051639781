"""Pretrain one (variant, seed): a small DeepSeek-V3 MoE on the token shards, under one
balancing configuration, with routing telemetry.

Writes, under --out-dir:

    model/            Hugging Face model folder (AutoModelForCausalLM.from_pretrained loads it;
                      the routers' biases are its e_score_correction_bias buffers)
    metrics.parquet   one row per optimizer step (loss terms, lr, grad norm, MaxVio, val loss)
    routing.parquet   one row per (step, MoE layer, expert): tokens, bias, mean score
    snapshots/        step_NNNNNN/ model folders every `snapshot_every` steps (may be empty)
    balance.json      held-out balance of the final model on --balance-set (the val split's
                      balance set): the selection figure of the sweep

Checkpoints go to --checkpoint-dir (outside the outputs); a rerun resumes from the
newest one. Under `torchrun --nproc-per-node N` it trains data-parallel and rank 0
writes the outputs. --settings is the variant's resolved settings as JSON with the
sections `model`, `balancing` and `train` (Snakemake passes them; see config/config.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moebalance.data.shards import open_split, read_meta
from moebalance.data.windows import VAL_SEED
from moebalance.errors import UsageError
from moebalance.training.stage import StageSettings, add_training_arguments, train_and_save

HELP = "pretrain one MoE variant on the token shards, writing model, metrics and routing telemetry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--tokens-dir", required=True, help="token shards (tokens stage)")
    inputs.add_argument("--tokenizer-dir", default=None,
                        help="tokenizer folder to copy into model/ (so it loads on its own)")
    parser.add_argument("--balance-set", default=None,
                        help="held-out balance set (balance-set stage, val split) that the final "
                        "validation measures balance on; writes balance.json")
    add_training_arguments(parser, "model/balancing/train")


def run(args: argparse.Namespace) -> None:
    from moebalance.model import build_model
    from moebalance.training.batches import TokenWindows

    settings = StageSettings.parse(args.settings, with_model=True)
    meta_path = Path(args.tokens_dir) / "meta.json"
    if not meta_path.is_file():
        raise UsageError(f"no token shards at {meta_path}; run the tokens stage first")
    meta = read_meta(args.tokens_dir)
    if args.balance_set is not None and not Path(args.balance_set).is_file():
        raise UsageError(f"--balance-set: {args.balance_set} not found")
    seed = args.seed if args.seed is not None else 0
    t = settings.train
    try:
        train_batches = TokenWindows(open_split(args.tokens_dir, "train"), t.seq_len,
                                     t.micro_batch_size, seed)
        val_batches = TokenWindows(open_split(args.tokens_dir, "val"), t.seq_len,
                                   t.micro_batch_size, VAL_SEED)
    except (KeyError, ValueError) as err:
        raise UsageError(f"{args.tokens_dir}: {err}") from err
    params = {**settings.to_dict(), "seed": seed, "tokens_dir": str(args.tokens_dir),
              "source_hash": args.source_hash}
    train_and_save(args, "pretrain", params,
                   lambda: build_model(settings.model, meta["vocab_size"], meta["eot_id"],
                                       meta["pad_id"], seed),
                   settings, train_batches, val_batches, args.tokenizer_dir,
                   snapshots=True, data={"corpus_hash": meta.get("corpus_hash")},
                   balance_set=args.balance_set)
