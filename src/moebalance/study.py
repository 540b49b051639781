"""The study's shape, torch-free (the Snakefile imports it at parse time): a variant's
resolved settings for pretraining and SFT, their execution knobs, the longest window a
variant was trained on, and the hash naming a study."""

from __future__ import annotations

import copy
import json
from typing import Any

from moebalance.config import DEFAULT_SEQ_LEN, EXECUTION_KEYS, ExecutionSettings


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for mappings (neither is modified)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def split_execution(loop: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A training-loop section split into (science settings, execution knobs)."""
    science = {k: v for k, v in loop.items() if k not in EXECUTION_KEYS}
    execution = {k: v for k, v in loop.items() if k in EXECUTION_KEYS}
    return science, execution


def _no_execution_overrides(variant: str, section: str, overrides: dict[str, Any]) -> None:
    knobs = sorted(set(overrides) & set(EXECUTION_KEYS))
    if knobs:
        raise ValueError(f"variants.{variant}.{section}: {', '.join(knobs)} are execution "
                         f"knobs, set once for the whole study in `{section}`")


def variant_settings(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """A variant's resolved pretraining settings, the science only: the `model`, `balancing`
    and `pretrain` sections with the variant's overrides merged in, as ``--settings`` takes
    them. Execution knobs are :func:`execution_settings`."""
    overrides = config["variants"][variant]
    _no_execution_overrides(variant, "pretrain", overrides.get("pretrain", {}))
    train, _ = split_execution(deep_merge(config.get("pretrain", {}),
                                          overrides.get("pretrain", {})))
    return {
        "model": deep_merge(config.get("model", {}), overrides.get("model", {})),
        "balancing": deep_merge(config.get("balancing", {}), overrides.get("balancing", {})),
        "train": train,
    }


def sft_settings(pretrain_settings: dict[str, Any], finetune: dict[str, Any]) -> dict[str, Any]:
    """A variant's SFT settings (science only): its own balancing (with ``freeze_bias``, the
    bias updates' gamma is 0 from the first step) and the ``finetune.train`` loop settings."""
    balancing = copy.deepcopy(pretrain_settings["balancing"])
    if finetune.get("freeze_bias", False):
        for name in ("loss_free", "smebu"):  # the strategies that move the bias
            if name in balancing.get("strategies", []):
                balancing.setdefault(name, {})["stop_fraction"] = 0.0
    train, _ = split_execution(dict(finetune.get("train", {})))
    return {"balancing": balancing, "train": train}


def execution_settings(loop: dict[str, Any]) -> dict[str, Any]:
    """The execution knobs of a training-loop section (``pretrain`` or ``finetune.train``)."""
    _, execution = split_execution(loop)
    ExecutionSettings.from_dict(execution)  # validates
    return execution


def study_hash(config: dict[str, Any]) -> str:
    """A short hash naming a study: its whole config, execution knobs left out."""
    import hashlib

    science = copy.deepcopy(config)
    for loop in (science.get("pretrain", {}), science.get("finetune", {}).get("train", {})):
        for key in EXECUTION_KEYS:
            loop.pop(key, None)
    blob = json.dumps(science, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def trained_length(pretrain_settings: dict[str, Any], finetune_settings: dict[str, Any]) -> int:
    """The longest window a variant's model was trained on, pretraining or SFT: prompts and
    solutions longer than this are scored by positions no training step reached."""
    return max(loop.get("train", {}).get("seq_len", DEFAULT_SEQ_LEN)
               for loop in (pretrain_settings, finetune_settings))
