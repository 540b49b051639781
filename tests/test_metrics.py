"""Utilization metrics on hand-made loads: uniform, collapsed, independent, hand-computed."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moebalance.analysis import metrics as m
from moebalance.maxvio import max_violation

N, K = 8, 2


def collapsed(tokens: int = 100) -> np.ndarray:
    load = np.zeros(N)
    load[:K] = tokens  # every token picks experts 0 and 1
    return load


def test_uniform_load_has_no_violation_full_entropy_and_zero_gini():
    load = np.full(N, 25.0)
    assert max_violation(load) == 0
    assert m.coefficient_of_variation(load) == 0
    assert m.normalized_entropy(load) == pytest.approx(1.0)
    assert m.gini(load) == 0
    assert m.dead_experts(load) == 0


def test_collapsed_load_reaches_the_known_maxima():
    load = collapsed()
    assert max_violation(load) == pytest.approx(N / K - 1)
    assert m.coefficient_of_variation(load) == pytest.approx(math.sqrt(N / K - 1))
    assert m.normalized_entropy(load) == pytest.approx(math.log(K) / math.log(N))
    assert m.gini(load) == pytest.approx(1 - K / N)
    assert m.dead_experts(load) == N - K


def test_max_violation_hand_computed():
    # loads 1, 2, 3, 6: mean 3, max 6 -> (6 - 3) / 3 = 1
    assert max_violation([1, 2, 3, 6]) == pytest.approx(1.0)


def test_gini_hand_computed():
    # 0, 0, 0, 4: sum |xi - xj| = 2 * 3 * 4 = 24; 2 N^2 mean = 2 * 16 * 1 = 32 -> 0.75
    assert m.gini([0, 0, 0, 4]) == pytest.approx(0.75)


def test_entropy_hand_computed():
    # p = (1/2, 1/4, 1/4, 0): H = 1.5 bits; normalised by log2(4) = 2 -> 0.75
    assert m.normalized_entropy([2, 1, 1, 0]) == pytest.approx(0.75)


def test_dead_experts_are_below_one_percent_of_the_mean():
    # mean 100: 0.5 is dead, 1.0 is exactly 1% and alive
    assert m.dead_experts([0.5, 1.0, 198.5, 200]) == 1


def test_metrics_act_on_the_last_axis_of_stacked_layers():
    counts_LE = np.stack([np.full(N, 25.0), collapsed()])
    np.testing.assert_allclose(max_violation(counts_LE), [0, N / K - 1])
    summary = m.layer_summary(counts_LE)
    assert summary["gini"].shape == (2,)


def test_maxvio_batch_averages_layers_per_step():
    counts_NLE = np.array([[[1, 2, 3, 6], [3, 3, 3, 3]]])  # one step, two layers: 1 and 0
    np.testing.assert_allclose(m.maxvio_batch(counts_NLE), [0.5])


def test_relative_load_is_one_when_balanced_and_n_over_k_when_collapsed():
    np.testing.assert_allclose(m.relative_load(np.full(N, 25.0), K), np.ones(N))
    rel = m.relative_load(collapsed(), K)
    np.testing.assert_allclose(rel[:K], N / K)
    np.testing.assert_allclose(rel[K:], 0)


def test_specialization_sits_at_the_k_over_n_baseline_under_uniform_routing():
    counts_GE = np.full((3, N), 10.0 * K)  # three domains, each spread evenly
    spec = m.specialization(counts_GE, K)
    np.testing.assert_allclose(spec, K / N)
    np.testing.assert_allclose(m.concentration(spec, K), K / N)


def test_specialization_hand_computed():
    # 10 tokens of one domain, top-2: expert 0 always, expert 1 six times, expert 2 four times
    spec = m.specialization(np.array([[10, 6, 4, 0]]), 2)
    np.testing.assert_allclose(spec, [[1.0, 0.6, 0.4, 0.0]])
    assert m.concentration(spec, 2)[0] == pytest.approx(0.8)


def test_a_domain_that_always_uses_the_same_experts_has_concentration_one():
    counts_GE = np.zeros((2, N))
    counts_GE[0, :K] = 50
    counts_GE[1, K:2 * K] = 70
    np.testing.assert_allclose(m.concentration(m.specialization(counts_GE, K), K), 1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 100), min_size=2, max_size=6),
       st.lists(st.floats(0.01, 100), min_size=2, max_size=10))
def test_mutual_information_is_zero_for_independent_routing(p_group, p_expert):
    joint = np.outer(p_group, p_expert) * 1000
    assert m.mutual_information(joint) == pytest.approx(0.0, abs=1e-9)


def test_mutual_information_of_a_deterministic_map_is_the_group_entropy():
    # two equally likely domains, each on its own experts: I = H(domain) = 1 bit
    joint = np.array([[5.0, 5.0, 0, 0], [0, 0, 5.0, 5.0]])
    assert m.mutual_information(joint) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=6, max_size=6))
def test_mutual_information_is_non_negative_and_bounded(cells):
    joint = np.array(cells, dtype=float).reshape(2, 3) + 1
    mi = m.mutual_information(joint)
    assert -1e-12 <= mi <= 1.0 + 1e-12  # at most H(group) <= log2(2)


@settings(max_examples=50, deadline=None)
# loads are counts or shares: no subnormal floats, whose mean underflows to 0
@given(st.lists(st.floats(0, 1000, allow_subnormal=False), min_size=2, max_size=16)
       .filter(lambda v: sum(v) > 1e-6))
def test_balance_metrics_stay_in_range(load):
    load = np.array(load)
    n = len(load)
    assert -1e-9 <= max_violation(load) <= n - 1 + 1e-9
    assert -1e-9 <= m.normalized_entropy(load) <= 1 + 1e-9
    assert -1e-9 <= m.gini(load) <= (n - 1) / n + 1e-9


def test_coactivation_hand_computed():
    # tokens pick {0,1}, {0,1}, {0,2}: N(0)=3, N(1)=2, N(2)=1, N(0,1)=2, N(0,2)=1
    topk = np.array([[0, 1], [0, 1], [0, 2]])
    onehot = np.zeros((3, 3))
    np.put_along_axis(onehot, topk, 1.0, axis=1)
    ca = m.coactivation(onehot.T @ onehot)
    np.testing.assert_allclose(ca, [[0, 2 / 3, 1 / 3], [1, 0, 0], [1, 0, 0]])


def test_topk_overlap_counts_shared_choices_whatever_their_order():
    final = np.array([[0, 1], [2, 3]])
    early = np.array([[1, 0], [2, 5]])  # 2 of 2, then 1 of 2
    np.testing.assert_allclose(m.topk_overlap(early, final), [1.0, 0.5])
    assert m.topk_overlap(early, final).mean() == pytest.approx(0.75)  # router saturation
    np.testing.assert_array_equal(m.topk_overlap(final, final), [1.0, 1.0])


def test_topk_overlap_carries_leading_axes():
    final_TLK = np.array([[[0, 1], [2, 3]], [[4, 5], [6, 7]]])  # two tokens, two layers
    early_TLK = np.array([[[1, 0], [3, 4]], [[0, 2], [6, 7]]])
    np.testing.assert_allclose(m.topk_overlap(early_TLK, final_TLK), [[1.0, 0.5], [0.0, 1.0]])
