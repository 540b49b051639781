"""The held-out balance set of one corpus split: fixed windows of the training length, in the
training token mix, that every held-out balance figure is measured on.

Why a set of its own (docs/reference.md §4): MaxVio over a few thousand tokens is mostly
sampling noise, and a held-out split whose domain mix differs from training's measures the
split as much as the model. The set is therefore

- as large as asked (``windows``, 1,024 by default: 262,144 routed tokens at 256);
- in the training mix: each domain gets windows in proportion to its share of the
  training split's tokens (training samples token positions uniformly), rounded by largest
  remainder, so the set's domain shares equal training's to within 1/(2 * windows);
- cut like training's windows: ``seq_len + 1`` consecutive tokens of the domain's documents
  concatenated in sha256 order, each followed by end-of-text (as in the token shards), the
  first ``seq_len`` routed and the last ``seq_len`` predicted;
- at random offsets: a random phase, then a random choice among the non-overlapping slots
  after it, so windows start anywhere inside documents, not at file starts. The random
  generator is seeded from the SHA-256 of the split's name and ``seed`` ("hash-chosen");
- spread over documents: at most ``max_windows_per_document`` windows start in one document
  (3 by default). Within a domain, windows then follow the token positions as training's
  do, except that no document adds more than the cap: a model routes a document's windows
  alike, so without it the few longest held-out files would decide the figure.

Each window belongs to the document holding its first token. ``half`` (0/1) splits the set
by document for the split-half reliability check: within each domain, documents in order of
their window count (then hash) go to the half holding fewer of the domain's windows so far,
so both halves keep the set's domain mix and no document is in both. ``subset`` marks a
random half of each domain's windows for the set-size check.

Writes --out (Parquet, one row per window, in draw order):

    window        0 .. W-1
    domain        corpus domain
    document      sha256 of the document holding the window's first token
    start         offset of that token inside its document (tokens)
    input_ids     seq_len + 1 token ids
    token_class   seq_len + 1 token-class ids (moebalance.data.token_classes; "other"
                  for end-of-text)
    target_bytes  seq_len + 1 UTF-8 byte counts per token (0 for end-of-text); a window's
                  predicted bytes are the sum over positions 1..seq_len
    half          0 or 1: the split half of the window's document (domain-balanced)
    subset        True for the windows of the set-size check (half of each domain's)

and beside it the same name with .json: the split, the settings, the end-of-text id, windows,
routed tokens and documents per domain, the training token shares, the set's shares and
their largest difference.

Dimension letters (the legend in :mod:`moebalance`): W windows, S window length.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from moebalance.atomic import write_json, write_parquet
from moebalance.config import BalanceSetSettings, add_settings_argument, parse_settings
from moebalance.data.token_classes import CLASS_ID, bpe_token_classes
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "draw a corpus split's held-out balance set: training-length windows in the training mix"
log = logging.getLogger(__name__)


@dataclass
class DomainStream:
    """One domain's documents as a single token stream (each document then end-of-text)."""

    ids: np.ndarray          # (T,) token ids
    classes: np.ndarray      # (T,) token-class ids
    n_bytes: np.ndarray      # (T,) UTF-8 bytes each token adds (0 for end-of-text)
    document: np.ndarray     # (T,) index into ``shas`` of the token's document
    start: np.ndarray        # (T,) offset of the token inside its document
    shas: list[str]


def token_bytes(text: str, offsets: np.ndarray) -> np.ndarray:
    """UTF-8 bytes each token adds: the byte position of its end minus the previous token's
    end. Byte-level BPE tokens may split a character (overlapping offsets); the differences
    still sum to the text's bytes."""
    char_end = np.concatenate([[0], np.cumsum([len(c.encode()) for c in text])])
    end_T = char_end[offsets[:, 1]] if len(offsets) else np.zeros(0, dtype=np.int64)
    return np.diff(np.maximum.accumulate(np.concatenate([[0], end_T]))).astype(np.int64)


def domain_streams(docs: list[dict], tokenizer, eot_id: int) -> dict[str, DomainStream]:
    """Per domain, its documents in sha256 order, tokenized as the token shards are (the
    same ``tokenizers`` call, no special tokens)."""
    docs = sorted(docs, key=lambda r: (r["domain"], r["sha256"]))
    encoded = tokenizer.encode_batch([r["text"] for r in docs], add_special_tokens=False)
    parts: dict[str, list] = {}
    for r, enc in zip(docs, encoded, strict=True):
        ids = enc.ids
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        n = len(ids) + 1
        parts.setdefault(r["domain"], []).append((
            np.asarray([*ids, eot_id], dtype=np.int64),
            np.concatenate([bpe_token_classes(r["text"], offsets),
                            [CLASS_ID["other"]]]).astype(np.int8),
            np.concatenate([token_bytes(r["text"], offsets), [0]]),
            np.arange(n), r["sha256"]))
    streams = {}
    for domain, items in parts.items():
        streams[domain] = DomainStream(
            ids=np.concatenate([p[0] for p in items]),
            classes=np.concatenate([p[1] for p in items]),
            n_bytes=np.concatenate([p[2] for p in items]),
            document=np.repeat(np.arange(len(items)), [len(p[0]) for p in items]),
            start=np.concatenate([p[3] for p in items]), shas=[p[4] for p in items])
    return streams


def allocate(shares: dict[str, float], total: int) -> dict[str, int]:
    """Windows per domain proportional to ``shares``, summing to ``total`` (largest
    remainder, ties by domain name)."""
    weight = sum(shares.values())
    exact = {d: total * s / weight for d, s in shares.items()}
    counts = {d: int(np.floor(x)) for d, x in exact.items()}
    by_remainder = sorted(exact, key=lambda d: (-(exact[d] - counts[d]), d))
    for d in by_remainder[:total - sum(counts.values())]:
        counts[d] += 1
    return counts


def draw_starts(document_T: np.ndarray, length: int, n: int, cap: int,
                rng: np.random.Generator) -> np.ndarray:
    """``n`` non-overlapping window starts of ``length`` tokens in a stream whose tokens
    belong to the documents ``document_T``: a random phase, then the whole slots after it in
    random order, keeping a slot only while its document (the one holding its first token)
    has fewer than ``cap`` windows, until ``n`` are kept.

    The cap is what keeps the set a measurement of the model: held-out document lengths are
    heavy-tailed (a few files hold a large part of a domain's tokens), and a model routes a
    document's windows alike, so an uncapped draw lets a handful of long files decide the
    figure (docs/reference.md §4)."""
    phase = int(rng.integers(0, length))
    slots = (len(document_T) - phase) // length
    starts = phase + length * rng.permutation(slots)
    document = document_T[starts]
    # rank of each slot among its document's slots, in the random order
    order = np.argsort(document, kind="stable")
    first = np.searchsorted(document[order], document[order])
    rank = np.empty(slots, dtype=np.int64)
    rank[order] = np.arange(slots) - first
    kept = starts[rank < cap][:n]
    if len(kept) < n:
        raise ValueError(f"needs {n} windows of {length} tokens, at most {cap} per document, "
                         f"but holds only {len(kept)}")
    return kept


def split_rng(split: str, seed: int) -> np.random.Generator:
    """The generator of one split's draw, seeded from SHA-256 of its name and ``seed``."""
    digest = hashlib.sha256(f"balance-set/{split}/{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def document_halves(domains: list[str], documents: list[str]) -> list[int]:
    """0 or 1 per window: its document's half. Within each domain, documents with more
    windows first (ties by hash) go to the half holding fewer of that domain's windows, so
    the halves keep the domain mix (a half richer in one domain would differ in MaxVio by
    its mix, not by sampling) and split by document, the independent unit."""
    windows: dict[tuple[str, str], int] = {}
    for key in zip(domains, documents, strict=True):
        windows[key] = windows.get(key, 0) + 1
    half_of: dict[tuple[str, str], int] = {}
    filled: dict[str, list[int]] = {}
    for (domain, document), n in sorted(windows.items(), key=lambda kv: (-kv[1], kv[0])):
        counts = filled.setdefault(domain, [0, 0])
        half = int(counts[1] < counts[0])
        half_of[(domain, document)] = half
        counts[half] += n
    return [half_of[key] for key in zip(domains, documents, strict=True)]


def draw(streams: dict[str, DomainStream], shares: dict[str, float], split: str,
         settings: BalanceSetSettings) -> dict[str, list]:
    """The set's rows (column -> values), domains in name order, windows in draw order."""
    missing = sorted(set(shares) - set(streams))
    if missing:
        raise UsageError(f"split {split} has no documents of training domain(s) "
                         f"{', '.join(missing)}")
    rng = split_rng(split, settings.seed)
    length = settings.seq_len + 1
    rows: dict[str, list] = {k: [] for k in ("domain", "document", "start", "input_ids",
                                             "token_class", "target_bytes", "half", "subset")}
    for domain, n in sorted(allocate(shares, settings.windows).items()):
        stream = streams[domain]
        try:
            starts = draw_starts(stream.document, length, n, settings.max_windows_per_document,
                                 rng)
        except ValueError as err:
            raise UsageError(f"balance set of split {split}, domain {domain}: {err}; give the "
                             "held-out splits more text (corpus.heldout_min_bytes), draw "
                             "fewer windows (balance_set.windows) or allow more per document "
                             "(balance_set.max_windows_per_document)") from err
        in_subset = np.zeros(n, dtype=bool)
        in_subset[rng.permutation(n)[:(n + 1) // 2]] = True
        for s, subset in zip(starts.tolist(), in_subset.tolist(), strict=True):
            sha = stream.shas[stream.document[s]]
            rows["domain"].append(domain)
            rows["document"].append(sha)
            rows["start"].append(int(stream.start[s]))
            rows["input_ids"].append(stream.ids[s:s + length].astype(np.int32))
            rows["token_class"].append(stream.classes[s:s + length])
            rows["target_bytes"].append(stream.n_bytes[s:s + length].astype(np.int32))
            rows["subset"].append(subset)
    rows["half"] = document_halves(rows["domain"], rows["document"])
    rows["window"] = list(range(len(rows["domain"])))
    return rows


def set_meta(rows: dict[str, list], shares: dict[str, float], split: str,
             settings: BalanceSetSettings) -> dict:
    """What the set holds, and how close its domain shares are to training's."""
    total = sum(shares.values())
    train_shares = {d: s / total for d, s in sorted(shares.items())}
    domains = np.array(rows["domain"])
    windows = {d: int((domains == d).sum()) for d in train_shares}
    set_shares = {d: windows[d] / len(domains) for d in train_shares}
    return {"split": split, "settings": asdict(settings), "windows": len(domains),
            "routed_tokens": len(domains) * settings.seq_len,
            "windows_per_domain": windows,
            "documents_per_domain": {d: len(set(np.array(rows["document"])[domains == d]))
                                     for d in train_shares},
            "training_token_shares": train_shares, "set_token_shares": set_shares,
            "max_share_difference": max(abs(set_shares[d] - train_shares[d])
                                        for d in train_shares)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--split", required=True,
                        help="corpus split to draw from (val.parquet or test.parquet)")
    inputs.add_argument("--tokens-meta", required=True,
                        help="meta.json of the token shards: the training split's tokens per "
                        "domain (the mix the set is drawn in)")
    inputs.add_argument("--tokenizer-dir", required=True, help="tokenizer folder")
    parser.add_argument_group("outputs").add_argument(
        "--out", required=True,
        help="balance set to write (.parquet; its .json description beside it)")
    add_settings_argument(parser, BalanceSetSettings, "balance_set")
    add_tracking_arguments(parser)


def read_inputs(args: argparse.Namespace):
    """(documents, training tokens per domain, tokenizer, end-of-text id), with clear errors."""

    for option, path in (("--split", args.split), ("--tokens-meta", args.tokens_meta)):
        if not Path(path).is_file():
            raise UsageError(f"{option}: {path} not found")
    meta = json.loads(Path(args.tokens_meta).read_text())
    shares = meta.get("splits", {}).get("train", {}).get("domain_tokens")
    if not shares:
        raise UsageError(f"--tokens-meta: {args.tokens_meta} has no splits.train.domain_tokens; "
                         "rerun the tokens stage")
    docs = pq.read_table(args.split, columns=["domain", "text", "sha256"]).to_pylist()
    tok_file = Path(args.tokenizer_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise UsageError(f"--tokenizer-dir: no tokenizer at {tok_file}")
    tokenizer = Tokenizer.from_file(str(tok_file))
    return docs, shares, tokenizer, int(meta["eot_id"])


def run(args: argparse.Namespace) -> None:
    settings = parse_settings(BalanceSetSettings, args.settings)
    split = Path(args.split).stem
    params = {"split": str(args.split), "tokens_meta": str(args.tokens_meta), **asdict(settings)}
    with stage_run(args, "balance-set", params, torch_kernels=False) as mlflow:
        docs, shares, tokenizer, eot_id = read_inputs(args)
        rows = draw(domain_streams(docs, tokenizer, eot_id), shares, split, settings)
        meta = set_meta(rows, shares, split, settings) | {"eot_id": eot_id}
        out = Path(args.out)
        if out.suffix != ".parquet":
            raise UsageError(f"--out: {out} must end in .parquet")
        write_parquet(pa.table(rows), out)
        write_json(meta, out.with_suffix(".json"))
        log.info("%s: %d windows, %d routed tokens; largest share difference %.4f", split,
                 meta["windows"], meta["routed_tokens"], meta["max_share_difference"])
        if mlflow is not None:
            mlflow.log_metrics({"windows": meta["windows"],
                                "max_share_difference": meta["max_share_difference"]})
            mlflow.log_artifact(str(out.with_suffix(".json")))
