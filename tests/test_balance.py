"""Held-out balance: the sampling floor, the figures of one routing pass, and one code path
for the pretraining stage's final validation, the sweep's rule and utilization."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from moe_helpers import ROUTED_TINY, tokenizer_in

from moebalance.balance import (
    BalanceSet,
    bits_per_byte,
    measure,
    summarize,
    training_aggregate,
)
from moebalance.config import BalanceSetSettings, ModelSettings
from moebalance.data.balance_set import DomainStream, draw
from moebalance.maxvio import expected_max_normal, sampling_floor
from moebalance.model import build_model


def test_expected_maximum_of_normals_matches_the_tabulated_values():
    # E[max of N standard normals]: 1.4236 (8), 1.7660 (16), 2.0697 (32) (Harter 1961)
    assert [round(expected_max_normal(n), 4) for n in (8, 16, 32)] == [1.4236, 1.7660, 2.0697]


def test_sampling_floor_hand_computed_and_against_simulated_balanced_routing():
    # 100 tokens to 2 of 8 experts: z_8 * sqrt((8 - 2) / (100 * 2)) = 1.4236 * 0.17321
    assert sampling_floor(100, 8, 2) == pytest.approx(1.42360 * math.sqrt(6 / 200), rel=1e-4)
    rng = np.random.default_rng(0)
    simulated = []
    for _ in range(400):
        picks = np.argsort(rng.random((2000, 16)), axis=1)[:, :4]  # 4 distinct of 16
        counts = np.bincount(picks.reshape(-1), minlength=16)
        simulated.append((counts.max() - counts.mean()) / counts.mean())
    assert np.mean(simulated) == pytest.approx(sampling_floor(2000, 16, 4), rel=0.08)


def fake_set(domains, halves, subset, seq_len=2) -> BalanceSet:
    W = len(domains)
    return BalanceSet(np.zeros((W, seq_len + 1), dtype=np.int64),
                      np.zeros((W, seq_len + 1), dtype=np.int64),
                      np.ones((W, seq_len + 1), dtype=np.int64), np.array(domains),
                      np.array([f"d{w}" for w in range(W)]), np.array(halves),
                      np.array(subset), eot_id=0, meta={})


def test_summary_of_hand_made_counts():
    # 4 windows of 2 tokens, top-1 of 2 experts, one layer
    counts_WLE = np.array([[[2, 0]], [[1, 1]], [[0, 2]], [[2, 0]]])
    bset = fake_set(["a", "a", "b", "b"], [0, 1, 0, 1], [True, False, True, False])
    s = summarize(counts_WLE, bset, top_k=1)
    assert s["maxvio_global"] == pytest.approx(0.25)       # loads [5, 3], mean 4
    assert s["maxvio_half"] == pytest.approx([0.0, 0.5])   # windows 0, 2: [2, 2]; 1, 3: [3, 1]
    assert s["split_half_difference"] == pytest.approx(0.5)
    assert s["maxvio_subset"] == pytest.approx(0.0)        # windows 0, 2: [2, 2]
    assert s["subset_difference"] == pytest.approx(0.25)
    assert s["domains"]["a"]["maxvio_global"] == pytest.approx(0.5)  # windows 0, 1: [3, 1]
    assert s["domains"]["b"]["maxvio_global"] == pytest.approx(0.0)
    assert s["routed_tokens"] == 8
    assert s["maxvio_floor"] == pytest.approx(sampling_floor(8, 2, 1))


def test_training_aggregate_sums_the_last_steps_that_route_as_many_tokens():
    # top-1, 2 experts, one layer; 3 tokens per step; 6 held-out tokens -> the last 2 steps
    counts_NLE = np.array([[[3, 0]], [[2, 1]], [[0, 3]]])
    assert training_aggregate(counts_NLE, 1, 6) == (pytest.approx(1 / 3), 2)  # [2, 4], mean 3
    assert training_aggregate(counts_NLE, 1, 100)[1] == 3                       # all there is


def test_bits_per_byte_is_a_ratio_over_text_tokens_only():
    bset = fake_set(["a", "a"], [0, 1], [True, False], seq_len=2)
    bset.input_ids_WS = np.array([[5, 6, 0], [5, 6, 7]])     # window 0 predicts end-of-text
    bset.target_bytes_WS = np.array([[9, 2, 0], [9, 3, 4]])
    nll_T = np.array([1.0, 100.0, 2.0, 3.0]) * math.log(2)  # the 100 is end-of-text's
    assert bits_per_byte(nll_T, bset) == pytest.approx((1 + 2 + 3) / (2 + 3 + 4))


@pytest.fixture(scope="module")
def model_and_set(tmp_path_factory, humaneval_tokenizer_dir):
    """A tiny routed model (its biases skewed) with its tokenizer, and a balance set of 24
    windows of 16 tokens."""
    import pyarrow as pa

    folder = tmp_path_factory.mktemp("balance")
    tokenizer = tokenizer_in(folder / "model", humaneval_tokenizer_dir)
    model = build_model(ModelSettings(**ROUTED_TINY), len(tokenizer), tokenizer.eos_token_id,
                        tokenizer.pad_token_id, seed=3)
    model.save_pretrained(folder / "model")
    rng = np.random.default_rng(0)
    n = 4000
    stream = DomainStream(ids=rng.integers(2, len(tokenizer), n),
                          classes=np.zeros(n, dtype=np.int8), n_bytes=np.full(n, 3),
                          document=np.repeat(np.arange(8), n // 8),
                          start=np.tile(np.arange(n // 8), 8),
                          shas=[f"{d:064x}" for d in range(8)])
    rows = draw({"code": stream}, {"code": 1}, "val", BalanceSetSettings(windows=24, seq_len=16))
    path = folder / "val.parquet"
    pq.write_table(pa.table(rows), path)
    path.with_suffix(".json").write_text(json.dumps({"eot_id": tokenizer.eos_token_id,
                                                     "windows": 24}))
    return folder, model, path


def test_final_validation_sweep_and_utilization_agree_on_one_model_and_set(model_and_set,
                                                                           tmp_path,
                                                                           three_problems):
    from moebalance.analysis.sweep_select import run_summary
    from moebalance.cli import main
    from moebalance.training.stage import final_balance

    folder, model, path = model_and_set
    trainer_side = final_balance(model, str(path), tmp_path / "balance.json")
    routing = pd.DataFrame([{"step": 0, "layer": layer, "expert": e, "tokens": 1, "bias": 0.0}
                            for layer in (1, 2) for e in range(8)])
    sweep_side = run_summary(pd.DataFrame({"step": [0], "val_loss": [1.0]}), routing,
                             json.loads((tmp_path / "balance.json").read_text()))
    routing_file = tmp_path / "routing.parquet"
    routing.to_parquet(routing_file)
    out = tmp_path / "utilization"
    assert main(["utilization", "--pretrain-model", str(folder / "model"), "--routing",
                 str(routing_file), "--balance-set", str(path), "--out-dir", str(out),
                 "--problems", str(three_problems), "--no-tracking"]) == 0
    utilization_side = json.loads((out / "balance.json").read_text())["pretrain"]
    assert sweep_side["maxvio"] == pytest.approx(trainer_side["maxvio_global"], abs=1e-9)
    for key in ("maxvio_global", "cv", "entropy", "maxvio_floor", "split_half_difference"):
        assert utilization_side[key] == pytest.approx(trainer_side[key], abs=1e-9)
    assert trainer_side["maxvio_global"] > trainer_side["maxvio_floor"]  # skewed biases


def test_measure_changes_nothing_in_the_model(model_and_set):
    from moebalance.model.router import routers_of

    _, model, path = model_and_set
    before = [r.e_score_correction_bias.clone() for r in routers_of(model)]
    summary, routing = measure(model, BalanceSet.load(path), batch_size=5)
    assert all((r.e_score_correction_bias == b).all()
               for r, b in zip(routers_of(model), before, strict=True))
    assert routing.picks_TLK.shape == (24 * 16, 2, ROUTED_TINY["top_k"])
    assert summary["routed_tokens"] == 24 * 16
