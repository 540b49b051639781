"""The frontier stage: balance against quality across a sweep's grids, on the test split, and
each method's quality at the aux-loss grid's balance (the matched-balance difference).

Wang et al. 2024 ("Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts",
Figs. 1-2, Table 2) show the trade-off itself: the aux loss buys balance with perplexity as
its weight alpha grows, and the loss-free bias reaches balance without that price. Here each
grid point and each reference variant (e.g. none, ds_v3, quantile) trains on the same paired
seeds, and every run is read from files earlier stages wrote (moebalance.study.RunPaths):

- ``pretrain/metrics.parquet``: ``maxvio_batch`` per logged step; its mean over the last
  quarter of the logged steps is MaxVio_batch (docs/reference.md §4, a per-step figure).
- ``frontier/utilization/balance.json``: the utilization stage on the pretrained model with
  the test split's balance set: held-out MaxVio_global (Wang et al. Eq. 4 over the whole
  set), its sampling floor and split-half difference, per-domain MaxVio_global
  (docs/reference.md §4), and the bias-jitter check (``jitter``).
- ``frontier/utilization/documents.parquet``: held-out bits per byte, sum(nll) / ln 2 /
  sum(bytes) of the pretrained model's documents (a ratio estimator).
- ``frontier/solution_nll.parquet``: canonical-solution bits per byte over every HumanEval
  problem, the same ratio (docs/reference.md §5).

The matched-balance difference (:func:`matched_rows`). For a point P and a seed s, the
reference grid's seed-s runs give (MaxVio_global, quality) pairs; the reference quality at
P's balance is their piecewise-linear interpolation in log MaxVio_global (:func:`interpolate`),
and d_s = quality(P, s) - reference(s). Seeds pair (same initialisation and data order at
every point), so the interval is the paired t over the d_s with seeds - 1 degrees of freedom
(docs/reference.md §6, run-level metrics; moebalance.analysis.statistics.seed_mean). It
resamples seeds only: the test balance set, its documents and the HumanEval problems are
held fixed, the same windows at every point. Nothing is extrapolated: a seed whose balance
lies outside its reference runs' MaxVio range makes the row ``outside_reference_range``
(a balance the reference grid reached at no tested value) with no interval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
from pathlib import Path
from typing import Any, get_args, get_type_hints

import numpy as np

from moebalance import provenance
from moebalance.analysis.claims import fmt
from moebalance.analysis.figures import pyplot, save
from moebalance.analysis.runs import HUMANEVAL, LAST_FRACTION
from moebalance.analysis.statistics import seed_mean
from moebalance.atomic import atomic_path
from moebalance.config import (
    FrontierSettings,
    SweepSettings,
    add_settings_argument,
    parse_settings,
)
from moebalance.errors import UsageError
from moebalance.study import RunPaths, grid_points

HELP = ("balance against quality across a sweep on the test split, and each method's quality "
        "difference at the aux-loss grid's balance")
log = logging.getLogger(__name__)
REFERENCE = "reference"  # the `grid` of a reference variant's rows
QUALITIES = get_args(get_type_hints(FrontierSettings)["primary"])  # heldout_bpb, solution_bpb
OUTSIDE = "outside_reference_range"
RESAMPLES = ("seeds only: paired t over the per-seed differences, df = seeds - 1; the test "
             "balance set, its documents and the HumanEval problems held fixed (the same "
             "windows at every point)")
METRICS = ("maxvio_global", "maxvio_floor", "split_half_difference", "heldout_bpb",
           "solution_bpb", "maxvio_batch_last_quarter")
GREEK = {"alpha": "α", "gamma": "γ"}
TABLES_LINE = ("Tables (tables/): frontier_runs.csv (one row per run), frontier.csv (per point), "
               "matched_balance.csv, jitter.csv, frontier.md; the figure is in figures/.")
CONFIDENCE = 0.95


# ---- one run --------------------------------------------------------------------------------


def ratio_bpb(nll, n_bytes) -> float:
    """Bits per byte as a ratio estimator: sum of NLL (nats) / ln 2 / sum of UTF-8 bytes."""
    total = float(np.sum(n_bytes))
    return float(np.sum(nll)) / math.log(2) / total if total else math.nan


def last_quarter_mean(steps, values) -> float:
    """Mean of ``values`` over the steps in the last quarter of the logged step range."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    last = steps >= steps.min() + (1 - LAST_FRACTION) * (steps.max() - steps.min())
    return float(np.nanmean(values[last]))


def run_values(metrics, balance: dict, documents, solutions) -> dict[str, Any]:
    """One run's row of frontier_runs.csv (without its grid, variant and seed)."""
    summary, jitter = balance["pretrain"], balance["jitter"]
    docs = documents[(documents["model"] == "pretrain") & (documents["domain"] != HUMANEVAL)]
    logged = metrics.dropna(subset=["maxvio_batch"])
    values = {"maxvio_global": float(summary["maxvio_global"]),
              "maxvio_floor": float(summary["maxvio_floor"]),
              "split_half_difference": float(summary["split_half_difference"]),
              "heldout_bpb": ratio_bpb(docs["nll"], docs["bytes"]),
              # every problem, as moebalance.analysis.runs' solution_bpb
              "solution_bpb": ratio_bpb(solutions["nll"], solutions["bytes"]),
              "maxvio_batch_last_quarter": last_quarter_mean(logged["step"],
                                                             logged["maxvio_batch"]),
              "steps": int(metrics["step"].max()) + 1}
    for domain, cell in sorted(summary["domains"].items()):
        values[f"maxvio_{domain}"] = float(cell["maxvio_global"])
    values["jitter_difference"] = float(jitter["difference"])
    values["jitter_routed"] = bool(jitter["routed"])
    return values


# what each input must hold: parquet columns, or balance.json keys as "section.key"
REQUIRED = {"metrics": ("step", "maxvio_batch"),
            "balance": ("pretrain.maxvio_global", "pretrain.maxvio_floor",
                        "pretrain.split_half_difference", "pretrain.domains",
                        "jitter.difference", "jitter.routed"),
            "documents": ("model", "domain", "bytes", "nll"),
            "solutions": ("nll", "bytes")}


def lacking(name: str, content) -> list[str]:
    """The :data:`REQUIRED` columns or keys that one input lacks."""
    if name != "balance":
        return [c for c in REQUIRED[name] if c not in content.columns]
    return [k for k in REQUIRED[name]
            if k.split(".")[1] not in (content.get(k.split(".")[0]) or {})]


def read_run(runs: str | Path, variant: str, seed: int) -> dict[str, Any]:
    """:func:`run_values` of one run's files; a missing file, column or key is a UsageError
    naming the file and what it lacks."""
    import pandas as pd

    paths = RunPaths(runs, variant, seed)
    files = {"metrics": paths.stage("pretrain") / "metrics.parquet",
             "balance": paths.stage("frontier") / "utilization" / "balance.json",
             "documents": paths.stage("frontier") / "utilization" / "documents.parquet",
             "solutions": paths.stage("frontier") / "solution_nll.parquet"}
    read = {}
    for name, path in files.items():
        try:
            read[name] = (json.loads(path.read_text()) if path.suffix == ".json"
                          else pd.read_parquet(path))
        except (OSError, ValueError) as err:
            raise UsageError(f"{path}: {err}") from err
        missing = lacking(name, read[name])
        if missing:
            raise UsageError(f"{path}: no {', '.join(missing)}")
    return run_values(**read)


def point_list(sweep: SweepSettings) -> list[tuple[str, str, str | None, Any]]:
    """(grid, variant, key, value) of the grids' points, then of the references."""
    return [*grid_points(sweep), *((REFERENCE, name, None, None) for name in sweep.references)]


def runs_table(runs: str | Path, sweep: SweepSettings):
    """frontier_runs.csv: one row per (point, seed)."""
    import pandas as pd

    rows = [{"grid": grid, "variant": variant, "key": key, "value": value, "seed": seed,
             **read_run(runs, variant, seed)}
            for grid, variant, key, value in point_list(sweep) for seed in sweep.seeds]
    table = pd.DataFrame(rows)
    domains = sorted(c for c in table.columns
                     if c.startswith("maxvio_") and c not in METRICS)
    head = ["grid", "variant", "key", "value", "seed", *METRICS, *domains]
    return table[head + [c for c in table.columns if c not in head]]


def value_columns(runs) -> list[str]:
    """The run-level numbers of frontier_runs.csv that frontier.csv averages."""
    return [c for c in runs.columns
            if c not in ("grid", "variant", "key", "value", "seed", "steps", "jitter_routed")]


def point_table(runs):
    """frontier.csv: one row per point, in the runs' order: the number of runs, and the mean
    and seed SD (ddof = 1) of every run-level number."""
    import pandas as pd

    rows = []
    for (grid, variant), group in runs.groupby(["grid", "variant"], sort=False):
        row = {"grid": grid, "variant": variant, "key": group["key"].iloc[0],
               "value": group["value"].iloc[0], "runs": len(group)}
        for column in value_columns(runs):
            x = group[column].to_numpy(np.float64)
            row[column] = float(np.mean(x))
            row[f"{column}_sd"] = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
        row["jitter_routed"] = bool(group["jitter_routed"].any())
        rows.append(row)
    return pd.DataFrame(rows)


# ---- the matched-balance difference ---------------------------------------------------------


def interpolate(maxvio: float, ref_maxvio, ref_quality) -> float:
    """The reference's quality at ``maxvio``: piecewise-linear in log MaxVio_global between
    the reference points sorted by MaxVio; NaN outside their range (no extrapolation)."""
    x = np.asarray(ref_maxvio, dtype=np.float64)
    y = np.asarray(ref_quality, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if not (maxvio > 0 and x[0] > 0 and x[0] <= maxvio <= x[-1]):
        return math.nan
    # Wang et al. 2024 Figs. 1-2 draw MaxVio_global on a log axis; the line between two
    # tested alphas in that plane: y = y0 + (y1 - y0) (ln m - ln x0) / (ln x1 - ln x0)
    return float(np.interp(math.log(maxvio), np.log(x), y))


def matched_row(point: Any, reference: Any, quality: str, seeds: list[int]) -> dict[str, Any]:
    """One matched-balance row: ``point`` and ``reference`` are frontier_runs.csv rows of one
    point and of the reference grid, each with a ``seed`` column; d_s per seed, then the
    paired t over seeds, or ``outside_reference_range`` when any seed needs extrapolation."""
    differences, below, above = {}, 0, 0
    for seed in seeds:
        mine = point[point["seed"] == seed].iloc[0]
        ref = reference[reference["seed"] == seed]
        at = interpolate(mine["maxvio_global"], ref["maxvio_global"], ref[quality])
        if math.isnan(at):
            below += int(mine["maxvio_global"] < ref["maxvio_global"].min())
            above += int(mine["maxvio_global"] > ref["maxvio_global"].max())
            continue
        differences[seed] = float(mine[quality]) - at
    row = {"quality": quality, "seeds": len(seeds), "seeds_outside": below + above,
           "seeds_below_range": below, "seeds_above_range": above,
           "maxvio_global": float(point["maxvio_global"].mean()),
           "reference_maxvio_min": float(reference["maxvio_global"].min()),
           "reference_maxvio_max": float(reference["maxvio_global"].max()),
           "d_by_seed": json.dumps({str(s): d for s, d in differences.items()})}
    if below + above:
        return {**row, "status": OUTSIDE, "d": math.nan, "d_sd": math.nan, "df": math.nan,
                "ci_low": math.nan, "ci_high": math.nan, "resamples": "no interval"}
    d = np.array(list(differences.values()))
    estimate = seed_mean(d, CONFIDENCE, "paired t over")
    return {**row, "status": "matched", "d": estimate.estimate,
            "d_sd": float(d.std(ddof=1)) if len(d) > 1 else math.nan, "df": estimate.df,
            "ci_low": estimate.low, "ci_high": estimate.high, "resamples": RESAMPLES}


def matched_rows(runs, reference_grid: str, primary: str) -> list[dict[str, Any]]:
    """matched_balance.csv: for every point outside the reference grid and each quality
    endpoint, the matched-balance difference against ``reference_grid`` (primary marked)."""
    seeds = sorted(int(s) for s in runs["seed"].unique())
    reference = runs[runs["grid"] == reference_grid]
    rows = []
    for quality in (primary, *(q for q in QUALITIES if q != primary)):
        for (grid, variant), point in runs[runs["grid"] != reference_grid].groupby(
                ["grid", "variant"], sort=False):
            rows.append({"grid": grid, "variant": variant, "reference_grid": reference_grid,
                         "primary": quality == primary,
                         **matched_row(point, reference, quality, seeds)})
    return rows


def jitter_rows(runs) -> list[dict[str, Any]]:
    """jitter.csv: every point whose bias moves (``jitter_routed`` in any seed): the mean
    difference MaxVio_global(averaged bias) - MaxVio_global(final bias), t over seeds."""
    rows = []
    for (grid, variant), group in runs.groupby(["grid", "variant"], sort=False):
        if not group["jitter_routed"].any():
            continue
        x = group["jitter_difference"].to_numpy(np.float64)
        estimate = seed_mean(x, CONFIDENCE)
        rows.append({"grid": grid, "variant": variant, "seeds": len(x),
                     "jitter_difference": estimate.estimate,
                     "jitter_difference_sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan,
                     "df": estimate.df, "ci_low": estimate.low, "ci_high": estimate.high,
                     "resamples": "seeds only (t over seeds, df = seeds - 1)"})
    return rows


# ---- words ----------------------------------------------------------------------------------


def quality_name(quality: str) -> str:
    return {"heldout_bpb": "held-out bits per byte (test documents)",
            "solution_bpb": "canonical-solution bits per byte (HumanEval)"}[quality]


def matched_sentence(row: dict[str, Any]) -> str:
    """What one matched-balance row's interval shows, in words generated from its numbers."""
    name, quality = f"`{row['variant']}`", quality_name(row["quality"])
    if row["status"] == OUTSIDE:
        where = []
        if row["seeds_below_range"]:
            where.append(f"below it (more balanced) in {row['seeds_below_range']}")
        if row["seeds_above_range"]:
            where.append(f"above it (less balanced) in {row['seeds_above_range']}")
        # below the range: the reference grid balanced worse at every tested value; above
        # it: better at every tested value (a weaker setting would be needed to match)
        reach = ("no tested value of the reference balanced this well"
                 if row["seeds_below_range"] else
                 "every tested value of the reference balanced better")
        return (f"{name}: its held-out MaxVio_global lies outside the `{row['reference_grid']}` "
                f"grid's range ({fmt(row['reference_maxvio_min'])} to "
                f"{fmt(row['reference_maxvio_max'])}), {' and '.join(where)} of "
                f"{row['seeds']} seeds: {reach}, so there is no matched comparison.")
    interval = (f"{fmt(row['d'], True)} [{fmt(row['ci_low'], True)}, "
                f"{fmt(row['ci_high'], True)}]")
    if row["ci_high"] < 0:
        verdict = "lower than"
    elif row["ci_low"] > 0:
        verdict = "higher than"
    else:
        verdict = f"not distinguishable at n = {row['seeds']} seeds from"
    return (f"{name}: {quality} {verdict} the `{row['reference_grid']}` grid at the same "
            f"held-out MaxVio_global, d = {interval} (95% paired t interval over seeds).")


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _mean_sd(row, column: str) -> str:
    return f"{fmt(row[column])} ± {fmt(row[f'{column}_sd'])}"


def point_label(grid: str, key: str | None, value: Any, variant: str) -> str:
    """``α=0.01`` for a grid point of balancing.aux_loss.alpha, the variant name otherwise."""
    if grid == REFERENCE or key is None or (isinstance(key, float) and math.isnan(key)):
        return variant
    leaf = key.rsplit(".", 1)[-1]
    return f"{GREEK.get(leaf, leaf)}={value_text(value)}"


def value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def points_markdown(points, primary: str) -> list[str]:
    rows = [[row["grid"], f"`{row['variant']}`", str(row["runs"]),
             _mean_sd(row, "maxvio_global"), fmt(row["maxvio_floor"]),
             _mean_sd(row, "maxvio_batch_last_quarter"), _mean_sd(row, "heldout_bpb"),
             _mean_sd(row, "solution_bpb")] for _, row in points.iterrows()]
    return markdown_table(
        ["grid", "point", "runs", "MaxVio_global (test)", "floor", "MaxVio_batch (last 1/4)",
         "held-out bits/byte" + (" (primary)" if primary == "heldout_bpb" else ""),
         "solution bits/byte" + (" (primary)" if primary == "solution_bpb" else "")], rows)


def matched_markdown(matched: list[dict[str, Any]]) -> list[str]:
    rows = [[f"`{r['variant']}`", r["quality"] + (" (primary)" if r["primary"] else ""),
             r["status"], fmt(r["maxvio_global"]), fmt(r["d"], True),
             "n/a" if r["status"] == OUTSIDE else
             f"[{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}]",
             f"{r['seeds_outside']} of {r['seeds']}"] for r in matched]
    return markdown_table(["point", "quality", "status", "MaxVio_global", "mean d",
                           "95% CI", "seeds outside"], rows)


def jitter_markdown(jitter: list[dict[str, Any]]) -> list[str]:
    rows = [[f"`{r['variant']}`", str(r["seeds"]), fmt(r["jitter_difference"], True),
             f"[{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}]"] for r in jitter]
    return markdown_table(["point", "seeds", "mean difference", "95% CI (t over seeds)"], rows)


def frontier_markdown(points, matched: list[dict], jitter: list[dict], primary: str,
                      reference_grid: str, bigram_bpb: float | None) -> str:
    """frontier.md: the tables and one generated sentence per compared point."""
    lines = ["# Balance-quality frontier (test split)", "",
             "Seed means ± seed SD (ddof 1). MaxVio_global: held-out, the test split's balance "
             "set, pretrained model (Wang et al. 2024 Eq. 4; docs/reference.md §4); floor: its "
             "sampling floor for a perfectly balanced router. MaxVio_batch: mean over the last "
             "quarter of the logged training steps.", ""]
    if bigram_bpb is not None:
        lines += [f"Interpolated bigram on the val windows: {fmt(bigram_bpb)} bits/byte.", ""]
    lines += points_markdown(points, primary)
    lines += ["", f"## Matched-balance difference against `{reference_grid}`", "",
              f"d = quality(point) - quality of the `{reference_grid}` grid interpolated at the "
              "point's held-out MaxVio_global (piecewise-linear in log MaxVio_global, per seed "
              f"on that seed's runs, never extrapolated); negative d is better. Intervals "
              f"resample {RESAMPLES}.", ""]
    lines += matched_markdown(matched)
    lines += ["", *(f"- {matched_sentence(r)}" for r in matched if r["primary"])]
    lines += ["", "## Bias jitter", "",
              "MaxVio_global with the bias averaged over the last steps minus with the final "
              "bias, for every point whose bias moves.", ""]
    lines += jitter_markdown(jitter) if jitter else ["No point moves a bias."]
    return "\n".join(lines) + "\n"


# ---- the figure -----------------------------------------------------------------------------


def _overlaps(box, boxes) -> bool:
    return any(box.overlaps(other) for other in boxes)


def place_labels(ax, items: list[tuple[float, float, str]]) -> list:
    """Annotate each (x, y, text), trying offsets around the point in growing rings until its
    text box overlaps no label placed before it and no marker (the renderer's boxes)."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    markers = [Bbox.from_extents(px - 4, py - 4, px + 4, py + 4)
               for px, py in ax.transData.transform([(x, y) for x, y, _ in items])]
    offsets = [(dx * r, dy * r) for r in (1, 2, 3, 4, 6)
               for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1),
                              (0, -1))]
    placed, boxes = [], []
    for x, y, text in items:
        for dx, dy in offsets:
            label = ax.annotate(text, (x, y), textcoords="offset points",
                                xytext=(6 * dx, 6 * dy), fontsize=7,
                                ha="left" if dx >= 0 else "right",
                                va="bottom" if dy >= 0 else "top")
            box = label.get_window_extent(renderer)
            if not _overlaps(box, boxes + markers):
                break
            label.remove()
        else:  # every ring taken: keep the last try rather than drop the label
            label = ax.annotate(text, (x, y), textcoords="offset points",
                                xytext=(6 * dx, 6 * dy), fontsize=7)
            box = label.get_window_extent(renderer)
        placed.append(label)
        boxes.append(box)
    return placed


def draw(points, primary: str, seeds: list[int], bigram_bpb: float | None = None):
    """Wang et al. 2024 Fig. 1 in our terms: held-out MaxVio_global (x, log) against
    ``primary`` bits per byte (y), one line per grid in the order of its values, references
    as single markers; seed means with one seed SD each way on both axes. The bigram's bits
    per byte goes into the title, not onto the axes. Returns (figure, label artists)."""
    fig, ax = pyplot().subplots(figsize=(7, 5))
    items = []
    for grid, group in points.groupby("grid", sort=False):
        x, y = group["maxvio_global"].to_numpy(float), group[primary].to_numpy(float)
        xerr = np.nan_to_num(group["maxvio_global_sd"].to_numpy(float))
        yerr = np.nan_to_num(group[f"{primary}_sd"].to_numpy(float))
        if grid == REFERENCE:
            for row, xi, yi, xe, ye in zip(group.itertuples(), x, y, xerr, yerr, strict=True):
                ax.errorbar([xi], [yi], xerr=[xe], yerr=[ye], fmt="s", capsize=3,
                            label=row.variant)
                items.append((xi, yi, row.variant))
            continue
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o-", capsize=3, label=grid)
        items += [(xi, yi, point_label(grid, row.key, row.value, row.variant))
                  for row, xi, yi in zip(group.itertuples(), x, y, strict=True)]
    ax.set_xscale("log")
    bigram = (f"; interpolated bigram {bigram_bpb:.3f} bits/byte (val windows)"
              if bigram_bpb is not None else "")
    ax.set(xlabel="held-out MaxVio_global (test balance set, mean over MoE layers)",
           ylabel=quality_name(primary),
           title=f"Balance-quality frontier: seed means ± SD over seeds {seeds}{bigram}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.canvas.draw()  # the renderer's boxes need the final layout of the axes
    return fig, place_labels(ax, items)


def write_figure(points, primary: str, seeds: list[int], path: str | Path,
                 bigram_bpb: float | None = None) -> Path:
    fig, _ = draw(points, primary, seeds, bigram_bpb)
    return save(fig, Path(path))


# ---- the results folder's README ------------------------------------------------------------


TIMED_RULES = ("pretrain", "frontier_utilization", "frontier_solution_nll")


def job_seconds(benchmarks: str | Path, sweep: SweepSettings) -> dict[str, list[float]]:
    """Wall seconds of each per-run job, by rule, from Snakemake's benchmark files
    (``<benchmarks>/<rule>/<variant>/seed<seed>.tsv``, column ``s``: the job's last attempt);
    a job without a file is left out."""
    import pandas as pd

    seconds: dict[str, list[float]] = {rule: [] for rule in TIMED_RULES}
    for (_, variant, _, _), seed in itertools.product(point_list(sweep), sweep.seeds):
        for rule in TIMED_RULES:
            path = Path(benchmarks, rule, f"{RunPaths('', variant, seed).name}.tsv")
            if path.is_file():
                try:
                    seconds[rule].append(float(pd.read_csv(path, sep="\t")["s"].iloc[-1]))
                except (ValueError, KeyError, IndexError) as err:
                    raise UsageError(f"{path}: not a Snakemake benchmark file ({err})") from err
    return seconds


def cost_markdown(seconds: dict[str, list[float]]) -> list[str]:
    """The README's cost section: each per-run rule's job times."""
    lines = ["## Cost", "", "Wall seconds per job from Snakemake's benchmark files (two "
             "1-thread jobs side by side, on the machine the stamp names):", ""]
    for rule, values in seconds.items():
        if values:
            lines.append(f"- {rule}: {len(values)} jobs, {min(values):.0f}-{max(values):.0f} s "
                         f"each (median {float(np.median(values)):.0f} s), "
                         f"{sum(values) / 60:.0f} job-minutes in all")
        else:
            lines.append(f"- {rule}: no benchmark files")
    return lines + [""]


def readme_markdown(sweep: SweepSettings, runs, points, matched: list[dict], primary: str,
                    reference_grid: str, stamp: str,
                    seconds: dict[str, list[float]] | None = None) -> str:
    """README.md of the frontier results: the preset, the headline numbers and what each
    interval resamples, all generated from the tables, and the provenance stamp."""

    steps = sorted({int(s) for s in runs["steps"]})
    grids = [f"`{name}` ({grid.key} = {', '.join(value_text(v) for v in grid.values)})"
             for name, grid in sweep.grids.items()]
    lines = ["# Balance-quality frontier", "",
             "Generated by the frontier stage (moebalance.analysis.frontier) from the tables "
             "beside this file; nothing here is written by hand.", "",
             "## The preset", "",
             f"- Grids: {'; '.join(grids)}.",
             f"- References: {', '.join(f'`{r}`' for r in sweep.references) or 'none'}.",
             f"- Seeds (the same at every point, so points pair by seed): "
             f"{', '.join(str(s) for s in sweep.seeds)}.",
             f"- Pretraining steps: {', '.join(str(s) for s in steps)} (pretrain/metrics.parquet).",
             "- Balance and quality are measured on the test split's balance set and HumanEval "
             "with the pretrained model (docs/reference.md §4, §5).", "",
             "## Headline", "",
             f"Matched-balance difference against the `{reference_grid}` grid of the primary "
             f"endpoint, {quality_name(primary)}; its intervals resample {RESAMPLES}.", ""]
    lines += [f"- {matched_sentence(r)}" for r in matched if r["primary"]]
    lines += ["", "Which point reaches which balance at what quality (seed means ± SD):", ""]
    lines += points_markdown(points, primary)
    lines += [""]
    if seconds is not None:
        lines += cost_markdown(seconds)
    lines += [TABLES_LINE, ""]
    return provenance.fill_stamp("\n".join(lines), stamp, TABLES_LINE)


# ---- the stage ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_argument(parser, SweepSettings, "sweep")
    add_settings_argument(parser, FrontierSettings, "frontier", option="--frontier")
    parser.add_argument("--source-hash", default="",
                        help="hash of this stage's code (Snakemake passes it, so that an edit "
                        "re-runs the stage)")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--runs", required=True,
                        help="runs folder: {variant}/seed{seed}/ of each run with "
                        "pretrain/metrics.parquet, frontier/utilization/balance.json and "
                        "documents.parquet, frontier/solution_nll.parquet (moebalance.study)")
    inputs.add_argument("--baselines", default=None,
                        help="baselines.json: the interpolated bigram's bits per byte, named "
                        "in the figure's title and frontier.md")
    inputs.add_argument("--code-hashes", "--codes", dest="code_hashes", type=json.loads,
                        default="{}", help="JSON {stage: code hash} of the stages the numbers "
                        "come from (each rule's --source-hash), for the README's stamp")
    inputs.add_argument("--benchmarks", default=None,
                        help="Snakemake's benchmarks folder of the preset: each per-run job's "
                        "time goes into the README's cost section")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--tables-dir", required=True,
                         help="where frontier_runs.csv, frontier.csv, matched_balance.csv, "
                         "jitter.csv and frontier.md go")
    outputs.add_argument("--figure", default=None,
                         help="PNG to write: held-out MaxVio_global against the primary "
                         "quality, one line per grid, the references as points")
    outputs.add_argument("--readme", default=None,
                         help="README.md to write for the frontier results folder (needs each "
                         "run's pretrain/provenance.json)")


def read_bigram(path: str | None) -> float | None:
    if not path:
        return None
    try:
        return float(json.loads(Path(path).read_text())["bigram"]["bits_per_byte"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--baselines {path}: {err!r}") from err


def provenance_stamp(runs_dir: str, sweep: SweepSettings, code_hashes: dict[str, str]) -> str:
    """The README's stamp (moebalance.provenance.stamp) from every run's pretrain record."""

    records = []
    for (_, variant, _, _), seed in itertools.product(point_list(sweep), sweep.seeds):
        paths = RunPaths(runs_dir, variant, seed)
        path = paths.stage("pretrain") / "provenance.json"
        try:
            records.append(("pretrain", f"{paths.name}/pretrain", json.loads(path.read_text())))
        except (OSError, ValueError) as err:
            raise UsageError(f"--readme needs {path}: {err}") from err
    # stamp() words its header for the compare stage, whose README it fills; this README is
    # the frontier stage's
    checkout = provenance.git_state(exclude=(provenance.STUDY_OUTPUTS,))
    return (provenance.stamp(records, code_hashes, checkout)
            .replace("the compare stage", "the frontier stage")
            .replace("of the compare run", "of the frontier run"))


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    sweep = parse_settings(SweepSettings, args.settings)
    try:
        grid_points(sweep)
    except ValueError as err:  # a grid point's name that is not path-safe
        raise UsageError(f"--settings: {err}") from err
    if not sweep.seeds:
        raise UsageError("--settings: sweep.seeds: the frontier needs its seeds")
    frontier = parse_settings(FrontierSettings, args.frontier, "--frontier")
    if frontier.reference_grid not in sweep.grids:
        raise UsageError(f"--frontier: reference_grid: no grid {frontier.reference_grid!r} in "
                         f"sweep.grids ({', '.join(sweep.grids) or 'none'})")
    bigram = read_bigram(args.baselines)
    runs = runs_table(args.runs, sweep)
    points = point_table(runs)
    matched = matched_rows(runs, frontier.reference_grid, frontier.primary)
    jitter = jitter_rows(runs)
    tables = Path(args.tables_dir)
    tables.mkdir(parents=True, exist_ok=True)
    for name, frame in (("frontier_runs.csv", runs), ("frontier.csv", points),
                        ("matched_balance.csv", pd.DataFrame(matched)),
                        ("jitter.csv", pd.DataFrame(jitter, columns=[
                            "grid", "variant", "seeds", "jitter_difference",
                            "jitter_difference_sd", "df", "ci_low", "ci_high", "resamples"]))):
        with atomic_path(tables / name) as tmp:
            frame.to_csv(tmp, index=False)
    write_text(tables / "frontier.md", frontier_markdown(
        points, matched, jitter, frontier.primary, frontier.reference_grid, bigram))
    if args.figure:
        write_figure(points, frontier.primary, list(sweep.seeds), args.figure, bigram)
    if args.readme:
        stamp = provenance_stamp(args.runs, sweep, args.code_hashes)
        seconds = job_seconds(args.benchmarks, sweep) if args.benchmarks else None
        write_text(Path(args.readme), readme_markdown(
            sweep, runs, points, matched, frontier.primary, frontier.reference_grid, stamp,
            seconds))
    for row in matched:
        if row["primary"]:
            log.info("%s", matched_sentence(row))
