"""Run a command as an unprivileged user, to test the sandbox's non-root path as root.

As root, the command runs as ``nobody`` (setpriv) in a private mount namespace
(unshare) whose /root is an empty tmpfs with the interpreter's directory bound back
into it: the interpreter may live under /root, which is closed to other users. Not as
root, the command runs as is.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

NOBODY = 65534
ROOT = os.geteuid() == 0


def reason_unavailable() -> str | None:
    """Why commands cannot run unprivileged here, or None."""
    if ROOT and not (shutil.which("unshare") and shutil.which("setpriv")):
        return "dropping root needs util-linux's unshare and setpriv"
    return None


def _exposed() -> list[str]:
    """Directories under /root the interpreter needs (its installation)."""
    dirs = {Path(os.path.realpath(sys.executable)).parents[1], Path(sys.base_prefix),
            Path(sys.prefix)}
    return sorted({str(d) for d in dirs if d.parts[:2] == ("/", "root")})


def command(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run as ``nobody`` when we are root, else unchanged."""
    if not ROOT:
        return argv
    script = ["set -e", "stash=$(mktemp -d)"]
    for i, path in enumerate(_exposed()):
        script += [f"mkdir $stash/{i}", f"mount --bind {shlex.quote(path)} $stash/{i}"]
    script.append("mount -t tmpfs -o mode=755 tmpfs /root")
    for i, path in enumerate(_exposed()):
        script += [f"mkdir -p {shlex.quote(path)}", f"mount --move $stash/{i} {shlex.quote(path)}"]
    script.append(f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
                  "--inh-caps=-all -- \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script),
            "sh", *argv]


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` unprivileged, from a directory anyone can enter, capturing its output."""
    return subprocess.run(command(argv), cwd="/", capture_output=True, text=True, timeout=600,
                          **kwargs)
