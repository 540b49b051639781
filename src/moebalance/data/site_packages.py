"""Installed distributions as a corpus source: their files, licences and domains.

Every machine that installs this project holds a large, varied, legally clean corpus: the
files of the installed distributions themselves (Python source, C/C++ headers and sources,
Markdown/reST/text documents and the long descriptions in METADATA). They are listed
through ``importlib.metadata`` (each distribution's RECORD), so the corpus follows exactly
what is installed; constraints.txt pins those versions (see docs/data.md).
A distribution whose files follow a source checkout instead of a pinned release is left
out (:func:`checkout_bound`): the project's own, whose METADATA embeds its README, and
anything installed from a local directory.

Domains are decided from the file alone (path and extension), never from what the model
might find hard:

    python-test     a .py file under a ``test``/``tests``/``testing`` directory, or named
                    ``test_*.py``, ``*_test.py`` or ``conftest.py``
    python-library  every other .py file
    c-cpp           C and C++ headers and sources (.h .hpp .c .cc .cpp .cu .cuh ...)
    prose           .md/.rst/.txt documents and METADATA long descriptions

A separate ``docs`` domain (docstring-heavy Python) is not kept: on the study machine it
was the smallest domain by far (3 held-out files in corpus v1), while ``prose`` holds real
natural language.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.requirements import Requirement

SOURCE = "site-packages"
PROJECT = "moebalance"  # this project's distribution, never a corpus source
DOMAINS = ("python-library", "python-test", "c-cpp", "prose")
KIND_OF_SUFFIX = {
    ".py": "python",
    ".h": "c-header", ".hh": "cpp-header", ".hpp": "cpp-header", ".hxx": "cpp-header",
    ".cuh": "cuda-header", ".c": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp",
    ".cu": "cuda",
    ".md": "markdown", ".rst": "restructuredtext", ".txt": "text",
}
PROSE_KINDS = frozenset({"markdown", "restructuredtext", "text", "description"})
TEST_DIRS = frozenset({"test", "tests", "testing", "idle_test"})
# Files that are licences, notices or machine-readable lists rather than prose or code.
SKIP_NAME_RE = re.compile(r"^(licen[cs]e|copying|notice|authors|contributors|patents|"
                          r"entry_points|top_level|requires|sources|dependency_links|"
                          r"namespace_packages|not-zip-safe|installer|requested|wheel|record)",
                          re.IGNORECASE)
SKIP_DIR_PARTS = frozenset({"__pycache__", "licenses", "licences"})

# SPDX identifiers (or prefixes of families) of licences approved as open source by the
# OSI, which the study accepts. Hand-written because no installed library carries the OSI
# flag: packaging.licenses knows every SPDX id but not which ones are open.
OPEN_SPDX_PREFIXES = (
    "0BSD", "AFL-", "AGPL-", "Apache-", "APSL-2", "Artistic-2", "BSD-", "BSL-1.0", "CC0-1.0",
    "CDDL-", "CECILL-2", "CNRI-Python", "ECL-", "EFL-", "EPL-", "EUPL-", "GPL-", "HPND",
    "ISC", "LGPL-", "LiLiQ", "LPL-", "MIT", "MPL-", "MS-PL", "MS-RL", "MulanPSL-2", "NCSA",
    "OFL-1.1", "OSL-", "PostgreSQL", "PSF-2.0", "Python-2.0", "UPL-1.0", "Unicode-", "Unlicense",
    "W3C", "X11", "Zlib", "ZPL-2",
)
# Free-text `License:` fields seen in the wild, matched case-insensitively as words, and
# the first words of common licence texts that some packages paste into that field.
OPEN_LICENSE_WORDS_RE = re.compile(
    r"\b(mit|bsd|apache|isc|psf|python software foundation|mozilla|mpl|l?gpl|"
    r"gnu (lesser |library )?general public|unlicense|zlib|zpl|public domain|cc0|"
    r"permission is hereby granted|redistribution and use in source and binary forms)\b",
    re.IGNORECASE)
SPDX_TOKEN_RE = re.compile(r"[A-Za-z0-9.+-]+")


@dataclass(frozen=True)
class License:
    """What the metadata says about a distribution's licence, and whether it is open."""

    name: str       # the SPDX expression, the classifiers or the License field ("" if none)
    is_open: bool


@dataclass(frozen=True)
class Candidate:
    """One file (or METADATA description) chosen by path, before its text is read."""

    source: str
    distribution: str
    version: str
    license: str
    path: str       # relative to the distribution's install root, POSIX separators
    kind: str
    domain: str
    location: Path | None   # None for the METADATA description (text carried in `text`)
    text: str | None = None


def _open_spdx(expression: str) -> bool:
    """Every licence id in an SPDX expression is OSI-approved (``WITH`` exceptions allowed)."""
    words = SPDX_TOKEN_RE.findall(expression)
    ids, skip_next = [], False
    for word in words:
        if skip_next:            # the exception after WITH (e.g. Classpath-exception-2.0)
            skip_next = False
            continue
        if word.upper() == "WITH":
            skip_next = True
        elif word.upper() not in {"AND", "OR"}:
            ids.append(word.rstrip("+"))
    return bool(ids) and all(i.upper().startswith(tuple(p.upper() for p in OPEN_SPDX_PREFIXES))
                             for i in ids)


def parse_license(meta) -> License:
    """The licence of a distribution from its core metadata, in order of precedence:
    ``License-Expression`` (PEP 639, SPDX), ``License ::`` classifiers (OSI Approved means
    open), then the free-text ``License`` field."""
    expression = (meta.get("License-Expression") or "").strip()
    if expression:
        return License(expression, _open_spdx(expression))
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        names = "; ".join(c.split(" :: ")[-1] for c in classifiers)
        approved = any(c.startswith("License :: OSI Approved") or "Public Domain" in c
                       for c in classifiers)
        return License(names, approved)
    return license_from_text(meta.get("License") or "")


def license_from_text(text: str) -> License:
    """A free-text licence field: an SPDX expression, a licence name, or a pasted licence
    text (judged by its first words)."""
    text = text.strip()
    first_line = text.splitlines()[0][:80] if text else ""
    if not text or text.upper() in {"UNKNOWN", "NONE"}:
        return License(first_line, False)
    return License(first_line, _open_spdx(text) or bool(OPEN_LICENSE_WORDS_RE.search(text[:400])))


def is_test_path(path: str) -> bool:
    posix = PurePosixPath(path)
    stem = posix.stem
    return (bool(TEST_DIRS.intersection(posix.parts[:-1])) or stem.startswith("test_")
            or stem.endswith("_test") or posix.name == "conftest.py")


def kind_of(path: str) -> str | None:
    """The language or kind of a file from its name, or None if the corpus does not use it."""
    posix = PurePosixPath(path)
    if SKIP_DIR_PARTS.intersection(p.lower() for p in posix.parts[:-1]):
        return None
    if any(p.endswith((".dist-info", ".egg-info")) for p in posix.parts[:-1]):
        return None
    if SKIP_NAME_RE.match(posix.name):
        return None
    if posix.name.startswith("__editable__"):   # an editable install's finder: names a checkout
        return None
    return KIND_OF_SUFFIX.get(posix.suffix.lower())


def domain_of(path: str, kind: str) -> str:
    """The domain of a file from its path and kind (see the module docstring)."""
    if kind == "python":
        return "python-test" if is_test_path(path) else "python-library"
    if kind in PROSE_KINDS:
        return "prose"
    return "c-cpp"


def looks_like_prose(text: str, min_share: float = 0.75) -> bool:
    """A .txt/.md file is prose when letters and whitespace make up most of it: this keeps
    READMEs and changelogs and drops data tables, word lists and CMakeLists."""
    letters = sum(1 for c in text if c.isalpha() or c.isspace())
    return letters >= min_share * max(1, len(text))


def normalise(name: str) -> str:
    """The PEP 503 normalised form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(path: Iterable[str] | None = None,
                  root: str | None = None) -> list[metadata.Distribution]:
    """Installed distributions (of ``path`` if given, else of sys.path), one per name,
    sorted by normalised name: the first found on the path wins, as for imports.

    With ``root``, only ``root`` and what it requires, recursively (extras left out): the
    same set on every machine that installs ``root`` from constraints.txt, whatever else
    (dev tools, other projects) shares the environment."""
    found = (metadata.distributions(path=list(path)) if path is not None
             else metadata.distributions())
    chosen: dict[str, metadata.Distribution] = {}
    for dist in found:
        name = (dist.metadata.get("Name") or "").strip()
        if name:
            chosen.setdefault(normalise(name), dist)
    if root is not None:
        if normalise(root) not in chosen:
            raise ValueError(f"corpus.site_packages_root {root!r} is not installed")
        closure, todo = set(), [normalise(root)]
        while todo:
            name = todo.pop()
            if name in closure or name not in chosen:
                continue
            closure.add(name)
            for line in chosen[name].requires or []:
                requirement = Requirement(line)
                if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                    todo.append(normalise(requirement.name))
        chosen = {name: dist for name, dist in chosen.items() if name in closure}
    return [chosen[key] for key in sorted(chosen)]


def checkout_bound(dist: metadata.Distribution) -> str | None:
    """Why a distribution's files follow a source checkout rather than a pinned release, or
    None: the project itself (any install), or an install from a local directory, editable
    or not (its PEP 610 ``direct_url.json`` has ``dir_info``). Every edit there, a README
    line included, would change their files and so the corpus."""
    if normalise(dist.metadata.get("Name") or "") == PROJECT:
        return "the project's own distribution"
    direct = dist.read_text("direct_url.json")
    info = json.loads(direct).get("dir_info") if direct else None
    if info is not None:
        return "editable install" if info.get("editable") else "installed from a local directory"
    return None


def sources(path: Iterable[str] | None = None, root: str | None = None,
            ) -> tuple[list[metadata.Distribution], list[dict]]:
    """The distributions the corpus reads: :func:`distributions` less the checkout-bound
    ones, which come back as manifest rows (distribution, version, reason)."""
    kept, left_out = [], []
    for dist in distributions(path, root):
        reason = checkout_bound(dist)
        if reason is None:
            kept.append(dist)
        else:
            left_out.append({"distribution": dist.metadata["Name"],
                             "version": dist.metadata.get("Version", ""), "reason": reason})
    return kept, left_out


def candidates(dist: metadata.Distribution, license: License) -> Iterator[Candidate]:
    """The distribution's usable files (sorted) and its METADATA long description."""
    meta = dist.metadata
    name, version = meta["Name"], meta.get("Version", "")
    description = meta.get_payload() or meta.get("Description") or ""
    if description.strip():
        yield Candidate(SOURCE, name, version, license.name, f"{name}-{version}.dist-info/METADATA",
                        "description", "prose", None, description)
    for file in sorted(dist.files or [], key=str):
        rel = PurePosixPath(str(file).replace("\\", "/"))
        if ".." in rel.parts or rel.is_absolute():     # scripts installed outside the tree
            continue
        kind = kind_of(rel.as_posix())
        if kind is None:
            continue
        yield Candidate(SOURCE, name, version, license.name, rel.as_posix(), kind,
                        domain_of(rel.as_posix(), kind), Path(dist.locate_file(file)))
