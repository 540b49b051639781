"""Study statistics on synthetic studies with a known truth (analysis/statistics.py)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from moebalance.analysis import statistics as st

STUDIES = 1000  # simulated studies per coverage check; binomial sd of a 95% rate is 0.007


def units(num, den=None, ids=None):
    """A run's unit table as RunData.set_units stores it."""
    num = np.asarray(num, dtype=np.float64)
    return pd.DataFrame({"num": num, "den": np.ones_like(num) if den is None else den},
                        index=ids if ids is not None else [f"u{i}" for i in range(len(num))])


def test_seed_mean_is_the_scipy_t_interval():
    x = np.array([2.1, 2.5, 1.9, 2.8, 2.2])
    est = st.seed_mean(x, 0.95)
    expected = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert est.estimate == pytest.approx(x.mean())
    assert (est.low, est.high) == pytest.approx(expected)
    assert est.df == 4 and est.method == "t over 5 seeds"


def test_one_seed_has_no_seed_level_interval_and_says_so():
    est = st.seed_mean([3.0])
    assert est.estimate == 3.0 and math.isnan(est.low) and math.isnan(est.high)
    assert "1 seed" in est.method and math.isnan(est.p_value)


def test_paired_seed_difference_is_the_paired_t_test():
    a = {0: 1.0, 1: 1.4, 2: 1.1, 3: 1.3}
    b = {0: 0.8, 1: 1.0, 2: 1.0, 3: 0.9, 7: 5.0}  # seed 7 has no partner and is left out
    est = st.paired_seed_difference(a, b)
    ref = stats.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)])
    assert est.estimate == pytest.approx(0.275)
    assert est.p_value == pytest.approx(ref.pvalue)
    assert est.n_seeds == 4 and est.method == "paired t over 4 seeds"


def test_crossed_mean_on_a_hand_computed_table():
    # seeds x units; grand mean 4, seed means 3 and 5, unit means 2, 3.5, 6.5
    y = np.array([[1.0, 2.0, 6.0], [3.0, 5.0, 7.0]])
    # MS_seed = 3 (1 + 1) / 1 = 6; MS_unit = 2 (4 + 0.25 + 6.25) / 2 = 10.5;
    # residuals 0, -0.5, 0.5, 0, 0.5, -0.5: MS_res = 1 / 2 = 0.5
    # Var = (6 + 10.5 - 0.5) / (2 * 3) = 16 / 6; Satterthwaite df = 16^2 / (6^2/1 + 10.5^2/2
    # + 0.5^2/2) = 256 / 91.25
    est = st.crossed_mean(y, unit="documents")
    assert est.estimate == 4.0
    assert est.se == pytest.approx(math.sqrt(16 / 6))
    assert est.df == pytest.approx(256 / 91.25)
    assert est.method == "crossed model over 2 seeds x 3 documents"


def test_crossed_mean_has_the_standard_error_of_the_reml_crossed_mixed_model():
    """On a balanced table with positive variance components the moment estimates are the
    REML ones: statsmodels' MixedLM (seed and unit as crossed variance components) gives the
    same standard error of the mean; it gives no small-sample df, the crossed model does."""
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    y = 1 + rng.normal(0, 0.5, (4, 1)) + rng.normal(0, 1, (1, 30)) + rng.normal(0, 0.7, (4, 30))
    frame = pd.DataFrame([(s, u, y[s, u]) for s in range(4) for u in range(30)],
                         columns=["seed", "unit", "y"]).assign(group=1)
    fit = smf.mixedlm("y ~ 1", frame, groups="group", re_formula="0",
                      vc_formula={"seed": "0 + C(seed)", "unit": "0 + C(unit)"}).fit(reml=True)
    est = st.crossed_mean(y)
    assert est.se == pytest.approx(fit.bse["Intercept"], rel=1e-3)
    assert 3 < est.df < 4  # the seeds' 3 df dominate


def test_crossed_mean_never_reports_less_than_the_seed_or_unit_mean_square_allows():
    # equal seed means (MS_seed = 0); unit means 0.5, 0.5, 0.5, 0.7 around 0.55: MS_unit =
    # 2 (3 * 0.0025 + 0.0225) / 3 = 0.02; residuals +-0.5: MS_res = 2 / 3. The combination
    # (0 + 0.02 - 2/3) would be negative: MS_unit / (S U) rules, with its own df U - 1 = 3
    y = np.array([[0.0, 1.0, 0.0, 1.2], [1.0, 0.0, 1.0, 0.2]])
    est = st.crossed_mean(y)
    assert est.se == pytest.approx(math.sqrt(0.02 / 8)) and est.df == pytest.approx(3)


def test_crossed_mean_with_one_unit_or_one_seed_falls_back_and_says_what_it_is():
    assert st.crossed_mean(np.array([[1.0], [2.0], [4.0]])).method == "t over 3 seeds"
    one_seed = st.crossed_mean(np.array([[1.0, 2.0, 4.0]]), unit="problems")
    assert one_seed.method == "t over 3 problems (1 seed: evaluation noise only)"
    assert one_seed.se == pytest.approx(stats.sem([1.0, 2.0, 4.0]))


def test_linearized_values_average_to_the_ratio_of_sums():
    z = st.linearized(np.array([3.0, 1.0, 8.0]), np.array([2.0, 1.0, 5.0]))
    ratio = 12.0 / 8.0
    # z_u = R + (num_u - R den_u) / mean(den): mean(den) = 8/3
    assert z == pytest.approx([ratio + (3 - 3.0) * 3 / 8, ratio + (1 - 1.5) * 3 / 8,
                                          ratio + (8 - 7.5) * 3 / 8])
    assert z.mean() == pytest.approx(ratio)


def test_a_ratio_difference_is_the_mean_of_the_runs_ratio_differences():
    rng = np.random.default_rng(0)
    den = rng.integers(50, 500, 20).astype(float)
    a = {s: units(den * rng.normal(2.0, 0.1, 20), den) for s in range(3)}
    b = {s: units(den * rng.normal(1.9, 0.1, 20), den) for s in range(3)}
    est = st.paired_unit_difference(a, b, unit="documents")
    ratio = {v: [t.num.sum() / t.den.sum() for t in x.values()] for v, x in (("a", a), ("b", b))}
    assert est.estimate == pytest.approx(np.mean(np.subtract(ratio["a"], ratio["b"])))
    assert est.method == "crossed model over 3 seeds x 20 documents"


def test_units_missing_from_any_seed_are_left_out_of_the_crossed_table():
    a = {0: units([1.0, 2.0, 3.0]), 1: units([2.0, 3.0], ids=["u0", "u1"])}
    b = {0: units([0.0, 0.0, 0.0]), 1: units([0.0, 0.0, 0.0])}
    est = st.paired_unit_difference(a, b)
    assert est.method == "crossed model over 2 seeds x 2 units"
    assert est.estimate == pytest.approx(2.0)


def test_no_common_units_is_a_missing_estimate():
    empty = units([])
    est = st.paired_unit_difference({0: empty, 1: empty}, {0: empty, 1: empty})
    assert est.method == "missing" and math.isnan(est.estimate)


def test_interval_p_value_tost_and_mdd_share_one_variance():
    """From one synthetic seeds x documents table: the four numbers of a primary all rest on
    the same standard error and degrees of freedom."""
    rng = np.random.default_rng(1)
    den = rng.integers(200, 2000, 30).astype(float)
    doc_effect = rng.normal(0, 0.02, 30)
    a = {s: units(den * (1.85 + doc_effect + rng.normal(0, 0.02, 30) + 0.004 * s), den)
         for s in range(3)}
    b = {s: units(den * (1.85 + rng.normal(0, 0.02, 30)), den) for s in range(3)}
    est = st.paired_unit_difference(a, b, unit="documents")
    se, df, margin = est.se, est.df, 0.01
    assert 2 < df < 87 and se > 0
    crit = stats.t.ppf(0.975, df)
    assert (est.high - est.low) / 2 == pytest.approx(crit * se)
    assert est.p_value == pytest.approx(2 * stats.t.sf(abs(est.estimate) / se, df))
    assert est.tost(margin) == pytest.approx(max(stats.t.sf((est.estimate + margin) / se, df),
                                                 stats.t.cdf((est.estimate - margin) / se, df)))
    nc = est.mdd(0.8) / se
    assert stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) == pytest.approx(0.8)
    assert est.mdd_upper(0.8, 0.8) == pytest.approx(
        est.mdd(0.8) * math.sqrt(df / stats.chi2.ppf(0.2, df)))


def test_a_run_level_estimate_agrees_with_statsmodels_tost_and_power():
    d = np.array([0.004, -0.002, 0.006, 0.001, 0.003])
    est = st.seed_mean(d)
    assert est.tost(0.01) == pytest.approx(ttost_paired(d, np.zeros(5), -0.01, 0.01)[0])
    effect = TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8)
    assert est.mdd(0.8) == pytest.approx(effect * d.std(ddof=1), rel=1e-4)


def test_the_mdd_upper_bound_with_two_degrees_of_freedom():
    # one-sided 80% bound of an SD with 2 df: sqrt(2 / chi2_0.2(2)) = sqrt(2 / 0.44629) = 2.1169
    est = st.seed_mean([0.0, 0.01, 0.004])
    assert est.mdd_upper(0.8, 0.8) / est.mdd(0.8) == pytest.approx(2.1169, abs=1e-4)


@pytest.mark.parametrize("df", [1.2, 1.0e7])
def test_the_mdd_is_finite_where_scipys_lower_tail_underflows(df):
    # at these df scipy's non-central t gives NaN for the negligible lower tail; the
    # noncentrality then solves the upper tail alone: P(T > t_crit) = 0.8
    from scipy import stats

    nc = st._noncentrality(df, 0.05, 0.8)
    assert stats.nct.sf(stats.t.ppf(0.975, df), df, nc) == pytest.approx(0.8, abs=1e-6)


def simulated_run_level(rng, seeds, truth, sd):
    """Per-seed differences of a run-level metric: one number per run and variant."""
    return [st.seed_mean(d) for d in rng.normal(truth, sd, (STUDIES, seeds))]


def simulated_unit_level(rng, seeds, truth, n_units=56):
    """A - B of held-out bits per byte, ratio of sums over documents, with variance
    components like the study's: a document difficulty and a seed effect both variants share
    (they cancel in the pairing), a seed effect of the difference, a document effect of the
    difference that is the same in every seed (units crossed with seeds), and seed x
    document noise per variant. Each run's documents are linearized, then the crossed model
    (what paired_unit_difference does, without the DataFrames)."""
    out = []
    for _ in range(STUDIES):
        n_bytes = np.exp(rng.normal(7.5, 0.6, n_units))             # document sizes
        difficulty = rng.normal(1.85, 0.3, n_units)
        effect = rng.normal(0, 0.015, n_units)                     # consistent across seeds
        table = np.empty((seeds, n_units))
        for s in range(seeds):
            shared = difficulty + rng.normal(0, 0.01)
            rate_a = shared + truth + rng.normal(0, 0.003) + effect \
                + rng.normal(0, 0.015, n_units)
            rate_b = shared + rng.normal(0, 0.015, n_units)
            table[s] = (st.linearized(rate_a * n_bytes, n_bytes)
                       - st.linearized(rate_b * n_bytes, n_bytes))
        out.append(st.crossed_mean(table, unit="documents"))
    return out


def coverage(estimates, truth):
    return float(np.mean([e.low <= truth <= e.high for e in estimates]))


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_run_level_interval_covers_the_truth_at_95_percent(seeds):
    covered = coverage(simulated_run_level(np.random.default_rng(seeds), seeds, 0.01, 0.02),
                       0.01)
    assert 0.93 <= covered <= 0.97


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_crossed_unit_level_interval_covers_the_truth_at_95_percent(seeds):
    covered = coverage(simulated_unit_level(np.random.default_rng(10 + seeds), seeds, 0.004),
                       0.004)
    assert 0.93 <= covered <= 0.97


def test_exact_mcnemar_is_the_two_sided_binomial_test():
    assert st.mcnemar_exact(0, 6) == pytest.approx(2 * 0.5 ** 6)
    assert st.mcnemar_exact(4, 4) == pytest.approx(1.0)
    assert st.mcnemar_exact(0, 0) == 1.0


def test_pass_at_1_tests_each_seed_and_never_pools_seeds():
    tasks = [f"t{i}" for i in range(20)]
    a = {s: pd.Series(np.arange(20) < 8, index=tasks) for s in (0, 1)}
    b = {0: pd.Series(np.zeros(20, bool), index=tasks),
         1: pd.Series(np.zeros(20, bool), index=tasks)}
    out = st.pass_at_1_paired(a, b)
    assert [r["p_value"] for r in out["per_seed"]] == pytest.approx([2 * 0.5 ** 8] * 2)
    assert not out["nothing_passes"]
    assert out["seed_t"].estimate == pytest.approx(0.4)


def test_pass_at_1_says_when_nothing_passes():
    none = {s: pd.Series(np.zeros(5, bool)) for s in (0, 1, 2)}
    out = st.pass_at_1_paired(none, none)
    assert out["nothing_passes"] and all(math.isnan(r["p_value"]) for r in out["per_seed"])


def test_holm_on_known_p_values():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04) = 0.03, 0.06, 0.06
    adjusted, rejected = st.holm([0.01, 0.04, 0.03, math.nan], alpha=0.05)
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert rejected.tolist() == [True, False, False, False]


def test_benjamini_hochberg_on_known_p_values():
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): p m / rank = 0.04, 0.06, 0.0533, 0.5; then the
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.5
    q = st.benjamini_hochberg([0.01, 0.04, math.nan, 0.03, 0.5])
    assert q[[0, 1, 3, 4]] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert math.isnan(q[2])


def test_tost_accepts_a_true_zero_difference_inside_the_margin():
    rng = np.random.default_rng(6)
    accepted = sum(st.seed_mean(rng.normal(0.0, 0.004, 5)).tost(0.01) < 0.05
                   for _ in range(200))
    assert accepted / 200 > 0.8


def test_tost_rejects_equivalence_for_a_difference_larger_than_the_margin():
    rng = np.random.default_rng(7)
    claimed = sum(st.seed_mean(rng.normal(0.02, 0.004, 5)).tost(0.01) < 0.05
                  for _ in range(200))
    assert claimed == 0


def test_minimum_detectable_difference_has_80_percent_power():
    d = np.array([0.1, -0.2, 0.05, 0.3, -0.1])
    mdd = st.seed_mean(d).mdd(0.8)
    n, sd = len(d), d.std(ddof=1)
    # power of the two-sided one-sample t at a true mean of mdd: non-central t, nc = mdd/(sd/√n)
    crit = stats.t.ppf(0.975, n - 1)
    nc = mdd / (sd / math.sqrt(n))
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=1e-4)
    assert math.isnan(st.seed_mean([0.1]).mdd(0.8))


@pytest.mark.parametrize(("estimate", "p", "tost_p", "expected"), [
    (-0.5, 0.01, math.nan, "better"), (0.5, 0.01, math.nan, "worse"),
    (0.001, 0.6, 0.01, "equivalent"), (0.001, 0.6, 0.2, "inconclusive"),
    (0.001, math.nan, math.nan, "inconclusive")])
def test_verdict_needs_a_test_for_every_word(estimate, p, tost_p, expected):
    assert st.verdict(estimate, "lower", p, 0.05, tost_p) == expected


def test_counts_get_no_interval_and_max_statistics_the_seed_t():
    count = st.summarise("count", {0: 3, 1: 3, 2: 4})
    assert count.estimate == pytest.approx(10 / 3) and math.isnan(count.low)
    assert count.method.startswith("none (a count")
    assert st.summarise("max", {0: 0.3, 1: 0.4, 2: 0.35}).method == "t over 3 seeds"
    with pytest.raises(ValueError, match="unknown metric kind 'median'"):
        st.summarise("median", {0: 1.0})


def test_a_per_unit_cell_uses_the_crossed_model_over_its_units():
    table = {s: units([1.0 + s, 2.0, 4.0 - s], ids=["x", "y", "z"]) for s in range(2)}
    cell = st.summarise("per_unit", {0: 7 / 3, 1: 7 / 3}, units_by_seed=table, unit="problems")
    assert cell.method == "crossed model over 2 seeds x 3 problems"
    assert cell.estimate == pytest.approx(7 / 3)
