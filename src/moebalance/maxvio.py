"""MaxVio and the other load-balance measures of held-out balance (CV, entropy), and MaxVio's
sampling floor: numpy only, below the packages that use them.

The trainer and its telemetry (training), the sweep's selection rule and the analysis all
measure balance with it, so it lives under none of them. Loads count assignments over the
last axis (E experts); leading axes (layers L, steps S, replicates) are carried through.
"""

from __future__ import annotations

import math

import numpy as np


def max_violation(counts_E: np.ndarray) -> np.ndarray:
    """(max_i load_i - mean load) / mean load over the last axis."""
    counts_E = np.asarray(counts_E, dtype=np.float64)
    mean = counts_E.mean(axis=-1)
    # Wang et al. 2024 Eq. 4: MaxVio = (max_i Load_i - mean Load) / mean Load
    return (counts_E.max(axis=-1) - mean) / mean


def coefficient_of_variation(counts_E: np.ndarray) -> np.ndarray:
    counts_E = np.asarray(counts_E, dtype=np.float64)
    # Shazeer et al. 2017 §4 (importance loss): CV = std(load) / mean(load), population std
    return counts_E.std(axis=-1) / counts_E.mean(axis=-1)


def normalized_entropy(counts_E: np.ndarray) -> np.ndarray:
    """Entropy of the load distribution in units of log E: 1 = uniform, 0 = one expert."""
    counts_E = np.asarray(counts_E, dtype=np.float64)
    p_E = counts_E / counts_E.sum(axis=-1, keepdims=True)
    plogp = np.where(p_E > 0, p_E * np.log(np.where(p_E > 0, p_E, 1.0)), 0.0)
    # Shannon entropy H = -sum_i p_i log p_i, p = load / sum(load), normalised by log E
    return -plogp.sum(axis=-1) / np.log(counts_E.shape[-1])


def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normals], by quadrature of
    n * x * phi(x) * Phi(x)^(n-1) (the density of the maximum). scipy is imported here: the
    training stages import this module and their `--help` would load it."""
    from scipy import integrate, stats

    value, _ = integrate.quad(
        lambda x: n * x * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n - 1), -12, 12)
    return float(value)


def sampling_floor(tokens: int, experts: int, top_k: int) -> float:
    """The MaxVio that perfectly balanced routing shows on ``tokens`` independent tokens,
    each sent to ``top_k`` distinct of ``experts`` experts uniformly at random.

    docs/reference.md §4: expert i's load is a sum of ``tokens`` Bernoulli(K/N) draws, mean
    T K / N and variance T (K/N)(1 - K/N); the loads are nearly independent normals (their
    sum is fixed), so E[max_i load_i - mean] ~ z_N * sd and
        E[MaxVio] ~ z_N * sqrt((N - K) / (T * K)),
    with z_N = E[max of N standard normals]. Tokens of one window are correlated, so the
    floor of real text is higher: the split-half and set-size checks measure that.
    """
    if tokens < 1:
        return float("nan")
    return expected_max_normal(experts) * math.sqrt((experts - top_k) / (tokens * top_k))
