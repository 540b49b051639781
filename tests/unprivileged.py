"""Run a command as an unprivileged user, to test the sandbox's non-root path as root.

As root, the command runs as ``nobody`` (setpriv) in a private mount namespace (unshare).
What this Python needs (its installation, the virtual environment and every directory of
its import path, such as an editable install's src/) may lie under a directory other users
cannot enter: /root, or a clone inside a ``mktemp -d``. There each such topmost private
directory is hidden behind an empty tmpfs into which only the needed directories are bound
back, so ``nobody`` can run and import them and still sees nothing else there. Not as root,
the command runs as is. Whether ``nobody`` can import the package at all is probed once:
where it cannot, :func:`reason_unavailable` says why, and the tests skip.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

NOBODY = 65534
ROOT = os.geteuid() == 0
PROBE = "import moebalance.evaluation.scoring"  # the package and the libraries it needs


@functools.cache
def reason_unavailable() -> str | None:
    """Why commands cannot run unprivileged here, or None."""
    if ROOT and not (shutil.which("unshare") and shutil.which("setpriv")):
        return "dropping root needs util-linux's unshare and setpriv"
    probe = run([sys.executable, "-c", PROBE])
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"an unprivileged user cannot run `{PROBE}` here: {last}"
    return None


def _private_ancestor(path: Path) -> Path | None:
    """The topmost proper ancestor of ``path`` that other users may not enter, if any."""
    for ancestor in reversed(path.parents[:-1]):  # from / down, / itself left out
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _exposed() -> dict[Path, Path]:
    """The directories this Python needs that lie under a private directory, each mapped to
    its topmost private ancestor; none inside another."""
    needed = {Path(os.path.realpath(sys.executable)).parents[1], Path(sys.base_prefix),
              Path(sys.prefix), *(Path(p) for p in sys.path if p and os.path.isdir(p))}
    needed = {Path(os.path.realpath(d)) for d in needed}
    outermost = {d for d in needed if not any(o != d and o in d.parents for o in needed)}
    return {d: blocked for d in sorted(outermost)
            if (blocked := _private_ancestor(d)) is not None}


def command(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run as ``nobody`` when we are root, else unchanged."""
    if not ROOT:
        return argv
    exposed = _exposed()
    script = ["set -e", "umask 022", "stash=$(mktemp -d)"]
    for i, path in enumerate(exposed):
        script += [f"mkdir $stash/{i}", f"mount --bind {shlex.quote(str(path))} $stash/{i}"]
    for blocked in sorted(set(exposed.values())):
        script.append(f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(blocked))}")
    for i, path in enumerate(exposed):
        script += [f"mkdir -p {shlex.quote(str(path))}",
                   f"mount --move $stash/{i} {shlex.quote(str(path))}"]
    script.append(f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
                  "--inh-caps=-all -- \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script),
            "sh", *argv]


def import_path_env() -> dict[str, str]:
    """Our environment, with our import path (this checkout's src/ first) spelt out."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` unprivileged, with our import path, from a directory anyone can enter,
    capturing its output."""
    return subprocess.run(command(argv), cwd="/", capture_output=True, text=True, timeout=600,
                          env=import_path_env(), **kwargs)
