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
