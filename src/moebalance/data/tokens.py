"""Encode the corpus's train and val splits into flat token shards.

Layout of the output directory:

    train.bin, val.bin   every document's token ids followed by end-of-text, concatenated,
                         as raw little-endian uint16 (uint32 when the vocabulary needs it)
    meta.json            dtype, eot_id, pad_id, vocab_size, corpus_hash (the corpus
                         manifest's content hash, so later stages can tell corpora apart)
                         and, per split, the file, its number of tokens and documents, and
                         its tokens per domain (``domain_tokens``, end-of-text included):
                         training samples token positions, so these are the training mix

The stage has no science settings of its own: the shards follow from the corpus and the
tokenizer. Its one option, ``--batch-size``, is an execution knob.

The trainer memory-maps a split with :func:`moebalance.data.shards.open_split` and samples
fixed-length windows from it; nothing is loaded into RAM.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tokenizers import Tokenizer
from tqdm import tqdm

from moebalance.atomic import atomic_path, write_json
from moebalance.config import TokensSettings
from moebalance.data.corpus_files import corpus_hash_of
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "encode the train/val corpus splits into memory-mappable token shards"
SPLITS = ("train", "val")
log = logging.getLogger(__name__)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype("<u4")


def encode_split(tokenizer, texts: list[str], domains: list[str], eot_id: int, dtype: np.dtype,
                 out, batch_size: int, progress) -> dict[str, int]:
    """Write the ids of ``texts``, each followed by ``eot_id``, to the binary file ``out``;
    returns the tokens written per domain (``domains[i]`` is the domain of ``texts[i]``).

    ``encode_batch`` of the Rust tokenizer runs on all cores (RAYON threads), so the
    batches are large rather than split across Python processes.
    """
    per_domain: dict[str, int] = {}
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        encoded = tokenizer.encode_batch(batch, add_special_tokens=False)
        for enc, domain in zip(encoded, domains[start:start + batch_size], strict=True):
            ids = np.asarray(enc.ids + [eot_id], dtype=dtype)
            out.write(ids.tobytes())
            per_domain[domain] = per_domain.get(domain, 0) + ids.size
        progress.update(len(batch))
        progress.set_postfix(tokens=sum(per_domain.values()))
    return dict(sorted(per_domain.items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--corpus-dir", required=True,
                        help="directory with the train/val/test.parquet of the corpus stage")
    inputs.add_argument("--tokenizer-dir", required=True, help="tokenizer folder (tokenizer stage)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out-dir", required=True,
                         help="directory to write train.bin, val.bin and meta.json into")
    # An execution knob (the config's tokens.batch_size, outside the rule's params): each
    # document is encoded on its own whatever the batch, so the shards do not depend on it.
    execution = parser.add_argument_group("execution")
    execution.add_argument("--batch-size", type=int, default=TokensSettings.batch_size,
                           help="documents per encode batch (speed only: the shards are the "
                           "same)")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    tok_file = Path(args.tokenizer_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise UsageError(f"no tokenizer at {tok_file}; run the tokenizer stage first")
    tokenizer = Tokenizer.from_file(str(tok_file))
    tok_meta = json.loads((Path(args.tokenizer_dir) / "moebalance_tokenizer.json").read_text())
    eot_id, pad_id = tok_meta["eot_id"], tok_meta["pad_id"]
    vocab_size = tokenizer.get_vocab_size()
    dtype = token_dtype(vocab_size)
    try:
        corpus_hash = corpus_hash_of(args.corpus_dir)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    params = {"corpus_dir": str(args.corpus_dir), "tokenizer_dir": str(args.tokenizer_dir),
              "vocab_size": vocab_size, "dtype": dtype.name}
    with stage_run(args, "tokens", params, torch_kernels=False) as mlflow, \
            atomic_path(args.out_dir, directory=True) as tmp:
        meta = {"dtype": dtype.str, "eot_id": eot_id, "pad_id": pad_id,
                "vocab_size": vocab_size, "corpus_hash": corpus_hash, "splits": {}}
        for split in SPLITS:
            path = Path(args.corpus_dir) / f"{split}.parquet"
            if not path.is_file():
                raise UsageError(f"missing corpus split {path}")
            table = pq.read_table(path, columns=["text", "domain"])
            texts = table.column("text").to_pylist()
            with open(tmp / f"{split}.bin", "wb") as out, \
                    tqdm(total=len(texts), desc=f"encode {split}", unit="doc") as progress:
                domain_tokens = encode_split(tokenizer, texts, table.column("domain").to_pylist(),
                                             eot_id, dtype, out, args.batch_size, progress)
            n_tokens = sum(domain_tokens.values())
            meta["splits"][split] = {"file": f"{split}.bin", "n_tokens": n_tokens,
                                     "n_documents": len(texts), "domain_tokens": domain_tokens}
            log.info("%s: %d documents, %d tokens", split, len(texts), n_tokens)
        write_json(meta, tmp / "meta.json")
        if mlflow is not None:
            mlflow.log_metrics({f"{split}_{key}": value
                                for split, info in meta["splits"].items()
                                for key, value in info.items()
                                if key not in ("file", "domain_tokens")})
            mlflow.log_artifact(str(tmp / "meta.json"))
