"""Token windows: random runs of ``seq_len + 1`` consecutive tokens of a 1-D token array
(e.g. a memmap), a pure function of ``(seed, step, index)``.

Pretraining trains on them (moebalance.training.batches makes them tensors) and validates
on the fixed windows drawn with :data:`VAL_SEED`, and the n-gram baselines
(moebalance.data.baselines) are scored on those same validation windows.

Dimension letters (the legend in :mod:`moebalance`): B windows per micro-batch,
W = seq_len + 1 tokens per window.
"""

from __future__ import annotations

import numpy as np

VAL_SEED = 1234  # every variant and seed is validated on the same batches of its val split


def check_fits(tokens: np.ndarray, seq_len: int) -> None:
    """ValueError if ``tokens`` cannot fill a window of ``seq_len + 1`` tokens."""
    if len(tokens) < seq_len + 2:
        raise ValueError(f"{len(tokens)} tokens cannot fill a window of {seq_len + 1}")


def draw_windows(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int,
                 index: int) -> np.ndarray:
    """Micro-batch ``index`` of optimizer step ``step``: ``batch_size`` windows, int64 (B, W)."""
    rng = np.random.default_rng([seed, step, index])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    return np.stack([np.asarray(tokens[s:s + seq_len + 1], dtype=np.int64) for s in starts])
