"""Statistics of a study of trained variants, where the unit of replication is the seed.

Every variant is trained with the same seeds (same initialisation and data order), so two
variants pair by seed. What each function resamples or averages over is written into the
``method`` of the :class:`Interval` it returns, and comparison.csv carries that text.

- Per-run metrics (validation loss, MaxVio_global, entropy ...): :func:`seed_interval`, the
  mean over seeds with a Student-t interval over seeds, and :func:`paired_seed_difference`,
  the t-interval of the per-seed differences A - B (a paired t-test).
- Per-problem or per-document metrics (solution bits per byte): :func:`hierarchical_bootstrap`
  resamples seeds, then problems/documents within each drawn seed; :func:`compare_per_unit`
  reports it beside the paired t on per-seed means, and the wider interval rules.
- Max statistics (MaxVio) get the seed-level t only (a bootstrap of a maximum is unreliable);
  counts (dead experts) get no interval at all: see :func:`summarise`.
- pass@1: :func:`pass_at_1_paired`, an exact McNemar test per seed where anything passes and
  a paired t over the seeds' pass rates.
- Across the primary endpoints: :func:`holm`; "no difference" needs :func:`tost` inside a
  stated margin; :func:`minimum_detectable_difference` says what the seeds can resolve.

With one seed no interval includes training noise: seed-level intervals are NaN and the
bootstrap resamples problems/documents of that one run only, which its method says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# What a metric is, statistically; it decides which interval it may have.
KINDS = ("per_run", "per_unit", "max", "count")
NO_SEED_INTERVAL = "none (1 seed: no seed-level interval)"


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval, the p-value of the test against 0 where one was run,
    and ``method``: what was resampled or averaged over to get the interval."""

    estimate: float
    low: float
    high: float
    method: str
    p_value: float = math.nan
    n_seeds: int = 0

    @property
    def width(self) -> float:
        return self.high - self.low if np.isfinite(self.high - self.low) else math.inf

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def _has_spread(x: np.ndarray) -> bool:
    """Two or more values that differ beyond float rounding (a t statistic is defined)."""
    return len(x) >= 2 and float(np.ptp(x)) > 1e-12 * max(1.0, float(np.abs(x).max()))


def _t_half_width(sd: float, n: int, confidence: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))


def seed_interval(values, confidence: float = 0.95) -> Interval:
    """Mean over seeds with its Student-t interval (NaN bounds with one seed)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return Interval(math.nan, math.nan, math.nan, "missing")
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, NO_SEED_INTERVAL, n_seeds=1)
    half = _t_half_width(float(x.std(ddof=1)), len(x), confidence)
    return Interval(mean, mean - half, mean + half, f"t over {len(x)} seeds", n_seeds=len(x))


def paired_seed_difference(a_by_seed: dict[int, float], b_by_seed: dict[int, float],
                           confidence: float = 0.95) -> Interval:
    """Mean of the per-seed differences A - B (seeds both have) with the paired t-interval
    and the paired t-test's two-sided p-value (scipy ``ttest_1samp`` on the differences)."""
    from scipy import stats

    seeds = sorted(s for s in set(a_by_seed) & set(b_by_seed)
                   if np.isfinite(a_by_seed[s]) and np.isfinite(b_by_seed[s]))
    d = np.array([a_by_seed[s] - b_by_seed[s] for s in seeds], dtype=np.float64)
    if not len(d):
        return Interval(math.nan, math.nan, math.nan, "missing")
    if len(d) < 2:
        return Interval(float(d[0]), math.nan, math.nan, NO_SEED_INTERVAL, n_seeds=1)
    iv = seed_interval(d, confidence)
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if _has_spread(d) else (
        1.0 if d.mean() == 0 else 0.0)
    return Interval(iv.estimate, iv.low, iv.high, f"paired t over {len(d)} seeds", p, len(d))


def hierarchical_bootstrap(groups: list[np.ndarray], replicates: int, rng: np.random.Generator,
                           confidence: float = 0.95, unit: str = "problems") -> Interval:
    """Two-stage bootstrap of the mean of per-seed means (Davison & Hinkley 1997, §3.8,
    "resampling stage 1 and stage 2"): each replicate draws the seeds with replacement, then
    within each drawn seed its units with replacement; percentile interval of the replicates.

    ``groups[s]`` holds seed s's per-unit values (for a paired comparison: the per-problem
    differences A - B of that seed). With one group only stage 2 varies, and the method says
    that the interval is evaluation noise of one run. The p-value is twice the smaller share
    of replicates on either side of 0 (percentile bootstrap test)."""
    groups = [np.asarray(g, dtype=np.float64)[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    if not groups:
        return Interval(math.nan, math.nan, math.nan, "missing")
    n_seeds = len(groups)
    estimate = float(np.mean([g.mean() for g in groups]))
    # stage 2 first, vectorised: for each seed, replicates*n_seeds within-seed resampled
    # means, so a seed drawn twice in one replicate gets two independent resamples of its units
    draws = replicates * n_seeds
    within = np.stack([g[rng.integers(0, len(g), size=(draws, len(g)))].mean(-1)
                       for g in groups])                            # (n_seeds, draws)
    drawn = rng.integers(0, n_seeds, size=(replicates, n_seeds))    # stage 1: seeds
    slot = np.arange(draws).reshape(replicates, n_seeds)
    stats_R = within[drawn, slot].mean(-1)
    lo, hi = np.quantile(stats_R, [0.5 - confidence / 2, 0.5 + confidence / 2])
    # two-sided bootstrap p-value, (1 + #)/(R + 1) for R replicates, never 0 (Davison & Hinkley
    # Eq. 4.11)
    tail = min(int((stats_R <= 0).sum()), int((stats_R >= 0).sum()))
    p = min(1.0, 2 * (1 + tail) / (replicates + 1))
    n_units = sum(len(g) for g in groups)
    method = (f"two-stage bootstrap: {n_seeds} seeds, then {n_units // n_seeds} {unit} within seed"
              if n_seeds > 1 else
              f"bootstrap over {len(groups[0])} {unit} (1 seed: evaluation noise only)")
    return Interval(estimate, float(lo), float(hi), method, p, n_seeds)


@dataclass(frozen=True)
class PerUnitComparison:
    """A per-problem/per-document metric's two intervals; the wider one rules."""

    bootstrap: Interval
    seed_t: Interval

    @property
    def ruling(self) -> Interval:
        if not np.isfinite(self.seed_t.low):
            return self.bootstrap
        return self.seed_t if self.seed_t.width >= self.bootstrap.width else self.bootstrap


def compare_per_unit(a_by_seed: dict[int, object], b_by_seed: dict[int, object],
                     replicates: int, rng: np.random.Generator, confidence: float = 0.95,
                     unit: str = "problems") -> PerUnitComparison:
    """A - B for a per-unit metric: ``x_by_seed[s]`` is a pandas Series indexed by unit id
    (task id, document id); units are paired within a seed by id."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    diffs = []
    for s in seeds:
        a, b = a_by_seed[s].align(b_by_seed[s], join="inner")
        diffs.append((a - b).dropna().to_numpy(np.float64))
    boot = hierarchical_bootstrap(diffs, replicates, rng, confidence, unit)
    means_a = {s: float(a_by_seed[s].mean()) for s in seeds}
    means_b = {s: float(b_by_seed[s].mean()) for s in seeds}
    return PerUnitComparison(boot, paired_seed_difference(means_a, means_b, confidence))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b and c are the two kinds of discordant pairs."""
    from scipy import stats

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


def tost(differences, margin: float) -> float:
    """Two one-sided tests (Schuirmann 1987) that the mean per-seed difference lies inside
    (-margin, +margin): the larger of the two one-sided paired-t p-values (statsmodels
    ``ttost_paired``). NaN with fewer than two seeds or no spread."""
    from statsmodels.stats.weightstats import ttost_paired

    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not _has_spread(d):
        return math.nan
    return float(ttost_paired(d, np.zeros_like(d), -margin, margin)[0])


def minimum_detectable_difference(differences, alpha: float = 0.05,
                                  power: float = 0.8) -> float:
    """The true mean difference a two-sided paired t-test over these seeds detects with the
    given power: Cohen's d from statsmodels' ``TTestPower`` (non-central t) times the
    measured standard deviation of the per-seed differences. NaN below two seeds."""
    from statsmodels.stats.power import TTestPower

    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not _has_spread(d):
        return math.nan
    effect = TTestPower().solve_power(effect_size=None, nobs=len(d), alpha=alpha, power=power,
                                      alternative="two-sided")
    return float(effect * d.std(ddof=1))


def verdict(diff: Interval, better: str, p_adjusted: float, alpha: float,
            tost_p: float) -> str:
    """One word for A - B: better / worse when the (Holm-adjusted) test rejects, "equivalent"
    when TOST shows the difference inside the margin, otherwise "inconclusive"."""
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        lower_is_better = better == "lower"
        return "better" if (diff.estimate < 0) == lower_is_better else "worse"
    if np.isfinite(tost_p) and tost_p < alpha:
        return "equivalent"
    return "inconclusive"


def summarise(kind: str, values_by_seed: dict[int, float], confidence: float = 0.95,
              units_by_seed: dict[int, np.ndarray] | None = None, replicates: int = 0,
              rng: np.random.Generator | None = None, unit: str = "") -> Interval:
    """One variant's cell for a metric of the given kind (see :data:`KINDS`).

    per_run, max: seed-level t. count: the mean over seeds, no interval. per_unit: the wider
    of the seed-level t and the two-stage bootstrap over ``units_by_seed``."""
    if kind not in KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; expected one of {KINDS}")
    values = [values_by_seed[s] for s in sorted(values_by_seed)]
    iv = seed_interval(values, confidence)
    if kind == "count":
        return Interval(iv.estimate, math.nan, math.nan,
                        f"none (a count; mean of {iv.n_seeds} seeds)", n_seeds=iv.n_seeds)
    if kind == "per_unit" and units_by_seed and rng is not None and replicates:
        boot = hierarchical_bootstrap([units_by_seed[s] for s in sorted(units_by_seed)],
                                      replicates, rng, confidence, unit)
        return PerUnitComparison(boot, iv).ruling
    return iv
