"""What produced a run's numbers: machine, kernels, library versions, threads and code.

Floating-point results differ between CPU kinds (vector width, FMA, kernel choice), GPU
models, library versions and thread counts (the order of reductions). None of these is a
science setting, so none is in a stage's params; each run records them instead, in
``provenance.json``, in its MLflow tags and in the corpus manifest. ``numerics_key`` hashes the
fields that can change the digits, so a comparison can flag runs that mix machines.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from moebalance.atomic import write_json

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "tokenizers", "numpy")
# CPU features that decide which matmul/attention kernels run (x86 and Arm).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "asimd", "sve", "sve2",
             "bf16", "i8mm")
# The region of results/README.md that the compare stage writes: where its numbers come from.
STAMP_BEGIN = "<!-- provenance:begin -->"
STAMP_END = "<!-- provenance:end -->"
STAMP_HEADING = "## Where these numbers come from"
# The fields whose change can move the digits of a result.
NUMERICS_FIELDS = ("cpu", "isa", "torch_cpu_capability", "gpu", "cuda", "python", "libraries",
                   "threads")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "isa": sorted(flags & set(ISA_FLAGS))}


STUDY_OUTPUTS = "results"  # where a study writes inside its checkout


def _git(source_dir: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(source_dir), *args], capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(source_dir: Path | None = None, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The commit of the checkout holding ``source_dir`` (default: the package's) and whether
    it has uncommitted changes to tracked files (None outside git), leaving out the paths
    ``exclude`` (relative to the checkout's top).

    The report stages (compare, frontier) exclude :data:`STUDY_OUTPUTS`: a study rewrites its
    own tracked tables, figures and README as it runs, so counting them would call every
    study's checkout dirty and say nothing about the code its numbers come from."""
    source_dir = source_dir or SOURCE_DIR
    commit = _git(source_dir, "rev-parse", "HEAD")
    status = _git(source_dir, "status", "--porcelain", "--untracked-files=no", "--", ":/",
                  *(f":(top,exclude){path}" for path in exclude)) if commit else None
    return {"git_commit": commit or "unknown",
            "git_dirty": None if status is None else bool(status)}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def accelerator(torch) -> dict[str, Any]:
    """GPU name, driver and CUDA version when CUDA is in use, else Nones."""
    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_driver": None, "cuda": None}
    driver = None
    version_file = Path("/proc/driver/nvidia/version")
    if version_file.is_file():
        match = re.search(r"Kernel Module\s+([\d.]+)", version_file.read_text())
        driver = match.group(1) if match else None
    return {"gpu": torch.cuda.get_device_name(), "gpu_driver": driver, "cuda": torch.version.cuda}


def fingerprint(torch_kernels: bool = True) -> dict[str, Any]:
    """This process's provenance (call it where the stage computes, after threads are set).

    ``torch_kernels=False`` is for stages that compute without torch (the data stages,
    scoring, the comparison): torch's CPU capability, GPU and thread count say nothing about
    their digits, so they are recorded as None, and torch is not imported for them (its
    import is about 2 s of CPU per stage run).
    """
    record: dict[str, Any] = {**cpu(), "torch_cpu_capability": None, "gpu": None,
                              "gpu_driver": None, "cuda": None}
    threads = None
    if torch_kernels:
        import torch

        record |= {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   **accelerator(torch)}
        threads = torch.get_num_threads()
    record |= {
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "threads": threads,
        **git_state(),
    }
    record["numerics_key"] = numerics_key(record)
    return record


def numerics_key(record: Mapping[str, Any]) -> str:
    """A short hash of the fields that can change a result's digits."""
    blob = json.dumps({k: record.get(k) for k in NUMERICS_FIELDS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def as_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """Flat ``provenance.*`` MLflow tags."""
    tags = {}
    for key, value in record.items():
        if isinstance(value, dict):
            tags.update({f"provenance.{key}.{k}": str(v) for k, v in value.items()})
        else:
            tags[f"provenance.{key}"] = ",".join(value) if isinstance(value, list) else str(value)
    return tags


def describe(records: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[list[str], bool]:
    """Markdown lines listing the fingerprints behind a study's runs (one row per distinct
    fingerprint, with the runs it produced), and whether the runs mix fingerprints."""
    groups: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for run, record in records:
        key = record.get("numerics_key") or numerics_key(record)
        groups.setdefault(key, []).append((run, record))
    lines = ["| fingerprint | CPU / GPU | kernels | torch | transformers | threads | commit "
             "| runs |", "|---|---|---|---|---|---|---|---|"]
    for key, members in groups.items():
        r = members[0][1]
        libs = r.get("libraries", {})
        commits = sorted({str(rec.get("git_commit", "?"))[:10]
                          + (" (dirty)" if rec.get("git_dirty") else "") for _, rec in members})
        runs = sorted(run for run, _ in members)
        shown = ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")
        lines.append(f"| `{key}` | {r.get('gpu') or r.get('cpu')} | "
                     f"{r.get('torch_cpu_capability')} | {libs.get('torch')} | "
                     f"{libs.get('transformers')} | {r.get('threads')} | {', '.join(commits)} "
                     f"| {len(runs)}: {shown} |")
    return lines, len(groups) > 1


def write(path: str | Path, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write this process's fingerprint, with ``data`` (what the run read, e.g. the corpus
    hash), to ``path`` (atomically) and return it."""

    record = {**fingerprint(), **(data or {})}
    write_json(record, path)
    return record


def _commit(record: Mapping[str, Any]) -> str:
    return (f"`{str(record.get('git_commit', 'unknown'))[:12]}`"
            + (" with uncommitted changes" if record.get("git_dirty") else ""))


def stamp(runs: Iterable[tuple[str, str, Mapping[str, Any]]], code_hashes: Mapping[str, str],
          checkout: Mapping[str, Any]) -> str:
    """The Markdown results/README.md carries between STAMP_BEGIN and STAMP_END: the commit
    of ``checkout`` (the report stage's :func:`git_state`), the corpus hash and the code hash
    of every stage the numbers come from.

    ``runs`` are (stage, run, provenance.json record) of the training runs; ``code_hashes``
    maps each stage to the hash its rule passes as ``--source-hash`` (without it, the hashes
    the runs recorded). A run whose recorded hash is not its stage's is named as stale: its
    outputs come from other code than the table says."""
    runs = list(runs)
    hashes = dict(code_hashes)
    for stage in sorted({stage for stage, _, _ in runs} - set(hashes)):
        recorded = {str(r.get("source_hash") or "unrecorded") for s, _, r in runs if s == stage}
        hashes[stage] = ", ".join(sorted(recorded))
    stale = [f"{run} recorded `{r['source_hash']}`, not `{hashes[stage]}`"
             for stage, run, r in runs
             if r.get("source_hash") and r["source_hash"] != hashes[stage]]
    corpora = sorted({str(r["corpus_hash"]) for _, _, r in runs if r.get("corpus_hash")})
    run_commits = sorted({_commit(r) for _, _, r in runs})
    lines = [
        "Generated by the compare stage from the training runs' provenance.json and the code "
        "hashes its rule passes; nothing between these markers is written by hand.",
        "",
        f"- **Commit** of the compare run: {_commit(checkout)}; training runs at "
        + (", ".join(run_commits) or "none recorded") + ".",
        "- **Corpus hash:** " + (", ".join(f"`{c}`" for c in corpora) or "not recorded") + ".",
        "- **Code hashes** of the stages these numbers come from (moebalance.codehash; each "
        "rule passes its stage's as `--source-hash`). `python -m moebalance.codehash` prints "
        "them for the checked-out code: where they all match, `snakemake -n` plans no job "
        "for a code change.",
        "",
        "| stage | code hash |",
        "|---|---|",
        *(f"| {stage} | `{value}` |" for stage, value in hashes.items()),
    ]
    if stale:
        lines += ["", "> **Stale runs:** their provenance.json names other code than the table: "
                  + "; ".join(stale) + "."]
    return "\n".join(lines) + "\n"


def fill_stamp(readme: str, text: str, after: str) -> str:
    """``readme`` with ``text`` between STAMP_BEGIN and STAMP_END; a README without the
    markers gets them, under STAMP_HEADING, right after the first ``after``."""
    head, begin, rest = readme.partition(STAMP_BEGIN)
    if not begin:
        at = readme.index(after) + len(after)
        return (readme[:at] + f"\n\n{STAMP_HEADING}\n\n{STAMP_BEGIN}\n{text}{STAMP_END}"
                + readme[at:])
    _, end, tail = rest.partition(STAMP_END)
    if not end:
        raise ValueError(f"the README has {STAMP_BEGIN} without {STAMP_END}")
    return f"{head}{STAMP_BEGIN}\n{text}{STAMP_END}{tail}"
