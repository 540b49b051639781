"""Statistics of a study of trained variants, where the unit of replication is the seed.

Every variant is trained with the same seeds (same initialisation and data order), so two
variants pair by seed. Each endpoint has ONE variance model, an :class:`Estimate` (a mean
with its standard error and degrees of freedom); its interval, its p-value, its TOST and
its minimum detectable difference all come from that one Estimate (docs/reference.md §6).

- Run-level metrics (one number per run: validation loss, MaxVio_global, CV, entropy ...):
  :func:`seed_mean` and :func:`paired_seed_difference`, the t over seeds of the values or of
  the per-seed differences A - B (a paired t-test), df = seeds - 1.
- Unit-level metrics (per held-out document, per HumanEval problem): the same documents and
  problems are scored under every seed, so units are CROSSED with seeds, not nested in them.
  :func:`crossed_mean` fits the two-way crossed random-effects model

      y[s, u] = mu + a_s + b_u + e_su     (seed effect, unit effect, seed x unit residual)

  by the method of moments (the ANOVA mean squares of the balanced table) and gives the
  grand mean's variance with Satterthwaite degrees of freedom. Why this and not a mixed
  model fit or a bootstrap: in a balanced table the ANOVA estimates are the REML ones
  whenever they are positive, they are closed-form (the calibration simulation of a few
  hundred studies runs in a second), and the Satterthwaite df carries the few seeds into
  the t quantile; statsmodels' MixedLM fits crossed effects only as variance components of
  one group and reports z, not a small-sample df (its REML standard error agrees: tested).
  A percentile bootstrap over 3 seeds has 10 distinct seed resamples (simulated coverage
  0.76 for a nominal 0.95), and a two-stage bootstrap that resamples units independently
  within each seed treats crossed units as nested (0.71-0.78): neither is used anywhere.
  Calibration (tests/test_statistics.py): the 95% interval covers the truth in 0.93-0.97
  of simulated studies at 3 and 5 seeds; with a seed effect of the difference that
  dominates a smaller unit effect, 3 seeds cover about 0.92-0.93 (Satterthwaite's df is
  slightly liberal when a 2-df mean square dominates).
- Ratio endpoints (bits per byte = sum of NLL bits / sum of bytes): each unit carries a
  numerator and a denominator; :func:`linearized` turns them into per-unit values whose mean
  is the run's ratio exactly (delta method), so the crossed model applies to them.
- Counts (dead experts) get no interval: see :func:`summarise`.
- pass@1: :func:`pass_at_1_paired`, an exact McNemar test per seed where anything passes and
  a paired t over the seeds' pass rates.
- Families: :func:`holm` over the primaries (and, apart, over the sensitivity control);
  :func:`benjamini_hochberg` q-values over the exploratory rows.

With one seed no interval includes training noise: run-level intervals are NaN, and a
unit-level interval is the t over units of that one run, which its method says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

# What a metric is, statistically; it decides which variance model it gets (catalogue.py).
# "max" (MaxVio) is run-level like "per_run": a maximum is never a mean over units.
KINDS = ("per_run", "per_unit", "max", "count")
NO_SEED_INTERVAL = "none (1 seed: no seed-level interval)"
MISSING = "missing"


@dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) under one variance model: ``se`` its standard error and
    ``df`` the degrees of freedom of its t reference distribution. ``method`` says what the
    variance is taken over; ``confidence`` is the interval's level (alpha = 1 - confidence).
    Without a variance (one seed, a count, missing data) ``se`` and ``df`` are NaN."""

    estimate: float
    se: float
    df: float
    method: str
    n_seeds: int = 0
    confidence: float = 0.95

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    @property
    def has_variance(self) -> bool:
        return bool(np.isfinite(self.se) and np.isfinite(self.df) and self.df > 0)

    def _half_width(self) -> float:
        if not self.has_variance:
            return math.nan
        return float(stats.t.ppf(1 - self.alpha / 2, self.df) * self.se)

    @property
    def low(self) -> float:
        return self.estimate - self._half_width()

    @property
    def high(self) -> float:
        return self.estimate + self._half_width()

    @property
    def width(self) -> float:
        return 2 * self._half_width() if self.has_variance else math.inf

    @property
    def p_value(self) -> float:
        """Two-sided t-test of the estimate against 0."""
        if not self.has_variance:
            return math.nan
        if self.se == 0:
            return 1.0 if self.estimate == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.estimate) / self.se, self.df))

    def tost(self, margin: float) -> float:
        """Two one-sided tests (Schuirmann 1987) that the true value lies inside
        (-margin, +margin): the larger of the two one-sided t p-values, on this Estimate's se
        and df. NaN without a variance or with no spread at all."""
        if not self.has_variance or self.se == 0:
            return math.nan
        # Schuirmann 1987 (two one-sided tests): H0 mu <= -margin is rejected by
        # t = (est + margin)/se, H0 mu >= +margin by t = (est - margin)/se, each at alpha
        p_low = stats.t.sf((self.estimate + margin) / self.se, self.df)
        p_high = stats.t.cdf((self.estimate - margin) / self.se, self.df)
        return float(max(p_low, p_high))

    def mdd(self, power: float = 0.8) -> float:
        """The true value that the two-sided t-test of this Estimate detects with ``power``
        at its alpha: noncentrality * se, the noncentrality solving the non-central t power
        equation for this df (Cohen 1988, ch. 2, with the exact non-central t)."""
        if not self.has_variance or self.se == 0:
            return math.nan
        return _noncentrality(self.df, self.alpha, power) * self.se

    def mdd_upper(self, power: float = 0.8, level: float = 0.8) -> float:
        """The one-sided ``level`` upper confidence bound of :meth:`mdd`: the MDD is
        proportional to the SD behind se, whose upper bound is sd * sqrt(df / chi2_{1-level,
        df}) (the chi-square interval of a variance with df degrees of freedom)."""
        # df s^2 / sigma^2 ~ chi2(df)  =>  P(sigma <= s sqrt(df / chi2_{1-level}(df))) = level
        factor = math.sqrt(self.df / stats.chi2.ppf(1 - level, self.df)) \
            if self.has_variance else math.nan
        return self.mdd(power) * factor

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def _noncentrality(df: float, alpha: float, power: float) -> float:
    """nc with P(|T| > t_{1-alpha/2, df}) = power for T ~ non-central t(df, nc)."""
    crit = stats.t.ppf(1 - alpha / 2, df)

    def gap(nc: float) -> float:
        # scipy's non-central t returns NaN for a lower tail that underflows (small or huge
        # df at large nc); that tail is below alpha/2 and vanishing there: 0
        lower = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0))
        return stats.nct.sf(crit, df, nc) + lower - power

    high = crit + 4.0
    while gap(high) < 0:  # power grows with nc: widen the bracket until it holds the root
        high *= 2
    return float(optimize.brentq(gap, 0.0, high))


def missing(confidence: float = 0.95) -> Estimate:
    return Estimate(math.nan, math.nan, math.nan, MISSING, confidence=confidence)


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def seed_mean(values, confidence: float = 0.95, what: str = "t over") -> Estimate:
    """Mean over seeds with the Student t over seeds: se = sd / sqrt(n), df = n - 1 (no
    variance with one seed)."""
    x = _finite(values)
    if not len(x):
        return missing(confidence)
    if len(x) < 2:
        return Estimate(float(x[0]), math.nan, math.nan, NO_SEED_INTERVAL, 1, confidence)
    return Estimate(float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))), len(x) - 1.0,
                    f"{what} {len(x)} seeds", len(x), confidence)


def paired_seed_difference(a_by_seed: dict[int, float], b_by_seed: dict[int, float],
                           confidence: float = 0.95) -> Estimate:
    """Mean of the per-seed differences A - B over the seeds both have: the paired t."""
    seeds = sorted(s for s in set(a_by_seed) & set(b_by_seed)
                   if np.isfinite(a_by_seed[s]) and np.isfinite(b_by_seed[s]))
    return seed_mean([a_by_seed[s] - b_by_seed[s] for s in seeds], confidence, "paired t over")


def crossed_mean(table: np.ndarray, confidence: float = 0.95, unit: str = "units") -> Estimate:
    """Grand mean of a complete seeds x units table under the crossed random-effects model
    y[s,u] = mu + a_s + b_u + e_su, with its method-of-moments variance and Satterthwaite df.

    Expected mean squares of the balanced two-way table (S seeds, U units):
    E[MS_seed] = s2_e + U s2_a, E[MS_unit] = s2_e + S s2_b, E[MS_res] = s2_e, so
    Var(grand mean) = s2_a/S + s2_b/U + s2_e/(S U) = (MS_seed + MS_unit - MS_res)/(S U).
    That combination is the estimate unless it falls below MS_seed/(S U) or MS_unit/(S U),
    each of which cannot exceed the true variance in expectation; then the larger of those
    is used. df: Satterthwaite 1946 (Biometrics Bulletin 2:110), the effective df of a linear
    combination sum_i c_i MS_i: (sum c_i MS_i)^2 / sum (c_i MS_i)^2 / df_i."""
    y = np.asarray(table, dtype=np.float64)
    S, U = y.shape
    if S == 0 or U == 0:
        return missing(confidence)
    if U == 1:
        return seed_mean(y[:, 0], confidence)
    grand = float(y.mean())
    if S == 1:
        sd = float(y[0].std(ddof=1))
        return Estimate(grand, sd / math.sqrt(U), U - 1.0,
                        f"t over {U} {unit} (1 seed: evaluation noise only)", 1, confidence)
    seed_means, unit_means = y.mean(1), y.mean(0)
    ms_seed = U * float(((seed_means - grand) ** 2).sum()) / (S - 1)
    ms_unit = S * float(((unit_means - grand) ** 2).sum()) / (U - 1)
    resid = y - seed_means[:, None] - unit_means[None, :] + grand
    ms_res = float((resid ** 2).sum()) / ((S - 1) * (U - 1))
    # each candidate: [(coefficient, mean square, its df)]
    candidates = [[(1, ms_seed, S - 1), (1, ms_unit, U - 1), (-1, ms_res, (S - 1) * (U - 1))],
                  [(1, ms_seed, S - 1)], [(1, ms_unit, U - 1)]]
    terms = max(candidates, key=lambda ts: sum(c * ms for c, ms, _ in ts))
    combined = sum(c * ms for c, ms, _ in terms)
    spread = sum((c * ms) ** 2 / df for c, ms, df in terms)
    df = combined ** 2 / spread if spread > 0 else S - 1.0
    return Estimate(grand, math.sqrt(combined / (S * U)), float(df),
                    f"crossed model over {S} seeds x {U} {unit}", S, confidence)


def linearized(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-unit values of a ratio endpoint R = sum(num) / sum(den) (a plain mean has den = 1):
    z_u = R + (num_u - R den_u) / mean(den). Their mean is R exactly, and z_u - R is unit u's
    first-order (delta-method) contribution to R's error (Cochran 1977, Sampling Techniques,
    Theorem 6.1), so the crossed model on z carries the ratio's variance."""
    ratio = num.sum() / den.sum()
    return ratio + (num - ratio * den) / den.mean()


def _unit_table(by_seed: list[dict], seeds: list[int]) -> tuple[list, list[np.ndarray]]:
    """The units every seed of every variant has, and each variant's (S, U) table of
    linearized values on them (a complete table: the crossed model needs balance).
    ``by_seed``: per variant, seed -> DataFrame of ``num`` and ``den`` indexed by unit id."""
    common = None
    for units_by_seed in by_seed:
        for s in seeds:
            index = units_by_seed[s].index
            common = index if common is None else common.intersection(index)
    if common is None or not len(common):
        return [], []
    ids = common.sort_values()
    tables = []
    for units_by_seed in by_seed:
        rows = []
        for s in seeds:
            frame = units_by_seed[s]
            at = frame.index.get_indexer(ids)
            rows.append(linearized(frame["num"].to_numpy(np.float64)[at],
                                   frame["den"].to_numpy(np.float64)[at]))
        tables.append(np.stack(rows))
    return list(ids), tables


def unit_mean(units_by_seed: dict[int, object], confidence: float = 0.95,
              unit: str = "units") -> Estimate:
    """One variant's unit-level metric: the crossed model over its seeds x units."""
    seeds = sorted(units_by_seed)
    ids, tables = _unit_table([units_by_seed], seeds)
    return crossed_mean(tables[0], confidence, unit) if ids else missing(confidence)


def paired_unit_difference(a_by_seed: dict[int, object], b_by_seed: dict[int, object],
                           confidence: float = 0.95, unit: str = "units") -> Estimate:
    """A - B of a unit-level metric: per seed and unit the difference of the linearized
    values (units pair by id within a seed, seeds by number), then the crossed model. Its
    estimate is the mean over seeds of the runs' A - B ratios."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        return missing(confidence)
    ids, tables = _unit_table([a_by_seed, b_by_seed], seeds)
    return crossed_mean(tables[0] - tables[1], confidence, unit) if ids else missing(confidence)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b and c are the two kinds of discordant pairs."""
    if b + c == 0:
        return 1.0
    # McNemar 1947, exact form: under H0 the b of the b + c discordant pairs are Binomial(b+c, 1/2)
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


def pass_at_1_paired(a_by_seed: dict[int, object], b_by_seed: dict[int, object],
                     confidence: float = 0.95) -> dict:
    """Greedy pass@1 of A against B. ``x_by_seed[s]``: a boolean Series, task id -> passed.

    Per seed with any pass, an exact McNemar test on that seed's problem pairs (problems of
    one seed are the pairs; seeds are never pooled as if independent). Over seeds, the paired
    t of the pass rates. ``nothing_passes`` says when no problem passes in any seed."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    per_seed = []
    for s in seeds:
        a, b = a_by_seed[s].align(b_by_seed[s], join="inner")
        a, b = a.to_numpy(bool), b.to_numpy(bool)
        a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
        any_pass = bool(a.any() or b.any())
        per_seed.append({"seed": s, "problems": len(a), "a_pass": int(a.sum()),
                         "b_pass": int(b.sum()), "a_only": a_only, "b_only": b_only,
                         "p_value": mcnemar_exact(a_only, b_only) if any_pass else math.nan})
    rates_a = {s: float(a_by_seed[s].mean()) for s in seeds}
    rates_b = {s: float(b_by_seed[s].mean()) for s in seeds}
    return {"per_seed": per_seed,
            "nothing_passes": bool(per_seed) and not any(r["a_pass"] or r["b_pass"]
                                                         for r in per_seed),
            "seed_t": paired_seed_difference(rates_a, rates_b, confidence)}


def holm(p_values, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm (1979) step-down adjustment: (adjusted p-values, rejected) via statsmodels.
    NaN p-values (a test that could not run) stay NaN and are never rejected."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    adjusted, rejected = np.full(len(p), math.nan), np.zeros(len(p), dtype=bool)
    ok = np.isfinite(p)
    if ok.any():
        rejected[ok], adjusted[ok] = multipletests(p[ok], alpha=alpha, method="holm")[:2]
    return adjusted, rejected


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg (1995) q-values (scipy ``false_discovery_control``) over the
    finite p-values; NaN ones stay NaN and do not count in the family."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(len(p), math.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def verdict(diff: float, better: str, p_adjusted: float, alpha: float, tost_p: float) -> str:
    """One word for the difference A - B: better / worse when the (Holm-adjusted) test
    rejects, "equivalent" when TOST shows it inside the margin, otherwise "inconclusive"."""
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        lower_is_better = better == "lower"
        return "better" if (diff < 0) == lower_is_better else "worse"
    if np.isfinite(tost_p) and tost_p < alpha:
        return "equivalent"
    return "inconclusive"


def summarise(kind: str, values_by_seed: dict[int, float], confidence: float = 0.95,
              units_by_seed: dict[int, object] | None = None, unit: str = "units") -> Estimate:
    """One variant's cell for a metric of the given kind (see :data:`KINDS`).

    per_run, max: t over seeds. count: the mean over seeds, no interval. per_unit: the
    crossed model over ``units_by_seed`` (DataFrames with ``num`` and ``den`` per unit)."""
    if kind not in KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; expected one of {KINDS}")
    if kind == "per_unit" and units_by_seed:
        return unit_mean(units_by_seed, confidence, unit)
    iv = seed_mean([values_by_seed[s] for s in sorted(values_by_seed)], confidence)
    if kind == "count":
        return Estimate(iv.estimate, math.nan, math.nan,
                        f"none (a count; mean of {iv.n_seeds} seeds)", iv.n_seeds, confidence)
    return iv


def difference(kind: str, a_values: dict[int, float], b_values: dict[int, float],
               confidence: float = 0.95, a_units: dict | None = None,
               b_units: dict | None = None, unit: str = "units") -> Estimate:
    """A - B for a metric of the given kind: the crossed model for per_unit metrics with
    unit data, the paired t otherwise, and for counts the difference of means only."""
    if kind == "per_unit" and a_units and b_units:
        return paired_unit_difference(a_units, b_units, confidence, unit)
    iv = paired_seed_difference(a_values, b_values, confidence)
    if kind == "count":
        return Estimate(iv.estimate, math.nan, math.nan,
                        "none (a count: difference of seed means)", iv.n_seeds, confidence)
    return iv
