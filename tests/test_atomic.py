import signal
import subprocess
import sys
import textwrap

import pytest

from moebalance.atomic import atomic_path


def test_failure_leaves_the_previous_output_untouched(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_directory_output_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "corpus"
    with pytest.raises(KeyboardInterrupt), atomic_path(target, directory=True) as tmp:
        (tmp / "train.parquet").write_text("x")
        raise KeyboardInterrupt
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target, directory=True) as tmp:
        (tmp / "train.parquet").write_text("y")
    assert (target / "train.parquet").read_text() == "y"


def test_a_killed_writer_leaves_no_output_and_the_next_run_cleans_up(tmp_path):
    target = tmp_path / "corpus"
    script = textwrap.dedent(f"""
        import os, signal
        from moebalance.atomic import atomic_path
        with atomic_path({str(target)!r}, directory=True) as tmp:
            (tmp / "part").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()
    with atomic_path(target, directory=True) as tmp:
        (tmp / "whole").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", directory=True):
            pass
    finally:
        os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
