"""Typed model settings, built from the `model` section of the YAML, and the HF config they make.

The backbone is transformers' ``DeepseekV3ForCausalLM`` configured small. Everything
here is a plain field of ``DeepseekV3Config`` except ``score_function``, which the
stock router does not know: it is stored on the config as ``scoring_func`` (the
name DeepSeek's own configs use) and honoured by :class:`~moebalance.model.router.BalancingRouter`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCORE_FUNCTIONS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class ModelSettings:
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    dense_size: int = 384          # intermediate size of the first_k_dense_replace dense MLPs
    routed_experts: int = 16       # N_r
    top_k: int = 4                 # K_r
    shared_experts: int = 1        # N_s
    expert_size: int = 64          # moe_intermediate_size of each (routed and shared) expert
    first_k_dense: int = 1         # first_k_dense_replace: leading layers with a dense MLP
    q_lora_rank: int | None = None  # None: plain q projection (as DeepSeek-V2-Lite)
    kv_lora_rank: int = 64
    qk_rope_head_dim: int = 16
    qk_nope_head_dim: int = 16
    v_head_dim: int = 32
    max_seq_len: int = 256
    n_group: int = 1               # group-limited routing (n_group > 1) is off by default
    topk_group: int = 1
    score_function: str = "sigmoid"
    routed_scaling_factor: float = 1.0  # multiplies the routed gates g (DeepSeek-V3 uses 2.5)
    init_std: float = 0.02
    bias_init_skew: float = 0.0    # >0: initial bias b_i = skew*(1 - i/(E-1)): imbalanced start
    experts_implementation: str = "grouped_mm"  # or "eager", "batched_mm"
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"model.score_function must be one of {SCORE_FUNCTIONS}, "
                             f"got {self.score_function!r}")
        if not 1 <= self.top_k <= self.routed_experts:
            raise ValueError(f"model.top_k={self.top_k} must be in [1, routed_experts]")
        if self.routed_experts % self.n_group or not 1 <= self.topk_group <= self.n_group:
            raise ValueError("model.n_group must divide routed_experts and topk_group <= n_group")
        if self.first_k_dense >= self.layers:
            raise ValueError("model.first_k_dense must leave at least one MoE layer")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSettings:
        return cls(**_known_fields(cls, values, "model"))

    @property
    def moe_layers(self) -> list[int]:
        return list(range(self.first_k_dense, self.layers))


def _known_fields(cls, values: dict[str, Any], section: str) -> dict[str, Any]:
    """``values`` restricted to ``cls``'s fields; an unknown key is an error naming it."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in {section}: {', '.join(unknown)}")
    return dict(values)


def build_hf_config(settings: ModelSettings, vocab_size: int, eot_id: int, pad_id: int):
    """A ``DeepseekV3Config`` for ``settings`` (no multi-token prediction, untied embeddings)."""
    from transformers import DeepseekV3Config

    config = DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.dense_size,
        moe_intermediate_size=settings.expert_size,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.heads,
        n_shared_experts=settings.shared_experts,
        n_routed_experts=settings.routed_experts,
        num_experts_per_tok=settings.top_k,
        first_k_dense_replace=settings.first_k_dense,
        n_group=settings.n_group,
        topk_group=settings.topk_group,
        norm_topk_prob=True,
        routed_scaling_factor=settings.routed_scaling_factor,
        q_lora_rank=settings.q_lora_rank,
        kv_lora_rank=settings.kv_lora_rank,
        qk_rope_head_dim=settings.qk_rope_head_dim,
        qk_nope_head_dim=settings.qk_nope_head_dim,
        v_head_dim=settings.v_head_dim,
        max_position_embeddings=settings.max_seq_len,
        initializer_range=settings.init_std,
        num_mtp_layers=0,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    config.scoring_func = settings.score_function
    config._experts_implementation = settings.experts_implementation
    config._attn_implementation = settings.attn_implementation
    return config
