"""Which source files a stage's outputs depend on, derived from the import graph.

Snakemake re-runs a job when one of its params changes; each rule takes the hash of its
stage's code as a param. That hash covers the stage module and every project module it
imports, transitively: top-level imports and the lazy ones inside functions alike (they are
read from the syntax tree, not by importing), plus the packages whose ``__init__`` runs on the
way. A hand-written list drifts; this one cannot.

Kept torch-free (stdlib only): the Snakefile imports it at parse time.
``python -m moebalance.codehash`` prints every stage's hash for the checked-out code, to
hold against the ones results/README.md records.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

PACKAGE = "moebalance"
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding moebalance/
# Dispatch only: these choose which stage runs, name its error type and run this check; they
# do not change what a stage computes.
ENTRY_MODULES = frozenset({PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.__main__", f"{PACKAGE}.errors",
                           f"{PACKAGE}.codehash"})


def module_path(name: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The file of a project module or package, or None if ``name`` is neither."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``: the packages whose ``__init__`` importing ``name`` runs."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def direct_imports(name: str, root: Path = SOURCE_ROOT) -> set[str]:
    """Project modules that module ``name`` imports anywhere in its body."""
    path = module_path(name, root)
    if path is None:
        raise ValueError(f"no module {name} under {root}")
    stat = path.stat()
    return set(_direct_imports(name, Path(root), path, stat.st_mtime_ns, stat.st_size))


# The stages' closures share most modules, and the Snakefile hashes every stage at each
# start: parsing each file once instead of once per closure takes that from 0.62 s of CPU to
# 0.21 s. The key holds the file's modification time and size: an edited file is re-parsed.
@cache
def _direct_imports(name: str, root: Path, path: Path, mtime_ns: int,
                    size: int) -> frozenset[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            # `from pkg import mod` imports the submodule mod when there is one
            found.update(f"{base}.{a.name}" for a in node.names
                         if module_path(f"{base}.{a.name}", root) is not None)
    return frozenset(m for m in found if module_path(m, root) is not None)


@cache
def _closure(name: str, root: Path) -> frozenset[str]:
    seen, todo = set(), [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_parents(module))
        todo.extend(direct_imports(module, root))
    return frozenset(seen)


def closure(name: str, root: Path = SOURCE_ROOT) -> frozenset[str]:
    """``name`` and every project module it imports, transitively, with parent packages."""
    return _closure(name, Path(root).resolve())


def code_hash(name: str, root: str | os.PathLike = SOURCE_ROOT) -> str:
    """A short hash of the sources in :func:`closure` of module ``name``."""
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for module in sorted(closure(name, root)):
        path = module_path(module, root)
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def unhashed_imports(name: str, loaded: set[str], root: Path = SOURCE_ROOT) -> set[str]:
    """Project modules in ``loaded`` (e.g. ``sys.modules`` after a stage ran) that the stage
    ``name``'s hash does not cover, dispatch modules aside: edits there would not re-run it."""
    ours = {m for m in loaded if m.split(".")[0] == PACKAGE} - ENTRY_MODULES
    return ours - closure(name, root)


def main(stages: Mapping[str, str]) -> None:
    """Print each stage's code hash, the value its rule passes as ``--source-hash``
    (``stages``: stage name -> module, as ``moebalance.cli.STAGES``)."""
    for stage, module in stages.items():
        print(f"{stage}\t{code_hash(module)}")


if __name__ == "__main__":
    from moebalance.cli import STAGES  # here, not at the top: cli imports this module

    main(STAGES)
