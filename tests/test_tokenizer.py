import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from moebalance.cli import main
from moebalance.data.corpus_files import corpus_hash_of
from moebalance.data.shards import open_split, read_meta
from moebalance.data.tokenizer import balanced_sample

TEXTS = [
    "def f(x):\n    return x  # trailing spaces   \n",
    "class A:\n\tpass\r\n\r\n",
    's = "héllo wörld ✓ 日本語"\n',
    "   leading spaces and a   run of spaces\n\n\n",
    "x = {'a': [1, 2, 3]}; y = x['a'][0] ** 2\n",
] * 20
DOMAINS = ["code", "code", "prose", "prose", "code"] * 20


def corpus_rows(texts):
    return [{"text": t, "domain": d, "sha256": hashlib.sha256(t.encode()).hexdigest()}
            for t, d in zip(texts, DOMAINS, strict=False)]


def build(root, corpus):
    """The tokenizer and tokens stages on ``corpus``, into ``root``."""
    assert main(["tokenizer", "--train", str(corpus / "train.parquet"),
                 "--val", str(corpus / "val.parquet"),
                 "--out-dir", str(root / "tokenizer"),
                 "--settings", '{"vocab_size": 300, "min_frequency": 1}', "--no-tracking"]) == 0
    assert main(["tokens", "--corpus-dir", str(corpus), "--tokenizer-dir",
                 str(root / "tokenizer"), "--out-dir", str(root / "tokens"),
                 "--batch-size", "7", "--no-tracking"]) == 0
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus"
    corpus.mkdir()
    for split, texts in (("train", TEXTS), ("val", TEXTS[:5]), ("test", TEXTS[:3])):
        pq.write_table(pa.Table.from_pylist(corpus_rows(texts)), corpus / f"{split}.parquet")
    return build(root, corpus)


def test_the_same_corpus_gives_byte_identical_tokenizer_and_tokens(built, tmp_path):
    again = build(tmp_path, built / "corpus")
    files = sorted(p.relative_to(built) for folder in ("tokenizer", "tokens")
                   for p in (built / folder).rglob("*") if p.is_file())
    assert len(files) >= 5
    assert files == sorted(p.relative_to(again) for folder in ("tokenizer", "tokens")
                           for p in (again / folder).rglob("*") if p.is_file())
    for rel in files:
        assert (built / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_autotokenizer_loads_with_eot_and_pad(built):
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == 1


@pytest.mark.parametrize("text", sorted(set(TEXTS)) + ["", "\u00a0\u200b", "🙂" * 3])
def test_decode_of_encode_is_identity(built, text):
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_token_shards_equal_a_direct_encode(built):
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    for split, texts in (("train", TEXTS), ("val", TEXTS[:5])):
        expected = []
        for text in texts:
            expected += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert np.array_equal(open_split(built / "tokens", split), np.array(expected))


def test_meta_describes_the_shards(built):
    meta = read_meta(built / "tokens")
    assert meta["eot_id"] == 0 and meta["dtype"] == "<u2"
    assert meta["splits"]["train"]["n_documents"] == len(TEXTS)


def test_vocab_size_below_the_byte_alphabet_is_refused(built, tmp_path, capsys):
    rc = main(["tokenizer", "--train", str(built / "corpus" / "train.parquet"),
               "--out-dir", str(tmp_path / "t"), "--settings", '{"vocab_size": 100}',
               "--no-tracking"])
    assert rc == 2
    assert "--settings: tokenizer.vocab_size must be >= 258; got 100" in capsys.readouterr().err


def test_balanced_sample_takes_equal_bytes_per_domain_in_hash_order():
    rows = [{"text": "a" * 10, "domain": "big", "sha256": "3"},
            {"text": "b" * 10, "domain": "big", "sha256": "1"},
            {"text": "c" * 10, "domain": "big", "sha256": "2"},
            {"text": "d" * 4, "domain": "small", "sha256": "9"}]
    # 15 bytes per domain: "big" takes sha 1 (10 bytes, < 15) then sha 2 (20 >= 15) and stops.
    assert balanced_sample(rows, 15) == {"big": ["b" * 10, "c" * 10], "small": ["d" * 4]}
    assert balanced_sample(rows, None)["big"] == ["b" * 10, "c" * 10, "a" * 10]


def test_bytes_per_token_per_domain_is_measured_on_val(built):
    meta = json.loads((built / "tokenizer" / "moebalance_tokenizer.json").read_text())
    tok = AutoTokenizer.from_pretrained(built / "tokenizer")
    assert meta["bytes_per_token_on"] == "val"
    for domain in ("code", "prose"):
        texts = [t for t, d in zip(TEXTS[:5], DOMAINS, strict=False) if d == domain]
        n_bytes = sum(len(t.encode()) for t in texts)
        n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
        assert meta["bytes_per_token"][domain] == pytest.approx(n_bytes / n_tokens, abs=1e-4)


def test_token_meta_carries_the_corpus_hash(built):
    assert read_meta(built / "tokens")["corpus_hash"] == corpus_hash_of(built / "corpus")
