"""The count-model baselines against hand-computed values, and the `baselines` stage."""

import json
import math

import numpy as np
import pytest
from moe_helpers import write_tokens_dir

from moebalance.cli import main
from moebalance.data.baselines import CountModel, scored_pairs, token_bytes, tune_lambda

# tokens 0 1 0 1 2 (V = 3): c(w) = [2, 2, 1], N = 5; pairs (0,1) x2, (1,0), (1,2); c(v) = [2, 2, 0]
TOKENS = np.array([0, 1, 0, 1, 2])


@pytest.fixture
def tokenizer_dir(humaneval_tokenizer_dir):
    return humaneval_tokenizer_dir


def test_unigram_is_add_one_smoothed():
    # (c + 1) / (N + V) = [3, 3, 2] / 8
    assert CountModel.fit(TOKENS, 3).unigram_probs().tolist() == pytest.approx([3 / 8, 3 / 8,
                                                                                  2 / 8])


def test_bigram_interpolates_with_the_unigram_and_backs_off_for_unseen_contexts():
    model = CountModel.fit(TOKENS, 3)
    # (0 -> 1): 0.5 * c(0,1)/c(0) + 0.5 * 3/8 = 0.5 + 0.1875 = 0.6875
    # (2 -> 0): context 2 never starts a pair: p = p(0) = 3/8
    # (1 -> 1): unseen pair of a seen context: 0.5 * 0 + 0.5 * 3/8 = 0.1875
    nll = model.bigram_nll(np.array([0, 2, 1]), np.array([1, 0, 1]), lam=0.5)
    assert nll.tolist() == pytest.approx([-math.log(0.6875), -math.log(0.375),
                                          -math.log(0.1875)])


def test_tuned_lambda_is_the_minimiser_of_a_fine_grid():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 20, size=5000)
    train[1::2] = (train[::2] * 7) % 20  # every other token follows from its predecessor
    val = rng.integers(0, 20, size=2000)
    val[1::2] = (val[::2] * 7) % 20
    model = CountModel.fit(train, 20)
    grid = np.linspace(0, 1, 1001)[:-1]  # lambda = 1 gives unseen pairs probability 0
    best = grid[np.argmin([model.bigram_nll(val[:-1], val[1:], g).mean() for g in grid])]
    assert tune_lambda(model, val) == pytest.approx(best, abs=2e-3)


def test_token_bytes_add_up_to_the_utf8_length_of_the_text(tokenizer_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = 'def héllo(x):\n    return x + "✓"\n'
    ids = tok.encode(text, add_special_tokens=False).ids
    assert token_bytes(tok)[ids].sum() == len(text.encode())
    assert token_bytes(tok)[tok.token_to_id("<|endoftext|>")] == 0


def test_scored_pairs_are_the_validation_windows_targets_and_their_predecessors():
    val = np.arange(1000) % 97
    prev, nxt = scored_pairs(val, seq_len=16, micro_batch_size=4, eval_batches=3)
    assert prev.size == nxt.size == 3 * 4 * 16
    assert ((prev + 1) % 97 == nxt).all()  # consecutive tokens of the shard


def test_stage_writes_the_documented_json(tmp_path, tokenizer_dir):
    tokens = write_tokens_dir(tmp_path / "tokens")
    out = tmp_path / "baselines.json"
    for path in (out, tmp_path / "again.json"):
        assert main(["baselines", "--tokens-dir", str(tokens), "--tokenizer-dir",
                     str(tokenizer_dir), "--out", str(path), "--no-tracking", "--settings",
                     '{"seq_len": 16, "micro_batch_size": 4, "eval_batches": 2}']) == 0
    assert out.read_bytes() == (tmp_path / "again.json").read_bytes()  # same input, same bytes
    result = json.loads(out.read_text())
    assert set(result) == {"split", "tokens", "bytes", "scored_on", "unigram", "bigram"}
    assert result["split"] == "val" and result["tokens"] == 2 * 4 * 16
    assert set(result["bigram"]) == {"nats_per_token", "bits_per_byte", "lambda"}
    # uniform random tokens: the unigram is near log(94) nats and the bigram cannot beat it much
    assert result["unigram"]["nats_per_token"] == pytest.approx(math.log(94), abs=0.15)
    assert 0 <= result["bigram"]["lambda"] <= 1


def test_stage_names_the_missing_tokens_dir(tmp_path, tokenizer_dir, capsys):
    status = main(["baselines", "--tokens-dir", str(tmp_path / "nope"), "--tokenizer-dir",
                   str(tokenizer_dir), "--out", str(tmp_path / "b.json"), "--no-tracking"])
    assert status == 2
    assert "nope/meta.json" in capsys.readouterr().err
