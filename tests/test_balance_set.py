"""The held-out balance set: windows of the training length, in the training token mix."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moe_helpers import PY_SOURCE

from moebalance.cli import main
from moebalance.config import BalanceSetSettings
from moebalance.data.balance_set import (
    DomainStream,
    allocate,
    document_halves,
    draw,
    draw_starts,
    token_bytes,
)
from moebalance.errors import UsageError


def test_token_bytes_count_utf8_bytes_even_for_tokens_that_split_a_character():
    text = "aé€"  # 1 + 2 + 3 bytes
    # byte-level BPE may give a multi-byte character to two tokens with the same span
    offsets = np.array([[0, 1], [1, 2], [2, 3], [2, 3]])
    assert token_bytes(text, offsets).tolist() == [1, 2, 3, 0]
    assert token_bytes(text, offsets).sum() == len(text.encode())


def test_windows_are_allocated_by_largest_remainder():
    # 7 windows at 0.5 / 0.3 / 0.2: 3.5, 2.1, 1.4 -> floors 3, 2, 1, the spare one to a (0.5)
    assert allocate({"a": 5, "b": 3, "c": 2}, 7) == {"a": 4, "b": 2, "c": 1}
    assert sum(allocate({"a": 1, "b": 1, "c": 1}, 100).values()) == 100


def test_window_starts_do_not_overlap_and_fit_the_stream():
    rng = np.random.default_rng(0)
    document_T = np.repeat(np.arange(10), 100)  # 10 documents of 100 tokens
    starts = np.sort(draw_starts(document_T, 17, 50, 10, rng))
    assert starts.min() >= 0 and starts.max() + 17 <= 1000
    assert (np.diff(starts) >= 17).all()
    assert len(set(starts % 17)) == 1  # one random phase, then whole slots
    with pytest.raises(ValueError, match="needs 100 windows of 17 tokens"):
        draw_starts(document_T, 17, 100, 10, rng)


def test_no_document_starts_more_windows_than_the_cap():
    # windows of 1 token (so the phase is 0): one long document of 90 tokens, ten of 1 token
    document_T = np.concatenate([np.zeros(90, dtype=np.int64), np.arange(1, 11)])
    for seed in range(5):
        starts = draw_starts(document_T, 1, 13, 3, np.random.default_rng(seed))
        per_document = np.bincount(document_T[starts], minlength=11)
        # the cap leaves the long document 3 of the 13, the short ones one each
        assert per_document[0] == 3 and (per_document[1:] == 1).all()
    with pytest.raises(ValueError, match="at most 3 per document, but holds only 13"):
        draw_starts(document_T, 1, 14, 3, np.random.default_rng(0))
    # an ample cap leaves the draw free: the long document's share follows its length
    starts = draw_starts(document_T, 1, 50, 100, np.random.default_rng(0))
    assert (document_T[starts] == 0).sum() >= 40


def stream(n_tokens: int, n_docs: int, offset: int = 0) -> DomainStream:
    document = np.repeat(np.arange(n_docs), n_tokens // n_docs)
    return DomainStream(ids=np.arange(offset, offset + len(document)),
                        classes=np.zeros(len(document), dtype=np.int8),
                        n_bytes=np.ones(len(document), dtype=np.int64), document=document,
                        start=np.tile(np.arange(n_tokens // n_docs), n_docs),
                        shas=[f"{offset + d:064x}" for d in range(n_docs)])


def test_the_set_follows_the_training_token_shares_and_its_own_streams():
    streams = {"code": stream(20_000, 10), "prose": stream(20_000, 10, offset=100_000)}
    shares = {"code": 9_000, "prose": 1_000}  # training tokens per domain
    rows = draw(streams, shares, "test", BalanceSetSettings(windows=100, seq_len=15,
                                                            max_windows_per_document=10))
    domains = np.array(rows["domain"])
    assert (domains == "code").sum() == 90 and (domains == "prose").sum() == 10
    ids = np.stack(rows["input_ids"])
    assert ids.shape == (100, 16)
    assert (np.diff(ids, axis=1) == 1).all()  # consecutive tokens of one stream
    assert ((ids[domains == "prose"] >= 100_000).all()
            and (ids[domains == "code"] < 100_000).all())
    halves = np.array(rows["half"])
    for domain in ("code", "prose"):  # each half holds about half of each domain's windows
        in_domain = halves[domains == domain]
        assert abs(in_domain.sum() - (len(in_domain) - in_domain.sum())) <= 20
    for domain, n in (("code", 90), ("prose", 10)):
        assert np.array(rows["subset"])[domains == domain].sum() == (n + 1) // 2


def test_halves_split_by_document_and_balance_each_domains_windows():
    domains = ["a"] * 6 + ["b"] * 2
    documents = ["x", "x", "x", "y", "y", "z", "u", "v"]
    # a: x (3 windows) -> half 0; y (2) -> half 1; z (1) -> half 1 (2 < 3); b: u, v split
    assert document_halves(domains, documents) == [0, 0, 0, 1, 1, 1, 0, 1]


def test_the_draw_is_fixed_by_split_and_seed():
    streams = {"code": stream(5_000, 5)}
    settings = BalanceSetSettings(windows=20, seq_len=7, max_windows_per_document=5)
    again = draw(streams, {"code": 1}, "test", settings)
    assert draw(streams, {"code": 1}, "test", settings)["start"] == again["start"]
    assert draw(streams, {"code": 1}, "val", settings)["start"] != again["start"]


def test_too_little_held_out_text_is_an_error_naming_the_domain():
    with pytest.raises(UsageError, match="domain prose: needs"):
        draw({"code": stream(5_000, 5), "prose": stream(40, 2)}, {"code": 1, "prose": 1},
             "test", BalanceSetSettings(windows=20, seq_len=7))
    with pytest.raises(UsageError, match="no documents of training domain.*prose"):
        draw({"code": stream(5_000, 5)}, {"code": 1, "prose": 1}, "test",
             BalanceSetSettings(windows=4, seq_len=7))


def test_stage_writes_the_set_and_its_shares(tmp_path, humaneval_tokenizer_dir):
    split = tmp_path / "test.parquet"
    texts = [PY_SOURCE * 40, "def test_y():\n    assert f(1) == 2\n" * 40]
    pq.write_table(pa.table({"domain": ["library", "test"], "text": texts,
                             "sha256": ["a" * 64, "b" * 64]}), split)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"eot_id": 0, "splits": {"train": {
        "domain_tokens": {"library": 3000, "test": 1000}}}}))
    out = tmp_path / "balance" / "test.parquet"
    assert main(["balance-set", "--split", str(split), "--tokens-meta", str(meta),
                 "--tokenizer-dir", str(humaneval_tokenizer_dir), "--out", str(out),
                 "--settings", '{"windows": 8, "seq_len": 16, "max_windows_per_document": 8}',
                 "--no-tracking"]) == 0
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["windows_per_domain"] == {"library": 6, "test": 2}
    assert written["max_share_difference"] == pytest.approx(0.0)
    table = pq.read_table(out).to_pydict()
    assert [len(ids) for ids in table["input_ids"]] == [17] * 8
    # every window's bytes are those of the text its tokens cover
    assert all(sum(b) > 0 for b in table["target_bytes"])


def test_a_tokens_meta_without_domain_tokens_says_to_rerun_the_tokens_stage(tmp_path, capsys):
    split = tmp_path / "test.parquet"
    pq.write_table(pa.table({"domain": ["a"], "text": ["x"], "sha256": ["0"]}), split)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"eot_id": 0, "splits": {"train": {"n_tokens": 5}}}))
    assert main(["balance-set", "--split", str(split), "--tokens-meta", str(meta),
                 "--tokenizer-dir", str(tmp_path), "--out", str(tmp_path / "o.parquet"),
                 "--no-tracking"]) == 2
    assert "rerun the tokens stage" in capsys.readouterr().err
