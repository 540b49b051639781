"""The compare stage: its statistics on known distributions, and a run on synthetic run folders."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from moebalance.analysis import compare as c
from moebalance.analysis import utilization as u
from moebalance.cli import main

LAYERS, E, K, STEPS, TASKS = [1, 2], 8, 2, 40, 30


def test_t_interval_matches_scipy():
    x = np.array([2.1, 2.5, 1.9, 2.8, 2.2])
    mean, lo, hi = c.t_interval(x, 0.95)
    expected = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean())
    assert (lo, hi) == pytest.approx(expected)


def test_t_interval_of_one_value_has_no_bounds():
    mean, lo, hi = c.t_interval([3.0])
    assert mean == 3.0 and math.isnan(lo) and math.isnan(hi)


def test_bootstrap_ci_of_a_mean_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    covered, trials = 0, 300
    for _ in range(trials):
        x = rng.normal(1.0, 2.0, size=60)
        measure = c.Measure.mean_of(x, "units")
        lo, hi = c.bootstrap_ci(measure.stat(c.bootstrap_weights(len(x), 400, rng)),
                                measure.value)
        covered += lo <= 1.0 <= hi
    assert 0.89 <= covered / trials <= 0.99


def test_percentile_ci_takes_the_quantiles_of_the_replicates():
    replicates = np.linspace(-1, 1, 2001)
    lo, hi = c.bootstrap_ci(replicates, 0.0, 0.9)
    assert (lo, hi) == pytest.approx((-0.9, 0.9))


def test_basic_ci_reflects_the_replicates_around_the_estimate():
    replicates = np.linspace(1.0, 2.0, 2001)  # resampling bias: replicates sit above 0.9
    lo, hi = c.bootstrap_ci(replicates, 0.9, 0.9, basic=True)
    assert (lo, hi) == pytest.approx((2 * 0.9 - 1.95, 2 * 0.9 - 1.05))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=30), st.integers(1, 20))
def test_stratified_bootstrap_keeps_each_stratum_size(strata, replicates):
    strata = np.array(strata)
    w = c.bootstrap_weights(len(strata), replicates, np.random.default_rng(0), strata)
    for label in np.unique(strata):
        np.testing.assert_array_equal(w[:, strata == label].sum(1), (strata == label).sum())


def test_exact_mcnemar_is_the_two_sided_binomial_test():
    assert c.mcnemar_exact(0, 6) == pytest.approx(2 * 0.5 ** 6)
    assert c.mcnemar_exact(4, 4) == pytest.approx(1.0)
    assert c.mcnemar_exact(0, 0) == 1.0


# ---------------------------------------------------------------- synthetic run folders

def write_run(folder, rng, *, nll_shift=0.0, skew=0.0, passes=0):
    """A fake run: metrics, routing, SFT metrics, HumanEval files and utilization files."""
    for stage in ("pretrain", "sft"):
        (folder / stage).mkdir(parents=True)
        pd.DataFrame({"step": range(STEPS), "lm_loss": 3.0, "loss": 3.0,
                      "tokens_per_s": rng.normal(1000, 50, STEPS),
                      "val_loss": [math.nan] * (STEPS - 1) + [2.5 + nll_shift / 10]}
                     ).to_parquet(folder / stage / "metrics.parquet")
    steps, layers, experts = np.meshgrid(range(STEPS), LAYERS, range(E), indexing="ij")
    probs = np.exp(skew * np.arange(E)) / np.exp(skew * np.arange(E)).sum()
    tokens = rng.multinomial(64 * K, probs, size=(STEPS, len(LAYERS)))
    pd.DataFrame({"step": steps.ravel(), "layer": layers.ravel(), "expert": experts.ravel(),
                  "tokens": tokens.ravel(), "bias": rng.normal(0, 0.01, steps.size),
                  "mean_score": 0.5}).to_parquet(folder / "pretrain" / "routing.parquet")
    he = folder / "humaneval"
    he.mkdir()
    tasks = [f"HumanEval/{i}" for i in range(TASKS)]
    passed = np.zeros(TASKS, dtype=bool)
    passed[:passes] = True
    pd.DataFrame({"task_id": tasks, "sample": 0, "status": "passed", "passed": passed,
                  "seconds": 0.1}).to_parquet(he / "executions.parquet")
    (he / "summary.json").write_text(json.dumps({"pass@1": passes / TASKS}))
    nll = rng.gamma(5, 10, TASKS) + nll_shift
    pd.DataFrame({"task_id": tasks, "nll": nll, "n_tokens": 50,
                  "bits_per_byte": nll / 100}).to_parquet(he / "solution_nll.parquet")
    write_utilization(folder / "utilization", rng, probs)


def write_utilization(out, rng, probs):
    out.mkdir()
    windows = [u.Window(domain, rng.integers(0, 50, 32), rng.integers(0, 8, 32).astype(np.int8))
               for domain in ("library", "test", "humaneval") for _ in range(4)]
    T = sum(len(w.token_ids) for w in windows)
    tables = {"counts": [], "coactivation": [], "vocab": []}
    picks = {}
    for model in ("pretrain", "sft"):
        picks[model] = np.stack([np.stack([rng.choice(E, K, replace=False, p=probs)
                                           for _ in range(T)]) for _ in LAYERS], axis=1)
        tables["counts"].append(u.count_table(model, windows, picks[model], LAYERS, E))
        tables["coactivation"].append(u.coactivation_table(model, picks[model], LAYERS, E))
        tables["vocab"].append(u.vocab_table(model, windows, picks[model], LAYERS, E, 2))
    for name, parts in tables.items():
        pd.concat([p.to_pandas() for p in parts]).to_parquet(out / f"{name}.parquet")
    u.saturation_table(windows, picks["pretrain"], picks["sft"], LAYERS).to_pandas() \
        .to_parquet(out / "saturation.parquet")
    (out / "meta.json").write_text(json.dumps({
        "top_k": K, "routed_experts": E, "layers": LAYERS, "token_classes": list(u.TOKEN_CLASSES),
        "models": ["pretrain", "sft"]}))


@pytest.fixture
def study(tmp_path):
    def make(seeds, *, lf_shift=0.0, lf_passes=0, aux_passes=0):
        rng = np.random.default_rng(0)
        runs = tmp_path / "runs"
        for seed in seeds:
            write_run(runs / "loss_free" / f"seed{seed}", rng, nll_shift=lf_shift,
                      passes=lf_passes)
            write_run(runs / "aux_loss" / f"seed{seed}", rng, skew=0.3, passes=aux_passes)
        return runs
    return make


def compare(tmp_path, runs, seeds):
    assert main(["compare", "--runs-dir", str(runs), "--variants", "loss_free", "aux_loss",
                 "--seeds", *map(str, seeds), "--tables-dir", str(tmp_path / "tables"),
                 "--figures-dir", str(tmp_path / "figures"), "--bootstrap", "200",
                 "--no-tracking"]) == 0
    return (pd.read_csv(tmp_path / "tables" / "comparison.csv"),
            (tmp_path / "tables" / "comparison.md").read_text())


def test_compare_with_one_seed_uses_bootstrap_cis_labelled_as_such(tmp_path, study):
    table, md = compare(tmp_path, study([0]), [0])
    nll = table[table.metric == "solution NLL (nats/problem)"].iloc[0]
    assert nll.ci == "percentile bootstrap over problems (1 seed)"
    assert nll.ci_low < nll["mean"] < nll.ci_high
    maxvio = table[table.metric == "MaxVio_global (pretrain)"].set_index("variant")
    assert maxvio.ci.iloc[0] == "basic bootstrap over windows (1 seed)"
    assert maxvio.loc["aux_loss", "mean"] > maxvio.loc["loss_free", "mean"]
    assert table[table.metric == "val loss (pretrain)"].ci.iloc[0] == "none (1 seed)"
    assert {"pass@1", "MaxVio_batch (last 25%)", "I(expert; domain) bits (pretrain)",
            "router saturation pretrain->SFT", "tokens/s (pretrain)"} <= set(table.metric)
    assert "nothing passes" in md
    for name in ("maxvio_batch", "bias_trajectories", "nll_vs_maxvio",
                 "token_class_specialization", "relative_load_loss_free",
                 "relative_load_aux_loss"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
    layers = pd.read_csv(tmp_path / "tables" / "utilization_layers.csv")
    assert len(layers) == 2 * 2 * len(LAYERS)  # variants x models x layers
    assert (tmp_path / "tables" / "relative_load.csv").is_file()


def test_compare_with_several_seeds_uses_t_intervals(tmp_path, study):
    table, _ = compare(tmp_path, study([0, 1, 2]), [0, 1, 2])
    row = table[table.metric == "solution NLL (nats/problem)"].iloc[0]
    assert row.ci == "t over 3 seeds" and row.n_seeds == 3


def test_paired_comparison_says_no_significant_difference_when_there_is_none(tmp_path, study):
    _, md = compare(tmp_path, study([0]), [0])
    assert "no significant difference between loss_free and aux_loss" in md


def test_paired_comparison_detects_a_clear_nll_gain(tmp_path, study):
    _, md = compare(tmp_path, study([0], lf_shift=-20.0), [0])
    assert "loss_free is significantly BETTER than aux_loss" in md


def test_mcnemar_runs_when_anything_passes(tmp_path, study):
    _, md = compare(tmp_path, study([0], lf_passes=10, aux_passes=0), [0])
    assert "exact McNemar p = 0.00195" in md and "(significant)" in md


def test_a_missing_pretrain_run_is_a_usage_error(tmp_path, capsys):
    assert main(["compare", "--runs-dir", str(tmp_path), "--variants", "x", "--seeds", "0",
                 "--tables-dir", str(tmp_path / "t"), "--figures-dir", str(tmp_path / "f"),
                 "--no-tracking"]) == 2
    assert "metrics.parquet not found" in capsys.readouterr().err


def test_missing_optional_inputs_are_listed_and_their_rows_left_out(tmp_path, study):
    import shutil

    runs = study([0])
    shutil.rmtree(runs / "aux_loss" / "seed0" / "humaneval")
    table, md = compare(tmp_path, runs, [0])
    assert "Missing inputs" in md and "aux_loss/seed0/humaneval/summary.json" in md
    nll = table[table.metric == "solution NLL (nats/problem)"].set_index("variant")
    assert nll.loc["aux_loss", "ci"] == "missing" and np.isfinite(nll.loc["loss_free", "mean"])


def test_saturation_curve_weights_tokens_within_a_layer_and_averages_layers():
    table = pd.DataFrame({
        "step": [50, 50, 50, 150, 150],
        "layer": [1, 1, 2, 1, 2],
        "domain": ["a", "b", "a", "a", "a"],
        "tokens": [10, 30, 40, 40, 40],
        "overlap": [10, 0, 20, 40, 40],
    })
    curve = c.saturation_curve(table)
    # layer 1 at step 50: 10/40; layer 2: 20/40; mean 0.375. The final model: 1.
    assert curve.to_dict() == {50: pytest.approx(0.375), 150: pytest.approx(1.0)}
