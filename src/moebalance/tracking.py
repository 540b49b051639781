"""MLflow tracking for every stage: the shared arguments, one run per stage run, its tags
and headline metrics (the `init-tracking` stage that creates the store is
:mod:`moebalance.init_tracking`).

Every stage run is one MLflow run, tagged with stage, variant, seed, git commit, config
hash, code hash and the machine's provenance. Runs nest: a parent run per study (the
Snakefile names the study by the hash of its science settings, in MOEBALANCE_STUDY), a
child per (variant, seed) that carries the headline metrics, and the stage runs under
it; stages without a variant (corpus, compare, ...) sit directly under the study.
The experiment is marked as model development, so the MLflow UI opens on its runs table.

The store is an embedded SQLite file by default; the environment variable
MLFLOW_TRACKING_URI points everything at another store or a server instead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from moebalance.errors import UsageError
from moebalance.study import run_name

DEFAULT_STORE = "results/mlflow.db"
DEFAULT_EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "moebalance")
STUDY_ENV = "MOEBALANCE_STUDY"
# MLflow 3 opens an experiment without this tag on its GenAI overview, not on the runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
log = logging.getLogger(__name__)


def tracking_uri(store: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI if set, else an embedded SQLite store at ``store``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(store).resolve()}"


NO_TRACKING_ENV = "MOEBALANCE_NO_TRACKING"


def tracking_switched_off() -> bool:
    """Whether MOEBALANCE_NO_TRACKING asks every stage of this process tree to skip MLflow
    (1/true/yes; unset, empty, 0/false/no leave tracking on; anything else is an error)."""
    value = os.environ.get(NO_TRACKING_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise UsageError(f"{NO_TRACKING_ENV}={value!r}: use 1 (tracking off) or 0 (on)")


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--mlflow-store",
        default=DEFAULT_STORE,
        help="SQLite file of the MLflow store (ignored when MLFLOW_TRACKING_URI is set)",
    )
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    group.add_argument("--variant", default=None, help="variant tag of this run, if any")
    group.add_argument("--seed", type=int, default=None,
                       help="seed of this run: the training stages seed the model's "
                       "initialisation and the data order with it; other stages record it "
                       "as a tag")
    group.add_argument(
        "--no-tracking", action="store_true",
        help=f"do not log this run to MLflow at all (also when {NO_TRACKING_ENV}=1 is set: "
        "tracking is an execution knob, so `MOEBALANCE_NO_TRACKING=1 snakemake ...` runs a "
        "study, or reruns part of one, with the same outputs and no stage run logged)")
    group.add_argument("--source-hash", default="",
                       help="hash of the stage's code (Snakemake passes it; recorded as a tag, "
                       "and a training checkpoint of other code is not resumed)")


def config_hash(params: Mapping[str, Any]) -> str:
    """Short, order-independent hash of a stage's parameters."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def setup_store(store: str | os.PathLike, experiment: str):
    """Point MLflow at the store; create the experiment if it is new.

    With the embedded SQLite store, artifacts go to ``mlartifacts/`` beside the database
    (MLflow's default would be ./mlruns in whatever directory the stage runs in).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(store)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        try:
            mlflow.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri(),
                                     tags=EXPERIMENT_KIND)
        except MlflowException:  # created meanwhile by another process
            pass
    return mlflow, mlflow.set_experiment(experiment)


@contextlib.contextmanager
def _parents_lock(store: str | os.PathLike) -> Iterator[None]:
    """Serialises the find-or-create of parent runs between concurrent stage jobs."""
    import fcntl

    path = Path(store).resolve().with_suffix(".parents.lock")
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


def parent_run(args: argparse.Namespace, experiment_id: str) -> str | None:
    """The run a stage run nests under: its (variant, seed) run, or the study run for stages
    without a variant; None outside a study (no MOEBALANCE_STUDY)."""
    from mlflow.tracking import MlflowClient

    study = os.environ.get(STUDY_ENV)
    if not study:
        return None
    client = MlflowClient()
    with _parents_lock(args.mlflow_store):
        parent = _find_or_create(client, experiment_id, f"study {study}",
                                 {"moebalance.level": "study", "moebalance.study": study}, None)
        if args.variant is None or args.seed is None:
            return parent
        return _find_or_create(
            client, experiment_id, run_name(args.variant, args.seed),
            {"moebalance.level": "run", "moebalance.study": study, "variant": args.variant,
             "seed": str(args.seed)}, parent)


def _log_metrics(run_id: str, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` (None and NaN left out) on the run ``run_id`` in one batch."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(key, float(value), now, 0)
                                              for key, value in metrics.items()
                                              if value is not None and value == value])


def log_headline(mlflow, metrics: Mapping[str, float]) -> None:
    """Copy a stage's headline metrics to its (variant, seed) parent run, where the UI's
    table and charts compare them across runs (no-op without tracking or a parent)."""
    if mlflow is None:
        return
    run = mlflow.active_run()
    parent = run.data.tags.get("mlflow.parentRunId") if run else None
    if parent:
        _log_metrics(parent, metrics)


def log_run_headline(mlflow, variant: str, seed: int, metrics: Mapping[str, float]) -> None:
    """Headline metrics that a study-level stage (compare) computes for one (variant, seed),
    logged on that (variant, seed) run of the current study."""
    study = os.environ.get(STUDY_ENV)
    if mlflow is None or not study:
        return
    from mlflow.tracking import MlflowClient

    query = (f"tags.`moebalance.level` = 'run' and tags.`moebalance.study` = '{study}' and "
             f"tags.variant = '{variant}' and tags.seed = '{seed}'")
    found = MlflowClient().search_runs([mlflow.active_run().info.experiment_id], query,
                                       max_results=1)
    if found:
        _log_metrics(found[0].info.run_id, metrics)


def log_study_artifacts(mlflow, paths: list[str | os.PathLike], folder: str) -> None:
    """Attach files (comparison tables, figures) to the study's parent run."""
    if mlflow is None:
        return
    from mlflow.tracking import MlflowClient

    run = mlflow.active_run()
    parent = run.data.tags.get("mlflow.parentRunId") if run else None
    for path in paths:
        MlflowClient().log_artifact(parent or run.info.run_id, str(path), folder)


@contextlib.contextmanager
def stage_run(args: argparse.Namespace, stage: str, params: Mapping[str, Any],
              torch_kernels: bool = True) -> Iterator[Any]:
    """One MLflow run for one stage invocation; yields the ``mlflow`` module (or None).

    ``args`` carries the options of :func:`add_tracking_arguments`. With ``--no-tracking``
    or MOEBALANCE_NO_TRACKING=1 nothing is logged and None is yielded.
    ``torch_kernels=False``: the stage computes without torch (see
    :func:`moebalance.provenance.fingerprint`).
    """
    if args.no_tracking or tracking_switched_off():
        yield None
        return
    mlflow, experiment = setup_store(args.mlflow_store, args.experiment)
    from moebalance import provenance

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
    parent = parent_run(args, experiment.experiment_id)
    with mlflow.start_run(run_name=name, tags=tags, parent_run_id=parent):
        # MLflow caps a param value at a few thousand characters: long lists become JSON strings.
        mlflow.log_params({k: json.dumps(v) if not isinstance(v, str) else v
                           for k, v in params.items()})
        yield mlflow


def mlflow_logger(mlflow) -> Callable[[list[dict[str, Any]]], None]:
    """A Trainer.on_log callback sending metrics rows to the active MLflow run in one batch."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(), mlflow.active_run().info.run_id

    def on_log(rows: list[dict[str, Any]]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, row["step"]) for row in rows
                   for key, value in row.items()
                   if key != "step" and value is not None and not math.isnan(value)]
        for start in range(0, len(metrics), 1000):  # MLflow's per-request cap
            client.log_batch(run_id, metrics=metrics[start:start + 1000])

    return on_log
