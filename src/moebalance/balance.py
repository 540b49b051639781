"""Held-out balance: one function that measures a model's load balance on a held-out
balance set (:mod:`moebalance.data.balance_set`), with the reliability of the figure.

Every place that reports or selects on held-out balance calls :func:`measure`: the
pretraining stage's final validation (on the val split's set, for tuning and selection),
the sweep's selection rule (which reads that figure) and the utilization stage (on the test
split's set, for the reported results). For one model and one set they agree exactly.

The model routes each window once, in eval mode, in batches; the counts are reused for
every figure (docs/reference.md §4):

    maxvio_global     MaxVio of each MoE layer's loads over the whole set (Wang et al. 2024,
                      Eq. 4), averaged over layers; likewise cv, entropy
    maxvio_floor      what perfectly balanced routing would show at this many routed tokens
                      (:func:`moebalance.maxvio.sampling_floor`); printed beside every MaxVio
    maxvio_half       maxvio_global of the two halves of the set, split by document hash;
                      split_half_difference = |half 0 - half 1| (split-half reliability)
    maxvio_subset     maxvio_global of the set-size check's windows (half of each domain's);
                      subset_difference = |maxvio_subset - maxvio_global|
    domains           per corpus domain: its windows' maxvio_global, tokens and floor

Dimension letters (the legend in :mod:`moebalance`): W windows, S window length, L MoE
layers, E routed experts, K experts per token, T routed tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from moebalance.maxvio import (
    coefficient_of_variation,
    max_violation,
    normalized_entropy,
    sampling_floor,
)


@dataclass
class BalanceSet:
    """A held-out balance set as arrays (see moebalance.data.balance_set for the columns)."""

    input_ids_WS: np.ndarray     # (W, S + 1)
    token_class_WS: np.ndarray   # (W, S + 1)
    target_bytes_WS: np.ndarray  # (W, S + 1)
    domain_W: np.ndarray
    document_W: np.ndarray
    half_W: np.ndarray
    subset_W: np.ndarray
    eot_id: int
    meta: dict

    @classmethod
    def load(cls, path: str | Path) -> BalanceSet:
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"no balance set at {path} (with {meta_path.name} beside "
                                    "it); run the balance-set stage")
        table = pq.read_table(path).to_pydict()
        meta = json.loads(meta_path.read_text())
        return cls(np.stack(table["input_ids"]).astype(np.int64),
                   np.stack(table["token_class"]).astype(np.int64),
                   np.stack(table["target_bytes"]).astype(np.int64),
                   np.asarray(table["domain"]), np.asarray(table["document"]),
                   np.asarray(table["half"], dtype=np.int64),
                   np.asarray(table["subset"], dtype=bool), int(meta["eot_id"]), meta)

    @property
    def windows(self) -> int:
        return len(self.input_ids_WS)

    @property
    def seq_len(self) -> int:
        return self.input_ids_WS.shape[1] - 1


@dataclass
class SetRouting:
    """One model's routing of a balance set: every routed token's top-K experts and every
    predicted token's NLL, in window order."""

    picks_TLK: np.ndarray    # (W * S, L, K) expert ids
    nll_T: np.ndarray        # (W * S,) nats; token t of window w predicts ids[w, t + 1]
    experts: int

    def counts_WLE(self, windows: int) -> np.ndarray:
        """Assignments per (window, layer, expert)."""
        T, L, K = self.picks_TLK.shape
        window_T = np.repeat(np.arange(windows), T // windows)
        cell = (window_T[:, None, None] * L + np.arange(L)[None, :, None]) * self.experts \
            + self.picks_TLK
        return np.bincount(cell.reshape(-1), minlength=windows * L * self.experts).reshape(
            windows, L, self.experts)


def route_set(model, balance_set: BalanceSet, batch_size: int = 16) -> SetRouting:
    """Route every window of the set through ``model`` once (eval mode, nothing updated)."""
    from moebalance.model.routing_capture import route_windows

    picks_TLK, nll_T = route_windows(model, balance_set.input_ids_WS, batch_size)
    return SetRouting(picks_TLK, nll_T, int(model.config.n_routed_experts))


def _maxvio(counts_WLE: np.ndarray, mask_W: np.ndarray) -> float:
    return float(max_violation(counts_WLE[mask_W].sum(axis=0)).mean())


def summarize(counts_WLE: np.ndarray, balance_set: BalanceSet, top_k: int) -> dict:
    """The held-out balance figures of one model's counts on ``balance_set``."""
    W, L, E = counts_WLE.shape
    S = balance_set.seq_len
    every = np.ones(W, dtype=bool)
    counts_LE = counts_WLE.sum(axis=0).astype(np.float64)
    halves = [_maxvio(counts_WLE, balance_set.half_W == h) for h in (0, 1)]
    subset = balance_set.subset_W
    maxvio = _maxvio(counts_WLE, every)
    domains = {}
    for domain in sorted(set(balance_set.domain_W.tolist())):
        mask = balance_set.domain_W == domain
        domains[domain] = {"maxvio_global": _maxvio(counts_WLE, mask),
                           "tokens": int(mask.sum()) * S,
                           "maxvio_floor": sampling_floor(int(mask.sum()) * S, E, top_k)}
    return {
        "windows": W, "routed_tokens": W * S, "top_k": top_k, "experts": E,
        "maxvio_global": maxvio,
        "cv": float(coefficient_of_variation(counts_LE).mean()),
        "entropy": float(normalized_entropy(counts_LE).mean()),
        "maxvio_floor": sampling_floor(W * S, E, top_k),
        "maxvio_half": halves,
        "half_windows": [int((balance_set.half_W == h).sum()) for h in (0, 1)],
        "split_half_difference": abs(halves[0] - halves[1]),
        "maxvio_subset": _maxvio(counts_WLE, subset),
        "subset_windows": int(subset.sum()),
        "maxvio_floor_subset": sampling_floor(int(subset.sum()) * S, E, top_k),
        "subset_difference": abs(_maxvio(counts_WLE, subset) - maxvio),
        "domains": domains,
    }


def measure(model, balance_set: BalanceSet, batch_size: int = 16) -> tuple[dict, SetRouting]:
    """Held-out balance of ``model`` on ``balance_set`` (:func:`summarize` of one routing
    pass), and that routing, for callers that derive more from the same pass."""
    routing = route_set(model, balance_set, batch_size)
    counts_WLE = routing.counts_WLE(balance_set.windows)
    return summarize(counts_WLE, balance_set, int(model.config.num_experts_per_tok)), routing


def predicted_mask(balance_set: BalanceSet) -> np.ndarray:
    """(W * S,) True where the predicted token is text, not end-of-text (which covers no
    bytes): the tokens held-out bits per byte sums over."""
    return (balance_set.input_ids_WS[:, 1:] != balance_set.eot_id).reshape(-1)


def bits_per_byte(nll_T: np.ndarray, balance_set: BalanceSet) -> float:
    """Held-out bits per byte as a ratio estimator: summed NLL of the predicted text tokens
    over the UTF-8 bytes they cover, in bits (the set is already in the training mix)."""
    keep = predicted_mask(balance_set)
    n_bytes = balance_set.target_bytes_WS[:, 1:].reshape(-1)[keep].sum()
    return float(nll_T[keep].sum() / math.log(2) / n_bytes) if n_bytes else math.nan


def training_aggregate(counts_NLE: np.ndarray, top_k: int, tokens: int) -> tuple[float, int]:
    """MaxVio of the training batches' counts summed over the last steps that together route
    at least ``tokens`` tokens (the held-out set's size), averaged over layers, and how many
    steps that took: the training-side aggregate to set beside a held-out MaxVio_global of
    the same size (docs/reference.md §4). The bias corrects these counts as they arise (a
    closed loop), so it is named an aggregate, never a held-out figure."""
    per_step_N = counts_NLE[:, 0].sum(axis=-1) / top_k
    covered_N = np.cumsum(per_step_N[::-1])
    steps = int(min(len(per_step_N), np.searchsorted(covered_N, tokens) + 1))
    return float(max_violation(counts_NLE[-steps:].sum(axis=0)).mean()), steps
