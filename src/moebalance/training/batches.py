"""Batch sources: what the trainer trains on. Anything with ``micro_batch(step, index)`` works.

A source returns ``{"input_ids": [B, S], "labels": [B, S]}`` with labels already
aligned to the next token (``labels[b, s]`` is the target of position s) and -100
where the loss is masked (SFT prompts, padding). Batches are a pure function of
``(seed, step, index)``, so a resumed run sees exactly the data an uninterrupted
one would, with no sampler state to save.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

IGNORE_INDEX = -100
VAL_SEED = 1234  # every variant and seed is validated on the same batches of its val split


class BatchSource(Protocol):
    def micro_batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``index`` (over micro-batches x ranks) of optimizer step ``step``."""
        ...


class TokenWindows:
    """Random windows of ``seq_len + 1`` consecutive tokens of a 1-D token array (e.g. a memmap)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        if len(tokens) < seq_len + 2:
            raise ValueError(f"{len(tokens)} tokens cannot fill a window of {seq_len + 1}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed

    def micro_batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, index])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        windows_BW = np.stack([np.asarray(self.tokens[s:s + self.seq_len + 1], dtype=np.int64)
                               for s in starts])
        windows_BW = torch.from_numpy(windows_BW)
        return {"input_ids": windows_BW[:, :-1], "labels": windows_BW[:, 1:]}
