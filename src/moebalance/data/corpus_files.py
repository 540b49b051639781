"""What a written corpus folder is: one parquet file per split, and the content hash that
names the text a study trains on (the corpus stage writes it in its manifest, the tokens
stage records it beside the shards).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

SPLITS = ("train", "val", "test")


def content_hash(rows_by_split: dict[str, Iterable[dict]]) -> str:
    """A hash of the corpus content: per split, each document's sha256 and domain in
    file order. Two corpora with equal hashes train on the same text."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(f"{split}\n".encode())
        for row in rows_by_split[split]:
            digest.update(f"{row['sha256']}\t{row['domain']}\n".encode())
    return digest.hexdigest()


def corpus_hash_of(corpus_dir: str | os.PathLike) -> str:
    """:func:`content_hash` of a written corpus (every split parquet in ``corpus_dir``)."""
    rows = {}
    for split in SPLITS:
        path = Path(corpus_dir) / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"missing corpus split {path}")
        rows[split] = pq.read_table(path, columns=["sha256", "domain"]).to_pylist()
    return content_hash(rows)
