"""Train a byte-level BPE tokenizer on a domain-balanced sample of the corpus's train split.

Trained on the whole train split, the merges would follow its largest domain (Python
library code is ~70% of the bytes) and C and prose would be tokenised almost byte by
byte. So each domain contributes the same number of bytes (up to
``sample_bytes_per_domain``; a smaller domain contributes all it has), drawn in sha256
order. The bytes per token of each domain, measured on the val split, go into
``moebalance_tokenizer.json``.

Byte-level BPE (the `tokenizers` library) maps every byte to a symbol, so any text
encodes and decodes back to itself exactly: no unknown token, no normalisation, and
spaces and indentation survive (`clean_up_tokenization_spaces` is off for that reason).
The folder loads with ``AutoTokenizer.from_pretrained``; ``moebalance_tokenizer.json``
beside it records the special-token ids the other stages use.

``--settings`` takes the config's `tokenizer` section (moebalance.config.TokenizerSettings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moebalance.atomic import atomic_path, write_json
from moebalance.config import TokenizerSettings, add_settings_argument, parse_settings
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "train the byte-level BPE tokenizer on the train split"
EOT = "<|endoftext|>"
PAD = "<|pad|>"
META_FILE = "moebalance_tokenizer.json"
ROUND_TRIP_CHECKS = 200
log = logging.getLogger(__name__)


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int):
    """A `tokenizers.Tokenizer` (byte-level BPE) with EOT id 0 and PAD id 1."""

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def read_split(path: str | Path) -> list[dict]:
    """(text, domain, sha256) rows of a corpus split; a table without a domain column is one
    domain, ``all``."""
    table = pq.read_table(path)
    texts = table.column("text").to_pylist()
    domains = (table.column("domain").to_pylist() if "domain" in table.column_names
               else ["all"] * len(texts))
    hashes = (table.column("sha256").to_pylist() if "sha256" in table.column_names
              else [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts])
    return [{"text": t, "domain": d, "sha256": h} for t, d, h in zip(texts, domains, hashes,
                                                                      strict=True)]


def balanced_sample(rows: list[dict], bytes_per_domain: int | None) -> dict[str, list[str]]:
    """Per domain, texts in sha256 order until ``bytes_per_domain`` bytes (all if None)."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_domain[row["domain"]].append(row)
    sample: dict[str, list[str]] = {}
    for domain in sorted(by_domain):
        taken, size = [], 0
        for row in sorted(by_domain[domain], key=lambda r: r["sha256"]):
            if bytes_per_domain is not None and size >= bytes_per_domain:
                break
            taken.append(row["text"])
            size += len(row["text"].encode("utf-8"))
        sample[domain] = taken
    return sample


def bytes_per_token(tokenizer, rows: list[dict]) -> dict[str, float]:
    """UTF-8 bytes per token of each domain's texts (higher: the tokenizer compresses better)."""
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    encodings = tokenizer.encode_batch([r["text"] for r in rows], add_special_tokens=False)
    for row, enc in zip(rows, encodings, strict=True):
        sizes[row["domain"]][0] += len(row["text"].encode("utf-8"))
        sizes[row["domain"]][1] += len(enc.ids)
    return {domain: round(b / max(1, t), 4) for domain, (b, t) in sorted(sizes.items())}


def save_pretrained(tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Save as a transformers tokenizer folder (tokenizer.json + tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOT,
        bos_token=EOT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    wrapped.save_pretrained(out_dir)


def check_round_trip(tokenizer_dir: Path, texts: list[str]) -> None:
    """decode(encode(doc)) == doc through AutoTokenizer, as every later stage will load it."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tokenizer_dir)
    for text in texts:
        ids = loaded(text, add_special_tokens=False, verbose=False)["input_ids"]
        back = loaded.decode(ids)
        if back != text:
            at = next((i for i, (a, b) in enumerate(zip(back, text, strict=False)) if a != b),
                      min(len(back), len(text)))
            raise RuntimeError(f"tokenizer does not round-trip: first difference at char {at}: "
                               f"{text[max(0, at - 20):at + 20]!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--train", required=True, help="train.parquet of the corpus stage")
    inputs.add_argument("--val", default=None,
                        help="val.parquet of the corpus stage, to measure bytes per token per "
                             "domain (default: measured on the training sample)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out-dir", required=True,
                         help="tokenizer folder to write (with moebalance_tokenizer.json)")
    add_settings_argument(parser, TokenizerSettings, "tokenizer")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    settings = parse_settings(TokenizerSettings, args.settings)
    if not Path(args.train).is_file():
        raise UsageError(f"missing corpus train split {args.train}; run the corpus stage first")
    if args.val is not None and not Path(args.val).is_file():
        raise UsageError(f"missing corpus val split {args.val}")
    sample = balanced_sample(read_split(args.train), settings.sample_bytes_per_domain or None)
    texts = [text for domain_texts in sample.values() for text in domain_texts]
    params = {"train": str(args.train), "vocab_size": settings.vocab_size,
              "min_frequency": settings.min_frequency,
              "sample_bytes_per_domain": settings.sample_bytes_per_domain}
    with stage_run(args, "tokenizer", params, torch_kernels=False) as mlflow, \
            atomic_path(args.out_dir, directory=True) as tmp:
        tokenizer = train_bpe(texts, settings.vocab_size, settings.min_frequency)
        save_pretrained(tokenizer, tmp, settings.model_max_length)
        # Every document's exact round trip costs as much as encoding the corpus; check a
        # spread-out sample here and leave the exhaustive check to the tests.
        stride = max(1, len(texts) // ROUND_TRIP_CHECKS)
        check_round_trip(tmp, texts[::stride])
        measured_on = read_split(args.val) if args.val is not None else [
            {"text": t, "domain": d} for d, ts in sample.items() for t in ts]
        meta = {"eot_token": EOT, "pad_token": PAD, "eot_id": tokenizer.token_to_id(EOT),
                "pad_id": tokenizer.token_to_id(PAD), "vocab_size": tokenizer.get_vocab_size(),
                "trained_on_documents": len(texts),
                "trained_on_bytes": {d: sum(len(t.encode("utf-8")) for t in ts)
                                     for d, ts in sample.items()},
                "bytes_per_token": bytes_per_token(tokenizer, measured_on),
                "bytes_per_token_on": "val" if args.val is not None else "training sample"}
        write_json(meta, tmp / META_FILE)
        log.info("tokenizer: %s", json.dumps(meta))
        if mlflow is not None:
            mlflow.log_metrics({"vocab_size": meta["vocab_size"], "documents": len(texts),
                                "bytes": sum(meta["trained_on_bytes"].values())})
            mlflow.log_metrics({f"bytes_per_token_{d}": v
                                for d, v in meta["bytes_per_token"].items()})
