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

from moebalance.data.windows import check_fits, draw_windows

IGNORE_INDEX = -100


class BatchSource(Protocol):
    def micro_batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``index`` (over micro-batches x ranks) of optimizer step ``step``."""
        ...


class TokenWindows:
    """Random windows of ``seq_len + 1`` consecutive tokens of a 1-D token array (e.g. a
    memmap), drawn by moebalance.data.windows."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        check_fits(tokens, seq_len)
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed

    def micro_batch(self, step: int, index: int) -> dict[str, torch.Tensor]:
        windows_BW = torch.from_numpy(draw_windows(self.tokens, self.seq_len, self.batch_size,
                                                   self.seed, step, index))
        return {"input_ids": windows_BW[:, :-1], "labels": windows_BW[:, 1:]}
