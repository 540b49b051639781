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


def test_the_settings_help_lists_every_key_with_its_default_as_json():
    from moebalance.config import CompareSettings, settings_keys

    keys = settings_keys(CompareSettings)
    assert 'pair=["loss_free", "aux_loss"]' in keys and "confidence=0.95" in keys
    assert "{metric (required), better (required)}" in keys


def test_each_stage_section_is_named_as_the_config_names_it():
    from moebalance.config import SftDataSettings, SweepSettings

    with pytest.raises(ValueError, match=r"unknown key\(s\) in sft_data: bogus"):
        SftDataSettings.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) in sweep: bogus"):
        SweepSettings.from_dict({"bogus": 1})
