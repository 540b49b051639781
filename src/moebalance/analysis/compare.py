"""The compare stage: every variant and seed in, the study's tables, words and figures out.

Loads each run's folder (moebalance.study.RunPaths, runs.py), summarises every metric per
variant and against the baseline with seed-level statistics (statistics.py, tables.py),
and writes under TABLES_DIR:

    comparison.csv         metric, display, kind, variant, n_seeds, mean, se, df, ci_low,
                           ci_high, ci (the variance model), seed_values, role
    paired.csv             every variant − baseline per metric, and the sensitivity control:
                           diff, se, df, interval, p_value; primary and control rows add
                           p_holm, tost_p, margin, published_effect, mdd_80, mdd_80_upper,
                           verdict (primaries: sensitivity); exploratory rows q_bh
    pass_at_1.csv          per seed: exact McNemar on greedy pass@1 of the pair
    domains.csv            per (variant, model, held-out domain): balance with t over seeds
    bias_layers.csv        per (variant, seed, layer): bias spread against mean-score spread,
                           their correlation, the last-quarter override rate
    utilization_layers.csv, relative_load.csv, specialization.csv
    comparison.md          the controls, then the primaries and their Holm-adjusted verdicts
    answer.md              the answer results/README.md carries (``--readme`` fills it in)

and the figures of :mod:`moebalance.analysis.figures` under FIGURES_DIR. The pair, the
primaries, their margins, the sensitivity control and the published effects are the
config's `analysis` keys the stage takes as ``--settings`` (moebalance.config.CompareSettings).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np

from moebalance import provenance
from moebalance.analysis import claims, figures, tables
from moebalance.analysis.catalogue import CATALOGUE
from moebalance.analysis.runs import Run, load_run
from moebalance.analysis.tables import Plan, Primary, by_seed
from moebalance.atomic import atomic_path
from moebalance.config import CompareSettings, add_settings_argument, parse_settings
from moebalance.errors import UsageError
from moebalance.study import RunPaths
from moebalance.tracking import (
    add_tracking_arguments,
    log_run_headline,
    log_study_artifacts,
    stage_run,
)

HELP = ("compare the variants with seed-level statistics: the sensitivity control and the "
        "primaries with Holm, TOST and power; exploratory tables; figures; the README's answer")
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--runs-dir", required=True,
                        help="runs folder: {variant}/seed{seed}/ of each run (moebalance.study)")
    inputs.add_argument("--variants", nargs="+", required=True, help="variants to compare")
    inputs.add_argument("--seeds", nargs="+", type=int, required=True,
                        help="seeds of each variant (the same for all: runs pair by seed)")
    inputs.add_argument("--baselines", default=None,
                        help="baselines.json of the baselines stage: the n-gram positive "
                        "control that comparison.md and the answer lead with")
    inputs.add_argument("--code-hashes", type=json.loads, default="{}",
                        help="JSON {stage: code hash} of the stages the numbers come from "
                        "(Snakemake passes each rule's --source-hash); the README records them")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--tables-dir", required=True, help="where the CSV/Markdown tables go")
    outputs.add_argument("--figures-dir", required=True, help="where the PNG figures go")
    outputs.add_argument("--readme", default=None,
                         help="a README whose <!-- answer:begin/end --> region gets answer.md "
                         "and whose <!-- provenance:begin/end --> region (added after the "
                         "answer if missing) gets the commit, corpus hash and code hashes")
    add_settings_argument(parser, CompareSettings, "analysis")
    add_tracking_arguments(parser)


def plan_of(settings: CompareSettings):
    """The analysis plan of the settings; an unknown metric is a UsageError naming it."""

    for primary in settings.primary:
        if primary.metric not in CATALOGUE:
            raise UsageError(f"--settings: analysis.primary: unknown metric {primary.metric!r}; "
                             "known: " + ", ".join(CATALOGUE))
    primaries = tuple(Primary(p.metric, p.better, float(settings.equivalence[p.metric]),
                              float(settings.published_effect.get(p.metric, math.nan)))
                      for p in settings.primary)
    return Plan(tuple(settings.pair), primaries, settings.confidence, tuple(settings.control))


def write_tables(tables_dir: Path, frames: dict, texts: dict) -> list[Path]:
    written = []
    for name, df in frames.items():
        with atomic_path(tables_dir / name) as tmp:
            df.to_csv(tmp, index=False)
        written.append(tables_dir / name)
    for name, text in texts.items():
        with atomic_path(tables_dir / name) as tmp:
            tmp.write_text(text)
        written.append(tables_dir / name)
    return written


def read_baselines(path: str) -> dict:
    """baselines.json, checked for the two models the positive control needs."""

    try:
        data = json.loads(Path(path).read_text())
        for name in ("unigram", "bigram"):
            float(data[name]["nats_per_token"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--baselines {path}: not a baselines stage output ({err!r})") from err
    return data


def provenance_section(runs_dir: Path, variants: list[str], seeds: list[int],
                       code_hashes: dict[str, str]) -> tuple[str, str, str]:
    """(a warning for the top of comparison.md or "", a section listing the fingerprints of
    the machines and software that produced the runs, the README's provenance stamp), from
    each run's provenance.json, the code hashes and this checkout's commit."""

    runs = []
    for variant in variants:
        for seed in seeds:
            paths = RunPaths(runs_dir, variant, seed)
            for stage in ("pretrain", "sft"):
                path = paths.stage(stage) / "provenance.json"
                if path.is_file():
                    runs.append((stage, f"{paths.name}/{stage}", json.loads(path.read_text())))
    checkout = provenance.git_state(exclude=(provenance.STUDY_OUTPUTS,))
    stamp = provenance.stamp(runs, code_hashes, checkout)
    if not runs:
        return "", "", stamp
    records = [(run, record) for _, run, record in runs]
    lines, mixed = provenance.describe(records)
    corpora = sorted({str(r["corpus_hash"]) for _, r in records if r.get("corpus_hash")})
    warning = ("> **Mixed provenance:** these runs come from different machines, kernels, "
               "library versions or thread counts (see Provenance below); their digits are "
               "not comparable run by run, only through seed-level statistics.\n\n"
               if mixed else "")
    if len(corpora) > 1:
        warning += (f"> **Different corpora:** the runs were trained on {len(corpora)} "
                    f"corpora (corpus_hash {', '.join(corpora)}); they do not compare.\n\n")
    lines.append("")
    lines.append(f"Corpus: `corpus_hash` {', '.join(corpora) or 'not recorded'}.")
    section = ("\n## Provenance\n\nThe machine and software behind each training run "
               "(provenance.json); `fingerprint` hashes the fields that can change the digits.\n\n"
               + "\n".join(lines) + "\n")
    return warning, section, stamp


def load_runs(args: argparse.Namespace) -> tuple[dict, list[str]]:
    """Every (variant, seed)'s values by variant, and the optional inputs they lack (logged)."""

    runs = {v: [load_run(Run(v, s, RunPaths(args.runs_dir, v, s).folder)) for s in args.seeds]
            for v in args.variants}
    missing = sorted({m for rs in runs.values() for r in rs for m in r.run.missing})
    for path in missing:
        log.warning("missing input: %s", path)
    return runs, missing


def update_readme(readme: Path, answer: str, stamp: str) -> None:
    """Write the answer between the README's answer markers (see claims.fill_readme) and the
    provenance stamp between its provenance markers (moebalance.provenance.fill_stamp)."""

    try:
        text = claims.fill_readme(readme.read_text(), answer)
        text = provenance.fill_stamp(text, stamp, claims.ANSWER_END)
    except ValueError as error:
        raise UsageError(f"--readme {readme}: {error}") from None
    with atomic_path(readme) as tmp:
        tmp.write_text(text)


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    settings = parse_settings(CompareSettings, args.settings)
    plan = plan_of(settings)
    if args.readme is not None and not Path(args.readme).is_file():
        raise UsageError(f"--readme: {args.readme} not found")
    baselines = read_baselines(args.baselines) if args.baselines else None  # fail fast
    runs, missing = load_runs(args)
    rows = tables.comparison_rows(runs, plan)
    paired = tables.paired_rows(runs, plan)
    pass_rows, pass_summary = tables.pass_at_1_rows(runs, plan)
    domains = tables.domain_rows(runs, plan)
    layer_df, load_df, spec_df = tables.utilization_tables(runs)
    baseline_rows = tables.baseline_rows(runs, baselines) if baselines else []
    for row in baseline_rows:  # the margin the control asks of every seed (variants only)
        row["required_margin"] = settings.control_margin if row["kind"] == "variant" else math.nan
    control = claims.control_lines(baseline_rows, settings.control_margin)
    answer = claims.answer_markdown(paired, pass_rows, pass_summary, plan, control, list(runs))
    warning, provenance, stamp = provenance_section(Path(args.runs_dir), args.variants,
                                                    args.seeds, args.code_hashes)
    written = write_tables(Path(args.tables_dir), {
        "comparison.csv": pd.DataFrame(rows), "paired.csv": pd.DataFrame(paired),
        "pass_at_1.csv": pd.DataFrame(pass_rows), "domains.csv": pd.DataFrame(domains),
        "bias_layers.csv": pd.DataFrame(tables.bias_layer_rows(runs)),
        "baselines.csv": pd.DataFrame(baseline_rows, columns=[
            "model", "kind", "n_seeds", "nats_per_token", "bits_per_byte", "margin",
            "worst_margin", "required_margin"]),
        "utilization_layers.csv": layer_df, "relative_load.csv": load_df,
        "specialization.csv": spec_df}, {
        "comparison.md": warning + claims.comparison_markdown(
            rows, paired, pass_rows, pass_summary, domains, list(runs), plan, missing, control)
        + provenance,
        "answer.md": answer})
    written += figures.draw_all(runs, load_df, spec_df, Path(args.figures_dir))
    if args.readme is not None:
        update_readme(Path(args.readme), answer, stamp)
    log.info("answer:\n%s", answer)
    log_to_tracking(args, settings, plan, written, paired, runs, stage_run)


# per-(variant, seed) values compare computes, copied to the runs the MLflow UI compares
HEADLINE = ("maxvio_global_pretrain", "heldout_bpb_pretrain")


def log_to_tracking(args, settings: CompareSettings, plan, written: list[Path],
                    paired: list[dict], runs: dict, stage_run) -> None:
    params = {"variants": args.variants, "seeds": args.seeds, "pair": list(plan.pair),
              "primaries": [f"{p.key}:{p.better}:{p.margin}" for p in plan.primaries],
              "control": list(plan.control), "confidence": settings.confidence}
    with stage_run(args, "compare", params, torch_kernels=False) as mlflow:
        if mlflow is None:
            return
        for variant, variant_runs in runs.items():
            values = {key: by_seed(variant_runs, key) for key in HEADLINE}
            for seed in args.seeds:
                log_run_headline(mlflow, variant, seed,
                                 {key: v.get(seed) for key, v in values.items()})
        for path in written:  # on the study's parent run, beside its (variant, seed) runs
            log_study_artifacts(mlflow, [path], path.parent.name)
        for row in paired:
            if row["role"] == "primary" and np.isfinite(row["diff"]):
                mlflow.log_metrics({f"primary_{row['metric']}_diff": row["diff"]})
