"""Per-step training telemetry: the rows of metrics.parquet and routing.parquet.

routing.parquet: one row per (optimizer step, MoE layer, routed expert):
    step, layer, expert, tokens (the loads the bias update used: all micro-batches
    and ranks), bias (the bias that routed this step), mean_score (mean unbiased
    affinity s_{i,t} over the step's tokens), load_share (tokens / sum over experts),
    override_rate (the layer's share of tokens whose top-K set the bias changed, the same
    on every expert row of the layer).
metrics.parquet: one row per optimizer step:
    step, loss, lm_loss, one column per strategy that adds a loss term, lr, grad_norm, gamma,
    tokens_per_s, tokens_seen, maxvio_batch (mean over layers), maxvio_layer{L},
    bias_override_rate (mean over layers), val_loss and val_subset_maxvio: the periodic
    validation on a fixed subset of the val split (``eval_batches`` batches; the loss the
    n-gram baselines are scored against), its MaxVio_global a progress signal only, mean
    over layers; NaN between validations. Held-out balance is measured on the balance set
    (pretrain/balance.json; moebalance.balance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from moebalance.maxvio import max_violation
from moebalance.model.balancing import loss_terms


class Telemetry:
    def __init__(self, layers: list[int]) -> None:
        self.layers = list(layers)
        self.metrics: list[dict[str, Any]] = []
        self.routing: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def record_step(self, step: int, *, lm_loss: float, terms: dict[str, float], lr: float,
                    grad_norm: float, gamma: float, tokens_per_s: float, tokens_seen: int,
                    counts_LE: torch.Tensor, bias_LE: torch.Tensor,
                    mean_score_LE: torch.Tensor,
                    override_rate_L: torch.Tensor) -> dict[str, Any]:
        maxvio_L = max_violation(counts_LE.cpu().numpy()).tolist()
        override_L = override_rate_L.cpu().numpy().astype(np.float32)
        row: dict[str, Any] = {
            "step": step,
            "loss": lm_loss + sum(terms.values()),
            "lm_loss": lm_loss,
            # every strategy that adds a loss gets a column (0.0 when it is off), so
            # variants share one schema; bias-only strategies get none
            **{name: terms.get(name, 0.0) for name in loss_terms()},
            "lr": lr,
            "grad_norm": grad_norm,
            "gamma": gamma,
            "tokens_per_s": tokens_per_s,
            "tokens_seen": tokens_seen,
            "maxvio_batch": float(np.mean(maxvio_L)),
            **{f"maxvio_layer{layer}": v for layer, v in zip(self.layers, maxvio_L, strict=True)},
            "bias_override_rate": float(override_L.mean()),
            "val_loss": math.nan,
            "val_subset_maxvio": math.nan,
        }
        self.metrics.append(row)
        self.routing.append((step, counts_LE.cpu().numpy().astype(np.int64),
                             bias_LE.cpu().numpy().astype(np.float32),
                             mean_score_LE.cpu().numpy().astype(np.float32), override_L))
        return row

    def record_val(self, step: int, val_loss: float, val_subset_maxvio: float = math.nan) -> None:
        for row in reversed(self.metrics):
            if row["step"] == step:
                row["val_loss"], row["val_subset_maxvio"] = val_loss, val_subset_maxvio
                return
        raise KeyError(f"no metrics row for step {step}")

    def metrics_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.metrics)

    def routing_table(self) -> pa.Table:
        if not self.routing:
            return pa.table({c: [] for c in ("step", "layer", "expert", "tokens", "bias",
                                             "mean_score", "load_share", "override_rate")})
        L, E = self.routing[0][1].shape
        steps = np.array([r[0] for r in self.routing], dtype=np.int64)
        counts_NLE = np.stack([r[1] for r in self.routing])
        share_NLE = counts_NLE / np.maximum(counts_NLE.sum(-1, keepdims=True), 1)
        return pa.table({
            "step": np.repeat(steps, L * E),
            "layer": np.tile(np.repeat(np.array(self.layers, dtype=np.int32), E), len(steps)),
            "expert": np.tile(np.arange(E, dtype=np.int32), len(steps) * L),
            "tokens": counts_NLE.reshape(-1),
            "bias": np.stack([r[2] for r in self.routing]).reshape(-1),
            "mean_score": np.stack([r[3] for r in self.routing]).reshape(-1),
            "load_share": share_NLE.reshape(-1).astype(np.float32),
            "override_rate": np.repeat(np.stack([r[4] for r in self.routing]), E, axis=-1
                                       ).reshape(-1),
        })

    def state_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "metrics": self.metrics, "routing": self.routing}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.layers, self.metrics = state["layers"], state["metrics"]
        self.routing = state["routing"]
