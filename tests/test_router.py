"""The counting router: stock-compatible routing, counting only in training forwards."""

import pytest
import torch
from moe_helpers import VOCAB, tiny_model
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

from moebalance.model.router import CountingRouter, margin_histogram, routers_of


def counts(model) -> float:
    return sum(float(r.counts_E.sum()) for r in routers_of(model))


def biases(model) -> torch.Tensor:
    return torch.stack([r.e_score_correction_bias for r in routers_of(model)]).clone()


def test_router_keeps_the_stock_parameter_and_buffer_names():
    model = tiny_model()
    gate = model.model.layers[1].mlp.gate
    assert isinstance(gate, CountingRouter)
    assert set(gate.state_dict()) == {"weight", "e_score_correction_bias"}


@pytest.mark.parametrize("n_group,topk_group", [(1, 1), (2, 1)])
def test_router_routes_like_the_stock_router(n_group, topk_group):
    model = tiny_model(n_group=n_group, topk_group=topk_group)
    ours = model.model.layers[1].mlp.gate
    with torch.no_grad():
        ours.e_score_correction_bias.copy_(torch.linspace(-0.1, 0.1, 8))
    stock = DeepseekV3TopkRouter(model.config)
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 32)
    _, w_ours, i_ours = ours(x)
    _, w_stock, i_stock = stock(x)
    order_ours, order_stock = i_ours.sort(-1), i_stock.sort(-1)
    assert torch.equal(order_ours.values, order_stock.values)
    assert torch.allclose(w_ours.gather(1, order_ours.indices),
                          w_stock.gather(1, order_stock.indices))


def test_training_forward_counts_top_k_tokens_per_layer():
    model = tiny_model()
    model.train()
    model(input_ids=torch.randint(0, VOCAB, (3, 7)))
    for router in routers_of(model):
        assert router.counts_E.sum().item() == 3 * 7 * 2  # B * S * K


def test_eval_no_grad_and_generate_neither_count_nor_move_the_bias():
    model = tiny_model(bias_init_skew=0.1)
    before = biases(model)
    x = torch.randint(0, VOCAB, (2, 6))
    model.eval()
    model(input_ids=x)
    model.train()
    with torch.no_grad():
        model(input_ids=x)
    model.eval()
    model.generate(x, max_new_tokens=4, do_sample=False)
    assert counts(model) == 0
    assert torch.equal(biases(model), before)
    assert all(r.eval_counts_E.sum() == 0 for r in routers_of(model))  # not validation


def test_validation_counts_only_between_start_and_stop():
    model = tiny_model()
    model.eval()
    x = torch.randint(0, VOCAB, (2, 6))
    routers = routers_of(model)
    for router in routers:
        router.start_eval_counts()
    with torch.no_grad():
        model(input_ids=x)
    for router in routers:
        router.stop_eval_counts()
    with torch.no_grad():
        model(input_ids=x)  # after stop: not counted
    assert all(r.eval_counts_E.sum().item() == 2 * 6 * 2 for r in routers)  # B * S * K
    assert counts(model) == 0  # training counts untouched


def test_counts_once_under_activation_checkpointing():
    x = torch.randint(0, VOCAB, (2, 8))
    plain, checkpointed = tiny_model(), tiny_model()
    checkpointed.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False})
    for model in (plain, checkpointed):
        model.train()
        model(input_ids=x).logits.sum().backward()
    for a, b in zip(routers_of(plain), routers_of(checkpointed), strict=True):
        assert torch.equal(a.counts_E, b.counts_E)


def test_bias_and_counters_stay_fp32_under_bf16_autocast():
    model = tiny_model()
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.randint(0, VOCAB, (2, 6)))
    for router in routers_of(model):
        assert router.e_score_correction_bias.dtype == torch.float32
        assert router.counts_E.dtype == torch.float32
        assert router.record.probs_BSE.dtype == torch.float32


def test_softmax_router_probabilities_sum_to_one():
    model = tiny_model(score_function="softmax")
    model.train()
    model(input_ids=torch.randint(0, VOCAB, (2, 6)))
    probs = routers_of(model)[0].record.probs_BSE
    assert torch.allclose(probs.sum(-1), torch.ones(2, 6))


def test_override_counter_counts_tokens_whose_top_k_the_bias_changed():
    model = tiny_model()
    gate = model.model.layers[1].mlp.gate
    gate.train()
    x = torch.randn(4, 6, 32, requires_grad=True)
    with torch.no_grad():
        scores = torch.sigmoid(x.reshape(-1, 32) @ gate.weight.T)
    gate(x)
    assert gate.overridden_tokens.item() == 0  # zero bias: TopK(s + b) = TopK(s)
    # a bias that lifts expert 0 far above the rest: every token not already choosing it flips
    gate.reset_counts()
    with torch.no_grad():
        gate.e_score_correction_bias.copy_(torch.tensor([10.0] + [0.0] * 7))
    gate(x)
    already = (scores.topk(2, dim=-1).indices == 0).any(-1)
    assert gate.overridden_tokens.item() == float((~already).sum())
    assert gate.tokens_seen.item() == 24


def test_margin_histogram_counts_each_score_minus_the_k_plus_first_biased_score():
    # K = 1, bias [0.3, 0, 0]; 4 bins over [-1, 1): edges -1, -0.5, 0, 0.5, 1
    # token 0: s = [0.9, 0.6, 0.2], s + b = [1.2, 0.6, 0.2], alpha = 0.6 (2nd largest):
    #   margins [0.3, 0, -0.4] -> bins [2, 2, 1]
    # token 1: s = [0.1, 0.7, 0.45], s + b = [0.4, 0.7, 0.45], alpha = 0.45:
    #   margins [-0.35, 0.25, 0] -> bins [1, 2, 2]
    hist = margin_histogram(torch.tensor([[0.9, 0.6, 0.2], [0.1, 0.7, 0.45]]),
                            torch.tensor([0.3, 0.0, 0.0]), top_k=1, bins=4, span=1.0)
    assert hist.tolist() == [[0, 1, 1, 0], [0, 0, 2, 0], [0, 1, 1, 0]]


def test_margins_are_counted_only_once_tracked_and_in_training_forwards():
    model = tiny_model()
    x = torch.randint(0, VOCAB, (2, 5))
    model.train()
    model(input_ids=x)
    assert all(r.margin_hist_EQ is None for r in routers_of(model))
    for router in routers_of(model):
        router.track_margins(bins=16, span=2.0)
    model(input_ids=x)
    model.eval()
    model(input_ids=x)
    for router in routers_of(model):
        assert router.margin_hist_EQ.shape == (8, 16)
        assert router.margin_hist_EQ.sum(-1).tolist() == [2 * 5] * 8  # every token, per expert
        router.reset_counts()
        assert router.margin_hist_EQ.sum() == 0
