"""Create the MLflow store and experiment, once, before any stage logs to it.

Concurrent first writers race while SQLite creates its schema, which is why one rule
(this sub-command) creates it before the others run. The experiment gets the tag that
makes the MLflow UI open on its runs table (:data:`moebalance.tracking.EXPERIMENT_KIND`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from moebalance.atomic import write_json
from moebalance.tracking.args import DEFAULT_EXPERIMENT, tracking_uri
from moebalance.tracking.runs import EXPERIMENT_KIND, SQLITE, setup_store

DEFAULT_STORE = "results/mlflow.db"
HELP = "create the MLflow tracking store and experiment (run once, before any stage)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--store", default=DEFAULT_STORE, help="SQLite file to create")
    outputs.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment to create")
    outputs.add_argument(
        "--out", required=True, help="JSON file recording the tracking URI and experiment id"
    )


def run(args: argparse.Namespace) -> None:
    uri = tracking_uri(args.store)
    if uri.startswith(SQLITE):
        Path(uri.removeprefix(SQLITE)).parent.mkdir(parents=True, exist_ok=True)
    mlflow, experiment = setup_store(uri, args.experiment)
    for key, value in EXPERIMENT_KIND.items():  # also on a server's existing experiment
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    log.info("MLflow store %s, experiment %s (%s)", uri, args.experiment, experiment.experiment_id)
    write_json(
        {"tracking_uri": uri, "experiment": args.experiment,
         "experiment_id": experiment.experiment_id},
        args.out,
    )
