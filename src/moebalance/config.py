"""Study settings as the stages take them: the typed settings of the model and of a
training loop, variant resolution, and the split between the science (what changes a
result) and execution knobs (how fast or how visibly it runs).

Torch-free: the Snakefile imports it at parse time. Every settings class is a frozen
dataclass whose ``from_dict`` refuses unknown keys and values outside a ``Literal``'s
choices, naming the section and key; the field comments are the documentation.

Execution knobs never enter a rule's params or a checkpoint's fingerprint, so changing one
plans no job and a killed run still resumes:

- ``threads``: torch's intra-op threads. The thread count can change the order of float
  reductions, so it moves the last digits of a result (measured in the README's
  Reproducibility section) the way another CPU model does; like the CPU model, it is
  recorded in each run's provenance instead of re-running the study.
- ``log_every``: how often step metrics reach MLflow (metrics.parquet holds every step).
- ``checkpoint_every``: how often a resumable checkpoint is written; resuming is exact, so
  it does not change the outputs.
- ``progress``: the progress bar.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

EXECUTION_KEYS = ("threads", "log_every", "checkpoint_every", "progress")
DEFAULT_SEQ_LEN = 128  # tokens per training window when a loop's seq_len is left out


@dataclass(frozen=True)
class ExecutionSettings:
    threads: int = 0              # torch intra-op threads on CPU; 0: torch's default
    log_every: int = 10           # steps between MLflow flushes
    checkpoint_every: int = 50    # steps between resumable checkpoints; 0: never
    progress: bool = True         # progress bar on stderr

    def __post_init__(self) -> None:
        for name in ("threads", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"execution.{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"execution.log_every must be >= 1, got {self.log_every}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExecutionSettings:
        return settings_from_dict(cls, values, "execution")


def settings_from_dict(cls, values: dict[str, Any], section: str):
    """``cls(**values)``, refusing keys ``cls`` lacks and values outside a ``Literal``'s
    choices; each error names ``section`` and the key."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in {section}: {', '.join(unknown)}")
    for name, hint in typing.get_type_hints(cls).items():
        if name in values and typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            if values[name] not in choices:
                raise ValueError(f"{section}.{name} must be one of "
                                 f"{', '.join(map(str, choices))}; got {values[name]!r}")
    return cls(**values)


@dataclass(frozen=True)
class ModelSettings:
    """The `model` section: a small DeepseekV3ForCausalLM (moebalance.model builds it).

    Everything is a plain field of ``DeepseekV3Config`` except ``score_function``, which the
    stock router does not know: it is stored on the config as ``scoring_func`` (the name
    DeepSeek's own configs use) and honoured by moebalance.model.router's counting router.
    """

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
    score_function: Literal["sigmoid", "softmax"] = "sigmoid"
    routed_scaling_factor: float = 1.0  # multiplies the routed gates g (DeepSeek-V3 uses 2.5)
    init_std: float = 0.02
    bias_init_skew: float = 0.0    # >0: initial bias b_i = skew*(1 - i/(E-1)): imbalanced start
    experts_implementation: Literal["grouped_mm", "batched_mm", "eager"] = "grouped_mm"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.routed_experts:
            raise ValueError(f"model.top_k={self.top_k} must be in [1, routed_experts]")
        if self.routed_experts % self.n_group or not 1 <= self.topk_group <= self.n_group:
            raise ValueError("model.n_group must divide routed_experts and topk_group <= n_group")
        if self.first_k_dense >= self.layers:
            raise ValueError("model.first_k_dense must leave at least one MoE layer")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSettings:
        return settings_from_dict(cls, values, "model")

    @property
    def moe_layers(self) -> list[int]:
        return list(range(self.first_k_dense, self.layers))


@dataclass(frozen=True)
class TrainSettings:
    """A training loop's science (`pretrain`, `finetune.train`); its execution knobs are
    :class:`ExecutionSettings`."""

    steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = DEFAULT_SEQ_LEN
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    router_weight_decay: bool = True  # decay the router weights (mlp.gate.weight) too
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 50          # and at the last step; 0: never
    eval_batches: int = 4
    snapshot_every: int = 0       # keep the model every N steps (router saturation); 0: never
    device: str = "auto"          # auto: cuda if available, else cpu; or a torch device name
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on cuda, fp32 on cpu
    compile: bool = False         # torch.compile the training forward (model, CE, loss terms)
    loss_chunk_tokens: int = 0    # LM head + cross-entropy in chunks of N tokens; 0: whole
    activation_checkpointing: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        knobs = sorted(set(values) & set(EXECUTION_KEYS))
        if knobs:
            raise ValueError(f"{', '.join(knobs)} in train: execution knobs go in the "
                             "execution settings (--execution, --threads), not the science")
        return settings_from_dict(cls, values, "train")


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
    import json

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
