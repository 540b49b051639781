"""The sweep-select stage: a hyper-parameter sweep's pretrain runs in, each grid's reported
setting out, by a rule stated before any run (docs/reference.md §6, "Fair tuning"). The
grids and the two phases of a swept study are moebalance.study's.

The selection rule: among a grid's points whose seed-mean held-out MaxVio_global is at
most ``max_maxvio``, the lowest seed-mean val loss; when none qualifies, the most balanced
point, marked ``met_target: false``. Both come from the pretrain stage's last validation
(fixed val windows, VAL_SEED): val loss in nats/token, and MaxVio_global over the expert
counts of all those validation tokens, averaged over layers (``val_maxvio`` in
metrics.parquet). The table also keeps ``maxvio_late``, the MaxVio of the training
batches of the last ``late_fraction`` of steps (routing.parquet).

``references`` (e.g. ``[none]``) take no part in the choice and appear as single points in
the frontier figure, Wang et al. 2024's Fig. 1 in our terms: held-out MaxVio_global against
held-out bits per byte, one curve per grid, seed means with the seed-to-seed SD as error
bars.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from moebalance.atomic import atomic_path, write_json
from moebalance.config import SweepSettings, add_settings_argument, parse_settings
from moebalance.errors import UsageError
from moebalance.maxvio import max_violation
from moebalance.study import RunPaths, grid_points

HELP = "collect a hyper-parameter sweep's pretrain runs and pick each grid's setting by the rule"
log = logging.getLogger(__name__)
TABLE_COLUMNS = ["grid", "variant", "key", "value", "runs", "val_loss", "val_loss_sd",
                 "maxvio", "maxvio_sd", "maxvio_late", "eligible", "chosen"]
REFERENCE = "reference"  # the `grid` of a reference variant's row


def run_summary(metrics, routing, late_fraction: float) -> dict[str, float]:
    """Last validation's val loss and held-out MaxVio_global, and the training batches'
    MaxVio over the last ``late_fraction`` of steps, of one run (pandas tables)."""
    val = metrics.dropna(subset=["val_loss"])
    if val.empty:
        raise ValueError("no validation loss in metrics (eval_every = 0?)")
    if "val_maxvio" not in val or not np.isfinite(val["val_maxvio"].iloc[-1]):
        raise ValueError("no held-out MaxVio (val_maxvio) at the last validation: "
                         "pretrained by an older moebalance? rerun the pretrain stage")
    last_step = int(routing["step"].max())
    n_late = max(1, math.ceil(late_fraction * (last_step + 1)))
    late = routing[routing["step"] > last_step - n_late]
    counts_LE = late.pivot_table(index="layer", columns="expert", values="tokens", aggfunc="sum")
    return {"val_loss": float(val["val_loss"].iloc[-1]),
            "maxvio": float(val["val_maxvio"].iloc[-1]),
            "maxvio_late": float(max_violation(counts_LE.to_numpy()).mean())}


def _point_row(grid: str, variant: str, key: str | None, value: Any,
               got: list[dict[str, float]]) -> dict[str, Any]:
    val = np.array([g["val_loss"] for g in got])
    vio = np.array([g["maxvio"] for g in got])
    return {"grid": grid, "variant": variant, "key": key, "value": value, "runs": len(got),
            "val_loss": val.mean(), "val_loss_sd": val.std(ddof=1) if len(got) > 1 else math.nan,
            "maxvio": vio.mean(), "maxvio_sd": vio.std(ddof=1) if len(got) > 1 else math.nan,
            "maxvio_late": float(np.mean([g["maxvio_late"] for g in got]))}


def sweep_table(sweep: SweepSettings, runs: dict[tuple[str, int], dict[str, float]]):
    """One row per grid point, then per reference variant: seed means and SDs of val loss
    and held-out MaxVio, and the rule's choice.

    ``runs`` maps (variant, seed) to :func:`run_summary`'s dict, and every point needs every
    tuning seed.
    """
    import pandas as pd

    target, seeds = sweep.selection.max_maxvio, sweep.seeds
    points = [*grid_points(sweep), *((REFERENCE, name, None, None) for name in sweep.references)]
    rows = []
    for name, variant, key, value in points:
        got = [runs[(variant, seed)] for seed in seeds if (variant, seed) in runs]
        if len(got) != len(seeds):
            raise ValueError(f"sweep point {variant}: {len(got)} of {len(seeds)} tuning runs")
        rows.append(_point_row(name, variant, key, value, got))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS[:-2])
    table["eligible"] = (table["maxvio"] <= target) & (table["grid"] != REFERENCE)
    table["chosen"] = False
    for _, group in table[table["grid"] != REFERENCE].groupby("grid", sort=False):
        pool = group[group["eligible"]]
        # the stated rule: lowest val loss among eligible points, else the most balanced one
        best = pool["val_loss"].idxmin() if len(pool) else group["maxvio"].idxmin()
        table.loc[best, "chosen"] = True
    return table


def choice_of(table) -> dict[str, dict[str, Any]]:
    """sweep_choice.json: per grid, the chosen point and whether it met the MaxVio target."""
    return {row.grid: {"variant": row.variant, "key": row.key, "value": row.value,
                       "val_loss": row.val_loss, "maxvio": row.maxvio,
                       "met_target": bool(row.eligible)}
            for row in table[table["chosen"]].itertuples()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True,
                        help="runs folder: {variant}/seed{seed}/pretrain/ of each run "
                        "(moebalance.study)")
    parser.add_argument("--table", required=True, help="sweep.csv to write")
    parser.add_argument("--choice", required=True, help="sweep_choice.json to write")
    parser.add_argument("--figure", default=None,
                        help="frontier.png to write: held-out MaxVio_global against held-out "
                        "loss, one curve per grid, the references as points")
    parser.add_argument("--baselines", default=None,
                        help="baselines.json of the same validation windows: the frontier's "
                        "loss in bits per byte, with the bigram's as a line")
    add_settings_argument(parser, SweepSettings, "sweep")
    parser.add_argument("--source-hash", default="",
                        help="hash of this stage's code (Snakemake passes it, so that an edit "
                        "re-runs the selection)")


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    sweep = parse_settings(SweepSettings, args.settings)
    try:
        points = grid_points(sweep)
    except ValueError as err:  # a grid point's name that is not path-safe
        raise UsageError(f"--settings: {err}") from err
    if not sweep.seeds:
        raise UsageError("--settings: sweep.seeds: the selection needs the tuning seeds")
    late = sweep.selection.late_fraction
    runs = {}
    for variant in [point[1] for point in points] + list(sweep.references):
        for seed in sweep.seeds:
            folder = RunPaths(args.runs, variant, seed).stage("pretrain")
            try:
                runs[(variant, seed)] = run_summary(pd.read_parquet(folder / "metrics.parquet"),
                                                    pd.read_parquet(folder / "routing.parquet"),
                                                    late)
            except (OSError, ValueError, KeyError) as err:
                raise UsageError(f"{folder}: {err}") from err
    table = sweep_table(sweep, runs)
    with atomic_path(args.table) as tmp:
        table.to_csv(tmp, index=False)
    choice = choice_of(table)
    write_json(choice, args.choice)
    if args.figure:
        baselines = None
        if args.baselines:
            try:
                baselines = json.loads(Path(args.baselines).read_text())
            except (OSError, ValueError) as err:
                raise UsageError(f"--baselines: {err}") from err
        from moebalance.analysis.figures import frontier

        frontier(table, list(sweep.seeds), args.figure, baselines)
    for grid, chosen in choice.items():
        log.info("%s: chose %s (val loss %.4f, MaxVio %.3f, target %s)", grid,
                 chosen["variant"], chosen["val_loss"], chosen["maxvio"],
                 "met" if chosen["met_target"] else "NOT met")
