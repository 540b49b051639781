"""Routing capture on a tiny random model: the top-K picks and NLL of every token, with the
routers left as they were."""

import numpy as np
import pytest
import torch
from moe_helpers import PY_SOURCE, ROUTED_TINY, tokenizer_in

from moebalance.config import ModelSettings
from moebalance.model import build_model
from moebalance.model.router import routers_of
from moebalance.model.routing_capture import route


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, humaneval_tokenizer_dir):
    return tokenizer_in(tmp_path_factory.mktemp("tokenizer"), humaneval_tokenizer_dir)


@pytest.fixture
def model(tokenizer):
    return build_model(ModelSettings(**ROUTED_TINY), len(tokenizer), tokenizer.eos_token_id,
                       tokenizer.pad_token_id, seed=0)


def test_routing_capture_leaves_router_bias_and_counters_untouched(model, tokenizer):
    before = [r.e_score_correction_bias.clone() for r in routers_of(model)]
    assert any(b.abs().sum() > 0 for b in before)
    ids = np.array(tokenizer(PY_SOURCE, add_special_tokens=False)["input_ids"])
    picks, _ = route(model, [ids], tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert picks.shape == (len(ids), 2, 2)
    for router, b in zip(routers_of(model), before, strict=True):
        assert torch.equal(router.e_score_correction_bias, b)
        assert router.counts_E.sum() == 0


def test_routing_a_window_alone_equals_routing_it_in_a_padded_batch(model, tokenizer):
    ids = np.array(tokenizer(PY_SOURCE * 3, add_special_tokens=False)["input_ids"])
    alone, nll_alone = route(model, [ids[:7]], 0, 1)
    batched, nll_batched = route(model, [ids, ids[:7]], 0, 1)
    np.testing.assert_array_equal(np.sort(batched[len(ids):], -1), np.sort(alone, -1))
    np.testing.assert_allclose(nll_batched[len(ids):], nll_alone, rtol=1e-4, atol=1e-5)


def test_routed_nll_is_the_models_own_next_token_loss(model):
    ids = np.arange(5, 25)
    _, nll = route(model, [ids], 0, 1)
    with torch.inference_mode():
        full = torch.tensor([[0, *ids]])
        loss = model(input_ids=full, labels=full, use_cache=False).loss  # mean over 20 targets
    assert nll.sum() == pytest.approx(float(loss) * len(ids), rel=1e-4)
