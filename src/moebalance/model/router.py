"""The router that counts: a drop-in ``mlp.gate`` for ``DeepseekV3ForCausalLM``.

It keeps the stock router's parameter and buffer names (``weight``,
``e_score_correction_bias``), so a state dict saved from it is a standard Hugging
Face checkpoint. What it adds:

- ``scoring_func`` from the config: sigmoid (DeepSeek-V3) or softmax (classic baselines);
- in training forwards only, per-expert token counts accumulated over micro-batches
  (``counts_E``, fp32), the number of tokens whose top-K set the bias changed
  (``overridden_tokens``: biased top-K differs from TopK(s), the bias override rate's
  numerator) and a :class:`RoutingRecord` of the last forward for the auxiliary losses;
  when a strategy asks (:meth:`CountingRouter.track_margins`), a histogram of the score
  margins that Quantile Balancing sets the bias from (:func:`margin_histogram`).
  It never changes the bias: the trainer does (see :mod:`moebalance.model.balancing`).

Routing and gating are fp32 even under bf16 autocast. Dimension letters: the legend in
:mod:`moebalance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter


@dataclass
class RoutingRecord:
    """What one training forward of one router saw; B sequences of S tokens, E experts."""

    probs_BSE: torch.Tensor     # normalised scores s' (differentiable): P_i of the balance losses
    logits_BSE: torch.Tensor    # router logits (differentiable): router z-loss
    selected_BSE: torch.Tensor  # 1.0 where the expert is in the token's top-K (no grad)
    top_k: int                  # K, experts per token


def margin_histogram(scores_TE: torch.Tensor, bias_E: torch.Tensor, top_k: int, bins: int,
                     span: float) -> torch.Tensor:
    """(E, bins) counts of the margins m_{t,i} = s_{t,i} - alpha_t, per expert, in equal bins
    over [-span, span) (margins outside go to the end bins), where alpha_t is the (K+1)-th
    largest biased score of token t: the highest score an expert could have without making
    the token's top-K. Quantile Balancing's statistic (see balancing.quantile_bias); a sum
    over tokens, so micro-batches and ranks add up. Group-limited routing is not applied.
    """
    T, E = scores_TE.shape
    # Su 2026 (kexue.fm/archives/11619) / Marin #3406 step 1: alpha_t = the (K+1)-th largest
    # of s_{t,j} + b_j over experts j
    alpha_T1 = (scores_TE + bias_E).topk(top_k + 1, dim=-1).values[:, -1:]
    margin_TE = scores_TE - alpha_T1
    bin_TE = ((margin_TE + span) * (bins / (2 * span))).floor().clamp(0, bins - 1).long()
    flat_TE = bin_TE + torch.arange(E, device=bin_TE.device) * bins
    hist = torch.zeros(E * bins, dtype=torch.float32, device=scores_TE.device)
    # 1-D scatter_add_: deterministic on CUDA under torch.use_deterministic_algorithms
    hist.scatter_add_(0, flat_TE.reshape(-1), torch.ones(T * E, device=scores_TE.device))
    return hist.view(E, bins)


class CountingRouter(DeepseekV3TopkRouter):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.score_function = getattr(config, "scoring_func", "sigmoid")
        E = self.num_experts
        self.counts_E = torch.nn.Buffer(torch.zeros(E, dtype=torch.float32), persistent=False)
        self.score_sum_E = torch.nn.Buffer(torch.zeros(E, dtype=torch.float32), persistent=False)
        self.tokens_seen = torch.nn.Buffer(torch.zeros((), dtype=torch.float32), persistent=False)
        self.overridden_tokens = torch.nn.Buffer(torch.zeros((), dtype=torch.float32),
                                                 persistent=False)
        # assignments per expert of the validation forwards, counted only between
        # start_eval_counts and stop_eval_counts (the trainer's validation): held-out
        # MaxVio_global; generation and analysis forwards count nothing
        self.eval_counts_E = torch.nn.Buffer(torch.zeros(E, dtype=torch.float32),
                                             persistent=False)
        self.counting_eval = False
        self.record: RoutingRecord | None = None
        # margin histogram (E, bins) of the training forwards, only once track_margins is called
        self.register_buffer("margin_hist_EQ", None, persistent=False)
        self.margin_span = 0.0

    def track_margins(self, bins: int, span: float) -> None:
        """From now on, also count the score margins of training forwards in ``bins`` bins over
        [-span, span) (:func:`margin_histogram`), reset with the counts."""
        if self.top_k >= self.num_experts:
            raise ValueError("score margins need top_k < routed experts")
        self.margin_hist_EQ = torch.zeros(self.num_experts, bins, dtype=torch.float32,
                                          device=self.counts_E.device)
        self.margin_span = span

    def is_training_forward(self) -> bool:
        return self.training and torch.is_grad_enabled()

    def is_recording(self) -> bool:
        """Training forwards only: not eval, not no-grad, not an activation-checkpoint recompute."""
        if torch.compiler.is_compiling():
            # a compiled forward is traced once and never re-run by backward: AOTAutograd's
            # recompute replays the graph, not this Python (and the task-id query is a graph
            # break)
            return self.is_training_forward()
        in_backward = torch._C._current_graph_task_id() != -1
        return self.is_training_forward() and not in_backward

    def start_eval_counts(self) -> None:
        self.eval_counts_E.zero_()
        self.counting_eval = True

    def stop_eval_counts(self) -> None:
        self.counting_eval = False

    def reset_counts(self) -> None:
        self.counts_E.zero_()
        self.score_sum_E.zero_()
        self.tokens_seen.zero_()
        self.overridden_tokens.zero_()
        if self.margin_hist_EQ is not None:
            self.margin_hist_EQ.zero_()
        self.record = None

    def _group_mask(self, choice_TE: torch.Tensor) -> torch.Tensor:
        """Group-limited routing (DeepSeek-V3 §2.1.2): keep the experts of the top groups only."""
        T, E = choice_TE.shape
        P = self.num_group
        group_scores_TP = choice_TE.view(T, P, E // P).topk(min(2, E // P), dim=-1)[0].sum(-1)
        group_idx = group_scores_TP.topk(self.topk_group, dim=-1, sorted=False)[1]
        keep_TP = torch.zeros_like(group_scores_TP, dtype=torch.bool).scatter_(1, group_idx, True)
        keep_TE = keep_TP.unsqueeze(-1).expand(T, P, E // P).reshape(T, E)
        return choice_TE.masked_fill(~keep_TE, float("-inf"))

    def forward(self, hidden_states: torch.Tensor):
        lead_shape = hidden_states.shape[:-1]
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            x_TH = hidden_states.reshape(-1, self.hidden_dim).float()
            logits_TE = F.linear(x_TH, self.weight.float())
            # DeepSeek-V3 Eq. 15: s_{i,t} = sigmoid(u_t . e_i); softmax for the classic baselines
            if self.score_function == "softmax":
                scores_TE = logits_TE.softmax(dim=-1)
            else:
                scores_TE = logits_TE.sigmoid()
            # DeepSeek-V3 Eq. 16: the bias only chooses the experts (TopK of s + b)
            choice_TE = scores_TE.detach() + self.e_score_correction_bias
            if self.num_group > 1:
                choice_TE = self._group_mask(choice_TE)
            topk_idx_TK = choice_TE.topk(self.top_k, dim=-1, sorted=False)[1]
            # DeepSeek-V3 Eq. 13: g_{i,t} = s_{i,t} / sum_{j in TopK} s_{j,t}
            weights_TK = scores_TE.gather(1, topk_idx_TK)
            if self.norm_topk_prob:
                weights_TK = weights_TK / (weights_TK.sum(dim=-1, keepdim=True) + 1e-20)
            weights_TK = weights_TK * self.routed_scaling_factor
            if self.is_training_forward():
                # computed in the recompute of activation checkpointing too (same saved tensors),
                # recorded only once
                # DeepSeek-V3 Eq. 19: s'_{i,t} = s_{i,t} / sum_j s_{j,t} (softmax sums to 1 already)
                probs_TE = scores_TE if self.score_function == "softmax" else (
                    scores_TE / scores_TE.sum(dim=-1, keepdim=True))
                if self.is_recording():
                    self._record(lead_shape, logits_TE, scores_TE, probs_TE, topk_idx_TK)
            elif self.counting_eval and not self.training:
                self.eval_counts_E.add_(torch.bincount(
                    topk_idx_TK.reshape(-1), minlength=self.num_experts).float())
        return logits_TE, weights_TK, topk_idx_TK

    def _overridden(self, scores_TE: torch.Tensor, selected_TE: torch.Tensor) -> torch.Tensor:
        """(T,) 1.0 where the selected top-K set differs from TopK(s) without the bias
        (docs/reference.md §2, the bias override rate); tensor ops only, no host sync."""
        choice_TE = self._group_mask(scores_TE) if self.num_group > 1 else scores_TE
        unbiased_TK = choice_TE.topk(self.top_k, dim=-1, sorted=False)[1]
        unbiased_TE = torch.zeros_like(selected_TE).scatter_(1, unbiased_TK, 1.0)
        return (unbiased_TE != selected_TE).any(-1).float()

    def _record(self, lead_shape, logits_TE, scores_TE, probs_TE, topk_idx_TK) -> None:
        selected_TE = torch.zeros_like(scores_TE, dtype=torch.float32).scatter_(1, topk_idx_TK, 1.0)
        # in place (add_, not +=): augmented assignment re-registers the buffer, a graph break
        self.counts_E.add_(selected_TE.sum(0))
        self.score_sum_E.add_(scores_TE.detach().sum(0))
        self.tokens_seen.add_(scores_TE.shape[0])
        self.overridden_tokens.add_(self._overridden(scores_TE.detach(), selected_TE).sum())
        if self.margin_hist_EQ is not None:
            self.margin_hist_EQ.add_(margin_histogram(
                scores_TE.detach(), self.e_score_correction_bias, self.top_k,
                self.margin_hist_EQ.shape[1], self.margin_span))
        # (B, S) from the model; a flat (T,) input is one sequence
        B, S = (1, lead_shape[0]) if len(lead_shape) == 1 else (-1, lead_shape[-1])
        B_S_E = (B, S, self.num_experts)
        self.record = RoutingRecord(probs_BSE=probs_TE.view(B_S_E),
                                    logits_BSE=logits_TE.view(B_S_E),
                                    selected_BSE=selected_TE.view(B_S_E), top_k=self.top_k)


def attach_routers(model) -> list[CountingRouter]:
    """Replace every MoE layer's stock ``mlp.gate`` with a :class:`CountingRouter`, in place.

    Weights and bias are copied, so this is safe on a trained or freshly loaded model.
    Returns the routers in layer order (idempotent: already attached ones are kept).
    """
    for layer in model.model.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is None or isinstance(gate, CountingRouter):
            continue
        router = CountingRouter(model.config).to(gate.weight.device)
        router.load_state_dict(gate.state_dict())
        router.train(gate.training)
        layer.mlp.gate = router
    return routers_of(model)


def routers_of(model) -> list[CountingRouter]:
    """The model's :class:`CountingRouter` modules in layer order."""
    return [m for m in model.modules() if isinstance(m, CountingRouter)]


def moe_layer_indices(model) -> list[int]:
    return [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]
