"""The model: a small DeepseekV3ForCausalLM whose routers count (router.py), and the
balancing strategies that act on the counts (balancing.py). Its settings are
:class:`moebalance.config.ModelSettings`; :func:`build_hf_config` turns them into the
``DeepseekV3Config`` transformers builds the model from."""

from __future__ import annotations

import os

from moebalance.config import ModelSettings


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


def build_model(settings: ModelSettings, vocab_size: int, eot_id: int, pad_id: int, seed: int):
    """A freshly initialised model (seeded) with :class:`CountingRouter` gates attached."""
    import torch
    from transformers import DeepseekV3ForCausalLM

    from moebalance.model.router import attach_routers

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
    from transformers import AutoModelForCausalLM

    from moebalance.model.router import attach_routers

    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    attach_routers(model)
    return model
