"""The checkout a report stage runs in, as its provenance stamp states it.

A study rewrites tracked files under ``results/`` as it runs (its tables, figures and
README), so git's "uncommitted changes" would be true of every study's own checkout and
say nothing about the code its numbers come from. The report stages (compare, frontier)
therefore leave the study's outputs out of that question.
"""

from __future__ import annotations

import subprocess
from typing import Any

from moebalance import provenance

OUTPUTS = "results"  # where a study writes, relative to the checkout's top


def report_checkout(source_dir=None) -> dict[str, Any]:
    """The commit of the checkout holding ``source_dir`` (default: the package's) and whether
    it has uncommitted changes outside :data:`OUTPUTS`; the keys and the outside-git answer
    of :func:`moebalance.provenance.git_state`."""
    source_dir = source_dir or provenance.SOURCE_DIR

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                     f":(top,exclude){OUTPUTS}")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status)}
