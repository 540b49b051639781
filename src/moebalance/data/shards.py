"""Reading the token shards the tokens stage writes: ``meta.json`` and one memory-mappable
file of token ids per split (the trainer, the baselines and the GPU check read them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def read_meta(tokens_dir: str | os.PathLike) -> dict:
    return json.loads((Path(tokens_dir) / "meta.json").read_text())


def open_split(tokens_dir: str | os.PathLike, split: str) -> np.memmap:
    """The token ids of one split, memory-mapped read-only (1-D)."""
    meta = read_meta(tokens_dir)
    if split not in meta["splits"]:
        raise KeyError(f"split {split!r} not in {Path(tokens_dir) / 'meta.json'}")
    info = meta["splits"][split]
    return np.memmap(Path(tokens_dir) / info["file"], dtype=np.dtype(meta["dtype"]), mode="r",
                     shape=(info["n_tokens"],))
