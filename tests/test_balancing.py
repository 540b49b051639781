"""The balancing equations against hand-computed values on tiny inputs."""

from dataclasses import dataclass
from typing import ClassVar

import jsonschema
import pytest
import torch
from conftest import config_validator
from moe_helpers import tiny_trainer

from moebalance.model.balancing import (
    STRATEGIES,
    Balancing,
    LossFree,
    StepCounts,
    Strategy,
    bias_delta,
    expert_balance_loss,
    global_balance_loss,
    loss_terms,
    option,
    options_schema,
    quantile_bias,
    router_z_loss,
    sequence_balance_loss,
    smebu_step,
)
from moebalance.model.router import RoutingRecord


def record(probs, experts) -> RoutingRecord:
    """A RoutingRecord from per-token probabilities [B][S][E] and chosen experts [B][S][K]."""
    probs_BSE = torch.tensor(probs, dtype=torch.float32)
    selected_BSE = torch.zeros_like(probs_BSE).scatter_(-1, torch.tensor(experts), 1.0)
    return RoutingRecord(probs_BSE=probs_BSE, logits_BSE=probs_BSE.log(),
                         selected_BSE=selected_BSE, top_k=len(experts[0][0]))


def test_aux_loss_is_one_when_perfectly_balanced():
    # 4 tokens, 4 experts, top-1, each expert once, uniform probabilities:
    # f_i = 4/(1*4) * 1 = 1, P_i = 0.25, sum_i f_i P_i = 1
    r = record([[[0.25] * 4] * 4], [[[0], [1], [2], [3]]])
    assert expert_balance_loss(r, top_k=1).item() == pytest.approx(1.0)


def test_aux_loss_of_collapsed_routing():
    # every token to expert 0 with P_0 = 0.7: f_0 = 4/(1*4) * 4 = 4, loss = 4 * 0.7 = 2.8
    r = record([[[0.7, 0.1, 0.1, 0.1]] * 4], [[[0]] * 4])
    assert expert_balance_loss(r, top_k=1).item() == pytest.approx(2.8)


def test_aux_loss_counts_top_k_selections():
    # 2 tokens, 4 experts, top-2, token 0 -> {0,1}, token 1 -> {0,2}:
    # f = 4/(2*2) * [2,1,1,0] = [2,1,1,0]; P = [0.4,0.3,0.2,0.1]; loss = 0.8+0.3+0.2 = 1.3
    r = record([[[0.4, 0.3, 0.2, 0.1]] * 2], [[[0, 1], [0, 2]]])
    assert expert_balance_loss(r, top_k=2).item() == pytest.approx(1.3)


def test_sequence_wise_loss_differs_from_micro_batch_loss_on_crafted_batch():
    # sequence 0 sends both tokens to expert 0, sequence 1 both to expert 1.
    # micro-batch: f = [1,1], P = [0.5,0.5] -> 1.0 (looks balanced)
    # per sequence: f = [2,0], P = [0.9,0.1] -> 1.8 (and mirrored) -> mean 1.8
    r = record([[[0.9, 0.1]] * 2, [[0.1, 0.9]] * 2], [[[0], [0]], [[1], [1]]])
    assert expert_balance_loss(r, top_k=1).item() == pytest.approx(1.0)
    assert sequence_balance_loss(r, top_k=1).item() == pytest.approx(1.8)


def test_sequence_wise_f_counts_the_unbiased_top_k_not_the_biased_selection():
    # one sequence of 2 tokens, s' = [0.9, 0.1]; the bias routed both tokens to expert 1.
    # DeepSeek-V3 Eq. 18 counts TopK(s) = expert 0: f = 2/(1*2) * [2, 0] = [2, 0],
    # P = [0.9, 0.1] -> 1.8 (the biased selection would give f = [0, 2] -> 0.2)
    r = record([[[0.9, 0.1]] * 2], [[[1], [1]]])
    assert sequence_balance_loss(r, top_k=1).item() == pytest.approx(1.8)


def test_global_loss_takes_frequencies_from_global_counts():
    # locally collapsed on expert 0, but over the global batch each of 2 experts got 10 tokens:
    # f = 2/(1*20) * [10,10] = [1,1]; P = [0.9,0.1] -> 1.0
    r = record([[[0.9, 0.1]] * 2], [[[0], [0]]])
    assert global_balance_loss(r, torch.tensor([10.0, 10.0]), top_k=1).item() == \
        pytest.approx(1.0)


def test_router_z_loss():
    # logits [0, 0]: logsumexp = ln 2, squared = 0.480453
    r = RoutingRecord(probs_BSE=torch.zeros(1, 1, 2), logits_BSE=torch.zeros(1, 1, 2),
                      selected_BSE=torch.zeros(1, 1, 2), top_k=1)
    assert router_z_loss(r).item() == pytest.approx(0.4804530)


def test_sign_update_moves_bias_against_load():
    # loads [1,3] (mean 2): the underloaded expert gains gamma, the overloaded loses gamma
    assert bias_delta(torch.tensor([[1.0, 3.0]]), 0.1)[0].tolist() == pytest.approx([0.1, -0.1])


def test_proportional_update_scales_with_relative_error():
    # e = [1,-1], mean 2 -> u * e / mean = [0.05, -0.05]
    delta = bias_delta(torch.tensor([[1.0, 3.0]]), 0.1, rule="proportional")
    assert delta[0].tolist() == pytest.approx([0.05, -0.05])


def test_recentred_update_has_zero_mean():
    # loads [4,0,0,0]: signs [-1,1,1,1] (mean 0.5) -> [-1.5,0.5,0.5,0.5] * gamma
    delta = bias_delta(torch.tensor([[4.0, 0, 0, 0]]), 1.0, recentre=True)
    assert delta[0].tolist() == pytest.approx([-1.5, 0.5, 0.5, 0.5])


def test_gamma_is_zero_after_stop_fraction():
    strategy = LossFree(gamma=0.1, stop_fraction=0.5)
    assert [strategy.gamma_at(step, 4) for step in range(4)] == [0.1, 0.1, 0.0, 0.0]


def test_smebu_step_soft_clamps_smooths_and_centres():
    # loads [1, 3], mean 2: deviation (2 - c)/2 = [0.5, -0.5]; kappa 2 -> tanh(1) = 0.7615942
    # beta 0.5, v0 = 0 -> v = [0.3807971, -0.3807971]; gamma 0.1 -> b = [1, 0] + [0.0380797,
    # -0.0380797] = [1.0380797, -0.0380797], mean 0.5 -> centred [0.5380797, -0.5380797]
    loads = torch.tensor([[1.0, 3.0]])
    bias, v = smebu_step(loads, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), gamma=0.1,
                         beta=0.5, kappa=2.0)
    assert v[0].tolist() == pytest.approx([0.3807971, -0.3807971])
    assert bias[0].tolist() == pytest.approx([0.5380797, -0.5380797])
    # second step, same loads: v = 0.5 * 0.3807971 + 0.5 * 0.7615942 = 0.5711957
    bias, v = smebu_step(loads, bias, v, gamma=0.1, beta=0.5, kappa=2.0)
    assert v[0].tolist() == pytest.approx([0.5711957, -0.5711957])
    assert bias[0].tolist() == pytest.approx([0.5951993, -0.5951993])


def test_smebu_step_saturates_however_large_the_imbalance():
    # deviation [-3, 1, 1, 1] * kappa 100 -> tanh = [-1, 1, 1, 1]; beta 0 -> v = that;
    # b = 0.1 v = [-0.1, 0.1, 0.1, 0.1], mean 0.05 -> [-0.15, 0.05, 0.05, 0.05]
    bias, _ = smebu_step(torch.tensor([[1e6, 0.0, 0.0, 0.0]]), torch.zeros(1, 4),
                         torch.zeros(1, 4), gamma=0.1, beta=0.0, kappa=100.0)
    assert bias[0].tolist() == pytest.approx([-0.15, 0.05, 0.05, 0.05])


def test_smebu_state_round_trips_through_the_plan():
    plan = Balancing.from_dict({"strategies": ["smebu"], "smebu": {"gamma": 0.1}})
    assert plan.gamma_at(0, 10) == 0.1
    plan.strategies[0].velocity_LE = torch.tensor([[0.25, -0.25]])
    fresh = Balancing.from_dict({"strategies": ["smebu"], "smebu": {"gamma": 0.1}})
    fresh.load_state_dict(plan.state_dict())
    assert torch.equal(fresh.strategies[0].velocity_LE, torch.tensor([[0.25, -0.25]]))


def test_smebu_velocity_is_not_a_config_option():
    with pytest.raises(ValueError, match="velocity_LE"):
        Balancing.from_dict({"strategies": ["smebu"], "smebu": {"velocity_LE": 1}})


def test_strategies_combine_into_one_plan():
    plan = Balancing.from_dict({"strategies": ["loss_free", "seq_aux_loss"],
                                "seq_aux_loss": {"alpha": 1e-4}, "loss_free": {"gamma": 0.01}})
    assert [s.name for s in plan.strategies] == ["loss_free", "seq_aux_loss"]
    assert plan.gamma_at(0, 10) == 0.01
    # the training loss carries the one loss term of the pair (loss_free adds none)
    row = tiny_trainer({"strategies": ["loss_free", "seq_aux_loss"],
                        "seq_aux_loss": {"alpha": 1e-4}, "loss_free": {"gamma": 0.01}}
                       ).train_step()
    assert row["seq_aux_loss"] > 0 and row["aux_loss"] == row["z_loss"] == 0
    assert row["loss"] == pytest.approx(row["lm_loss"] + row["seq_aux_loss"])


def test_quantile_bias_sets_each_expert_where_k_t_over_n_margins_lie_above():
    # 1 layer, N = 2 experts, K = 1, T = 4 tokens: quota q = T K / N = 2 (counts sum to T K).
    # 4 bins over [-2, 2): width 1, edges -2, -1, 0, 1, 2.
    # expert 0 margins per bin [0, 1, 2, 1]: 1 margin in [1, 2), so 1 more of the 2 in
    #   [0, 1), spread evenly: beta_0 = 1 - (1/2) * 1 = 0.5
    # expert 1 margins per bin [2, 2, 0, 0]: both of [-1, 0) needed: beta_1 = 0 - (2/2) = -1
    # bias = -beta + mean(beta) = [-0.5, 1] - 0.25 = [-0.75, 0.75]
    margins = torch.tensor([[[0.0, 1, 2, 1], [2, 2, 0, 0]]])
    bias = quantile_bias(margins, counts_LE=torch.tensor([[3.0, 1.0]]), span=2.0)
    assert bias[0].tolist() == pytest.approx([-0.75, 0.75])


def test_quantile_strategy_sets_the_bias_until_its_stop_fraction():
    strategy = Balancing.from_dict({"strategies": ["quantile"],
                                    "quantile": {"bins": 4, "stop_fraction": 0.5}})
    counted = StepCounts(torch.tensor([[3.0, 1.0]]),
                         torch.tensor([[[0.0, 1, 2, 1], [2, 2, 0, 0]]]))
    bias = torch.tensor([[0.5, -0.5]])
    # set, not nudged: the old bias does not enter
    assert strategy.new_bias(counted, bias, 0, 4)[0].tolist() == pytest.approx([-0.75, 0.75])
    assert torch.equal(strategy.new_bias(counted, bias, 2, 4), bias)  # held from step 2 of 4


def test_strategies_declare_whether_they_add_a_loss_and_move_the_bias():
    expected = {"aux_loss": (True, False), "seq_aux_loss": (True, False),
                "global_aux_loss": (True, False), "z_loss": (True, False),
                "loss_free": (False, True), "smebu": (False, True), "quantile": (False, True)}
    assert {name: (STRATEGIES[name].adds_loss, STRATEGIES[name].moves_bias)
            for name in expected} == expected
    assert loss_terms()[:4] == ["aux_loss", "seq_aux_loss", "global_aux_loss", "z_loss"]
    assert not {"loss_free", "smebu", "quantile"} & set(loss_terms())


def test_freeze_bias_gives_each_bias_mover_its_declared_frozen_options():
    plan = Balancing.from_dict({"strategies": ["loss_free", "smebu", "quantile", "aux_loss"],
                                "loss_free": {"gamma": 0.01}, "freeze_bias": True})
    assert [s.stop_fraction for s in plan.strategies[:3]] == [0.0, 0.0, 0.0]
    assert plan.strategies[0].gamma == 0.01 and plan.gamma_at(0, 10) == 0.0


def test_a_bias_mover_that_does_not_declare_how_it_freezes_is_refused():
    with pytest.raises(TypeError, match="frozen_options"):
        @dataclass
        class Unfreezable(Strategy):
            name: ClassVar[str] = "unfreezable_probe"

            def new_bias(self, counted, bias_LE, step, total_steps):
                return bias_LE + 1
    assert "unfreezable_probe" not in STRATEGIES


def test_strategies_that_cannot_be_compiled_together_are_named():
    plan = Balancing.from_dict({"strategies": ["global_aux_loss", "loss_free", "aux_loss"]})
    assert plan.compile_conflicts() == [("aux_loss", "global_aux_loss")]
    assert Balancing.from_dict({"strategies": ["global_aux_loss"]}).compile_conflicts() == []


def test_unknown_strategy_name_is_rejected_naming_it():
    with pytest.raises(ValueError, match="bogus"):
        Balancing.from_dict({"strategies": ["aux_loss", "bogus"]})


def test_config_with_unknown_strategy_fails_schema_validation_naming_the_key():
    config = {"variants": {"mine": {"balancing": {"strategies": ["aux_loss", "bogus"]}}}}
    with pytest.raises(jsonschema.ValidationError) as err:
        config_validator().validate(config)
    assert "bogus" in err.value.message
    assert list(err.value.absolute_path) == ["variants", "mine", "balancing", "strategies", 1]


def test_config_with_smebu_options_passes_schema_validation():
    config = {"balancing": {"smebu": {"gamma": 0.01, "beta": 0.9, "kappa": 2.0}},
              "variants": {"smebu": {"balancing": {"strategies": ["smebu"]}}}}
    config_validator().validate(config)


def test_an_option_out_of_its_bounds_fails_schema_validation_naming_it():
    config = {"balancing": {"smebu": {"beta": 1.0}}}
    with pytest.raises(jsonschema.ValidationError) as err:
        config_validator().validate(config)
    assert list(err.value.absolute_path) == ["balancing", "smebu", "beta"]


def test_a_new_strategy_is_one_class_registered_with_its_options_in_the_schema():
    @dataclass
    class Scale(Strategy):
        """Multiply every bias by a factor after each step (a newcomer's strategy)."""

        name: ClassVar[str] = "scale_probe"
        frozen_options: ClassVar[dict] = {"factor": 1.0}
        factor: float = option(0.5, exclusiveMinimum=0, description="bias multiplier")

        def new_bias(self, counted, bias_LE, step, total_steps):
            return bias_LE * self.factor

    try:
        assert STRATEGIES["scale_probe"] is Scale and Scale.moves_bias and not Scale.adds_loss
        plan = Balancing.from_dict({"strategies": ["scale_probe"], "scale_probe": {"factor": 0.25}})
        assert plan.strategies[0].factor == 0.25
        assert "scale_probe" not in loss_terms()
        options = options_schema()["properties"]
        assert "scale_probe" in options["strategies"]["items"]["enum"]
        assert options["scale_probe"]["properties"]["factor"] == {
            "type": "number", "exclusiveMinimum": 0, "description": "bias multiplier"}
        row = tiny_trainer({"strategies": ["scale_probe"]}).train_step()
        assert "scale_probe" not in row and row["loss"] == row["lm_loss"]
    finally:
        del STRATEGIES["scale_probe"]


def test_an_option_outside_its_choices_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"balancing\.loss_free\.rule must be one of sign, "
                                         r"proportional"):
        Balancing.from_dict({"strategies": ["loss_free"], "loss_free": {"rule": "bogus"}})
