"""The comparison's words: comparison.md and answer.md, written only from the table rows.

Every sentence that compares variants names its test and its interval, and every number
it quotes is a value of comparison.csv or paired.csv (tests/test_compare.py checks that).
Both lead with the positive control (the n-gram baselines), then the sensitivity control
(a contrast each primary endpoint must detect), then the primaries and their Holm-adjusted
verdicts; answer.md is the answer results/README.md carries between its
``<!-- answer -->`` markers.
"""

from __future__ import annotations

import math

import numpy as np

from moebalance.analysis.catalogue import metric
from moebalance.analysis.tables import (
    DETECTED,
    MIN_DOCUMENTS,
    NOT_DETECTED,
    NOT_MEASURABLE,
    ONE_SEED,
    TIMING,
    Plan,
)

ANSWER_BEGIN, ANSWER_END = "<!-- answer:begin -->", "<!-- answer:end -->"


def fmt(x: float, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def interval_text(row: dict, pct: int, signed: bool = True) -> str:
    if not np.isfinite(row["ci_low"]):
        return f"{fmt(row['diff'], signed)} (no interval: {row['ci']})"
    return (f"{fmt(row['diff'], signed)} [{fmt(row['ci_low'], signed)}, "
            f"{fmt(row['ci_high'], signed)}] ({pct}% CI, {row['ci']}, df {fmt(row['df'])})")


def test_name(row: dict) -> str:
    return "crossed-model t-test" if row["ci"].startswith("crossed") else "paired t-test"


def tests_text(row: dict) -> str:
    """The row's test, Holm-adjusted p (its family), TOST and minimum detectable difference:
    all on the one variance model of its interval."""
    return (f"{test_name(row)} p = {fmt(row['p_value'])}, Holm-adjusted p = "
            f"{fmt(row['p_holm'])}; TOST within ±{fmt(row['margin'])}: p = "
            f"{fmt(row['tost_p'])}; minimum detectable difference at 80% power "
            f"{fmt(row['mdd_80'])} (80% upper bound {fmt(row['mdd_80_upper'])})")


def primary_sentence(row: dict, pct: int) -> str:
    a, b = row["variant"], row["baseline"]
    text = (f"- **{row['display']}** ({row['better']} is better): {a} − {b} = "
            f"{interval_text(row, pct)}")
    if row["verdict"] == ONE_SEED:
        return text + "; one seed: no test of the variants, **no claim**."
    why = (" (the sensitivity control is not detected on this endpoint)"
           if row["verdict"] == NOT_MEASURABLE else "")
    return text + f"; {tests_text(row)}. Verdict: **{row['verdict']}**{why}."


def control_sentence(row: dict, pct: int, pair: str) -> str:
    """One endpoint's sensitivity control; ``pair`` names the comparison it vouches for."""
    text = (f"- **{row['display']}**: {row['variant']} − {row['baseline']} = "
            f"{interval_text(row, pct)}")
    if row["verdict"] == ONE_SEED:
        return text + "; one seed: not tested."
    text += f"; {tests_text(row)}. "
    if row["verdict"] == DETECTED:
        return text + "**Detected**: this endpoint registers balancing at this scale."
    if row["verdict"] == NOT_DETECTED:
        return (text + "**Not detected**: this endpoint cannot register balancing at this "
                f"scale, so its {pair} comparison is **{NOT_MEASURABLE}**.")
    return text + f"**{row['verdict']}**."


def sensitivity_lines(paired: list[dict], plan: Plan, variants: list[str],
                      pct: int) -> list[str]:
    """The sensitivity control per primary endpoint, or why it did not run."""
    if plan.control is None:
        return []
    a, b = plan.control
    head = (f"**Sensitivity control** ({a} − {b} on every primary endpoint, "
            "`analysis.control`; Holm over its own family):")
    absent = [v for v in plan.control if v not in variants]
    if absent:
        return [f"{head} not run: the study has no {' or '.join(absent)} variant, so "
                "nothing here shows that its endpoints can register balancing at this "
                "scale; the verdicts below stand without that check.", ""]
    pair = f"{plan.pair[0]} against {plan.pair[1]}"
    return [head, "", *[control_sentence(r, pct, pair) for r in paired
                        if r["role"] == "control"], ""]


def seeds_sentence(paired: list[dict], plan: Plan) -> str:
    seeds = max((r["n_seeds"] for r in paired if r["role"] == "primary"), default=0)
    if seeds < 2:
        return (f"**One seed.** No interval below contains training noise, so this study "
                f"claims nothing about differences between {plan.pair[0]} and "
                f"{plan.pair[1]}; intervals show evaluation noise of one run at most.")
    return (f"{seeds} seeds per variant, paired by seed; Holm's correction over the "
            f"{len(plan.primaries)} primary endpoints at α = {fmt(plan.alpha)}. Each "
            "endpoint has one variance model (run-level: paired t over seeds; per document or "
            "problem: the crossed seeds × units model) for its interval, test, TOST and "
            "detectable difference. A difference is claimed only where the Holm-adjusted "
            "test rejects; \"equivalent\" only where TOST shows it inside the pre-registered "
            "margin; \"not measurable here\" where the sensitivity control is not detected; "
            "otherwise \"inconclusive\".")


def detectable_lines(primaries: list[dict]) -> list[str]:
    """Each primary's minimum detectable difference with its upper bound, beside the pair's
    published effect; a margin wider than that effect cannot exclude it."""
    lines = []
    for r in primaries:
        if not np.isfinite(r.get("mdd_80", math.nan)):
            lines.append(f"- {r['display']}: nothing at the seed level (fewer than two seeds "
                         "or no spread).")
            continue
        text = (f"- {r['display']}: {fmt(r['mdd_80'])}, 80% upper bound "
                f"{fmt(r['mdd_80_upper'])}")
        effect = r.get("published_effect", math.nan)
        if np.isfinite(effect):
            text += f"; published effect {fmt(effect)}"
            if r["mdd_80"] > effect:
                text += " (below what this study can detect)"
            if r["margin"] > effect:
                text += (f"; the equivalence margin ±{fmt(r['margin'])} is wider than it, so "
                         "\"equivalent\" here cannot exclude the published effect")
        lines.append(text + ".")
    return lines


# Well-measured exploratory contrasts of the pair, shown in the answer as hypotheses
HYPOTHESES = ("maxvio_batch_last", "mi_token_class_pretrain", "domain_specialization_pretrain")


def hypothesis_lines(paired: list[dict], plan: Plan, pct: int) -> list[str]:
    family = sum(r["role"] == "exploratory" and np.isfinite(r["p_value"]) for r in paired)
    rows = [r for key in HYPOTHESES for r in paired
            if r["metric"] == key and r["role"] == "exploratory"
            and (r["variant"], r["baseline"]) == tuple(plan.pair)]
    if not rows:
        return []
    return [f"**Hypotheses, not findings** (exploratory; Benjamini-Hochberg q over the "
            f"{family} exploratory tests):", "",
            *[f"- {r['display']}: {r['variant']} − {r['baseline']} = {interval_text(r, pct)}; "
              f"p = {fmt(r['p_value'])}, q = {fmt(r['q_bh'])}." for r in rows], ""]


DESIGN_LIMITS = (
    "**Design limits:** the balancing coefficients (the aux loss's alpha, loss-free's gamma) "
    "are not tuned in the default study. The frontier (`config/frontier.yaml`, "
    "`results/frontier/`) compares every method at several strengths at matched balance, and "
    "`config/long.yaml` tunes each method on its own seeds. A \"sequence\" of the sequence-wise "
    "balance loss is one training window (`pretrain.seq_len`, 256 tokens in the default "
    "study), which may span documents. `global_aux_loss` at `grad_accum: 1` on one process is "
    "the expert-level aux loss: its global batch is the micro-batch.")


def pass_at_1_lines(pass_rows: list[dict], summary: dict, pct: int) -> list[str]:
    if not summary:
        return ["- pass@1: no execution results for both variants."]
    if summary["nothing_passes"]:
        problems = sum(r["problems"] for r in pass_rows)
        return [f"- pass@1: **nothing passes** for either variant in any seed "
                f"({problems} problem-seed pairs); no test applies and pass@1 cannot "
                "separate the variants."]
    lines = [f"- pass@1, seed {r['seed']} (greedy sample 0): {r['variant']} passes "
             f"{r['a_pass']}, {r['baseline']} passes {r['b_pass']} of {r['problems']}; "
             f"discordant {r['a_only']} vs {r['b_only']}; exact McNemar p = "
             f"{fmt(r['p_value'])}" + ("." if np.isfinite(r["p_value"]) else
                                      " (nothing passes in this seed).")
             for r in pass_rows]
    iv = summary["seed_t"]
    lines.append(f"- pass@1 over seeds: difference of pass rates {fmt(iv.estimate, True)}"
                 + (f" [{fmt(iv.low, True)}, {fmt(iv.high, True)}] ({pct}% CI, {iv.method})"
                    if np.isfinite(iv.low) else f" ({iv.method})") + ".")
    return lines


def cell(row) -> str:
    text = fmt(row["mean"])
    if np.isfinite(row["ci_low"]):
        text += f" [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
    return text


def cells_table(rows: list[dict], variants: list[str]) -> list[str]:
    head = ["metric", "role", *variants, "interval"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_key.setdefault(r["metric"], {})[r["variant"]] = r
    for key, cells in by_key.items():
        methods = "; ".join(sorted({r["ci"] for r in cells.values()}))
        values = [cell(cells[v]) if v in cells else "n/a" for v in variants]
        role = next(iter(cells.values()))["role"]
        lines.append(f"| {metric(key).display} | {role} | " + " | ".join(values)
                     + f" | {methods} |")
    return lines


# Each held-out MaxVio and the figures that say how far to trust it (docs/reference.md §4)
RELIABILITY = {"maxvio_global_pretrain": ("maxvio_floor_pretrain", "maxvio_split_half_pretrain",
                                          "maxvio_set_size_pretrain")}


def reliability_lines(rows: list[dict], variants: list[str]) -> list[str]:
    """Beside each held-out MaxVio_global (mean over seeds): the sampling floor at the
    balance set's size, the split-half difference and the half-size set's difference."""
    means = {(r["metric"], r["variant"]): r["mean"] for r in rows}
    lines = []
    for key, (floor, halves, size) in RELIABILITY.items():
        if not any((key, v) in means for v in variants):
            continue
        lines += [f"**{metric(key).display}** beside its reliability (means over seeds): the "
                  "sampling floor (perfectly balanced routing of as many tokens), |split-half "
                  "difference| (halves by document hash) and |half-size set - full set|.", "",
                  "| variant | MaxVio_global | floor | split-half | half-size |",
                  "|---|---|---|---|---|"]
        for v in variants:
            if (key, v) in means:
                lines.append(f"| {v} | " + " | ".join(
                    fmt(means.get((k, v), math.nan)) for k in (key, floor, halves, size)) + " |")
        lines.append("")
    return lines


def exploratory_lines(paired: list[dict], pct: int) -> list[str]:
    lines = ["| metric | variant − baseline | difference [CI] | p (unadjusted) | BH q |",
             "|---|---|---|---|---|"]
    for r in paired:
        if r["role"] == "exploratory":
            lines.append(f"| {r['display']} | {r['variant']} − {r['baseline']} | "
                         f"{interval_text(r, pct)} | {fmt(r['p_value'])} | {fmt(r['q_bh'])} |")
        elif r["role"] == TIMING:
            lines.append(f"| {r['display']} | {r['variant']} − {r['baseline']} | "
                         f"{interval_text(r, pct)} | not tested (timing) | - |")
    return lines


def domain_lines(domains: list[dict]) -> list[str]:
    if not domains:
        return ["No held-out utilization files."]
    lines = ["| variant | model | domain | documents | MaxVio_global | entropy | note |",
             "|---|---|---|---|---|---|---|"]
    for r in domains:
        maxvio = fmt(r["maxvio_global"]) + (
            f" [{fmt(r['maxvio_global_low'])}, {fmt(r['maxvio_global_high'])}]"
            if np.isfinite(r["maxvio_global_low"]) else "")
        lines.append(f"| {r['variant']} | {r['model']} | {r['domain']} | {r['documents']} | "
                     f"{maxvio} | {fmt(r['entropy'])} | {r['flag']} |")
    return lines


NOTES = ("Notes: the utilization rows (MaxVio_global, CV, entropy, Gini, dead experts) are "
         "computed per MoE layer on the test split's held-out balance set (windows of the "
         "training length drawn in the training token mix, each model routing it once), then "
         "averaged over layers; HumanEval routing and single domains are reported apart. "
         "Run-level metrics (MaxVio among them) get a t over seeds, counts (dead experts) no "
         "interval. Per-problem and "
         "per-document metrics (bits per byte: a ratio of summed bits to summed bytes, "
         "linearized per unit) get the crossed seeds × units model with Satterthwaite df, "
         "since the same problems and documents are scored under every seed. "
         f"Domains with fewer than {MIN_DOCUMENTS} held-out documents are flagged and get no "
         "interval.")


def control_lines(baseline_rows: list[dict], margin: float = 0.3) -> list[str]:
    """The positive control, first: whether every seed of every variant beats the
    interpolated bigram by at least ``margin`` nats/token on the same validation tokens
    (docs/reference.md §6: differences between variants mean little before the models clear a
    simple baseline)."""
    if not baseline_rows:
        return ["**Positive control:** not run (no baselines.json given).", ""]
    base = {r["model"]: r for r in baseline_rows if r["kind"] == "baseline"}
    variants = [r for r in baseline_rows if r["kind"] == "variant"]
    failing = [r["model"] for r in variants if not r["worst_margin"] >= margin]
    lines = ["**Positive control** (`tables/baselines.csv`; pretraining val loss and n-gram "
             "baselines in nats/token on the same validation windows; it holds when every "
             f"seed beats the bigram by at least {fmt(margin)}): unigram "
             f"{fmt(base['unigram']['nats_per_token'])}, interpolated bigram "
             f"{fmt(base['bigram']['nats_per_token'])}; "
             + "; ".join(f"{r['model']} {fmt(r['nats_per_token'])} (margin over the bigram "
                         f"{fmt(r['margin'], True)}, worst seed {fmt(r['worst_margin'], True)})"
                         for r in variants) + "."]
    if failing:
        verb = "does" if len(failing) == 1 else "do"
        lines.append(f"**The positive control fails:** {', '.join(failing)} {verb} not beat "
                     f"the bigram count table by {fmt(margin)} nats/token in every seed. "
                     "These models have not learned "
                     "enough for differences between balancing methods to say anything about "
                     "trained MoE models; read every comparison below as a test of the "
                     "pipeline, not as an answer.")
    else:
        lines.append(f"Every variant beats the bigram by at least {fmt(margin)} nats/token "
                     "in every seed.")
    return lines + [""]


def comparison_markdown(rows: list[dict], paired: list[dict], pass_rows: list[dict],
                        pass_summary: dict, domains: list[dict], variants: list[str],
                        plan: Plan, missing: list[str], control: list[str] = ()) -> str:
    pct = round(plan.confidence * 100)
    a, b = plan.pair
    primaries = [r for r in paired if r["role"] == "primary"]
    lines = ["# Comparison of balancing variants", "", *control,
             *sensitivity_lines(paired, plan, variants, pct),
             f"## Primary endpoints: {a} against {b}", "", seeds_sentence(paired, plan), "",
             *([primary_sentence(r, pct) for r in primaries]
               or [f"- Not run: {a} and {b} are not both among the variants, or the "
                   "primary metrics are missing."]),
             *pass_at_1_lines(pass_rows, pass_summary, pct), "",
             *reliability_lines(rows, variants),
             "## Every metric per variant", "",
             f"Cells: mean over seeds [{pct}% CI]; the interval column names its variance "
             "model. Rows not marked primary are exploratory: no claim rests on them.", "",
             *cells_table(rows, variants), "",
             f"## Exploratory paired differences against {b} (hypotheses)", "",
             *exploratory_lines(paired, pct), "",
             "## Per held-out domain (routing of that domain alone)", "",
             *domain_lines(domains), "", NOTES, "", DESIGN_LIMITS]
    if missing:
        lines += ["", "Missing inputs (their rows are left out):", *[f"- {m}" for m in missing]]
    return "\n".join(lines) + "\n"


def answer_markdown(paired: list[dict], pass_rows: list[dict], pass_summary: dict,
                    plan: Plan, control: list[str] = (), variants: list[str] = ()) -> str:
    """The answer for results/README.md: the positive control, the sensitivity control, the
    primaries, what the study can detect, the hypotheses and the design's limits."""
    pct = round(plan.confidence * 100)
    primaries = [r for r in paired if r["role"] == "primary"]
    lines = [f"Generated by the compare stage from `tables/paired.csv` (test: "
             f"{plan.pair[0]} against {plan.pair[1]}).", "", *control,
             *sensitivity_lines(paired, plan, list(variants), pct),
             seeds_sentence(paired, plan), "",
             "**Primary endpoints** (pre-registered in `analysis.primary`):", "",
             *[primary_sentence(r, pct) for r in primaries], "",
             "**What this study can detect** (minimum detectable difference at 80% power from "
             "each endpoint's variance model, with the 80% upper confidence bound of its "
             "standard deviation; published effects from `analysis.published_effect`):", "",
             *detectable_lines(primaries), "",
             *hypothesis_lines(paired, plan, pct),
             "**pass@1:**", "", *pass_at_1_lines(pass_rows, pass_summary, pct), "",
             DESIGN_LIMITS, "",
             "Every other row of `tables/comparison.md` is exploratory."]
    return "\n".join(lines) + "\n"


def fill_readme(readme: str, answer: str) -> str:
    """The README text with the region between the answer markers replaced by ``answer``."""
    start, end = readme.find(ANSWER_BEGIN), readme.find(ANSWER_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {ANSWER_BEGIN} ... {ANSWER_END} region")
    return readme[:start + len(ANSWER_BEGIN)] + "\n" + answer + readme[end:]
