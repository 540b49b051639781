"""Load-balancing strategies: one small family with one interface.

A strategy may add a differentiable loss term to every micro-batch (``loss``) and
may change the routers' biases once per optimizer step, after all micro-batches
and ranks (``after_step``). The router only counts; these decide. Strategies
combine: ``Balancing`` is a list of them (the DeepSeek-V3 recipe is
``[loss_free, seq_aux_loss]``; ``none`` is the empty list).

Adding a strategy = one dataclass below: a subclass of :class:`Strategy` with a ``name``
registers itself in ``STRATEGIES``, and its fields (with :func:`option` bounds) are its
config options. The config schema of the options is generated from the classes, with the
other settings: ``python -m moebalance.schema > workflow/schemas/settings.schema.yaml``
(a test fails, naming that command, while the committed file is stale).

Dimension letters: the legend in :mod:`moebalance` (L MoE layers, E routed experts, K
experts per token, B sequences of S tokens, T = B*S tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from moebalance.config import setting, settings_from_dict, settings_schema
from moebalance.model.router import CountingRouter, RoutingRecord

# ---------------------------------------------------------------------------- the equations


def expert_balance_loss(record: RoutingRecord, top_k: int) -> torch.Tensor:
    """sum_i f_i P_i over the T tokens of a micro-batch (unscaled; = 1 when perfectly balanced)."""
    E = record.probs_BSE.shape[-1]
    selected_TE = record.selected_BSE.reshape(-1, E)
    T = selected_TE.shape[0]
    # Switch Transformer Eqs. 4-6 / DeepSeekMoE Eqs. 12-14: f_i = N/(K T) #{t: i in TopK(s_t)}
    f_E = selected_TE.sum(0) * E / (top_k * T)
    P_E = record.probs_BSE.reshape(-1, E).mean(0)
    return (f_E * P_E).sum()


def unbiased_top_k(probs_BSE: torch.Tensor, top_k: int) -> torch.Tensor:
    """1.0 where the expert is in the token's top-K of the UNBIASED scores (no grad).

    s'_{i,t} = s_{i,t} / sum_j s_{j,t} keeps each token's order of s, so TopK(s') = TopK(s).
    """
    selected_BSE = torch.zeros_like(probs_BSE, dtype=torch.float32)
    return selected_BSE.scatter_(-1, probs_BSE.detach().topk(top_k, dim=-1).indices, 1.0)


def sequence_balance_loss(record: RoutingRecord, top_k: int) -> torch.Tensor:
    """The same with T = the tokens of ONE sequence, averaged over the B sequences.

    f_i counts the top-K of the unbiased affinities, not the bias-adjusted selection that
    routed the tokens (``record.selected_BSE``), as Eq. 18 writes it and Megatron does.
    """
    _, S, E = record.probs_BSE.shape
    # DeepSeek-V3 Eq. 18: f_i = N_r/(K_r T) sum_t 1(s_{i,t} in TopK({s_{j,t}}, K_r)), T = seq len
    f_BE = unbiased_top_k(record.probs_BSE, top_k).sum(1) * E / (top_k * S)
    # DeepSeek-V3 Eq. 20: P_i = 1/T sum_t s'_{i,t}
    P_BE = record.probs_BSE.mean(1)
    # DeepSeek-V3 Eq. 17: L_Bal = alpha sum_i f_i P_i (per sequence), here averaged over sequences
    return (f_BE * P_BE).sum(-1).mean()


def global_balance_loss(record: RoutingRecord, global_counts_E: torch.Tensor,
                        top_k: int) -> torch.Tensor:
    """f_i from the counts of the whole global batch so far; P_i from this micro-batch."""
    E = global_counts_E.shape[0]
    T_global = global_counts_E.sum() / top_k
    # Qiu et al. 2025 (arXiv 2501.11873) §2: LBL = N_E sum_i f_i p_i, f_i over the global batch
    f_E = global_counts_E * E / (top_k * T_global)
    P_E = record.probs_BSE.reshape(-1, E).mean(0)
    return (f_E * P_E).sum()


def router_z_loss(record: RoutingRecord) -> torch.Tensor:
    # ST-MoE (Zoph et al. 2022) Eq. 5: L_z = 1/B sum_t (logsumexp_j x_{j,t})^2
    E = record.logits_BSE.shape[-1]
    return torch.logsumexp(record.logits_BSE.reshape(-1, E), dim=-1).square().mean()


def bias_delta(counts_LE: torch.Tensor, gamma: float, rule: str = "sign",
               recentre: bool = False) -> torch.Tensor:
    """The bias change of one optimizer step from the loads c of that step."""
    mean_L1 = counts_LE.mean(-1, keepdim=True)
    # Wang et al. 2024 Algorithm 1: e_i = mean(c) - c_i
    error_LE = mean_L1 - counts_LE
    if rule == "sign":
        # Wang et al. 2024 Algorithm 1 / DeepSeek-V3 §2.1.2: b_i += gamma * sign(e_i)
        delta_LE = gamma * torch.sign(error_LE)
    else:
        # Wang et al. 2024, proportional variant of Algorithm 1: b_i += u * e_i / mean(c)
        delta_LE = gamma * error_LE / mean_L1.clamp_min(1e-12)
    if recentre:
        delta_LE = delta_LE - delta_LE.mean(-1, keepdim=True)  # torchtitan #1506: no drift
    return delta_LE


def smebu_step(counts_LE: torch.Tensor, bias_LE: torch.Tensor, velocity_LE: torch.Tensor,
               gamma: float, beta: float, kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One SMEBU step: the new (bias, velocity) from this step's loads c.

    SMEBU is from the Trinity Large report (Singh et al. 2026, arXiv 2602.17004, §MoE load
    balancing). Its exact equations were not found with the sources at hand, so this is
    OUR READING of its description (tanh soft clamp of the normalised load deviation,
    momentum, mean-centred bias):
        v <- beta v + (1 - beta) tanh(kappa (mean(c) - c) / mean(c))
        b <- b + gamma v
        b <- b - mean(b)
    """
    mean_L1 = counts_LE.mean(-1, keepdim=True)
    # our reading of arXiv 2602.17004 (SMEBU): normalised deviation, soft-clamped by tanh
    clamped_LE = torch.tanh(kappa * (mean_L1 - counts_LE) / mean_L1.clamp_min(1e-12))
    # our reading of arXiv 2602.17004 (SMEBU): momentum on the clamped deviation
    velocity_LE = beta * velocity_LE + (1 - beta) * clamped_LE
    # our reading of arXiv 2602.17004 (SMEBU): step, then mean-centre the bias
    bias_LE = bias_LE + gamma * velocity_LE
    return bias_LE - bias_LE.mean(-1, keepdim=True), velocity_LE

# ---------------------------------------------------------------------------- the strategies


STRATEGIES: dict[str, type[Strategy]] = {}  # filled by Strategy.__init_subclass__, in
# definition order, which is also the order of the loss columns of metrics.parquet


def option(default: Any, *, description: str = "", **bounds: float) -> Any:
    """A strategy option: a settings field (:func:`moebalance.config.setting`) with its
    default, a description and JSON-schema bounds (``minimum``, ``maximum``,
    ``exclusiveMinimum``, ``exclusiveMaximum``) for the generated schema."""
    return setting(default, description, **bounds)


@dataclass
class Strategy:
    """Interface: ``loss`` per micro-batch (None: no term), ``after_step`` per optimizer step.

    A subclass that sets ``name`` is registered in ``STRATEGIES`` under it; its init fields
    are the options of ``balancing.<name>`` in the config."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in STRATEGIES:
                raise TypeError(f"two balancing strategies named {cls.name!r}")
            STRATEGIES[cls.name] = cls

    def loss(self, routers: Sequence[CountingRouter]) -> torch.Tensor | None:
        return None

    def after_step(self, routers: Sequence[CountingRouter], counts_LE: torch.Tensor,
                   step: int, total_steps: int) -> None:
        return None

    def gamma_at(self, step: int, total_steps: int) -> float:
        """The bias update speed in force at ``step`` (0 for strategies that keep the bias)."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        """State carried between steps (saved in training checkpoints); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class LayerMeanLoss(Strategy):
    """A loss term: ``coefficient`` times the mean over MoE layers of ``per_layer``."""

    def per_layer(self, router: CountingRouter) -> torch.Tensor:
        raise NotImplementedError

    @property
    def coefficient(self) -> float:
        raise NotImplementedError

    def loss(self, routers):
        return self.coefficient * torch.stack([self.per_layer(r) for r in routers]).mean()


@dataclass
class AuxLoss(LayerMeanLoss):
    """Expert-level balance loss per micro-batch."""

    name: ClassVar[str] = "aux_loss"
    alpha: float = option(1e-2, minimum=0, description="coefficient of the loss term")

    coefficient = property(lambda self: self.alpha)

    def per_layer(self, router):
        return expert_balance_loss(router.record, router.top_k)


@dataclass
class SeqAuxLoss(LayerMeanLoss):
    """Sequence-wise balance loss (DeepSeek-V3), averaged over sequences."""

    name: ClassVar[str] = "seq_aux_loss"
    alpha: float = option(1e-4, minimum=0, description="coefficient of the loss term")

    coefficient = property(lambda self: self.alpha)

    def per_layer(self, router):
        return sequence_balance_loss(router.record, router.top_k)


@dataclass
class GlobalAuxLoss(Strategy):
    """Batch-wise balance loss: f_i over the global batch (Qwen; DeepSeek-V3 §4.5.3).

    Under gradient accumulation the global batch is not complete until the last
    micro-batch, so f_i uses the counts of all micro-batches so far in this
    optimizer step, summed over data-parallel ranks (Qiu et al.'s buffer; as Megatron).
    """

    name: ClassVar[str] = "global_aux_loss"
    alpha: float = option(1e-2, minimum=0, description="coefficient of the loss term")

    def loss(self, routers):
        counts_LE = torch.stack([r.counts_E for r in routers]).clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts_LE)
        return self.alpha * torch.stack(
            [global_balance_loss(r.record, c_E, r.top_k) for r, c_E in zip(routers, counts_LE,
                                                                             strict=True)]).mean()


@dataclass
class LossFree(Strategy):
    """Auxiliary-loss-free balancing: move each bias against its expert's load, once per step."""

    name: ClassVar[str] = "loss_free"
    gamma: float = option(1e-3, minimum=0, description="bias update speed per optimizer step")
    rule: Literal["sign", "proportional"] = option(
        "sign", description="sign (the papers) or proportional to the load error")
    recentre: bool = option(False, description="subtract the mean update (torchtitan option)")
    stop_fraction: float = option(1.0, minimum=0, maximum=1, description=(
        "gamma = 0 from this fraction of the run on (DeepSeek-V3)"))

    def gamma_at(self, step: int, total_steps: int) -> float:
        return self.gamma if step < self.stop_fraction * total_steps else 0.0

    def after_step(self, routers, counts_LE, step, total_steps):
        delta_LE = bias_delta(counts_LE, self.gamma_at(step, total_steps), self.rule,
                              self.recentre)
        with torch.no_grad():
            for router, delta_E in zip(routers, delta_LE, strict=True):
                router.e_score_correction_bias.add_(delta_E)  # in place (torchtitan #1222)


@dataclass
class Smebu(Strategy):
    """Soft-clamped momentum expert bias updates (Trinity Large; our reading, see smebu_step)."""

    name: ClassVar[str] = "smebu"
    gamma: float = option(1e-2, minimum=0, description=(
        "bias step per optimizer step; as loss_free's, sized for short runs"))
    beta: float = option(0.9, minimum=0, exclusiveMaximum=1,
                         description="momentum of the clamped deviation")
    kappa: float = option(2.0, exclusiveMinimum=0, description=(
        "tanh sharpness: |deviation| >~ 1/kappa saturates"))
    stop_fraction: float = option(1.0, minimum=0, maximum=1, description=(
        "gamma = 0 from this fraction of the run on (as loss_free)"))
    velocity_LE: torch.Tensor | None = field(default=None, init=False, repr=False)

    def gamma_at(self, step, total_steps):
        return self.gamma if step < self.stop_fraction * total_steps else 0.0

    def after_step(self, routers, counts_LE, step, total_steps):
        gamma = self.gamma_at(step, total_steps)
        with torch.no_grad():
            bias_LE = torch.stack([r.e_score_correction_bias for r in routers]).float()
            if self.velocity_LE is None:
                self.velocity_LE = torch.zeros_like(bias_LE)
            bias_LE, self.velocity_LE = smebu_step(counts_LE.to(bias_LE), bias_LE,
                                                   self.velocity_LE.to(bias_LE), gamma,
                                                   self.beta, self.kappa)
            for router, bias_E in zip(routers, bias_LE, strict=True):
                router.e_score_correction_bias.copy_(bias_E)  # in place (torchtitan #1222)

    def state_dict(self):
        return {} if self.velocity_LE is None else {"velocity_LE": self.velocity_LE.cpu()}

    def load_state_dict(self, state):
        self.velocity_LE = state.get("velocity_LE")


@dataclass
class ZLoss(LayerMeanLoss):
    """Router z-loss: keeps logits small; combinable with any strategy."""

    name: ClassVar[str] = "z_loss"
    beta: float = option(1e-3, minimum=0, description="coefficient of the loss term")

    coefficient = property(lambda self: self.beta)

    def per_layer(self, router):
        return router_z_loss(router.record)


@dataclass
class Balancing:
    """The strategies of one variant, applied together."""

    strategies: list[Strategy] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Balancing:
        """From the `balancing` section: ``strategies: [names]`` plus options per name."""
        values = dict(values)
        names = values.pop("strategies", [])
        unknown = sorted(set(names) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown balancing strategy {', '.join(unknown)}; "
                             f"known: {', '.join(STRATEGIES)}")
        stray = sorted(set(values) - set(STRATEGIES))
        if stray:
            raise ValueError(f"unknown key(s) in balancing: {', '.join(stray)}")
        return cls([settings_from_dict(STRATEGIES[name], values.get(name) or {},
                                       f"balancing.{name}") for name in names])

    def losses(self, routers: Sequence[CountingRouter]) -> dict[str, torch.Tensor]:
        terms = {}
        for strategy in self.strategies:
            term = strategy.loss(routers)
            if term is not None:
                terms[strategy.name] = term
        return terms

    def after_step(self, routers, counts_LE, step, total_steps) -> None:
        for strategy in self.strategies:
            strategy.after_step(routers, counts_LE, step, total_steps)

    def gamma_at(self, step: int, total_steps: int) -> float:
        """The bias update speed in force at ``step`` (0 without a bias-updating strategy)."""
        return sum(s.gamma_at(step, total_steps) for s in self.strategies)

    def state_dict(self) -> dict[str, Any]:
        """Per-strategy state between steps (e.g. SMEBU's momentum), keyed by name."""
        return {s.name: state for s in self.strategies if (state := s.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for strategy in self.strategies:
            strategy.load_state_dict(state.get(strategy.name, {}))


# ---------------------------------------------------------------------------- the schema

def options_schema() -> dict[str, Any]:
    """The JSON schema of the `balancing` section, from the registered strategy classes."""
    properties: dict[str, Any] = {"strategies": {
        "type": "array", "uniqueItems": True, "items": {"enum": list(STRATEGIES)},
        "description": "the strategies applied together ([] = no balancing)"}}
    properties |= {name: settings_schema(cls) for name, cls in STRATEGIES.items()}
    return {"type": "object", "additionalProperties": False,
            "description": "options of each balancing strategy; a variant picks which apply",
            "properties": properties}
