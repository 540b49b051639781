"""The utilization stage on tiny random models: what it counts and writes."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moe_helpers import PY_SOURCE, ROUTED_TINY, tokenizer_in

from moebalance.cli import main
from moebalance.config import ModelSettings
from moebalance.data.token_classes import TOKEN_CLASSES
from moebalance.model import build_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, humaneval_tokenizer_dir):
    folder = tmp_path_factory.mktemp("tiny_moe")
    tokenizer = tokenizer_in(folder, humaneval_tokenizer_dir)
    for name, seed in (("pretrain", 0), ("sft", 1)):
        model = build_model(ModelSettings(**ROUTED_TINY), len(tokenizer), tokenizer.eos_token_id,
                            tokenizer.pad_token_id, seed=seed)
        model.save_pretrained(folder / name)
    test = pa.table({
        "doc_id": ["a", "b", "c"], "source": ["s"] * 3, "path": ["x.py", "test_y.py", "z.py"],
        "domain": ["library", "test", "docs"],
        "text": [PY_SOURCE * 20, "def test_y():\n    assert f(1) == 2\n" * 10,
                 '"""Prose.\n\nMore prose about things."""\n' * 20],
        "sha256": ["1", "2", "3"]})
    pq.write_table(test, folder / "test.parquet")
    return folder


def run_stage(tiny, out, *extra):
    return main(["utilization", "--pretrain-model", str(tiny / "pretrain"),
                 "--sft-model", str(tiny / "sft"), "--tokenizer", str(tiny),
                 "--test", str(tiny / "test.parquet"), "--out-dir", str(out),
                 "--settings", '{"max_tokens": 300, "window": 64}', "--no-tracking", *extra])


def test_utilization_stage_counts_every_token_k_times_per_layer(tiny, tmp_path):
    out = tmp_path / "utilization"
    assert run_stage(tiny, out) == 0
    meta = json.loads((out / "meta.json").read_text())
    counts = pq.read_table(out / "counts.parquet").to_pandas()
    assert set(counts.domain) == {"library", "test", "docs", "humaneval"}
    assert set(counts.token_class) <= set(TOKEN_CLASSES)
    assert all(n <= 300 for n in meta["tokens_per_domain"].values())
    total = sum(meta["tokens_per_domain"].values())
    per_layer = counts.groupby(["model", "layer"]).tokens.sum()
    assert (per_layer == total * meta["top_k"]).all()
    assert meta["layers"] == [1, 2]
    pairs = pq.read_table(out / "coactivation.parquet").to_pandas()
    diag = pairs[pairs.expert == pairs.other].groupby(["model", "layer"]).tokens.sum()
    assert (diag == total * meta["top_k"]).all()
    saturation = pq.read_table(out / "saturation.parquet").to_pandas()
    assert saturation.tokens.sum() == total * len(meta["layers"])
    assert (saturation.overlap <= saturation.tokens).all()


def test_saturation_over_training_compares_each_snapshot_with_the_final_model(tiny, tmp_path):
    import shutil

    snapshots = tmp_path / "snapshots"
    shutil.copytree(tiny / "sft", snapshots / "step_000003")   # another model: overlap < 1
    shutil.copytree(tiny / "pretrain", snapshots / "step_000005")  # the final one: overlap 1
    out = tmp_path / "utilization"
    assert run_stage(tiny, out, "--snapshots", str(snapshots), "--final-step", "6") == 0
    table = pq.read_table(out / "saturation_steps.parquet").to_pandas()
    assert sorted(table.step.unique()) == [3, 5, 6]
    by_step = table.groupby("step")[["overlap", "tokens"]].sum()
    assert by_step.loc[5, "overlap"] == by_step.loc[5, "tokens"]
    assert by_step.loc[6, "overlap"] == by_step.loc[6, "tokens"]
    assert by_step.loc[3, "overlap"] < by_step.loc[3, "tokens"]


def test_documents_table_and_training_shares(tiny, tmp_path):
    out = tmp_path / "utilization"
    assert run_stage(tiny, out, "--train", str(tiny / "test.parquet")) == 0
    meta = json.loads((out / "meta.json").read_text())
    docs = pq.read_table(out / "documents.parquet").to_pandas()
    per_domain = docs[docs.model == "pretrain"].groupby("domain")
    assert per_domain.tokens.sum().to_dict() == meta["tokens_per_domain"]
    assert per_domain.size().to_dict() == meta["documents_per_domain"]
    assert (docs.bytes >= docs.tokens).all() and (docs.nll > 0).all()
    texts = pq.read_table(tiny / "test.parquet").to_pandas()
    sizes = texts.text.str.encode("utf-8").str.len().groupby(texts.domain).sum()
    assert meta["training_domain_shares"] == pytest.approx((sizes / sizes.sum()).to_dict())
    counts = pq.read_table(out / "counts.parquet").to_pandas()
    assert counts.groupby("document").domain.nunique().max() == 1


def test_a_missing_model_folder_is_a_usage_error(tiny, tmp_path, capsys):
    assert main(["utilization", "--pretrain-model", str(tmp_path / "nope"), "--test",
                 str(tiny / "test.parquet"), "--out-dir", str(tmp_path / "o"),
                 "--no-tracking"]) == 2
    assert "--pretrain-model" in capsys.readouterr().err
