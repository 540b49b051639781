"""The utilization stage: token classes, and routing capture on a tiny random model."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from moe_helpers import TINY as TINY_MOE
from moe_helpers import tokenizer_in
from transformers import AutoTokenizer

from moebalance.analysis import utilization as u
from moebalance.cli import main
from moebalance.model import build_model, load_model
from moebalance.model.config import ModelSettings
from moebalance.model.router import routers_of

TINY = {**TINY_MOE, "layers": 3, "max_seq_len": 128, "bias_init_skew": 0.05}
SOURCE = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'


def classes_of(text):
    return [u.TOKEN_CLASSES[c] for c in u.char_classes(text)]


def test_char_classes_follow_python_tokenize():
    got = classes_of("if x1 >= 2.5:  # c\n")
    expected = (["keyword"] * 2 + ["whitespace"] + ["identifier"] * 2 + ["whitespace"]
                + ["operator"] * 2 + ["whitespace"] + ["number"] * 3 + ["operator"]
                + ["whitespace"] * 2 + ["comment"] * 3 + ["whitespace"])
    assert got == expected


def test_strings_and_docstrings_are_strings():
    got = classes_of(SOURCE)
    start = SOURCE.index('"""')
    assert set(got[start:start + len('"""Doc."""')]) == {"string"}


def test_untokenizable_text_falls_back_to_other():
    text = "def f():\n  x\n y\n"  # inconsistent dedent: tokenize stops at " y"
    assert classes_of(text)[:3] == ["keyword"] * 3
    assert classes_of(text)[-3:] == ["other"] * 3
    assert u.TOKEN_CLASSES[u.char_classes("a $ b")[2]] == "other"


def test_bpe_tokens_take_the_class_of_their_first_non_space_character():
    text = "def  f"
    offsets = np.array([[0, 3], [3, 5], [3, 6], [5, 6]])  # "def", "  ", "  f", "f"
    got = [u.TOKEN_CLASSES[c] for c in u.bpe_token_classes(text, offsets)]
    assert got == ["keyword", "whitespace", "identifier", "identifier"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, humaneval_tokenizer_dir):
    folder = tmp_path_factory.mktemp("tiny_moe")
    tokenizer = tokenizer_in(folder, humaneval_tokenizer_dir)
    for name, seed in (("pretrain", 0), ("sft", 1)):
        model = build_model(ModelSettings(**TINY), len(tokenizer), tokenizer.eos_token_id,
                            tokenizer.pad_token_id, seed=seed)
        model.save_pretrained(folder / name)
    test = pa.table({
        "doc_id": ["a", "b", "c"], "source": ["s"] * 3, "path": ["x.py", "test_y.py", "z.py"],
        "domain": ["library", "test", "docs"],
        "text": [SOURCE * 20, "def test_y():\n    assert f(1) == 2\n" * 10,
                 '"""Prose.\n\nMore prose about things."""\n' * 20],
        "sha256": ["1", "2", "3"]})
    pq.write_table(test, folder / "test.parquet")
    return folder


def run_stage(tiny, out, *extra):
    return main(["utilization", "--pretrain-model", str(tiny / "pretrain"),
                 "--sft-model", str(tiny / "sft"), "--tokenizer", str(tiny),
                 "--test", str(tiny / "test.parquet"), "--out-dir", str(out),
                 "--max-tokens", "300", "--window", "64", "--no-tracking", *extra])


def test_utilization_stage_counts_every_token_k_times_per_layer(tiny, tmp_path):
    out = tmp_path / "utilization"
    assert run_stage(tiny, out) == 0
    meta = json.loads((out / "meta.json").read_text())
    counts = pq.read_table(out / "counts.parquet").to_pandas()
    assert set(counts.domain) == {"library", "test", "docs", "humaneval"}
    assert set(counts.token_class) <= set(u.TOKEN_CLASSES)
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


def test_routing_capture_leaves_router_bias_and_counters_untouched(tiny):
    model = load_model(tiny / "pretrain")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    before = [r.e_score_correction_bias.clone() for r in routers_of(model)]
    assert any(b.abs().sum() > 0 for b in before)
    enc = tokenizer(SOURCE, add_special_tokens=False, return_offsets_mapping=True)
    windows = [u.Window("library", np.array(enc["input_ids"]),
                        u.bpe_token_classes(SOURCE, np.array(enc["offset_mapping"])))]
    picks, _ = u.route(model, windows, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert picks.shape == (len(enc["input_ids"]), 2, 2)
    for router, b in zip(routers_of(model), before, strict=True):
        assert torch.equal(router.e_score_correction_bias, b)
        assert router.tokens_per_expert_E.sum() == 0


def test_routing_a_window_alone_equals_routing_it_in_a_padded_batch(tiny):
    model = load_model(tiny / "pretrain")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = np.array(tokenizer(SOURCE * 3, add_special_tokens=False)["input_ids"])
    short, long = u.Window("a", ids[:7], ids[:7] * 0), u.Window("a", ids, ids * 0)
    alone, nll_alone = u.route(model, [short], 0, 1)
    batched, nll_batched = u.route(model, [long, short], 0, 1)
    np.testing.assert_array_equal(np.sort(batched[len(ids):], -1), np.sort(alone, -1))
    np.testing.assert_allclose(nll_batched[len(ids):], nll_alone, rtol=1e-4, atol=1e-5)


def test_routed_nll_is_the_models_own_next_token_loss(tiny):
    model = load_model(tiny / "pretrain")
    ids = np.arange(5, 25)
    _, nll = u.route(model, [u.Window("a", ids, ids * 0)], 0, 1)
    with torch.inference_mode():
        full = torch.tensor([[0, *ids]])
        loss = model(input_ids=full, labels=full, use_cache=False).loss  # mean over 20 targets
    assert nll.sum() == pytest.approx(float(loss) * len(ids), rel=1e-4)


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
