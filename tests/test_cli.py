import subprocess
import sys

import pytest

from moebalance.cli import STAGES, main


def test_top_level_help_lists_every_stage():
    proc = subprocess.run([sys.executable, "-m", "moebalance", "--help"], capture_output=True,
                          text=True, check=True)
    for stage in STAGES:
        assert stage in proc.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_a_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    assert "usage: moebalance" in capsys.readouterr().out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stages_help_is_a_short_description_then_its_options_by_group(stage, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    usage, description, *groups = capsys.readouterr().out.split("\n\n")
    assert len(description.splitlines()) <= 2
    headers = [group.splitlines()[0] for group in groups]
    assert headers[0] == "options:" and "outputs:" in headers
    assert "python -m pydoc moebalance." in headers[-1]  # where the long explanation is


def test_the_settings_help_lists_each_key_with_its_default_and_description(capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "confidence=0.95: interval level; the tests run at alpha = 1 - confidence" in lines
    assert "metric (required): an identifier of moebalance.analysis.catalogue" in lines


def test_a_training_stages_settings_help_lists_its_sections_keys(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert {"balancing:", "train:", "steps=100: optimizer steps"} <= set(lines)
    assert "model:" not in lines  # SFT keeps the pretrained model's shape


def test_missing_input_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "absent.parquet"
    rc = main(["sft-data", "--train", str(missing), "--out-dir", str(tmp_path / "o"),
               "--no-tracking"])
    assert rc == 2
    assert str(missing) in capsys.readouterr().err
