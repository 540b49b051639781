"""The generated part of the config schema: every stage's settings, from the classes that
declare them (moebalance.config and the strategies of moebalance.model.balancing).

``python -m moebalance.schema > workflow/schemas/settings.schema.yaml`` writes it; a test
fails, naming that command, while the committed file is stale. The hand-written
``workflow/schemas/config.schema.yaml`` holds the study's structure (results, variants,
seeds) and refers to one definition here per config section.

The file is written as JSON, which is also YAML. Snakemake reads a referenced schema file
again for every ``$ref`` into it (16 here), trying JSON first: parsed as YAML, those reads
took 0.56 s of CPU per Snakemake start, as JSON 1.5 ms (a dry run of the smoke preset in an
empty folder: 2.0 s of CPU before, 1.5 s after).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from moebalance.config import (
    BalanceSetSettings,
    CompareSettings,
    CorpusSettings,
    ExecutionSettings,
    FrontierSettings,
    GenerateSettings,
    ModelSettings,
    ScoreSettings,
    SftDataSettings,
    SweepSettings,
    TokenizerSettings,
    TokensSettings,
    TrainSettings,
    UtilizationSettings,
    settings_schema,
)
from moebalance.model.balancing import options_schema

# A definition per config section, from the settings classes whose keys it holds: two stages
# share `humaneval` and `analysis`, and a training loop (`pretrain`, `finetune.train`) holds
# its science and its execution knobs. `balancing` comes from the strategy classes.
SECTIONS: dict[str, tuple[type, ...]] = {
    "corpus": (CorpusSettings,),
    "tokenizer": (TokenizerSettings,),
    "tokens": (TokensSettings,),
    "sft_data": (SftDataSettings,),
    "balance_set": (BalanceSetSettings,),
    "model": (ModelSettings,),
    "loop": (TrainSettings, ExecutionSettings),
    "humaneval": (GenerateSettings, ScoreSettings),
    "analysis": (UtilizationSettings, CompareSettings),
    "sweep": (SweepSettings,),
    "frontier": (FrontierSettings,),
}

NOTICE = ("Generated from the settings classes (moebalance/config.py) and the balancing "
          "strategies (moebalance/model/balancing.py); do not edit. Regenerate: "
          "python -m moebalance.schema > workflow/schemas/settings.schema.yaml")


def section_schema(classes: tuple[type, ...]) -> dict[str, Any]:
    """One object holding the keys of every class in ``classes`` (no key in two of them)."""
    schemas = [settings_schema(cls) for cls in classes]
    properties: dict[str, Any] = {}
    for schema in schemas:
        shared = set(properties) & set(schema["properties"])
        if shared:
            raise ValueError(f"keys declared by two settings classes: {sorted(shared)}")
        properties |= schema["properties"]
    return {"type": "object", "additionalProperties": False,
            "description": " ".join(schema["description"] for schema in schemas),
            "properties": properties}


def generated_schema() -> str:
    """The text of workflow/schemas/settings.schema.yaml."""
    defs = {name: section_schema(classes) for name, classes in SECTIONS.items()}
    defs["balancing"] = options_schema()
    # the windows' length is the pretraining seq_len, which the workflow fills in
    del defs["balance_set"]["properties"]["seq_len"]
    schema = {"$comment": NOTICE, "$schema": "https://json-schema.org/draft/2020-12/schema",
              "$defs": defs}
    return json.dumps(schema, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(generated_schema())
