"""Create the MLflow store and experiment, once, before any stage logs to it.

Every stage run is one MLflow run, tagged with stage, variant, seed, git commit and
config hash. The store is an embedded SQLite file by default; the environment
variable MLFLOW_TRACKING_URI points everything at another store or a server instead.
Concurrent first writers race while SQLite creates its schema, which is why one
rule (this sub-command) creates it before the others run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from moebalance.io import write_json

HELP = "create the MLflow tracking store and experiment (run once, before any stage)"
DEFAULT_STORE = "results/mlflow.db"
DEFAULT_EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "moebalance")
log = logging.getLogger(__name__)


def tracking_uri(store: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI if set, else an embedded SQLite store at ``store``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(store).resolve()}"


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--mlflow-store",
        default=DEFAULT_STORE,
        help="SQLite file of the MLflow store (ignored when MLFLOW_TRACKING_URI is set)",
    )
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    group.add_argument("--variant", default=None, help="variant tag of this run, if any")
    group.add_argument("--seed", type=int, default=None, help="seed tag of this run, if any")
    group.add_argument(
        "--no-tracking", action="store_true", help="do not log this run to MLflow at all"
    )


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def config_hash(params: Mapping[str, Any]) -> str:
    """Short, order-independent hash of a stage's parameters."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _setup(store: str | os.PathLike, experiment: str):
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
            mlflow.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri())
        except MlflowException:  # created meanwhile by another process
            pass
    return mlflow, mlflow.set_experiment(experiment)


@contextlib.contextmanager
def stage_run(args: argparse.Namespace, stage: str, params: Mapping[str, Any]) -> Iterator[Any]:
    """One MLflow run for one stage invocation; yields the ``mlflow`` module (or None).

    ``args`` carries the options of :func:`add_tracking_arguments`. With
    ``--no-tracking`` nothing is logged and None is yielded.
    """
    if args.no_tracking:
        yield None
        return
    mlflow, _ = _setup(args.mlflow_store, args.experiment)
    tags = {
        "stage": stage,
        "variant": args.variant if args.variant is not None else "",
        "seed": str(args.seed) if args.seed is not None else "",
        "git_commit": git_commit(),
        "config_hash": config_hash(params),
    }
    name = "/".join(str(p) for p in (stage, args.variant, args.seed) if p is not None)
    with mlflow.start_run(run_name=name, tags=tags):
        # MLflow caps a param value at a few thousand characters: long lists become JSON strings.
        mlflow.log_params({k: json.dumps(v) if not isinstance(v, str) else v
                           for k, v in params.items()})
        yield mlflow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=DEFAULT_STORE, help="SQLite file to create")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment to create")
    parser.add_argument(
        "--out", required=True, help="JSON file recording the tracking URI and experiment id"
    )


def run(args: argparse.Namespace) -> None:
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    _, experiment = _setup(args.store, args.experiment)
    uri = tracking_uri(args.store)
    log.info("MLflow store %s, experiment %s (%s)", uri, args.experiment, experiment.experiment_id)
    write_json(
        {"tracking_uri": uri, "experiment": args.experiment,
         "experiment_id": experiment.experiment_id},
        args.out,
    )
