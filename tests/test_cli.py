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


def test_missing_input_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "absent.parquet"
    rc = main(["sft-data", "--train", str(missing), "--out-dir", str(tmp_path / "o"),
               "--no-tracking"])
    assert rc == 2
    assert str(missing) in capsys.readouterr().err
