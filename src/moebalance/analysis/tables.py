"""The comparison's tables: per-variant cells, paired differences against the baseline with
the pre-registered primaries' verdicts, pass@1, per-domain and per-layer utilization.

Which interval a row gets follows its metric's kind (catalogue.py) and the rules of
statistics.py. The primaries (``analysis.primary``) of the configured pair (treatment A,
baseline B) form one family, Holm-adjusted; every other row is "exploratory". A verdict
word needs its test: better/worse from the Holm-adjusted test, "equivalent" from TOST
inside the primary's margin, otherwise "inconclusive"; with one seed, "no claim (1 seed)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moebalance.analysis import statistics as st
from moebalance.analysis.catalogue import CATALOGUE, metric
from moebalance.analysis.runs import RunData

MIN_DOCUMENTS = 5  # a domain with fewer held-out documents gets no interval, and a flag


@dataclass(frozen=True)
class Primary:
    key: str
    better: str          # "lower" | "higher"
    margin: float        # equivalence margin (TOST), in the metric's own unit


@dataclass(frozen=True)
class Plan:
    """The analysis plan: the pair, the primaries, the test level and the bootstrap."""

    pair: tuple[str, str]
    primaries: tuple[Primary, ...]
    confidence: float = 0.95
    replicates: int = 2000

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    def role(self, key: str, variant: str) -> str:
        is_primary = any(p.key == key for p in self.primaries) and variant == self.pair[0]
        return "primary" if is_primary else "exploratory"


def by_seed(runs: list[RunData], key: str) -> dict[int, float]:
    return {r.run.seed: r.values[key] for r in runs
            if key in r.values and np.isfinite(r.values[key])}


def units_by_seed(runs: list[RunData], key: str) -> dict[int, object]:
    return {r.run.seed: r.units[key] for r in runs if key in r.units}


def present_keys(runs: dict[str, list[RunData]]) -> list[str]:
    have = {k for rs in runs.values() for r in rs for k in r.values}
    return [k for k in CATALOGUE if k in have]


def comparison_rows(runs: dict[str, list[RunData]], plan: Plan,
                    rng: np.random.Generator) -> list[dict]:
    """One row per (metric, variant): mean over seeds, interval, what the interval is."""
    rows = []
    for key in present_keys(runs):
        m = metric(key)
        for variant, rs in runs.items():
            values = by_seed(rs, key)
            units = {s: u.to_numpy(np.float64) for s, u in units_by_seed(rs, key).items()}
            iv = st.summarise(m.kind, values, plan.confidence, units, plan.replicates, rng,
                              m.unit) if values else st.Interval(math.nan, math.nan,
                                                                 math.nan, "missing")
            rows.append({"metric": key, "display": m.display, "kind": m.kind,
                         "variant": variant, "n_seeds": len(values), "mean": iv.estimate,
                         "ci_low": iv.low, "ci_high": iv.high, "ci": iv.method,
                         "seed_values": ";".join(f"{values[s]:.6g}" for s in sorted(values)),
                         "role": "primary" if any(p.key == key for p in plan.primaries)
                         else "exploratory"})
    return rows


def _difference(key: str, a: list[RunData], b: list[RunData], plan: Plan,
                rng: np.random.Generator) -> dict:
    """A - B for one metric: the ruling interval and, for per-unit metrics, both."""
    m = metric(key)
    va, vb = by_seed(a, key), by_seed(b, key)
    seeds = sorted(set(va) & set(vb))
    out = {"seeds": len(seeds), "seed_diffs": [va[s] - vb[s] for s in seeds]}
    if m.kind == "per_unit" and units_by_seed(a, key) and units_by_seed(b, key):
        both = st.compare_per_unit(units_by_seed(a, key), units_by_seed(b, key),
                                   plan.replicates, rng, plan.confidence, m.unit)
        out.update(ruling=both.ruling, bootstrap=both.bootstrap, seed_t=both.seed_t)
    else:
        out["ruling"] = out["seed_t"] = st.paired_seed_difference(va, vb, plan.confidence)
    if m.kind == "count":  # counts: the difference of means, no interval and no test
        iv = out["ruling"]
        out["ruling"] = st.Interval(iv.estimate, math.nan, math.nan,
                                    "none (a count: difference of seed means)", n_seeds=iv.n_seeds)
    return out


def paired_rows(runs: dict[str, list[RunData]], plan: Plan,
                rng: np.random.Generator) -> list[dict]:
    """Every variant against the baseline, every metric; the primaries of the pair get
    Holm-adjusted p-values, TOST and the minimum detectable difference."""
    baseline = plan.pair[1]
    if baseline not in runs:
        return []
    margins = {p.key: p for p in plan.primaries}
    rows = []
    for variant in (v for v in runs if v != baseline):
        for key in present_keys(runs):
            d = _difference(key, runs[variant], runs[baseline], plan, rng)
            iv, role = d["ruling"], plan.role(key, variant)
            row = {"metric": key, "display": metric(key).display, "variant": variant,
                   "baseline": baseline, "role": role, "n_seeds": d["seeds"],
                   "diff": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "ci": iv.method,
                   "p_value": iv.p_value}
            for name in ("bootstrap", "seed_t"):
                if name in d:
                    row.update({f"{name}_low": d[name].low, f"{name}_high": d[name].high,
                                f"{name}_method": d[name].method})
            if role == "primary":
                primary = margins[key]
                row.update(better=primary.better, margin=primary.margin,
                           tost_p=st.tost(d["seed_diffs"], primary.margin),
                           mdd_80=st.minimum_detectable_difference(d["seed_diffs"], plan.alpha))
            rows.append(row)
    return _adjust_primaries(rows, plan)


def _adjust_primaries(rows: list[dict], plan: Plan) -> list[dict]:
    primaries = [r for r in rows if r["role"] == "primary"]
    adjusted, _ = st.holm([r["p_value"] for r in primaries], plan.alpha)
    for row, p in zip(primaries, adjusted, strict=True):
        row["p_holm"] = p
        diff = st.Interval(row["diff"], row["ci_low"], row["ci_high"], row["ci"])
        row["verdict"] = ("no claim (1 seed)" if row["n_seeds"] < 2 else
                          st.verdict(diff, row["better"], p, plan.alpha, row["tost_p"]))
    return rows


def pass_at_1_rows(runs: dict[str, list[RunData]], plan: Plan) -> tuple[list[dict], dict]:
    """Per seed: exact McNemar on greedy pass@1 of A against B; and the seed-level summary."""
    a, b = plan.pair
    if a not in runs or b not in runs:
        return [], {}
    first = {v: {r.run.seed: r.first_pass for r in runs[v] if r.first_pass is not None}
             for v in (a, b)}
    if not first[a] or not first[b]:
        return [], {}
    out = st.pass_at_1_paired(first[a], first[b], plan.confidence)
    return [{"variant": a, "baseline": b, **r} for r in out["per_seed"]], out


def domain_rows(runs: dict[str, list[RunData]], plan: Plan) -> list[dict]:
    """Per (variant, model, domain): MaxVio/entropy/CV of the domain's own routing, the mean
    over seeds with a t-interval over seeds, none (and flagged) for too few documents."""
    import pandas as pd

    per_run = [{"variant": v, "seed": r.run.seed, "model": model, **row}
               for v, rs in runs.items() for r in rs
               for model, util in r.utilization.items() for row in util.domain_rows()]
    if not per_run:
        return []
    rows = []
    for (variant, model, domain), g in pd.DataFrame(per_run).groupby(
            ["variant", "model", "domain"], sort=False):
        few = int(g.documents.min()) < MIN_DOCUMENTS
        row = {"variant": variant, "model": model, "domain": domain,
               "documents": int(g.documents.min()), "n_seeds": len(g),
               "flag": f"fewer than {MIN_DOCUMENTS} documents: no interval" if few else ""}
        for column in ("maxvio_global", "entropy", "cv"):
            iv = st.seed_interval(g[column].to_numpy(), plan.confidence)
            row.update({column: iv.estimate, f"{column}_low": math.nan if few else iv.low,
                        f"{column}_high": math.nan if few else iv.high,
                        "ci": "none" if few else iv.method})
        rows.append(row)
    return rows


def bias_layer_rows(runs: dict[str, list[RunData]]) -> list[dict]:
    """Per (variant, seed, layer) at the last pretraining step: the spread (std over experts)
    of the bias and of the experts' mean affinity scores, their correlation over experts
    (near -1: the bias cancels the score differences) and the override rate over the last
    quarter of pretraining."""
    from moebalance.analysis.runs import LAST_FRACTION

    rows = []
    for variant, rs in runs.items():
        for r in rs:
            routing = r.routing
            if "mean_score" not in routing:
                continue
            bias_LE, score_LE = routing["bias"][-1], routing["mean_score"][-1]
            tail = max(1, round(LAST_FRACTION * len(routing["steps"])))
            for li, layer in enumerate(routing["layers"]):
                varies = bias_LE[li].std() > 0 and score_LE[li].std() > 0
                rows.append({
                    "variant": variant, "seed": r.run.seed, "layer": layer,
                    "bias_std": float(bias_LE[li].std()), "score_std": float(score_LE[li].std()),
                    "bias_score_correlation": float(np.corrcoef(bias_LE[li], score_LE[li])[0, 1])
                    if varies else math.nan,
                    "override_rate_last": float(routing["override_rate"][-tail:, li, 0].mean())
                    if "override_rate" in routing else math.nan})
    return rows


def utilization_tables(runs: dict[str, list[RunData]]):
    """Per-layer metrics, relative loads per domain and specialization per group (long)."""
    import pandas as pd

    from moebalance.analysis import metrics as M

    layers, loads, spec = [], [], []
    for variant, rs in runs.items():
        for r in rs:
            for model, util in r.utilization.items():
                key = {"variant": variant, "seed": r.run.seed, "model": model}
                layers += [{**key, **row} for row in util.layer_rows()]
                K = util.top_k
                rel_LDE = M.relative_load(util.counts_LDE, K)
                for kind, joint, groups in (("domain", util.counts_LDE, util.domains),
                                            ("token_class", util.counts_LCE, util.classes)):
                    ds = M.specialization(joint, K)
                    for (li, gi, e), value in np.ndenumerate(ds):
                        row = {**key, "layer": util.layers[li], "expert": e}
                        spec.append({**row, "kind": kind, "group": groups[gi], "top_k": K,
                                     "specialization": value})
                        if kind == "domain":
                            loads.append({**row, "domain": groups[gi],
                                          "relative_load": rel_LDE[li, gi, e]})
    return pd.DataFrame(layers), pd.DataFrame(loads), pd.DataFrame(spec)


def baseline_rows(runs: dict[str, list[RunData]], baselines: dict) -> list[dict]:
    """The positive control: the n-gram baselines of the baselines stage and every variant's
    pretraining val loss, all in nats/token on the same validation windows. ``margin`` is
    the bigram's loss minus the model's (positive: the model beats the bigram), and for a
    variant ``worst_margin`` is that of its worst seed."""
    bigram = baselines["bigram"]["nats_per_token"]
    rows = [{"model": name, "kind": "baseline", "n_seeds": 0,
             "nats_per_token": baselines[name]["nats_per_token"],
             "bits_per_byte": baselines[name].get("bits_per_byte", math.nan),
             "margin": bigram - baselines[name]["nats_per_token"], "worst_margin": math.nan}
            for name in ("unigram", "bigram")]
    for variant, rs in runs.items():
        values = by_seed(rs, "val_loss_pretrain")
        if not values:
            continue
        mean = float(np.mean(list(values.values())))
        rows.append({"model": variant, "kind": "variant", "n_seeds": len(values),
                     "nats_per_token": mean, "bits_per_byte": math.nan,
                     "margin": bigram - mean, "worst_margin": bigram - max(values.values())})
    return rows
