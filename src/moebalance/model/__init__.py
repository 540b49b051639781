"""The model: a small DeepseekV3ForCausalLM whose routers count (router.py), and the
balancing strategies that act on the counts (balancing.py). Its settings are
:class:`moebalance.config.ModelSettings`; :func:`build_hf_config` turns them into the
``DeepseekV3Config`` transformers builds the model from."""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

from moebalance.config import ModelSettings
from moebalance.model.router import attach_routers

# ModelSettings field -> DeepseekV3Config argument, for the fields that pass through as-is
HF_CONFIG_NAMES = {
    "hidden_size": "hidden_size", "dense_size": "intermediate_size",
    "expert_size": "moe_intermediate_size", "layers": "num_hidden_layers",
    "heads": "num_attention_heads", "shared_experts": "n_shared_experts",
    "routed_experts": "n_routed_experts", "top_k": "num_experts_per_tok",
    "first_k_dense": "first_k_dense_replace", "n_group": "n_group",
    "topk_group": "topk_group", "routed_scaling_factor": "routed_scaling_factor",
    "q_lora_rank": "q_lora_rank", "kv_lora_rank": "kv_lora_rank",
    "qk_rope_head_dim": "qk_rope_head_dim", "qk_nope_head_dim": "qk_nope_head_dim",
    "v_head_dim": "v_head_dim", "max_seq_len": "max_position_embeddings",
    "init_std": "initializer_range",
}


def build_hf_config(settings: ModelSettings, vocab_size: int, eot_id: int, pad_id: int):
    """A ``DeepseekV3Config`` for ``settings`` (no multi-token prediction, untied embeddings)."""
    config = DeepseekV3Config(
        vocab_size=vocab_size,
        num_key_value_heads=settings.heads,
        norm_topk_prob=True,
        num_mtp_layers=0,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=pad_id,
        use_cache=True,
        **{hf: getattr(settings, ours) for ours, hf in HF_CONFIG_NAMES.items()},
    )
    config.scoring_func = settings.score_function
    config._experts_implementation = settings.experts_implementation
    config._attn_implementation = settings.attn_implementation
    return config


def build_model(settings: ModelSettings, vocab_size: int, eot_id: int, pad_id: int, seed: int):
    """A freshly initialised model (seeded) with :class:`CountingRouter` gates attached."""
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(build_hf_config(settings, vocab_size, eot_id, pad_id))
    routers = attach_routers(model)
    if settings.bias_init_skew:
        E = settings.routed_experts
        ramp_E = settings.bias_init_skew * (1 - torch.arange(E, dtype=torch.float32) / (E - 1))
        with torch.no_grad():
            for router in routers:
                router.e_score_correction_bias.copy_(ramp_E)
    return model


def load_model(path: str | os.PathLike, **kwargs):
    """A saved model folder, with :class:`CountingRouter` gates re-attached (for training).

    Plain ``AutoModelForCausalLM.from_pretrained(path)`` also loads and generates; it routes
    with the stock sigmoid router, which is the same routing unless ``scoring_func`` is softmax.
    """
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    attach_routers(model)
    return model
