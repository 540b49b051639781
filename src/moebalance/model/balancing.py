"""Load-balancing strategies: one small family with one interface.

A strategy is a function of tensors: it may add a differentiable loss term to every
micro-batch, from that micro-batch's routing records (``loss``), and may give the routers
a new bias once per optimizer step, from the step's counts, the bias and the step
(``new_bias``). The router counts, the trainer sums over ranks and writes the bias; these
decide. What a strategy does is declared by its class (``adds_loss``, ``moves_bias``,
``frozen_options``), and the trainer, the telemetry and SFT read only that. Strategies
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from moebalance.config import setting, settings_from_dict, settings_schema
from moebalance.model.router import RoutingRecord

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


def quantile_bias(margins_LEQ: torch.Tensor, counts_LE: torch.Tensor,
                  span: float) -> torch.Tensor:
    """Quantile Balancing's bias from one step's margin histogram (see QuantileBalancing).

    beta_i is the margin that q = K T / N of the step's tokens exceed (q from the counts:
    sum_i c_i / N), read from the histogram of expert i with its counts spread evenly
    within each bin; the bias is -beta, mean-centred per layer. The histogram's cumulative
    sums are exact in fp32 up to 2^24 tokens per step.
    """
    width = 2 * span / margins_LEQ.shape[-1]
    # q = K T / N per layer, as the counts hold it (T K assignments over N experts)
    quota_LE1 = (counts_LE.sum(-1, keepdim=True) / counts_LE.shape[-1]).expand_as(
        counts_LE)[..., None]
    below_LEQ = margins_LEQ.cumsum(-1) - margins_LEQ  # margins in the bins under bin b
    total_LE1 = margins_LEQ.sum(-1, keepdim=True)     # T, every token once per expert
    # the bin holding the q-th largest margin: the highest b with >= q margins at or above it
    bin_LE1 = torch.searchsorted(below_LEQ.contiguous(), total_LE1 - quota_LE1,
                                 right=True) - 1
    in_bin_LE1 = margins_LEQ.gather(-1, bin_LE1).double()
    above_LE1 = total_LE1.double() - below_LEQ.gather(-1, bin_LE1).double() - in_bin_LE1
    short_LE1 = quota_LE1.double() - above_LE1  # of the q, those inside the bin
    # Su 2026 (kexue.fm/archives/11619) / Marin #3406 step 2: beta_i = the (K T / N)-th
    # largest of s_{t,i} - alpha_t over tokens t (linear within the bin)
    beta_LE = (-span + (bin_LE1 + 1) * width - short_LE1 / in_bin_LE1.clamp_min(1) * width
               ).squeeze(-1)
    # Marin #3406 step 3 (Marin's grug: mean-centred): b_i = -beta_i + mean_j beta_j
    return beta_LE.mean(-1, keepdim=True) - beta_LE


# ---------------------------------------------------------------------------- the strategies


STRATEGIES: dict[str, type[Strategy]] = {}  # filled by Strategy.__init_subclass__, in
# definition order, which is also the order of the loss columns of metrics.parquet


def option(default: Any, *, description: str = "", **bounds: float) -> Any:
    """A strategy option: a settings field (:func:`moebalance.config.setting`) with its
    default, a description and JSON-schema bounds (``minimum``, ``maximum``,
    ``exclusiveMinimum``, ``exclusiveMaximum``) for the generated schema."""
    return setting(default, description, **bounds)


@dataclass
class StepCounts:
    """What the routers counted over one optimizer step: every micro-batch, summed over
    ranks by the trainer. L MoE layers, E routed experts, Q margin bins."""

    counts_LE: torch.Tensor                  # assignments per expert (T K per layer in all)
    margins_LEQ: torch.Tensor | None = None  # margin histogram, when a strategy asks for it


@dataclass
class Strategy:
    """Interface: ``loss`` per micro-batch, ``new_bias`` once per optimizer step.

    - ``loss(records, step_counts)``: a differentiable term from the routing records of one
      micro-batch (one per MoE layer); ``step_counts()`` gives the (L, E) assignments of the
      optimizer step so far, summed over ranks. A class that overrides it ``adds_loss``:
      it gets a loss column in metrics.parquet.
    - ``new_bias(counted, bias_LE, step, total_steps)``: the (L, E) bias of the next step,
      from this step's :class:`StepCounts` and bias; it returns a new tensor and writes
      nothing (the trainer writes the routers' buffers). A class that overrides it
      ``moves_bias``, and declares ``frozen_options``: the option values that hold its
      bias, applied by ``finetune.freeze_bias``.

    A subclass that sets ``name`` is registered in ``STRATEGIES`` under it; its init fields
    are the options of ``balancing.<name>`` in the config."""

    name: ClassVar[str]
    adds_loss: ClassVar[bool] = False
    moves_bias: ClassVar[bool] = False
    frozen_options: ClassVar[dict[str, Any]] = {}
    # strategies this one cannot be compiled with (train.compile), each with its reason
    not_compiled_with: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.adds_loss = cls.loss is not Strategy.loss
        cls.moves_bias = cls.new_bias is not Strategy.new_bias
        if "name" in cls.__dict__:
            if cls.name in STRATEGIES:
                raise TypeError(f"two balancing strategies named {cls.name!r}")
            if cls.moves_bias and not cls.frozen_options:
                raise TypeError(f"{cls.name} moves the bias: declare frozen_options, the "
                                "option values that hold it (finetune.freeze_bias)")
            STRATEGIES[cls.name] = cls

    def loss(self, records: Sequence[RoutingRecord],
             step_counts: Callable[[], torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def new_bias(self, counted: StepCounts, bias_LE: torch.Tensor, step: int,
                 total_steps: int) -> torch.Tensor:
        raise NotImplementedError

    def margin_histogram(self) -> tuple[int, float] | None:
        """(bins, span) of the score-margin histogram ``new_bias`` reads; None: none."""
        return None

    def gamma_at(self, step: int, total_steps: int) -> float:
        """The bias update speed in force at ``step`` (0 for strategies without a step size)."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        """State carried between steps (saved in training checkpoints); none by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@dataclass
class LayerMeanLoss(Strategy):
    """A loss term: ``coefficient`` times the mean over MoE layers of ``per_layer``."""

    def per_layer(self, record: RoutingRecord) -> torch.Tensor:
        raise NotImplementedError

    @property
    def coefficient(self) -> float:
        raise NotImplementedError

    def loss(self, records, step_counts):
        return self.coefficient * torch.stack([self.per_layer(r) for r in records]).mean()


@dataclass
class AuxLoss(LayerMeanLoss):
    """Expert-level balance loss per micro-batch."""

    name: ClassVar[str] = "aux_loss"
    alpha: float = option(1e-2, minimum=0, description="coefficient of the loss term")

    coefficient = property(lambda self: self.alpha)

    def per_layer(self, record):
        return expert_balance_loss(record, record.top_k)


@dataclass
class SeqAuxLoss(LayerMeanLoss):
    """Sequence-wise balance loss (DeepSeek-V3), averaged over sequences."""

    name: ClassVar[str] = "seq_aux_loss"
    alpha: float = option(1e-4, minimum=0, description="coefficient of the loss term")

    coefficient = property(lambda self: self.alpha)

    def per_layer(self, record):
        return sequence_balance_loss(record, record.top_k)


@dataclass
class GlobalAuxLoss(Strategy):
    """Batch-wise balance loss: f_i over the global batch (Qwen; DeepSeek-V3 §4.5.3).

    Under gradient accumulation the global batch is not complete until the last
    micro-batch, so f_i uses the counts of all micro-batches so far in this
    optimizer step, summed over data-parallel ranks (Qiu et al.'s buffer; as Megatron).
    """

    name: ClassVar[str] = "global_aux_loss"
    # on one micro-batch aux_loss and this are the same expression, and the compiled
    # backward (torch 2.13) then doubles its gradient
    not_compiled_with: ClassVar[tuple[str, ...]] = ("aux_loss",)
    alpha: float = option(1e-2, minimum=0, description="coefficient of the loss term")

    def loss(self, records, step_counts):
        counts_LE = step_counts()
        return self.alpha * torch.stack(
            [global_balance_loss(r, c_E, r.top_k) for r, c_E in zip(records, counts_LE,
                                                                     strict=True)]).mean()


@dataclass
class LossFree(Strategy):
    """Auxiliary-loss-free balancing: move each bias against its expert's load, once per step."""

    name: ClassVar[str] = "loss_free"
    frozen_options: ClassVar[dict[str, Any]] = {"stop_fraction": 0.0}
    gamma: float = option(1e-3, minimum=0, description="bias update speed per optimizer step")
    rule: Literal["sign", "proportional"] = option(
        "sign", description="sign (the papers) or proportional to the load error")
    recentre: bool = option(False, description="subtract the mean update (torchtitan option)")
    stop_fraction: float = option(1.0, minimum=0, maximum=1, description=(
        "gamma = 0 from this fraction of the run on (DeepSeek-V3)"))

    def gamma_at(self, step: int, total_steps: int) -> float:
        return self.gamma if step < self.stop_fraction * total_steps else 0.0

    def new_bias(self, counted, bias_LE, step, total_steps):
        return bias_LE + bias_delta(counted.counts_LE, self.gamma_at(step, total_steps),
                                    self.rule, self.recentre)


@dataclass
class Smebu(Strategy):
    """Soft-clamped momentum expert bias updates (Trinity Large; our reading, see smebu_step)."""

    name: ClassVar[str] = "smebu"
    frozen_options: ClassVar[dict[str, Any]] = {"stop_fraction": 0.0}
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

    def new_bias(self, counted, bias_LE, step, total_steps):
        gamma = self.gamma_at(step, total_steps)
        if gamma == 0.0:
            return bias_LE  # held: not even re-centred, so a frozen bias stays bit-exact
        bias_LE = bias_LE.float()
        if self.velocity_LE is None:
            self.velocity_LE = torch.zeros_like(bias_LE)
        bias_LE, self.velocity_LE = smebu_step(counted.counts_LE.to(bias_LE), bias_LE,
                                               self.velocity_LE.to(bias_LE), gamma,
                                               self.beta, self.kappa)
        return bias_LE

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

    def per_layer(self, record):
        return router_z_loss(record)


@dataclass
class QuantileBalancing(Strategy):
    """Quantile Balancing: each step, set every bias so that about K T / N tokens pick its expert.

    Sources (docs/reference.md §2): J. Su, "A Tour of MoE, 6" (kexue.fm/archives/11619,
    2026; part 7, kexue.fm/archives/11626, restates its assignment problem) and Marin's
    implementation (marin-community/marin: experiments/grug/moe, and issue #3406). Balanced
    top-K routing of T tokens to N experts is the assignment
        max sum_{t,i} x_{t,i} s_{t,i}  s.t.  sum_i x_{t,i} = K,  sum_t x_{t,i} = K T / N;
    with a dual variable alpha_t per token and beta_i per expert, token t takes expert i
    iff s_{t,i} - alpha_t - beta_i > 0, and routing by TopK(s + b) is b = -beta. QB makes
    one alternating step of that dual per optimizer step, from the bias b that routed the
    step (Marin #3406 steps 1-3, with the order statistics of Marin's grug code):
        alpha_t = the (K+1)-th largest of s_{t,j} + b_j over experts j
        beta_i  = the (K T / N)-th largest of s_{t,i} - alpha_t over the step's tokens t
        b_i    <- -beta_i + mean_j beta_j
    No step size: the bias is set, not nudged (so a bias-moving strategy listed before this
    one in a variant has no effect). Where the sources leave a choice, OUR READING:
    - s is the score the router adds its bias to (DeepSeek-V3 Eq. 16: the sigmoid or
      softmax scores), as Marin uses the logits its own bias is added to;
    - beta_i is read from a histogram of the margins s_{t,i} - alpha_t
      (router.margin_histogram: ``bins`` over [-span, span), counts spread evenly within a
      bin) summed over micro-batches and ranks, so it is the quantile of the whole global
      batch, as Megatron-LM's global-batch QB (NVIDIA/Megatron-LM #6637) and Marin #7812
      do; Marin's grug takes each device's exact quantile and averages the betas;
    - the mean-centring and the timing are Marin's (-beta minus its mean, in force from the
      next step); beta is not smoothed (Megatron's EMA option is off by default too);
      group-limited routing is left out of alpha_t;
    - ``stop_fraction`` holds the bias from that fraction of the run on (Marin's grug has a
      freeze step too).
    """

    name: ClassVar[str] = "quantile"
    frozen_options: ClassVar[dict[str, Any]] = {"stop_fraction": 0.0}
    bins: int = option(16000, minimum=2, description=(
        "margin histogram bins over [-span, span): 2.5e-4 wide at the defaults"))
    span: float = option(2.0, exclusiveMinimum=0, description=(
        "the histogram covers margins in [-span, span); scores in (0, 1) and a bias "
        "spread under 1 keep them inside (-2, 2)"))
    stop_fraction: float = option(1.0, minimum=0, maximum=1, description=(
        "the bias is held from this fraction of the run on"))

    def margin_histogram(self):
        return (self.bins, self.span)

    def new_bias(self, counted, bias_LE, step, total_steps):
        if step >= self.stop_fraction * total_steps:
            return bias_LE
        return quantile_bias(counted.margins_LEQ, counted.counts_LE, self.span).to(bias_LE)


@dataclass
class Balancing:
    """The strategies of one variant, applied together."""

    strategies: list[Strategy] = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Balancing:
        """From the `balancing` section: ``strategies: [names]`` plus options per name, and
        ``freeze_bias`` (every bias-moving strategy takes its ``frozen_options``)."""
        values = dict(values)
        names = values.pop("strategies", [])
        freeze = values.pop("freeze_bias", False)
        unknown = sorted(set(names) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown balancing strategy {', '.join(unknown)}; "
                             f"known: {', '.join(STRATEGIES)}")
        stray = sorted(set(values) - set(STRATEGIES))
        if stray:
            raise ValueError(f"unknown key(s) in balancing: {', '.join(stray)}")
        return cls([settings_from_dict(
            STRATEGIES[name], (values.get(name) or {}) | (STRATEGIES[name].frozen_options
                                                          if freeze else {}),
            f"balancing.{name}") for name in names])

    @property
    def moves_bias(self) -> bool:
        return any(s.moves_bias for s in self.strategies)

    def losses(self, records: Sequence[RoutingRecord],
               step_counts: Callable[[], torch.Tensor]) -> dict[str, torch.Tensor]:
        return {s.name: s.loss(records, step_counts) for s in self.strategies if s.adds_loss}

    def new_bias(self, counted: StepCounts, bias_LE: torch.Tensor, step: int,
                 total_steps: int) -> torch.Tensor:
        """The bias after every bias-moving strategy's update, in order."""
        for strategy in self.strategies:
            if strategy.moves_bias:
                bias_LE = strategy.new_bias(counted, bias_LE, step, total_steps)
        return bias_LE

    def margin_histogram(self) -> tuple[int, float] | None:
        """(bins, span) of the margin histogram a strategy reads, if one does."""
        return next((spec for s in self.strategies if (spec := s.margin_histogram())), None)

    def compile_conflicts(self) -> list[tuple[str, str]]:
        """Pairs of these strategies that cannot be compiled together (train.compile)."""
        names = [s.name for s in self.strategies]
        return [(other, s.name) for s in self.strategies for other in s.not_compiled_with
                if other in names]

    def gamma_at(self, step: int, total_steps: int) -> float:
        """The bias update speed in force at ``step`` (0 without a bias-updating strategy)."""
        return sum(s.gamma_at(step, total_steps) for s in self.strategies)

    def state_dict(self) -> dict[str, Any]:
        """Per-strategy state between steps (e.g. SMEBU's momentum), keyed by name."""
        return {s.name: state for s in self.strategies if (state := s.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for strategy in self.strategies:
            strategy.load_state_dict(state.get(strategy.name, {}))


def loss_terms() -> list[str]:
    """The strategies that add a loss term, in registration order: metrics.parquet's columns."""
    return [name for name, cls in STRATEGIES.items() if cls.adds_loss]


# ---------------------------------------------------------------------------- the schema

def options_schema() -> dict[str, Any]:
    """The JSON schema of the `balancing` section, from the registered strategy classes."""
    properties: dict[str, Any] = {"strategies": {
        "type": "array", "uniqueItems": True, "items": {"enum": list(STRATEGIES)},
        "description": "the strategies applied together ([] = no balancing)"},
        "freeze_bias": {"type": "boolean", "description": (
            "hold the bias: each bias-moving strategy takes its frozen options "
            "(finetune.freeze_bias sets it for SFT)")}}
    properties |= {name: settings_schema(cls) for name, cls in STRATEGIES.items()}
    return {"type": "object", "additionalProperties": False,
            "description": "options of each balancing strategy; a variant picks which apply",
            "properties": properties}
