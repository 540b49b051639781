"""The model: a small DeepseekV3ForCausalLM whose routers count (router.py), the balancing
strategies that act on the counts (balancing.py), and the settings that size it (config.py)."""

from __future__ import annotations

import os

from moebalance.model.config import ModelSettings, build_hf_config


def build_model(settings: ModelSettings, vocab_size: int, eot_id: int, pad_id: int, seed: int):
    """A freshly initialised model (seeded) with :class:`BalancingRouter` gates attached."""
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
    """A saved model folder, with :class:`BalancingRouter` gates re-attached (for training).

    Plain ``AutoModelForCausalLM.from_pretrained(path)`` also loads and generates; it routes
    with the stock sigmoid router, which is the same routing unless ``scoring_func`` is softmax.
    """
    from transformers import AutoModelForCausalLM

    from moebalance.model.router import attach_routers

    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    attach_routers(model)
    return model
