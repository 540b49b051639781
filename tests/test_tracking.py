import argparse

import mlflow
import pytest

from moebalance.cli import main
from moebalance.errors import UsageError
from moebalance.tracking import (
    add_tracking_arguments,
    config_hash,
    log_headline,
    stage_run,
    tracking_uri,
)


def tracking_args(store, *extra):
    parser = argparse.ArgumentParser()
    add_tracking_arguments(parser)
    return parser.parse_args(["--mlflow-store", str(store), "--experiment", "exp", *extra])


def test_init_creates_the_store_and_experiment_with_artifacts_beside_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "r" / "mlflow.db"
    assert main(["init-tracking", "--store", str(store), "--experiment", "exp",
                 "--out", str(tmp_path / "ready.json")]) == 0
    assert store.is_file()
    mlflow.set_tracking_uri(tracking_uri(store))
    experiment = mlflow.get_experiment_by_name("exp")
    assert experiment.artifact_location.endswith("/r/mlartifacts")


def test_stage_run_is_tagged_with_stage_variant_seed_commit_and_config_hash(tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlflow.db"
    params = {"alpha": 0.01, "layers": [1, 2]}
    with stage_run(tracking_args(store, "--variant", "aux_loss", "--seed", "3"), "pretrain",
                   params) as tracker:
        tracker.log_metric("loss", 1.5)
    mlflow.set_tracking_uri(tracking_uri(store))
    (run,) = mlflow.search_runs(experiment_names=["exp"], output_format="list")
    tags = run.data.tags
    assert (tags["stage"], tags["variant"], tags["seed"]) == ("pretrain", "aux_loss", "3")
    assert tags["config_hash"] == config_hash(params) and tags["git_commit"]
    assert run.data.params["layers"] == "[1, 2]" and run.data.metrics["loss"] == 1.5


def test_environment_variable_overrides_the_store(tmp_path, monkeypatch):
    other = tmp_path / "server.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    assert tracking_uri(tmp_path / "ignored.db") == f"sqlite:///{other}"


def test_no_tracking_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with stage_run(tracking_args(tmp_path / "m.db", "--no-tracking"), "corpus", {}) as tracker:
        assert tracker is None
    assert not (tmp_path / "m.db").exists()


def test_the_environment_switch_turns_tracking_off_and_refuses_a_typo(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MOEBALANCE_NO_TRACKING", "1")
    with stage_run(tracking_args(tmp_path / "m.db"), "corpus", {}) as tracker:
        assert tracker is None
    assert not (tmp_path / "m.db").exists()
    monkeypatch.setenv("MOEBALANCE_NO_TRACKING", "of")
    with pytest.raises(UsageError, match="MOEBALANCE_NO_TRACKING='of'"):
        with stage_run(tracking_args(tmp_path / "m.db"), "corpus", {}):
            pass
    monkeypatch.setenv("MOEBALANCE_NO_TRACKING", "0")
    with stage_run(tracking_args(tmp_path / "m.db"), "corpus", {}) as tracker:
        assert tracker is not None
    assert (tmp_path / "m.db").is_file()


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_stage_runs_nest_under_a_study_and_a_variant_seed_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MOEBALANCE_STUDY", "abc123")
    store = tmp_path / "mlflow.db"
    for stage in ("pretrain", "sft"):
        with stage_run(tracking_args(store, "--variant", "aux_loss", "--seed", "0"), stage,
                       {}) as tracker:
            log_headline(tracker, {"val_loss": 4.5} if stage == "pretrain" else {"bpb": 1.2})
    with stage_run(tracking_args(store), "compare", {}):
        pass
    client = mlflow.MlflowClient(tracking_uri(store))
    experiment = client.get_experiment_by_name("exp")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    study, pair = runs["study abc123"], runs["aux_loss/seed0"]
    assert pair.data.tags["mlflow.parentRunId"] == study.info.run_id
    for name in ("pretrain/aux_loss/0", "sft/aux_loss/0"):
        assert runs[name].data.tags["mlflow.parentRunId"] == pair.info.run_id
    assert runs["compare"].data.tags["mlflow.parentRunId"] == study.info.run_id
    assert pair.data.metrics == {"val_loss": 4.5, "bpb": 1.2}
    assert len(runs) == 5  # one study run and one (variant, seed) run, however many stages
