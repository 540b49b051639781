"""The comparison's tables: per-variant cells, paired differences against the baseline with
the pre-registered primaries' verdicts, pass@1, per-domain and per-layer utilization.

Which variance model a row gets follows its metric's kind (catalogue.py, statistics.py);
its interval, p-value, TOST and minimum detectable difference come from that one model.
Three families of paired rows:

- primary: the primaries (``analysis.primary``) of the pair (treatment A, baseline B),
  Holm-adjusted together. A verdict word needs its test: better/worse from the Holm-adjusted
  test, "equivalent" from TOST inside the primary's margin, otherwise "inconclusive"; with
  one seed "no claim (1 seed)"; and "not measurable here" where the endpoint does not
  detect the sensitivity control.
- control: the sensitivity control (``analysis.control``, by default none against aux_loss)
  on every primary metric, Holm-adjusted as a family of its own: "detected" or "not
  detected" per endpoint.
- exploratory: every other row, with Benjamini-Hochberg q-values across the family.

Rows of a timing metric (catalogue ``timing``: machine speed) have the role ``timing``: their
difference and interval describe the runs, and no test is made (p-value NaN, no q-value), so
the throughput of the machine on the day cannot move any other row's q-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moebalance.analysis import metrics as M
from moebalance.analysis import statistics as st
from moebalance.analysis.catalogue import CATALOGUE, metric
from moebalance.analysis.runs import LAST_FRACTION, RunData

MIN_DOCUMENTS = 5  # a domain with fewer held-out documents gets no interval, and a flag
POWER = 0.8        # the power of the minimum detectable difference
MDD_BOUND = 0.8    # the one-sided confidence level of its upper bound
DETECTED, NOT_DETECTED, ONE_SEED = "detected", "not detected", "no claim (1 seed)"
NOT_MEASURABLE = "not measurable here"
TIMING = "timing"


@dataclass(frozen=True)
class Primary:
    key: str
    better: str          # "lower" | "higher"
    margin: float        # equivalence margin (TOST), in the metric's own unit
    published_effect: float = math.nan  # the pair's published effect, same unit


@dataclass(frozen=True)
class Plan:
    """The analysis plan: the pair, the primaries, the test level and the sensitivity
    control (a contrast every primary endpoint must detect; None: no control)."""

    pair: tuple[str, str]
    primaries: tuple[Primary, ...]
    confidence: float = 0.95
    control: tuple[str, str] | None = None

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    def role(self, key: str, variant: str, baseline: str) -> str:
        if metric(key).timing:
            return TIMING
        if any(p.key == key for p in self.primaries):
            if (variant, baseline) == tuple(self.pair):
                return "primary"
            if self.control is not None and (variant, baseline) == tuple(self.control):
                return "control"
        return "exploratory"


def by_seed(runs: list[RunData], key: str) -> dict[int, float]:
    return {r.run.seed: r.values[key] for r in runs
            if key in r.values and np.isfinite(r.values[key])}


def units_by_seed(runs: list[RunData], key: str) -> dict[int, object]:
    return {r.run.seed: r.units[key] for r in runs if key in r.units}


def present_keys(runs: dict[str, list[RunData]]) -> list[str]:
    have = {k for rs in runs.values() for r in rs for k in r.values}
    return [k for k in CATALOGUE if k in have]


def estimate_columns(est: st.Estimate) -> dict:
    return {"se": est.se, "df": est.df, "ci_low": est.low, "ci_high": est.high,
            "ci": est.method}


def comparison_rows(runs: dict[str, list[RunData]], plan: Plan) -> list[dict]:
    """One row per (metric, variant): mean over seeds, its interval and what it is over."""
    rows = []
    for key in present_keys(runs):
        m = metric(key)
        for variant, rs in runs.items():
            values = by_seed(rs, key)
            est = st.summarise(m.kind, values, plan.confidence, units_by_seed(rs, key),
                               m.unit) if values else st.missing(plan.confidence)
            rows.append({"metric": key, "display": m.display, "kind": m.kind,
                         "variant": variant, "n_seeds": len(values), "mean": est.estimate,
                         **estimate_columns(est),
                         "seed_values": ";".join(f"{values[s]:.6g}" for s in sorted(values)),
                         "role": TIMING if m.timing else
                         "primary" if any(p.key == key for p in plan.primaries)
                         else "exploratory"})
    return rows


def _difference(key: str, a: list[RunData], b: list[RunData], plan: Plan) -> st.Estimate:
    m = metric(key)
    return st.difference(m.kind, by_seed(a, key), by_seed(b, key), plan.confidence,
                         units_by_seed(a, key), units_by_seed(b, key), m.unit)


def contrasts(runs: dict[str, list[RunData]], plan: Plan) -> list[tuple[str, str]]:
    """(variant, baseline) pairs of paired.csv: every variant against the pair's baseline,
    and the sensitivity control where its baseline is another variant."""
    baseline = plan.pair[1]
    out = [(v, baseline) for v in runs if v != baseline] if baseline in runs else []
    if plan.control is not None and all(v in runs for v in plan.control) \
            and tuple(plan.control) not in out:
        out.append(tuple(plan.control))
    return out


def paired_rows(runs: dict[str, list[RunData]], plan: Plan) -> list[dict]:
    """Every contrast, every metric (the control's own baseline: the primaries only). The
    primary and control rows add TOST, the minimum detectable difference at 80% power and
    its 80% upper bound, all from the row's one Estimate."""
    primaries = {p.key: p for p in plan.primaries}
    rows = []
    for variant, baseline in contrasts(runs, plan):
        for key in present_keys(runs):
            role = plan.role(key, variant, baseline)
            if baseline != plan.pair[1] and role in ("exploratory", TIMING):
                continue
            est = _difference(key, runs[variant], runs[baseline], plan)
            row = {"metric": key, "display": metric(key).display, "variant": variant,
                   "baseline": baseline, "role": role, "n_seeds": est.n_seeds,
                   "diff": est.estimate, **estimate_columns(est),
                   "p_value": math.nan if role == TIMING else est.p_value}
            if role in ("primary", "control"):
                primary = primaries[key]
                row.update(better=primary.better, margin=primary.margin,
                           published_effect=primary.published_effect,
                           tost_p=est.tost(primary.margin), mdd_80=est.mdd(POWER),
                           mdd_80_upper=est.mdd_upper(POWER, MDD_BOUND))
            rows.append(row)
    return _adjust(rows, plan)


def _holm(rows: list[dict], plan: Plan) -> None:
    adjusted, _ = st.holm([r["p_value"] for r in rows], plan.alpha)
    for row, p in zip(rows, adjusted, strict=True):
        row["p_holm"] = p


def _adjust(rows: list[dict], plan: Plan) -> list[dict]:
    """Holm within the control family and within the primaries, the control's verdict per
    endpoint, the primaries' verdicts, and BH q-values over the exploratory rows."""
    family = {role: [r for r in rows if r["role"] == role]
              for role in ("control", "primary", "exploratory")}
    _holm(family["control"], plan)
    for row in family["control"]:
        row["verdict"] = (ONE_SEED if row["n_seeds"] < 2 else
                          "not tested" if not np.isfinite(row["p_holm"]) else
                          DETECTED if row["p_holm"] < plan.alpha else NOT_DETECTED)
    sensitivity = {r["metric"]: r["verdict"] for r in family["control"]}
    _holm(family["primary"], plan)
    for row in family["primary"]:
        row["sensitivity"] = sensitivity.get(row["metric"], "absent")
        row["verdict"] = (ONE_SEED if row["n_seeds"] < 2 else
                          NOT_MEASURABLE if row["sensitivity"] == NOT_DETECTED else
                          st.verdict(row["diff"], row["better"], row["p_holm"], plan.alpha,
                                     row["tost_p"]))
    for row, q in zip(family["exploratory"],
                      st.benjamini_hochberg([r["p_value"] for r in family["exploratory"]]),
                      strict=True):
        row["q_bh"] = q
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
            iv = st.seed_mean(g[column].to_numpy(), plan.confidence)
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
