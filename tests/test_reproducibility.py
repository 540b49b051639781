"""Exact re-runs and provenance: code hashes follow the import graph, execution knobs stay
out of the science, and every run says what produced it."""

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, run_snakemake

from moebalance import provenance
from moebalance.cli import STAGES
from moebalance.codehash import closure, code_hash, main, unhashed_imports
from moebalance.config import DEFAULT_SEQ_LEN, ExecutionSettings
from moebalance.study import (
    execution_settings,
    sft_settings,
    trained_length,
    variant_settings,
)


@pytest.fixture
def package(tmp_path):
    """A fake `moebalance` package: a stage with a lazy import, a relative import, a
    `from package import module` and an import of something outside the project."""
    files = {
        "moebalance/__init__.py": "",
        "moebalance/stage.py": """
            import json
            from moebalance.helpers import util
            def run():
                from moebalance.deep import inner  # lazy, inside a function
                return util, inner, json
            """,
        "moebalance/helpers/__init__.py": "",
        "moebalance/helpers/util.py": "from . import maths\n",
        "moebalance/helpers/maths.py": "X = 1\n",
        "moebalance/deep/__init__.py": "",
        "moebalance/deep/inner.py": "Y = 2\n",
        "moebalance/unrelated.py": "Z = 3\n",
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def test_closure_follows_lazy_relative_and_submodule_imports(package):
    assert closure("moebalance.stage", package) == {
        "moebalance", "moebalance.stage", "moebalance.helpers", "moebalance.helpers.util",
        "moebalance.helpers.maths", "moebalance.deep", "moebalance.deep.inner"}


def test_editing_an_imported_module_changes_the_hash_and_an_unrelated_one_does_not(package):
    before = code_hash("moebalance.stage", package)
    (package / "moebalance/unrelated.py").write_text("Z = 4\n")
    assert code_hash("moebalance.stage", package) == before
    with (package / "moebalance/helpers/maths.py").open("a") as f:
        f.write("# a comment re-runs the stage\n")
    assert code_hash("moebalance.stage", package) != before


def test_codehash_prints_the_hash_each_rule_passes(capsys):
    main(STAGES)
    printed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert printed == {stage: code_hash(module, REPO / "src") for stage, module in STAGES.items()}


def test_a_module_loaded_outside_the_hash_is_reported(package):
    loaded = {"moebalance", "moebalance.cli", "moebalance.stage", "moebalance.unrelated"}
    assert unhashed_imports("moebalance.stage", loaded, package) == {"moebalance.unrelated"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_module_a_stage_loads_is_in_its_hash(stage):
    """Imports the stage in a fresh interpreter, builds its parser and lists what it loaded."""
    script = (f"import sys; from moebalance.cli import build_parser; "
              f"build_parser(only={stage!r}); import {STAGES[stage]}; "
              "print(' '.join(m for m in sys.modules if m.startswith('moebalance')))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout.split()
    assert STAGES[stage] in loaded
    assert unhashed_imports(STAGES[stage], set(loaded)) == set()


def test_the_module_defining_maxvio_is_in_the_training_hashes():
    for stage in ("pretrain", "sft"):
        assert "moebalance.maxvio" in closure(STAGES[stage])
        assert "moebalance.balance" in closure(STAGES[stage])  # the final validation's
        assert not any(m.startswith("moebalance.analysis") for m in closure(STAGES[stage]))


@pytest.mark.slow
def test_every_rule_passes_its_stage_code_hash(workdir):
    """The dry run's shell commands: each `moebalance <stage>` carries the hash of that
    stage's import closure. (init-tracking only creates the MLflow store, which every rule
    waits on: re-creating it for a code edit would re-run the whole study.)"""
    proc = run_snakemake(workdir, "-n", "-p", "--configfile", "config/smoke.yaml")
    tune = run_snakemake(workdir, "-n", "-p", "sweep_select", "--configfile",
                         "config/long.yaml", "--config", "sweep={phase: tune}")
    frontier = run_snakemake(workdir, "-n", "-p", "frontier", "--configfile",
                             "config/frontier.yaml")
    commands = re.findall(r"(?:^|\s)moebalance ([\w-]+) (.*)$",
                          proc.stdout + tune.stdout + frontier.stdout, re.M)
    assert {stage for stage, _ in commands} == set(STAGES)
    for stage, rest in commands:
        if stage == "init-tracking":
            continue
        passed = re.search(r"--source-hash (\w+)", rest)
        assert passed, f"{stage}: no --source-hash"
        assert passed.group(1) == code_hash(STAGES[stage], REPO / "src"), stage
    # compare records them all in results/README.md (the two stages of no number aside)
    compare = next(rest for stage, rest in commands if stage == "compare")
    recorded = json.loads(shlex.split(compare.split("--code-hashes", 1)[1])[0])
    assert recorded == {stage: code_hash(module, REPO / "src") for stage, module in STAGES.items()
                        if stage not in ("init-tracking", "sweep-select", "frontier")}
    # the frontier's README records the stages its numbers come from
    report = next(rest for stage, rest in commands if stage == "frontier")
    recorded = json.loads(shlex.split(report.split("--code-hashes", 1)[1])[0])
    assert recorded == {stage: code_hash(STAGES[stage], REPO / "src") for stage in (
        "corpus", "tokenizer", "tokens", "balance-set", "baselines", "pretrain", "utilization",
        "solution-nll", "frontier")}


CONFIG = {
    "model": {"layers": 2}, "balancing": {"loss_free": {"gamma": 0.01}},
    "pretrain": {"steps": 5, "threads": 2, "log_every": 3, "checkpoint_every": 4},
    "variants": {"lf": {"balancing": {"strategies": ["loss_free"]}}},
}


def test_execution_knobs_are_not_in_the_science_settings():
    settings = variant_settings(CONFIG, "lf")
    assert settings["train"] == {"steps": 5}
    assert settings["balancing"]["strategies"] == ["loss_free"]
    assert execution_settings(CONFIG["pretrain"]) == {"threads": 2, "log_every": 3,
                                                      "checkpoint_every": 4}
    finetune = {"train": {"steps": 2, "threads": 1, "log_every": 1}}
    assert sft_settings(settings, finetune)["train"] == {"steps": 2}


def test_an_execution_knob_set_per_variant_is_refused_naming_it():
    config = {**CONFIG, "variants": {"lf": {"pretrain": {"log_every": 1}}}}
    with pytest.raises(ValueError, match="variants.lf.pretrain: log_every"):
        variant_settings(config, "lf")


def test_an_execution_knob_in_the_science_settings_is_a_usage_error(tmp_path, capsys):
    from moe_helpers import TINY, write_tokens_dir

    from moebalance.cli import main

    settings = {"model": TINY, "train": {"steps": 1, "threads": 2}}
    argv = ["pretrain", "--tokens-dir", str(write_tokens_dir(tmp_path / "t")), "--out-dir",
            str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c"),
            "--settings", json.dumps(settings), "--no-tracking"]
    assert main(argv) == 2
    assert "threads in train: execution knobs" in capsys.readouterr().err


def test_bad_execution_settings_name_the_key():
    with pytest.raises(ValueError, match="log_every"):
        ExecutionSettings(log_every=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) in execution: log_evry"):
        ExecutionSettings.from_dict({"log_evry": 3})


def test_fingerprint_records_machine_versions_threads_and_commit():
    import torch

    record = provenance.fingerprint()
    assert record["cpu"] and record["python"] and record["threads"] == torch.get_num_threads()
    assert record["libraries"]["torch"] == torch.__version__  # from the distribution metadata
    assert set(record["libraries"]) >= {"torch", "transformers", "tokenizers"}
    assert len(record["git_commit"]) == 40 and isinstance(record["git_dirty"], bool)
    assert record["numerics_key"] == provenance.numerics_key(record)
    tags = provenance.as_tags(record)
    assert tags["provenance.libraries.transformers"] == record["libraries"]["transformers"]


def test_a_stage_without_torch_records_no_torch_kernel_fields_and_does_not_import_it():
    code = ("import sys; from moebalance import provenance; "
            "r = provenance.fingerprint(torch_kernels=False); "
            "assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert r['torch_cpu_capability'] is None and r['threads'] is None and "
            "r['gpu'] is None and r['libraries']['torch'] and r['cpu']; print(r['numerics_key'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ | {"PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != provenance.fingerprint()["numerics_key"]


def test_comparison_flags_runs_from_different_fingerprints():
    a = provenance.fingerprint()
    b = {**a, "threads": a["threads"] + 1}
    b["numerics_key"] = provenance.numerics_key(b)
    lines, mixed = provenance.describe([("none/seed0", a), ("aux_loss/seed0", a)])
    assert not mixed and len(lines) == 3 and "2: aux_loss/seed0, none/seed0" in lines[2]
    lines, mixed = provenance.describe([("none/seed0", a), ("aux_loss/seed0", b)])
    assert mixed and len(lines) == 4


def test_trained_length_is_the_longer_training_window_of_pretraining_and_sft():
    assert trained_length({"train": {"seq_len": 256}}, {"train": {"seq_len": 512}}) == 512
    assert trained_length({"train": {"seq_len": 300}}, {"train": {}}) == 300
    assert trained_length({"train": {}}, {"train": {}}) == DEFAULT_SEQ_LEN


def test_cuda_asks_for_deterministic_kernels_and_cpu_changes_nothing(monkeypatch):
    import torch

    from moebalance.determinism import CUBLAS_WORKSPACE_CONFIG, deterministic_kernels

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        deterministic_kernels("cpu")
        assert not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        # a CUDA device only names the device: no GPU is touched before its first kernel
        deterministic_kernels(torch.device("cuda", 0))
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's choice is kept
        deterministic_kernels("cuda")
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(before)


def test_a_study_rewriting_its_results_is_not_an_uncommitted_change(tmp_path):
    """The report stages' stamp: edits under results/ (the study's own outputs) leave the
    checkout clean; an edit to code makes it dirty."""
    import subprocess

    from moebalance.provenance import STUDY_OUTPUTS, git_state

    def report_checkout(source_dir):
        return git_state(source_dir, exclude=(STUDY_OUTPUTS,))

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "results" / "table.csv").write_text("a\n")
    (tmp_path / "src" / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "results" / "table.csv").write_text("b\n")
    state = report_checkout(tmp_path / "src")
    assert state["git_dirty"] is False and len(state["git_commit"]) == 40
    (tmp_path / "src" / "code.py").write_text("x = 2\n")
    assert report_checkout(tmp_path / "src")["git_dirty"] is True
    assert report_checkout(tmp_path.parent / "no-such-dir") == {"git_commit": "unknown",
                                                                 "git_dirty": None}
