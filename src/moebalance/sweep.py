"""Fair tuning: hyper-parameter grids as ordinary variants, and a stated rule that picks
each method's reported setting (docs/reference.md §6, "Fair tuning").

The `sweep` section of the config (moebalance.config.SweepSettings holds its defaults):

    sweep:
      phase: report            # tune: the study IS the grid; report: the chosen settings
      seeds: [100, 101]        # tuning seeds, disjoint from the reporting `seeds`
      grids:
        aux_loss: {base: aux_loss, key: balancing.aux_loss.alpha, values: [1e-3, 1e-2]}
      selection: {max_maxvio: 0.2, late_fraction: 0.1}

A study with grids runs in two phases, each resumable on its own:

1. ``--config 'sweep={phase: tune}'``: :func:`apply_sweep` replaces the variants with
   one variant per grid point (named ``{grid}@{leaf}={value}``, e.g.
   ``aux_loss@alpha=1e-3``: the base variant with ``key`` set to the value) and the
   seeds with the tuning seeds; data stages and results folder are shared with the
   report phase (run folders differ by name and seed). Only pretraining is needed:
   ``snakemake sweep_select`` trains the grid and writes ``{results}/tables/sweep.csv``
   and ``sweep_choice.json``.
2. ``phase: report`` (the default): when ``sweep_choice.json`` exists, each grid's base
   variant gets its chosen value; the reporting seeds, the test split and HumanEval
   then compare the chosen settings. Without it the configured values stay (and a
   warning says so).

The selection rule (chosen before any run): among a grid's points whose seed-mean
held-out MaxVio_global is at most ``max_maxvio``, the lowest seed-mean val loss; when none
qualifies, the most balanced point, marked ``met_target: false``. Both come from the
pretrain stage's last validation (fixed val windows, VAL_SEED): val loss in nats/token,
and MaxVio_global over the expert counts of all those validation tokens, averaged over
layers (``val_maxvio`` in metrics.parquet). The table also keeps ``maxvio_late``, the
MaxVio of the training batches of the last ``late_fraction`` of steps (routing.parquet).

``references`` (e.g. ``[none]``) are variants run unchanged on the tuning seeds: they
take no part in the choice and appear as single points in the frontier figure, Wang et
al. 2024's Fig. 1 in our terms: held-out MaxVio_global against held-out bits per byte,
one curve per grid, seed means with the seed-to-seed SD as error bars.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from moebalance.config import (
    SweepSettings,
    add_settings_argument,
    deep_merge,
    parse_settings,
)

HELP = "collect a hyper-parameter sweep's pretrain runs and pick each grid's setting by the rule"
log = logging.getLogger(__name__)
SECTIONS = ("model", "balancing", "pretrain")   # what a variant may override
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@=-]*$")
TABLE_COLUMNS = ["grid", "variant", "key", "value", "runs", "val_loss", "val_loss_sd",
                 "maxvio", "maxvio_sd", "maxvio_late", "eligible", "chosen"]
REFERENCE = "reference"  # the `grid` of a reference variant's row


def format_value(value: Any) -> str:
    """A short, path-safe spelling of a grid value: 0.001 -> 1e-3, 0.025 -> 2.5e-2, 3 -> 3."""
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, float):
        return str(value)
    mantissa, exponent = f"{value:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def point_name(grid: str, key: str, value: Any) -> str:
    """The variant name of one grid point, e.g. ``aux_loss@alpha=1e-3``."""
    name = f"{grid}@{key.rsplit('.', 1)[-1]}={format_value(value)}"
    if not NAME_PATTERN.match(name):
        raise ValueError(f"sweep.grids.{grid}: grid point name {name!r} is not path-safe")
    return name


def nested(key: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}``."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def sweep_settings(config: dict[str, Any]) -> SweepSettings:
    """The config's `sweep` section, each grid checked against the config's variants."""
    sweep = SweepSettings.from_dict(config.get("sweep") or {})
    for name, grid in sweep.grids.items():
        if grid.base not in config.get("variants", {}):
            raise ValueError(f"sweep.grids.{name}.base: no variant {grid.base!r}")
        if grid.key.split(".")[0] not in SECTIONS or grid.key.count(".") < 1:
            raise ValueError(f"sweep.grids.{name}.key {grid.key!r} must start with one of "
                             f"{', '.join(SECTIONS)} and name a setting inside it")
    return sweep


def grid_points(sweep: SweepSettings) -> list[tuple[str, str, str, Any]]:
    """(grid, variant name, key, value) of every grid point, in order."""
    return [(name, point_name(name, grid.key, value), grid.key, value)
            for name, grid in sweep.grids.items() for value in grid.values]


def grid_variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One variant per grid point (the base variant with the swept key set to the value),
    then the reference variants as configured."""
    sweep = sweep_settings(config)
    variants = {variant: deep_merge(config["variants"][sweep.grids[name].base],
                                    nested(key, value))
                for name, variant, key, value in grid_points(sweep)}
    for name in sweep.references:
        if name not in config.get("variants", {}):
            raise ValueError(f"sweep.references: no variant {name!r}")
        if name in variants:
            raise ValueError(f"sweep.references: {name!r} is also a grid point's name")
        variants[name] = config["variants"][name]
    return variants


def apply_sweep(config: dict[str, Any], choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study config the rules run: the grid (phase tune) or the chosen settings (report).

    Pure: ``config`` is not modified; ``choice`` is the content of sweep_choice.json.
    """
    sweep = sweep_settings(config)
    if not sweep.grids:
        return config
    shared = sorted(set(sweep.seeds) & set(config.get("seeds", [])))
    if shared:
        raise ValueError(f"sweep.seeds must be disjoint from seeds; both hold {shared}")
    if sweep.phase == "tune":
        if not sweep.seeds:
            raise ValueError("sweep.seeds: the tuning phase needs its own seeds")
        return {**config, "variants": grid_variants(config), "seeds": list(sweep.seeds)}
    variants = dict(config["variants"])
    for name, chosen in (choice or {}).items():
        if name not in sweep.grids:
            continue  # a grid since removed from the config
        base, key = sweep.grids[name].base, sweep.grids[name].key
        if chosen["key"] != key:
            raise ValueError(f"sweep choice for {name} sets {chosen['key']}, the grid {key}")
        variants[base] = deep_merge(variants[base], nested(key, chosen["value"]))
    return {**config, "variants": variants}


def choice_path(config: dict[str, Any]) -> Path:
    """Where the tuning phase writes its choice (for the config of the report phase)."""
    return Path(config["results"]) / "tables" / "sweep_choice.json"


def read_choice(config: dict[str, Any]) -> dict[str, Any] | None:
    """The tuning phase's choice for the report phase; None (with a warning) if not made."""
    import json

    sweep = sweep_settings(config)
    if not sweep.grids or sweep.phase == "tune":
        return None
    path = choice_path(config)
    if not path.is_file():
        log.warning("no %s yet: the swept variants keep their configured values", path)
        return None
    return json.loads(path.read_text())


# ----------------------------------------------------------------------- selection


def run_summary(metrics, routing, late_fraction: float) -> dict[str, float]:
    """Last validation's val loss and held-out MaxVio_global, and the training batches'
    MaxVio over the last ``late_fraction`` of steps, of one run (pandas tables)."""
    from moebalance.maxvio import max_violation

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
                        help="runs/ folder holding {variant}/seed{seed}/pretrain/*.parquet")
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
    import json

    import pandas as pd

    from moebalance.atomic import atomic_path, write_json
    from moebalance.errors import UsageError

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
            folder = Path(args.runs) / variant / f"seed{seed}" / "pretrain"
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
