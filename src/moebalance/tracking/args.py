"""What a stage run asks of MLflow tracking: the shared command-line options, and whether
and where the run is tracked. Imports no mlflow, so a stage's ``--help`` and its untracked
runs never load it (the GPU image has no mlflow at all).

A run is tracked only when asked: ``--mlflow-store FILE`` (an embedded SQLite store) or
MLFLOW_TRACKING_URI (a store or a server; it wins over ``--mlflow-store``). The workflow
sets MLFLOW_TRACKING_URI for every job (workflow/rules/common.smk), so a Snakemake run is
tracked; a stage run by hand without either writes only its outputs. ``--no-tracking`` or
MOEBALANCE_NO_TRACKING=1 turn tracking off even when asked.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from moebalance.errors import UsageError

DEFAULT_EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "moebalance")
URI_ENV = "MLFLOW_TRACKING_URI"
NO_TRACKING_ENV = "MOEBALANCE_NO_TRACKING"


def tracking_uri(store: str | os.PathLike) -> str:
    """MLFLOW_TRACKING_URI if set, else an embedded SQLite store at ``store``."""
    return os.environ.get(URI_ENV) or f"sqlite:///{Path(store).resolve()}"


def tracking_switched_off() -> bool:
    """Whether MOEBALANCE_NO_TRACKING asks every stage of this process tree to skip MLflow
    (1/true/yes; unset, empty, 0/false/no leave tracking on; anything else is an error)."""
    value = os.environ.get(NO_TRACKING_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise UsageError(f"{NO_TRACKING_ENV}={value!r}: use 1 (tracking off) or 0 (on)")


def requested_uri(args: argparse.Namespace) -> str | None:
    """The store this stage run is tracked in, or None when it is not tracked.

    ``args`` carries the options of :func:`add_tracking_arguments`.
    """
    if args.no_tracking or tracking_switched_off():
        return None
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV]
    return None if args.mlflow_store is None else tracking_uri(args.mlflow_store)


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tracking")
    group.add_argument(
        "--mlflow-store", default=None, metavar="FILE",
        help=f"track this run in the SQLite MLflow store FILE (created if missing). Without "
        f"it a run is tracked only where {URI_ENV} is set, as the workflow sets it for its "
        "jobs; that variable wins over this option")
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    group.add_argument("--variant", default=None, help="variant tag of this run, if any")
    group.add_argument("--seed", type=int, default=None,
                       help="seed of this run: the training stages seed the model's "
                       "initialisation and the data order with it; other stages record it "
                       "as a tag")
    group.add_argument(
        "--no-tracking", action="store_true",
        help=f"do not log this run to MLflow at all, even where {URI_ENV} is set (also when "
        f"{NO_TRACKING_ENV}=1 is set: tracking is an execution knob, so "
        "`MOEBALANCE_NO_TRACKING=1 snakemake ...` runs a study, or reruns part of one, with "
        "the same outputs and no stage run logged)")
    group.add_argument("--source-hash", default="",
                       help="hash of the stage's code (Snakemake passes it; recorded as a tag, "
                       "and a training checkpoint of other code is not resumed)")
