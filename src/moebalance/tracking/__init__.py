"""MLflow tracking for every stage (the `init-tracking` stage that creates the store is
:mod:`moebalance.init_tracking`).

- :mod:`moebalance.tracking.args`: the options every stage takes and whether a run is
  tracked: only when asked (``--mlflow-store`` or MLFLOW_TRACKING_URI, which the workflow
  sets for its jobs). It imports no mlflow.
- :mod:`moebalance.tracking.runs`: one MLflow run per stage run, nested under its study and
  its (variant, seed), with tags and headline metrics. It imports mlflow only when a run is
  tracked.
"""

from moebalance.tracking.args import (
    DEFAULT_EXPERIMENT,
    NO_TRACKING_ENV,
    add_tracking_arguments,
    requested_uri,
    tracking_switched_off,
    tracking_uri,
)
from moebalance.tracking.runs import (
    EXPERIMENT_KIND,
    STUDY_ENV,
    config_hash,
    log_headline,
    log_run_headline,
    log_study_artifacts,
    mlflow_logger,
    setup_store,
    stage_run,
)

__all__ = ["DEFAULT_EXPERIMENT", "EXPERIMENT_KIND", "NO_TRACKING_ENV", "STUDY_ENV",
           "add_tracking_arguments", "config_hash", "log_headline", "log_run_headline",
           "log_study_artifacts", "mlflow_logger", "requested_uri", "setup_store", "stage_run",
           "tracking_switched_off", "tracking_uri"]
