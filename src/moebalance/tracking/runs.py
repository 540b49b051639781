"""MLflow runs of the stages: one run per stage run, its tags and headline metrics.

Every stage run is one MLflow run, tagged with stage, variant, seed, git commit, config
hash, code hash and the machine's provenance. Runs nest: a parent run per study (the
Snakefile names the study by the hash of its science settings, in MOEBALANCE_STUDY), a
child per (variant, seed) that carries the headline metrics, and the stage runs under
it; stages without a variant (corpus, compare, ...) sit directly under the study.
The experiment is marked as model development, so the MLflow UI opens on its runs table.

Whether a run is tracked, and where, is :func:`moebalance.tracking.args.requested_uri`.
mlflow is imported only by :func:`setup_store`, when a run is tracked, so an untracked run
never loads it; the functions that log take the module it returns.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from moebalance import provenance
from moebalance.study import run_name
from moebalance.tracking.args import requested_uri

STUDY_ENV = "MOEBALANCE_STUDY"
# MLflow 3 opens an experiment without this tag on its GenAI overview, not on the runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SQLITE = "sqlite:///"


def config_hash(params: Mapping[str, Any]) -> str:
    """Short, order-independent hash of a stage's parameters."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def setup_store(uri: str, experiment: str):
    """Point MLflow at the store ``uri``; create the experiment if it is new.

    With the embedded SQLite store, artifacts go to ``mlartifacts/`` beside the database
    (MLflow's default would be ./mlruns in whatever directory the stage runs in).
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    if uri.startswith(SQLITE) and mlflow.get_experiment_by_name(experiment) is None:
        artifacts = Path(uri.removeprefix(SQLITE)).parent / "mlartifacts"
        try:
            mlflow.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri(),
                                     tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            pass
    return mlflow, mlflow.set_experiment(experiment)


def _lock_file(uri: str) -> Path:
    """Where concurrent stage jobs of one store take turns: beside a SQLite store, else in
    the temp folder, named after the store."""
    if uri.startswith(SQLITE):
        return Path(uri.removeprefix(SQLITE)).with_suffix(".parents.lock")
    name = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"moebalance-mlflow-{name}.parents.lock"


@contextlib.contextmanager
def _parents_lock(uri: str) -> Iterator[None]:
    """Serialises the find-or-create of parent runs between concurrent stage jobs."""
    path = _lock_file(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _find_or_create(client, experiment_id: str, name: str, tags: dict[str, str],
                    parent: str | None) -> str:
    """The id of the run carrying ``tags`` (the oldest, if several), created if missing."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    found = client.search_runs([experiment_id], query, max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    extra = {"mlflow.parentRunId": parent} if parent else {}
    run = client.create_run(experiment_id, run_name=name, tags={**tags, **extra})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def parent_run(mlflow, args: argparse.Namespace, uri: str, experiment_id: str) -> str | None:
    """The run a stage run nests under: its (variant, seed) run, or the study run for stages
    without a variant; None outside a study (no MOEBALANCE_STUDY)."""
    study = os.environ.get(STUDY_ENV)
    if not study:
        return None
    client = mlflow.MlflowClient()
    with _parents_lock(uri):
        parent = _find_or_create(client, experiment_id, f"study {study}",
                                 {"moebalance.level": "study", "moebalance.study": study}, None)
        if args.variant is None or args.seed is None:
            return parent
        return _find_or_create(
            client, experiment_id, run_name(args.variant, args.seed),
            {"moebalance.level": "run", "moebalance.study": study, "variant": args.variant,
             "seed": str(args.seed)}, parent)


def _log_metrics(mlflow, run_id: str, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` (None and NaN left out) on the run ``run_id`` in one batch."""
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        run_id, metrics=[mlflow.entities.Metric(key, float(value), now, 0)
                         for key, value in metrics.items() if value is not None and value == value])


def log_headline(mlflow, metrics: Mapping[str, float]) -> None:
    """Copy a stage's headline metrics to its (variant, seed) parent run, where the UI's
    table and charts compare them across runs (no-op without tracking or a parent)."""
    if mlflow is None:
        return
    run = mlflow.active_run()
    parent = run.data.tags.get("mlflow.parentRunId") if run else None
    if parent:
        _log_metrics(mlflow, parent, metrics)


def log_run_headline(mlflow, variant: str, seed: int, metrics: Mapping[str, float]) -> None:
    """Headline metrics that a study-level stage (compare) computes for one (variant, seed),
    logged on that (variant, seed) run of the current study."""
    study = os.environ.get(STUDY_ENV)
    if mlflow is None or not study:
        return
    query = (f"tags.`moebalance.level` = 'run' and tags.`moebalance.study` = '{study}' and "
             f"tags.variant = '{variant}' and tags.seed = '{seed}'")
    found = mlflow.MlflowClient().search_runs([mlflow.active_run().info.experiment_id], query,
                                              max_results=1)
    if found:
        _log_metrics(mlflow, found[0].info.run_id, metrics)


def log_study_artifacts(mlflow, paths: list[str | os.PathLike], folder: str) -> None:
    """Attach files (comparison tables, figures) to the study's parent run."""
    if mlflow is None:
        return
    run = mlflow.active_run()
    parent = run.data.tags.get("mlflow.parentRunId") if run else None
    for path in paths:
        mlflow.MlflowClient().log_artifact(parent or run.info.run_id, str(path), folder)


@contextlib.contextmanager
def stage_run(args: argparse.Namespace, stage: str, params: Mapping[str, Any],
              torch_kernels: bool = True) -> Iterator[Any]:
    """One MLflow run for one stage invocation; yields the ``mlflow`` module (or None).

    ``args`` carries the options of :func:`moebalance.tracking.args.add_tracking_arguments`.
    A run nobody asked to track (:func:`moebalance.tracking.args.requested_uri`) logs
    nothing, writes nothing and yields None.
    ``torch_kernels=False``: the stage computes without torch (see
    :func:`moebalance.provenance.fingerprint`).
    """
    uri = requested_uri(args)
    if uri is None:
        yield None
        return
    mlflow, experiment = setup_store(uri, args.experiment)
    record = provenance.fingerprint(torch_kernels)
    tags = {
        "stage": stage,
        "variant": args.variant if args.variant is not None else "",
        "seed": str(args.seed) if args.seed is not None else "",
        "git_commit": record["git_commit"],
        "config_hash": config_hash(params),
        "source_hash": getattr(args, "source_hash", ""),
        **provenance.as_tags(record),
    }
    name = "/".join(str(p) for p in (stage, args.variant, args.seed) if p is not None)
    parent = parent_run(mlflow, args, uri, experiment.experiment_id)
    with mlflow.start_run(run_name=name, tags=tags, parent_run_id=parent):
        # MLflow caps a param value at a few thousand characters: long lists become JSON strings.
        mlflow.log_params({k: json.dumps(v) if not isinstance(v, str) else v
                           for k, v in params.items()})
        yield mlflow


def mlflow_logger(mlflow) -> Callable[[list[dict[str, Any]]], None]:
    """A Trainer.on_log callback sending metrics rows to the active MLflow run in one batch."""
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id

    def on_log(rows: list[dict[str, Any]]) -> None:
        now = int(time.time() * 1000)
        metrics = [mlflow.entities.Metric(key, float(value), now, row["step"]) for row in rows
                   for key, value in row.items()
                   if key != "step" and value is not None and not math.isnan(value)]
        for start in range(0, len(metrics), 1000):  # MLflow's per-request cap
            client.log_batch(run_id, metrics=metrics[start:start + 1000])

    return on_log
