"""Study statistics on synthetic studies with a known truth (analysis/statistics.py)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from moebalance.analysis import statistics as st

SIMS = 300  # simulated studies per coverage check; binomial sd of a 95% rate is 0.013


def simulate_study(rng, seeds, problems, seed_sd, problem_sd, truth=0.0):
    """Per-problem values of one study: a shared seed effect plus problem noise per seed."""
    return [truth + rng.normal(0, seed_sd) + rng.normal(0, problem_sd, problems)
            for _ in range(seeds)]


def test_seed_interval_matches_scipy_t_interval():
    x = np.array([2.1, 2.5, 1.9, 2.8, 2.2])
    iv = st.seed_interval(x, 0.95)
    expected = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert iv.estimate == pytest.approx(x.mean())
    assert (iv.low, iv.high) == pytest.approx(expected)
    assert iv.method == "t over 5 seeds"


def test_one_seed_has_no_seed_level_interval_and_says_so():
    iv = st.seed_interval([3.0])
    assert iv.estimate == 3.0 and math.isnan(iv.low) and math.isnan(iv.high)
    assert "1 seed" in iv.method


def test_seed_t_interval_covers_the_truth_at_about_95_percent():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(SIMS):
        iv = st.seed_interval(rng.normal(2.0, 0.3, 3))
        covered += iv.low <= 2.0 <= iv.high
    assert 0.91 <= covered / SIMS <= 0.99


def test_paired_seed_difference_is_the_paired_t_test():
    a = {0: 1.0, 1: 1.4, 2: 1.1, 3: 1.3}
    b = {0: 0.8, 1: 1.0, 2: 1.0, 3: 0.9, 7: 5.0}  # seed 7 has no partner and is left out
    iv = st.paired_seed_difference(a, b)
    ref = stats.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)])
    assert iv.estimate == pytest.approx(0.275)
    assert iv.p_value == pytest.approx(ref.pvalue)
    assert iv.n_seeds == 4 and iv.method == "paired t over 4 seeds"


def test_hierarchical_bootstrap_on_a_hand_case_resamples_seeds_first():
    # units inside a seed are identical, so only the seed draw moves a replicate: the
    # replicates are means of 2 draws from {1, 3}: 1, 2 or 3
    iv = st.hierarchical_bootstrap([np.ones(4), np.full(4, 3.0)], 400,
                                   np.random.default_rng(0), 0.95)
    assert iv.estimate == 2.0 and (iv.low, iv.high) == (1.0, 3.0)
    assert iv.method == "two-stage bootstrap: 2 seeds, then 4 problems within seed"


def test_hierarchical_bootstrap_covers_the_truth_at_about_95_percent():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(SIMS):
        groups = simulate_study(rng, seeds=12, problems=15, seed_sd=1.0, problem_sd=1.0)
        iv = st.hierarchical_bootstrap(groups, 200, rng)
        covered += iv.low <= 0.0 <= iv.high
    assert 0.90 <= covered / SIMS <= 0.99


def test_a_problem_only_bootstrap_under_covers_when_seeds_vary():
    """The old method: average the seeds per problem, then bootstrap problems only."""
    rng = np.random.default_rng(3)
    covered_problem_only = covered_two_stage = 0
    for _ in range(SIMS):
        groups = simulate_study(rng, seeds=3, problems=40, seed_sd=0.5, problem_sd=1.0)
        pooled = st.hierarchical_bootstrap([np.mean(groups, axis=0)], 200, rng)
        covered_problem_only += pooled.low <= 0.0 <= pooled.high
        seed_t = st.seed_interval([g.mean() for g in groups])
        covered_two_stage += seed_t.low <= 0.0 <= seed_t.high
    assert covered_problem_only / SIMS < 0.6
    assert covered_two_stage / SIMS > 0.9


def test_the_wider_interval_rules_a_per_unit_comparison():
    rng = np.random.default_rng(4)
    tasks = [f"t{i}" for i in range(30)]
    a = {s: pd.Series(rng.normal(s, 0.1, 30), index=tasks) for s in range(3)}
    b = {s: pd.Series(rng.normal(0, 0.1, 30), index=tasks) for s in range(3)}
    both = st.compare_per_unit(a, b, 300, rng)
    assert both.seed_t.method == "paired t over 3 seeds"
    assert both.bootstrap.method.startswith("two-stage bootstrap: 3 seeds")
    wider = max(both.seed_t, both.bootstrap, key=lambda iv: iv.width)
    assert both.ruling is wider


def test_with_one_seed_the_bootstrap_rules_and_says_it_is_evaluation_noise():
    rng = np.random.default_rng(5)
    a = {0: pd.Series(rng.normal(1, 1, 50))}
    b = {0: pd.Series(rng.normal(0, 1, 50))}
    ruling = st.compare_per_unit(a, b, 300, rng, unit="documents").ruling
    assert ruling.method == "bootstrap over 50 documents (1 seed: evaluation noise only)"
    assert ruling.low < ruling.estimate < ruling.high


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


def test_tost_accepts_a_true_zero_difference_inside_the_margin():
    rng = np.random.default_rng(6)
    accepted = sum(st.tost(rng.normal(0.0, 0.004, 5), margin=0.01) < 0.05 for _ in range(200))
    assert accepted / 200 > 0.8


def test_tost_rejects_equivalence_for_a_difference_larger_than_the_margin():
    rng = np.random.default_rng(7)
    claimed = sum(st.tost(rng.normal(0.02, 0.004, 5), margin=0.01) < 0.05 for _ in range(200))
    assert claimed == 0


def test_minimum_detectable_difference_has_80_percent_power():
    d = np.array([0.1, -0.2, 0.05, 0.3, -0.1])
    mdd = st.minimum_detectable_difference(d, alpha=0.05, power=0.8)
    n, sd = len(d), d.std(ddof=1)
    # power of the two-sided one-sample t at a true mean of mdd: non-central t, nc = mdd/(sd/√n)
    crit = stats.t.ppf(0.975, n - 1)
    nc = mdd / (sd / math.sqrt(n))
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=1e-4)
    assert math.isnan(st.minimum_detectable_difference([0.1]))


@pytest.mark.parametrize(("estimate", "p", "tost_p", "expected"), [
    (-0.5, 0.01, math.nan, "better"), (0.5, 0.01, math.nan, "worse"),
    (0.001, 0.6, 0.01, "equivalent"), (0.001, 0.6, 0.2, "inconclusive"),
    (0.001, math.nan, math.nan, "inconclusive")])
def test_verdict_needs_a_test_for_every_word(estimate, p, tost_p, expected):
    diff = st.Interval(estimate, estimate - 1, estimate + 1, "paired t over 3 seeds")
    assert st.verdict(diff, "lower", p, 0.05, tost_p) == expected


def test_counts_get_no_interval_and_max_statistics_only_the_seed_t():
    count = st.summarise("count", {0: 3, 1: 3, 2: 4})
    assert count.estimate == pytest.approx(10 / 3) and math.isnan(count.low)
    assert count.method.startswith("none (a count")
    assert st.summarise("max", {0: 0.3, 1: 0.4, 2: 0.35}).method == "t over 3 seeds"
    with pytest.raises(ValueError, match="unknown metric kind 'median'"):
        st.summarise("median", {0: 1.0})


def test_the_bootstrap_p_value_is_never_zero():
    iv = st.hierarchical_bootstrap([np.full(5, 3.0), np.full(5, 4.0)], 99,
                                   np.random.default_rng(0))
    assert iv.p_value == pytest.approx(2 / 100)  # no replicate at or below 0: 2 (1 + 0) / 100
