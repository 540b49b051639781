"""Expert-utilization and diversity metrics (docs/reference.md §4): pure numpy functions.

Dimension letters (the legend in :mod:`moebalance`): the last axis is always the E
routed experts (``counts_E``); any leading axes (L layers, N logged steps, R bootstrap
replicates, ...) are carried through, so one call handles a whole (L, E) table or an
(R, L, E) stack of bootstrap replicates. The counts (the papers' expert *loads*) count
*assignments*: a token routed to its top K experts adds 1 to each of K experts, so the
counts of T tokens sum to T * K.

Under collapse onto K of E experts (every token picks the same K):
    MaxVio = E/K - 1,  CV = sqrt(E/K - 1),  entropy = log K / log E,  Gini = 1 - K/E.
Under perfectly uniform routing all four are 0 except entropy = 1.
"""

from __future__ import annotations

import numpy as np

from moebalance.maxvio import coefficient_of_variation, max_violation, normalized_entropy

DEAD_FRACTION = 0.01  # an expert is dead below 1% of the mean load (docs/reference.md §4)


def gini(counts_E: np.ndarray) -> np.ndarray:
    """Gini coefficient of the loads: 0 = equal, (E-1)/E = all on one expert."""
    counts_E = np.asarray(counts_E, dtype=np.float64)
    E = counts_E.shape[-1]
    diffs = np.abs(counts_E[..., :, None] - counts_E[..., None, :]).sum(axis=(-1, -2))
    # Gini = sum_i sum_j |x_i - x_j| / (2 n^2 mean(x)), n = E values
    return diffs / (2 * E * E * counts_E.mean(axis=-1))


def dead_experts(counts_E: np.ndarray, fraction: float = DEAD_FRACTION) -> np.ndarray:
    """Number of experts whose load is below ``fraction`` of the mean load."""
    counts_E = np.asarray(counts_E, dtype=np.float64)
    return (counts_E < fraction * counts_E.mean(axis=-1, keepdims=True)).sum(axis=-1)


def relative_load(counts_E: np.ndarray, top_k: int) -> np.ndarray:
    """load_i / (T K / E); T = sum(load) / K tokens, so the denominator is the mean load.

    1 everywhere when balanced; >1 marks an expert a domain prefers (DeepSeek-V3 Fig. 9).
    """
    counts_E = np.asarray(counts_E, dtype=np.float64)
    E = counts_E.shape[-1]
    tokens = counts_E.sum(axis=-1, keepdims=True) / top_k
    # DeepSeek-V3 §4.5.3 / Fig. 9: relative load = load_i / (T * K_r / N_r)
    return counts_E / (tokens * top_k / E)


def specialization(counts_GE: np.ndarray, top_k: int) -> np.ndarray:
    """DS(i, g): share of the tokens of group g (a domain, token class or token id) that pick
    expert i among their top K. Rows sum to K; uniform routing gives K/E everywhere.
    G groups on axis -2, E experts on -1 (leading axes carried)."""
    counts_GE = np.asarray(counts_GE, dtype=np.float64)
    tokens_G = counts_GE.sum(axis=-1, keepdims=True) / top_k
    # OLMoE Eq. 7 (domain) and Eq. 8 (vocabulary): N_{E_i, g}^{(k)} / N_g
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts_GE / tokens_G


def concentration(spec_GE: np.ndarray, top_k: int) -> np.ndarray:
    """Mean specialization of each group's K most-chosen experts: 1 = the group always uses
    the same K experts, K/E = uniform. One number per group from OLMoE's DS or VS."""
    top = np.sort(np.asarray(spec_GE, dtype=np.float64), axis=-1)[..., -top_k:]
    return top.mean(axis=-1)


def mutual_information(counts_GE: np.ndarray) -> np.ndarray:
    """I(expert; group) in bits from a joint count table (groups on axis -2, experts on -1).

    Plug-in estimate; its upward bias is about (G-1)(E-1) / (2 n ln 2) bits for n counts.
    """
    counts_GE = np.asarray(counts_GE, dtype=np.float64)
    p_GE = counts_GE / counts_GE.sum(axis=(-1, -2), keepdims=True)
    p_G1 = p_GE.sum(axis=-1, keepdims=True)
    p_1E = p_GE.sum(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(p_GE > 0, p_GE / (p_G1 * p_1E), 1.0)
    # I(X;Y) = sum_{x,y} p(x,y) log2 p(x,y) / (p(x) p(y))
    return (p_GE * np.log2(ratio)).sum(axis=(-1, -2))


def coactivation(pairs_EE: np.ndarray) -> np.ndarray:
    """CA(i, j) = N(i and j) / N(i) from a symmetric pair-count matrix whose diagonal holds
    N(i); the diagonal of the result is 0 (an expert with itself is not a pair)."""
    pairs_EE = np.asarray(pairs_EE, dtype=np.float64)
    n_i = np.diagonal(pairs_EE, axis1=-2, axis2=-1)[..., :, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        # OLMoE Eq. 6: CA(E_i, E_j) = N_{E_i E_j} / N_{E_i}
        ca = np.where(n_i > 0, pairs_EE / n_i, 0.0)
    eye = np.eye(pairs_EE.shape[-1], dtype=bool)
    return np.where(eye, 0.0, ca)


def topk_overlap(topk_a_TK: np.ndarray, topk_b_TK: np.ndarray) -> np.ndarray:
    """|TopK_a ∩ TopK_b| / K of each token, whatever the order of its K choices; the last
    axis holds the K choices, leading axes are carried ((T, L, K) -> (T, L)). Its mean over
    tokens is router saturation: how many of the final model's choices an earlier
    checkpoint already makes (1 = saturated)."""
    a, b = np.asarray(topk_a_TK), np.asarray(topk_b_TK)
    # OLMoE Eq. 5, the summand: |TopK_t^{(ckpt)} ∩ TopK_t^{(final)}| / k (mean over t in compare)
    return (a[..., :, None] == b[..., None, :]).any(-1).sum(-1) / a.shape[-1]


def maxvio_batch(counts_NLE: np.ndarray) -> np.ndarray:
    """Per training step: MaxVio of that step's loads, averaged over layers (Wang et al.)."""
    return max_violation(counts_NLE).mean(axis=-1)


def layer_summary(counts_LE: np.ndarray) -> dict[str, np.ndarray]:
    """The balance metrics of each layer's loads (arrays over the leading axes)."""
    counts_LE = np.asarray(counts_LE, dtype=np.float64)
    return {"maxvio_global": max_violation(counts_LE), "cv": coefficient_of_variation(counts_LE),
            "entropy": normalized_entropy(counts_LE), "gini": gini(counts_LE),
            "dead_experts": dead_experts(counts_LE).astype(np.float64)}
