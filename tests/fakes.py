"""Fake run folders for the analysis tests, written through the package's own writers.

Each writer takes the numbers a test chooses and hands them to the code the stage itself
writes with: training telemetry (Telemetry's tables), the scorer's outputs
(scoring.write_outputs), the solution-NLL table (its stage's schema), the utilization
tables and meta.json (the stage's table and meta functions), all through atomic's writers.
So a fake file has the columns, types and companions of the real one, and follows it when
the stage's format changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import torch

from moebalance.analysis import utilization as u
from moebalance.atomic import write_json, write_parquet
from moebalance.balance import BalanceSet, SetRouting
from moebalance.balance import summarize as balance_figures
from moebalance.config import UtilizationSettings
from moebalance.evaluation.sandbox import Execution
from moebalance.evaluation.scoring import Sample, summarize, write_outputs
from moebalance.evaluation.solution_nll import NLL_SCHEMA
from moebalance.training.telemetry import Telemetry


def write_training(folder: Path, counts_NLE: np.ndarray, layers: Sequence[int], *,
                   val_loss: float, val_maxvio: float = math.nan, lm_loss: float = 3.0,
                   tokens_per_s_N: Sequence[float] | None = None,
                   bias_NLE: np.ndarray | None = None, mean_score_NLE: np.ndarray | None = None,
                   override_NL: np.ndarray | None = None, routing: bool = True) -> None:
    """metrics.parquet (and with ``routing``, routing.parquet) of a training stage in
    ``folder``: one optimizer step per row of ``counts_NLE`` (N steps x L layers x E experts),
    no balancing loss, the validation (``val_loss``, ``val_maxvio``) at the last step."""
    N, L, E = counts_NLE.shape
    zeros_NLE = np.zeros((N, L, E), dtype=np.float32)
    tokens_per_s_N = [1000.0] * N if tokens_per_s_N is None else tokens_per_s_N
    bias_NLE = zeros_NLE if bias_NLE is None else bias_NLE
    mean_score_NLE = zeros_NLE if mean_score_NLE is None else mean_score_NLE
    override_NL = np.zeros((N, L), dtype=np.float32) if override_NL is None else override_NL
    telemetry = Telemetry(list(layers))
    for step in range(N):
        telemetry.record_step(
            step, lm_loss=lm_loss, terms={}, lr=1e-3, grad_norm=1.0, gamma=0.0,
            tokens_per_s=float(tokens_per_s_N[step]),
            tokens_seen=int(counts_NLE[: step + 1, 0].sum()),
            counts_LE=torch.as_tensor(counts_NLE[step]), bias_LE=torch.as_tensor(bias_NLE[step]),
            mean_score_LE=torch.as_tensor(mean_score_NLE[step]),
            override_rate_L=torch.as_tensor(override_NL[step]))
    telemetry.record_val(N - 1, val_loss, val_maxvio)
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(telemetry.metrics_table(), folder / "metrics.parquet")
    if routing:
        write_parquet(telemetry.routing_table(), folder / "routing.parquet")


def write_scores(folder: Path, passed: dict[str, Sequence[bool]], seconds: float = 0.1) -> None:
    """The score stage's executions.parquet, results.jsonl and summary.json in ``folder``:
    task id -> whether each of its samples passed."""
    samples, executions = [], []
    for task_id, verdicts in passed.items():
        for index, ok in enumerate(verdicts):
            samples.append(Sample(task_id, index, "", {"task_id": task_id, "completion": ""}))
            executions.append(Execution("passed" if ok else "failed", ok, seconds,
                                        "passed" if ok else "failed: AssertionError",
                                        "process-pair"))
    folder.mkdir(parents=True, exist_ok=True)
    write_outputs(folder, samples, executions, summarize(samples, executions))


def write_solution_nll(path: Path, rows: Sequence[dict]) -> None:
    """The solution-nll stage's table: one row per task, with every column of its schema."""
    for row in rows:
        assert set(row) == set(NLL_SCHEMA.names), (sorted(row), NLL_SCHEMA.names)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.Table.from_pylist(list(rows), schema=NLL_SCHEMA), path)


def write_utilization(folder: Path, balance_set: BalanceSet, humaneval: list[u.Window],
                      humaneval_fit: list[str], picks_TLK: dict[str, np.ndarray],
                      nll_T: dict[str, np.ndarray], layers: list[int], routed_experts: int,
                      jitter_difference: float | None = None, vocab_min_count: int = 2) -> None:
    """The utilization stage's tables, meta.json and balance.json in ``folder``: each model
    (name -> its top-K picks of the balance set's tokens then HumanEval's, and the set's
    per-token NLL) measured by analysis.balance's own figures; ``jitter_difference``: the
    bias-jitter check's MaxVio_global with the averaged bias less with the final one."""
    top_k = next(iter(picks_TLK.values())).shape[-1]
    routing = u.HeldOutRouting(balance_set, humaneval, humaneval_fit, list(layers), top_k,
                               routed_experts)
    T_set = balance_set.windows * balance_set.seq_len
    for name, picks in picks_TLK.items():
        set_routing = SetRouting(picks[:T_set], nll_T[name], routed_experts)
        routing.balance[name] = balance_figures(set_routing.counts_WLE(balance_set.windows),
                                                balance_set, top_k)
        u.add_model_rows(routing, name, set_routing, picks[T_set:], vocab_min_count)
    if jitter_difference is not None:  # the figures utilization.jitter_check reports
        final = routing.balance["pretrain"]["maxvio_global"]
        routing.balance["jitter"] = {
            "fraction": UtilizationSettings().jitter_fraction, "maxvio_global_final": final,
            "maxvio_global_averaged": final + jitter_difference,
            "difference": jitter_difference, "routed": True}
    folder.mkdir(parents=True, exist_ok=True)
    for stem, table in u.output_tables(routing, SimpleNamespace(snapshots=None)).items():
        write_parquet(table, folder / f"{stem}.parquet")
    write_json(u.meta_of(routing, dict.fromkeys(picks_TLK)), folder / "meta.json")
    write_json(routing.balance, folder / "balance.json")
