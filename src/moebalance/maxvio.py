"""MaxVio, the load-balance measure of the study: numpy only, below the packages that use it.

The trainer and its telemetry (training), the sweep's selection rule and the analysis all
measure balance with it, so it lives under none of them. Loads count assignments over the
last axis (E experts); leading axes (layers L, steps S, replicates) are carried through.
"""

from __future__ import annotations

import numpy as np


def max_violation(counts_E: np.ndarray) -> np.ndarray:
    """(max_i load_i - mean load) / mean load over the last axis."""
    counts_E = np.asarray(counts_E, dtype=np.float64)
    mean = counts_E.mean(axis=-1)
    # Wang et al. 2024 Eq. 4: MaxVio = (max_i Load_i - mean Load) / mean Load
    return (counts_E.max(axis=-1) - mean) / mean
