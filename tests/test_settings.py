"""Typed settings (moebalance.config): one validator, errors that name the section and key."""

import pytest

from moebalance.config import ModelSettings, TrainSettings, settings_from_dict


def test_a_value_outside_a_literals_choices_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"train\.precision must be one of auto, fp32, bf16; "
                                         r"got 'fp16'"):
        TrainSettings.from_dict({"precision": "fp16"})
    with pytest.raises(ValueError, match=r"model\.score_function must be one of sigmoid, softmax"):
        ModelSettings.from_dict({"score_function": "relu"})


def test_an_unknown_key_names_the_section():
    with pytest.raises(ValueError, match=r"unknown key\(s\) in model: hiden_size"):
        ModelSettings.from_dict({"hiden_size": 64})


def test_execution_knobs_in_the_science_are_refused_naming_them():
    with pytest.raises(ValueError, match="log_every in train: execution knobs"):
        TrainSettings.from_dict({"log_every": 5})


def test_valid_values_build_frozen_settings():
    train = TrainSettings.from_dict({"steps": 7, "precision": "bf16"})
    assert (train.steps, train.precision, train.lr) == (7, "bf16", TrainSettings.lr)
    with pytest.raises(AttributeError):
        train.steps = 8  # frozen


def test_the_validator_checks_literals_of_any_settings_class():
    from dataclasses import dataclass
    from typing import Literal

    @dataclass(frozen=True)
    class Probe:
        mode: Literal["a", "b"] = "a"

    assert settings_from_dict(Probe, {"mode": "b"}, "probe") == Probe("b")
    with pytest.raises(ValueError, match=r"probe\.mode must be one of a, b; got 'c'"):
        settings_from_dict(Probe, {"mode": "c"}, "probe")


def test_nested_settings_are_built_from_their_mappings_and_lists_become_tuples():
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Item:
        name: str
        size: int = 1

    @dataclass(frozen=True)
    class Outer:
        items: tuple[Item, ...] = ()
        by_name: dict[str, Item] = field(default_factory=dict)
        pair: tuple[str, str] = ("a", "b")

    got = settings_from_dict(Outer, {"items": [{"name": "x"}], "by_name": {"k": {"name": "y",
                             "size": 2}}, "pair": ["c", "d"]}, "outer")
    assert got == Outer((Item("x"),), {"k": Item("y", 2)}, ("c", "d"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) in outer\.items\[0\]: nmae"):
        settings_from_dict(Outer, {"items": [{"nmae": "x"}]}, "outer")
    with pytest.raises(ValueError, match=r"missing key\(s\) in outer\.by_name\.k: name"):
        settings_from_dict(Outer, {"by_name": {"k": {}}}, "outer")
    with pytest.raises(ValueError, match=r"outer\.pair must hold 2 items"):
        settings_from_dict(Outer, {"pair": ["c"]}, "outer")


def test_a_value_of_the_wrong_json_type_names_the_key_and_the_type():
    with pytest.raises(ValueError, match=r"train\.steps must be int; got '7'"):
        TrainSettings.from_dict({"steps": "7"})
    with pytest.raises(ValueError, match=r"model\.q_lora_rank must be int or null; got 1\.5"):
        ModelSettings.from_dict({"q_lora_rank": 1.5})
    assert TrainSettings.from_dict({"lr": 1}).lr == 1  # an int is a float


def test_parse_settings_reads_inline_json_or_a_file_and_names_the_option(tmp_path):
    from moebalance.config import parse_settings
    from moebalance.errors import UsageError

    assert parse_settings(TrainSettings, "{}") == TrainSettings()
    (tmp_path / "s.json").write_text('{"steps": 3}')
    assert parse_settings(TrainSettings, f"@{tmp_path / 's.json'}").steps == 3
    with pytest.raises(UsageError, match=r"--settings: unknown key\(s\) in train: stpes"):
        parse_settings(TrainSettings, '{"stpes": 3}')
    with pytest.raises(UsageError, match="--settings: train must be a mapping"):
        parse_settings(TrainSettings, "[1]")


def test_the_settings_help_lists_every_key_with_its_default_as_json_and_its_description():
    from moebalance.config import CompareSettings, settings_keys

    lines = settings_keys(CompareSettings).splitlines()
    assert '  pair=["loss_free", "aux_loss"]: treatment and baseline: the primaries test ' \
        "treatment - baseline" in lines
    assert "  confidence=0.95: interval level; the tests run at alpha = 1 - confidence" in lines
    assert "    metric (required): an identifier of moebalance.analysis.catalogue" in lines


def test_each_stage_section_is_named_as_the_config_names_it():
    from moebalance.config import SftDataSettings, SweepSettings

    with pytest.raises(ValueError, match=r"unknown key\(s\) in sft_data: bogus"):
        SftDataSettings.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) in sweep: bogus"):
        SweepSettings.from_dict({"bogus": 1})


def test_the_committed_settings_schema_is_generated_from_the_classes():
    from conftest import SCHEMAS

    from moebalance.schema import generated_schema

    assert (SCHEMAS / "settings.schema.yaml").read_text() == generated_schema(), (
        "stale: python -m moebalance.schema > workflow/schemas/settings.schema.yaml")


@pytest.mark.parametrize("name", ["config", "smoke", "long", "gpu"])
def test_every_committed_config_passes_the_schema(name):
    import yaml
    from conftest import REPO, config_validator

    config_validator().validate(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))


@pytest.mark.parametrize(("section", "cls", "key", "value"), [
    ("tokenizer", "TokenizerSettings", "vocab_size", 258),
    ("tokenizer", "TokenizerSettings", "vocab_size", 257),
    ("model", "ModelSettings", "attn_implementation", "flash_attention_2"),
    ("analysis", "UtilizationSettings", "jitter_fraction", 1.0),
    ("analysis", "UtilizationSettings", "jitter_fraction", 0.0),
    ("balance_set", "BalanceSetSettings", "windows", 2),
    ("balance_set", "BalanceSetSettings", "windows", 1),
    ("model", "ModelSettings", "qk_rope_head_dim", 7),
    ("pretrain", "TrainSettings", "device", "cuda:1"),
    ("pretrain", "TrainSettings", "device", "gpu"),
    ("corpus", "CorpusSettings", "files", ["a.csv"]),
    ("analysis", "CompareSettings", "equivalence", {"maxvio_global_pretrain": 0,
                                                    "heldout_bpb_pretrain": 0.01,
                                                    "solution_bpb": 0.01}),
])
def test_the_schema_and_the_settings_class_accept_the_same_values(section, cls, key, value):
    import jsonschema
    from conftest import config_validator

    import moebalance.config

    schema_accepts = config_validator().is_valid({section: {key: value}})
    try:
        getattr(moebalance.config, cls).from_dict({key: value})
        class_accepts = True
    except ValueError:
        class_accepts = False
    assert schema_accepts == class_accepts
    if not schema_accepts:
        error = jsonschema.exceptions.best_match(config_validator().iter_errors(
            {section: {key: value}}))
        assert list(error.absolute_path)[:2] == [section, key]


def test_a_value_outside_its_fields_bounds_is_refused_naming_the_config_path():
    from moebalance.config import CorpusSettings, SweepSettings, TokenizerSettings

    with pytest.raises(ValueError, match=r"tokenizer\.vocab_size must be >= 258; got 100"):
        TokenizerSettings.from_dict({"vocab_size": 100})
    with pytest.raises(ValueError, match=r"corpus\.hf_datasets\[1\]\.max_documents must be "
                                         r">= 1; got 0"):
        CorpusSettings.from_dict({"hf_datasets": [{"name": "a"},
                                                  {"name": "b", "max_documents": 0}]})
    with pytest.raises(ValueError, match=r"corpus\.extensions\[0\] must be a match of"):
        CorpusSettings.from_dict({"extensions": ["py"]})
    with pytest.raises(ValueError, match=r"sweep\.grids\.g\.values must be free of repeated"):
        SweepSettings.from_dict({"grids": {"g": {"base": "a", "key": "model.layers",
                                                 "values": [1, 1]}}})
    with pytest.raises(ValueError, match=r"sweep\.grids key '-g' must be a match of"):
        SweepSettings.from_dict({"grids": {"-g": {"base": "a", "key": "model.layers",
                                                  "values": [1]}}})


def test_settings_built_directly_check_their_bounds_too():
    from moebalance.config import TokenizerSettings

    with pytest.raises(ValueError, match=r"tokenizer\.vocab_size must be >= 258; got 257"):
        TokenizerSettings(vocab_size=257)


def test_a_setting_refuses_a_schema_keyword_the_validator_does_not_check():
    from moebalance.config import setting

    with pytest.raises(TypeError, match="unknown schema keyword"):
        setting(1, "a count", minimum=0, format="date")
    with pytest.raises(TypeError, match="unknown schema keyword"):
        setting((), "names", items={"enum": ["a"]})
