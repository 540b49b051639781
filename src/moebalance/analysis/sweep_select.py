"""The sweep-select stage: a hyper-parameter sweep's pretrain runs in, each grid's reported
setting out, by a rule stated before any run (docs/reference.md §6, "Fair tuning"). The
grids and the two phases of a swept study are moebalance.study's.

The selection rule: among a grid's points whose seed-mean held-out MaxVio_global is at
most ``max_maxvio``, the lowest seed-mean val loss; when none qualifies, the most balanced
point, marked ``met_target: false``. The val loss is the pretrain stage's last validation
(fixed val windows, VAL_SEED), in nats/token; the held-out MaxVio_global is its final
validation on the val split's balance set (pretrain/balance.json, written by
moebalance.balance.measure, the function utilization reports the test split's
figure with). The table also keeps ``maxvio_train_aggregate``: the training batches' counts
summed over the last steps that route as many tokens as the balance set, a closed-loop
aggregate (the bias corrects it as it arises), named so and never a held-out figure.

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

from moebalance.analysis.figures import frontier
from moebalance.atomic import atomic_path, write_json
from moebalance.balance import training_aggregate
from moebalance.config import SweepSettings, add_settings_argument, parse_settings
from moebalance.errors import UsageError
from moebalance.study import RunPaths, grid_points

HELP = "collect a hyper-parameter sweep's pretrain runs and pick each grid's setting by the rule"
log = logging.getLogger(__name__)
TABLE_COLUMNS = ["grid", "variant", "key", "value", "runs", "val_loss", "val_loss_sd",
                 "maxvio", "maxvio_sd", "maxvio_floor", "maxvio_train_aggregate", "eligible",
                 "chosen"]
REFERENCE = "reference"  # the `grid` of a reference variant's row


def run_summary(metrics, routing, balance: dict) -> dict[str, float]:
    """Last validation's val loss, the final validation's held-out MaxVio_global and its
    sampling floor (``balance``: pretrain/balance.json), and the training aggregate over as
    many tokens as the held-out set, of one run (pandas tables)."""

    val = metrics.dropna(subset=["val_loss"])
    if val.empty:
        raise ValueError("no validation loss in metrics (eval_every = 0?)")
    counts = routing.pivot_table(index=["step", "layer"], columns="expert", values="tokens",
                                 aggfunc="sum").sort_index()
    steps, layers = counts.index.levels[0].size, counts.index.levels[1].size
    counts_NLE = counts.to_numpy().reshape(steps, layers, -1)
    aggregate, _ = training_aggregate(counts_NLE, balance["top_k"], balance["routed_tokens"])
    return {"val_loss": float(val["val_loss"].iloc[-1]),
            "maxvio": float(balance["maxvio_global"]), "maxvio_floor": balance["maxvio_floor"],
            "maxvio_train_aggregate": aggregate}


def _point_row(grid: str, variant: str, key: str | None, value: Any,
               got: list[dict[str, float]]) -> dict[str, Any]:
    val = np.array([g["val_loss"] for g in got])
    vio = np.array([g["maxvio"] for g in got])
    return {"grid": grid, "variant": variant, "key": key, "value": value, "runs": len(got),
            "val_loss": val.mean(), "val_loss_sd": val.std(ddof=1) if len(got) > 1 else math.nan,
            "maxvio": vio.mean(), "maxvio_sd": vio.std(ddof=1) if len(got) > 1 else math.nan,
            "maxvio_floor": float(np.mean([g["maxvio_floor"] for g in got])),
            "maxvio_train_aggregate": float(np.mean([g["maxvio_train_aggregate"]
                                                     for g in got]))}


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
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--runs", required=True,
                        help="runs folder: {variant}/seed{seed}/pretrain/ of each run "
                        "(metrics, routing and balance.json; moebalance.study)")
    inputs.add_argument("--baselines", default=None,
                        help="baselines.json of the same validation windows: the frontier's "
                        "loss in bits per byte, with the bigram's as a line")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--table", required=True, help="sweep.csv to write")
    outputs.add_argument("--choice", required=True, help="sweep_choice.json to write")
    outputs.add_argument("--figure", default=None,
                         help="frontier.png to write: held-out MaxVio_global against held-out "
                         "loss, one curve per grid, the references as points")
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
    runs = {}
    for variant in [point[1] for point in points] + list(sweep.references):
        for seed in sweep.seeds:
            folder = RunPaths(args.runs, variant, seed).stage("pretrain")
            try:
                runs[(variant, seed)] = run_summary(
                    pd.read_parquet(folder / "metrics.parquet"),
                    pd.read_parquet(folder / "routing.parquet"),
                    json.loads((folder / "balance.json").read_text()))
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

        frontier(table, list(sweep.seeds), args.figure, baselines)
    for grid, chosen in choice.items():
        log.info("%s: chose %s (val loss %.4f, MaxVio %.3f, target %s)", grid,
                 chosen["variant"], chosen["val_loss"], chosen["maxvio"],
                 "met" if chosen["met_target"] else "NOT met")
