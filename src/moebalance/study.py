"""The study's shape, torch-free (the Snakefile imports it at parse time): a variant's
resolved settings for pretraining and SFT, their execution knobs, the longest window a
variant was trained on, the hash naming a study, the sweep's grids as variants, and where
each run's files live (:class:`RunPaths`).

Fair tuning (docs/reference.md §6). The `sweep` section of the config
(moebalance.config.SweepSettings holds its defaults):

    sweep:
      phase: report            # tune: the study IS the grid; report: the chosen settings
      seeds: [100, 101]        # tuning seeds, disjoint from the reporting `seeds`
      grids:
        aux_loss: {base: aux_loss, key: balancing.aux_loss.alpha, values: [1e-3, 1e-2]}
      selection: {max_maxvio: 0.2}

A study with grids runs in two phases, each resumable on its own:

1. ``--config 'sweep={phase: tune}'``: :func:`apply_sweep` replaces the variants with
   one variant per grid point (named ``{grid}@{leaf}={value}``, e.g.
   ``aux_loss@alpha=1e-3``: the base variant with ``key`` set to the value) and the
   seeds with the tuning seeds; data stages and results folder are shared with the
   report phase (run folders differ by name and seed). Only pretraining is needed:
   ``snakemake sweep_select`` trains the grid and writes ``{results}/tables/sweep.csv``
   and ``sweep_choice.json`` (moebalance.analysis.sweep_select states the rule).
2. ``phase: report`` (the default): when ``sweep_choice.json`` exists, each grid's base
   variant gets its chosen value; the reporting seeds, the test split and HumanEval
   then compare the chosen settings. Without it the configured values stay (and a
   warning says so).

``references`` (e.g. ``[none]``) are variants run unchanged on the tuning seeds: they
take no part in the choice and appear as single points in the frontier figure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moebalance.config import DEFAULT_SEQ_LEN, EXECUTION_KEYS, ExecutionSettings, SweepSettings

log = logging.getLogger(__name__)
SWEPT_SECTIONS = ("model", "balancing", "pretrain")   # what a variant may override
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@=-]*$")


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


# ---- where a run's files live -------------------------------------------------------------


def run_name(variant: str, seed: int | str) -> str:
    """``{variant}/seed{seed}``: one training run's name, and its part of every per-run path
    (run folder, logs, benchmarks, checkpoints) and of its MLflow run."""
    return f"{variant}/seed{seed}"


@dataclass(frozen=True)
class RunPaths:
    """The run-folder layout, ``{runs}/{variant}/seed{seed}/{stage}/``: each (variant, seed)
    has a folder per stage (pretrain, sft, humaneval, utilization) holding that stage's
    files, which the rules writing them name. Left as ``{variant}`` and ``{seed}``, the
    variant and seed are Snakemake wildcards, and the paths are the rules' patterns."""

    runs: str | Path
    variant: str = "{variant}"
    seed: int | str = "{seed}"

    @property
    def name(self) -> str:
        return run_name(self.variant, self.seed)

    @property
    def folder(self) -> Path:
        return Path(self.runs) / self.name

    def stage(self, stage: str) -> Path:
        """The folder of one stage's outputs for this run."""
        return self.folder / stage


# ---- the sweep: grids as variants ----------------------------------------------------------


def format_value(value: Any) -> str:
    """A short, path-safe spelling of a grid value: 0.001 -> 1e-3, 0.025 -> 2.5e-2, 3 -> 3."""
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, float):
        return str(value)
    mantissa, exponent = f"{value:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def point_name(grid: str, key: str, value: Any) -> str:
    """The variant name of one grid point, e.g. ``aux_loss@alpha=1e-3``."""
    name = f"{grid}@{key.rsplit('.', 1)[-1]}={format_value(value)}"
    if not NAME_PATTERN.match(name):
        raise ValueError(f"sweep.grids.{grid}: grid point name {name!r} is not path-safe")
    return name


def nested(key: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}``."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def sweep_settings(config: dict[str, Any]) -> SweepSettings:
    """The config's `sweep` section, each grid checked against the config's variants."""
    sweep = SweepSettings.from_dict(config.get("sweep") or {})
    for name, grid in sweep.grids.items():
        if grid.base not in config.get("variants", {}):
            raise ValueError(f"sweep.grids.{name}.base: no variant {grid.base!r}")
        if grid.key.split(".")[0] not in SWEPT_SECTIONS or grid.key.count(".") < 1:
            raise ValueError(f"sweep.grids.{name}.key {grid.key!r} must start with one of "
                             f"{', '.join(SWEPT_SECTIONS)} and name a setting inside it")
    return sweep


def grid_points(sweep: SweepSettings) -> list[tuple[str, str, str, Any]]:
    """(grid, variant name, key, value) of every grid point, in order."""
    return [(name, point_name(name, grid.key, value), grid.key, value)
            for name, grid in sweep.grids.items() for value in grid.values]


def grid_variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One variant per grid point (the base variant with the swept key set to the value),
    then the reference variants as configured."""
    sweep = sweep_settings(config)
    variants = {variant: deep_merge(config["variants"][sweep.grids[name].base],
                                    nested(key, value))
                for name, variant, key, value in grid_points(sweep)}
    for name in sweep.references:
        if name not in config.get("variants", {}):
            raise ValueError(f"sweep.references: no variant {name!r}")
        if name in variants:
            raise ValueError(f"sweep.references: {name!r} is also a grid point's name")
        variants[name] = config["variants"][name]
    return variants


def apply_sweep(config: dict[str, Any], choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study config the rules run: the grid (phase tune) or the chosen settings (report).

    Pure: ``config`` is not modified; ``choice`` is the content of sweep_choice.json.
    """
    sweep = sweep_settings(config)
    if not sweep.grids:
        return config
    shared = sorted(set(sweep.seeds) & set(config.get("seeds", [])))
    if shared:
        raise ValueError(f"sweep.seeds must be disjoint from seeds; both hold {shared}")
    if sweep.phase == "tune":
        if not sweep.seeds:
            raise ValueError("sweep.seeds: the tuning phase needs its own seeds")
        return {**config, "variants": grid_variants(config), "seeds": list(sweep.seeds)}
    variants = dict(config["variants"])
    for name, chosen in (choice or {}).items():
        if name not in sweep.grids:
            continue  # a grid since removed from the config
        base, key = sweep.grids[name].base, sweep.grids[name].key
        if chosen["key"] != key:
            raise ValueError(f"sweep choice for {name} sets {chosen['key']}, the grid {key}")
        variants[base] = deep_merge(variants[base], nested(key, chosen["value"]))
    return {**config, "variants": variants}


def choice_path(config: dict[str, Any]) -> Path:
    """Where the tuning phase writes its choice (for the config of the report phase)."""
    return Path(config["results"]) / "tables" / "sweep_choice.json"


def read_choice(config: dict[str, Any]) -> dict[str, Any] | None:
    """The tuning phase's choice for the report phase; None (with a warning) if not made."""
    sweep = sweep_settings(config)
    if not sweep.grids or sweep.phase == "tune":
        return None
    path = choice_path(config)
    if not path.is_file():
        log.warning("no %s yet: the swept variants keep their configured values", path)
        return None
    return json.loads(path.read_text())
