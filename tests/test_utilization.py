"""The utilization stage on tiny random models: what it counts and writes."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moe_helpers import ROUTED_TINY, tokenizer_in

from moebalance.cli import main
from moebalance.config import BalanceSetSettings, ModelSettings
from moebalance.data.balance_set import DomainStream, draw
from moebalance.data.token_classes import TOKEN_CLASSES
from moebalance.model import build_model

WINDOWS, SEQ_LEN = 20, 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, humaneval_tokenizer_dir):
    """Two tiny models (pretrain, sft) with a tokenizer, their pretraining routing.parquet
    (biases that moved) and a two-domain balance set."""
    folder = tmp_path_factory.mktemp("tiny_moe")
    tokenizer = tokenizer_in(folder, humaneval_tokenizer_dir)
    for name, seed in (("pretrain", 0), ("sft", 1)):
        model = build_model(ModelSettings(**ROUTED_TINY), len(tokenizer), tokenizer.eos_token_id,
                            tokenizer.pad_token_id, seed=seed)
        model.save_pretrained(folder / name)
    rng = np.random.default_rng(1)
    streams = {}
    for d, domain in enumerate(("library", "test")):
        n = 2000
        streams[domain] = DomainStream(
            ids=rng.integers(2, len(tokenizer), n), classes=rng.integers(0, 8, n).astype(np.int8),
            n_bytes=np.full(n, 2), document=np.repeat(np.arange(4), n // 4),
            start=np.tile(np.arange(n // 4), 4), shas=[f"{d}{k:063x}" for k in range(4)])
    rows = draw(streams, {"library": 3, "test": 1}, "test",
                BalanceSetSettings(windows=WINDOWS, seq_len=SEQ_LEN,
                                   max_windows_per_document=8))  # 4 documents per domain
    pq.write_table(pa.table(rows), folder / "test.parquet")
    (folder / "test.json").write_text(json.dumps({"eot_id": tokenizer.eos_token_id}))
    E = ROUTED_TINY["routed_experts"]
    pd.DataFrame([{"step": step, "layer": layer, "expert": e, "tokens": 1,
                   "bias": 0.01 * step * (e - E / 2)}
                  for step in range(10) for layer in (1, 2) for e in range(E)]).to_parquet(
        folder / "routing.parquet")
    return folder


def run_stage(tiny, out, *extra):
    return main(["utilization", "--pretrain-model", str(tiny / "pretrain"),
                 "--sft-model", str(tiny / "sft"), "--tokenizer", str(tiny),
                 "--routing", str(tiny / "routing.parquet"),
                 "--balance-set", str(tiny / "test.parquet"), "--out-dir", str(out),
                 "--no-tracking", *extra])


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("utilization") / "out"
    assert run_stage(tiny, out) == 0
    return out


def test_every_routed_token_counts_k_times_per_layer(written):
    meta = json.loads((written / "meta.json").read_text())
    counts = pq.read_table(written / "counts.parquet").to_pandas()
    assert set(counts.domain) == {"library", "test", "humaneval"}
    assert set(counts.token_class) <= set(TOKEN_CLASSES)
    assert meta["tokens_per_domain"]["library"] + meta["tokens_per_domain"]["test"] \
        == WINDOWS * SEQ_LEN
    total = sum(meta["tokens_per_domain"].values())
    per_layer = counts.groupby(["model", "layer"]).tokens.sum()
    assert (per_layer == total * meta["top_k"]).all()
    assert meta["layers"] == [1, 2]
    pairs = pq.read_table(written / "coactivation.parquet").to_pandas()
    diag = pairs[pairs.expert == pairs.other].groupby(["model", "layer"]).tokens.sum()
    assert (diag == WINDOWS * SEQ_LEN * meta["top_k"]).all()  # the balance set only
    saturation = pq.read_table(written / "saturation.parquet").to_pandas()
    assert saturation.tokens.sum() == WINDOWS * SEQ_LEN * len(meta["layers"])
    assert (saturation.overlap <= saturation.tokens).all()


def test_humaneval_covers_every_problem_and_labels_those_within_the_trained_length(written):
    meta = json.loads((written / "meta.json").read_text())
    assert meta["documents_per_domain"]["humaneval"] == 164
    assert meta["humaneval_fit"] == []  # no prompt + solution fits in 16 - 1 tokens
    counts = pq.read_table(written / "counts.parquet").to_pandas()
    he = counts[counts.domain == "humaneval"]
    per_window = he.groupby(["model", "layer", "window"]).tokens.sum()
    assert per_window.max() == (SEQ_LEN - 1) * meta["top_k"]  # windows of the trained length


def test_balance_figures_for_both_models_and_the_jitter_check(written):
    balance = json.loads((written / "balance.json").read_text())
    for model in ("pretrain", "sft"):
        assert balance[model]["routed_tokens"] == WINDOWS * SEQ_LEN
        assert set(balance[model]["domains"]) == {"library", "test"}
    jitter = balance["jitter"]
    assert jitter["routed"]  # the biases moved over the last steps
    assert jitter["difference"] == pytest.approx(
        jitter["maxvio_global_averaged"] - jitter["maxvio_global_final"])


def test_documents_table_holds_the_sets_documents_and_their_text_bytes(tiny, written):
    docs = pq.read_table(written / "documents.parquet").to_pandas()
    bset = pq.read_table(tiny / "test.parquet").to_pandas()
    assert set(docs.document) == set(bset.document)
    pretrain = docs[docs.model == "pretrain"]
    assert pretrain.tokens.sum() == WINDOWS * SEQ_LEN  # no end-of-text in these streams
    assert (pretrain.bytes == 2 * pretrain.tokens).all() and (pretrain.nll > 0).all()


def test_saturation_over_training_compares_each_snapshot_with_the_final_model(tiny, tmp_path,
                                                                             three_problems):
    import shutil

    snapshots = tmp_path / "snapshots"
    shutil.copytree(tiny / "sft", snapshots / "step_000003")   # another model: overlap < 1
    shutil.copytree(tiny / "pretrain", snapshots / "step_000005")  # the final one: overlap 1
    out = tmp_path / "utilization"
    assert run_stage(tiny, out, "--snapshots", str(snapshots), "--final-step", "6",
                     "--problems", str(three_problems)) == 0
    table = pq.read_table(out / "saturation_steps.parquet").to_pandas()
    assert sorted(table.step.unique()) == [3, 5, 6]
    by_step = table.groupby("step")[["overlap", "tokens"]].sum()
    assert by_step.loc[5, "overlap"] == by_step.loc[5, "tokens"]
    assert by_step.loc[6, "overlap"] == by_step.loc[6, "tokens"]
    assert by_step.loc[3, "overlap"] < by_step.loc[3, "tokens"]


def test_a_missing_model_folder_is_a_usage_error(tiny, tmp_path, capsys):
    assert main(["utilization", "--pretrain-model", str(tmp_path / "nope"), "--balance-set",
                 str(tiny / "test.parquet"), "--out-dir", str(tmp_path / "o"),
                 "--no-tracking"]) == 2
    assert "--pretrain-model" in capsys.readouterr().err
