"""The metric catalogue: one entry per row of comparison.csv, keyed by a stable identifier.

Code (tables, figures, the config's ``analysis.primary``) refers to metrics by identifier;
the display name is data, used only where a person reads it. ``kind`` decides the variance
model a metric gets (see :mod:`moebalance.analysis.statistics`):

    per_run   one number per run (a loss, an entropy): t over seeds, paired by seed
    per_unit  a mean or ratio over problems or documents, each scored under every seed: the
              crossed seeds x ``unit`` model (its interval, test, TOST and MDD)
    max       a max statistic (MaxVio): run-level like per_run, never over units
    count     a count (dead experts): the mean over seeds, no interval

``better`` is the direction that counts as better ("lower", "higher"), or None where a
metric describes routing without a better side (mutual information, specialization).
``timing`` marks a measurement of the machine and its load during the run (throughput), not
of the model: two runs of the same study differ in it, so its rows are described with their
interval but tested in no family (a test there would move the other rows' q-values).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    display: str
    kind: str
    better: str | None = None
    unit: str = ""          # per_unit only: what the units crossed with seeds are
    timing: bool = False    # machine speed, not a property of the model: never tested


def _m(*args, **kwargs) -> tuple[str, Metric]:
    metric = Metric(*args, **kwargs)
    return metric.key, metric


# Row order of the tables. "training mix": held-out corpus domains weighted by their share of
# the training split; HumanEval routing and single domains are separate rows / tables.
CATALOGUE: dict[str, Metric] = dict([
    _m("val_loss_pretrain", "val loss (pretrain, nats/token)", "per_run", "lower"),
    _m("heldout_bpb_pretrain", "held-out bits/byte (pretrain)", "per_unit", "lower",
       "documents"),
    _m("val_loss_sft", "val loss (SFT, nats/token)", "per_run", "lower"),
    _m("solution_bpb", "HumanEval canonical-solution bits/byte (every problem)", "per_unit",
       "lower", "problems"),
    _m("solution_nll", "HumanEval canonical-solution NLL (nats/problem, every problem)",
       "per_unit", "lower", "problems"),
    _m("solution_bpb_fit", "HumanEval canonical-solution bits/byte (problems within the "
       "trained length)", "per_unit", "lower", "problems"),
    _m("pass_at_1", "pass@1", "per_run", "higher"),
    _m("pass_at_10", "pass@10", "per_run", "higher"),
    _m("pass_at_100", "pass@100", "per_run", "higher"),
    _m("maxvio_global_pretrain", "MaxVio_global (pretrain, held-out balance set, training mix)",
       "max", "lower"),
    _m("maxvio_floor_pretrain",
       "MaxVio_global (pretrain): sampling floor (perfect balance, same tokens)", "count"),
    _m("maxvio_split_half_pretrain",
       "MaxVio_global (pretrain): |split-half difference| (halves by document)", "count"),
    _m("maxvio_set_size_pretrain", "MaxVio_global (pretrain): |half-size set - full set|", "count"),
    _m("maxvio_global_sft", "MaxVio_global (SFT, held-out balance set, training mix)", "max",
       "lower"),
    _m("maxvio_global_humaneval", "MaxVio_global (pretrain, HumanEval routing, every problem)",
       "max", "lower"),
    _m("maxvio_global_humaneval_fit", "MaxVio_global (pretrain, HumanEval problems within the "
       "trained length)", "max", "lower"),
    _m("maxvio_batch_last", "MaxVio_batch (per step, mean over the last 25% of pretraining)",
       "max", "lower"),
    _m("maxvio_train_aggregate", "MaxVio training aggregate (last steps' counts summed, as "
       "many tokens as the balance set; closed loop)", "max", "lower"),
    _m("bias_jitter_pretrain", "MaxVio_global with the bias averaged over the last 10% of "
       "steps minus with the final bias", "per_run"),
    _m("cv_pretrain", "CV of expert load (pretrain, training mix)", "per_run", "lower"),
    _m("entropy_pretrain", "normalised load entropy (pretrain, training mix)", "per_run",
       "higher"),
    _m("entropy_sft", "normalised load entropy (SFT, training mix)", "per_run", "higher"),
    _m("gini_pretrain", "Gini of expert load (pretrain, training mix)", "per_run", "lower"),
    _m("dead_experts_pretrain", "dead experts per layer (pretrain, training mix)", "count",
       "lower"),
    _m("mi_domain_pretrain", "I(expert; domain) bits (pretrain)", "per_run"),
    _m("mi_domain_sft", "I(expert; domain) bits (SFT)", "per_run"),
    _m("mi_token_class_pretrain", "I(expert; token class) bits (pretrain)", "per_run"),
    _m("mi_token_class_sft", "I(expert; token class) bits (SFT)", "per_run"),
    _m("domain_specialization_pretrain", "domain specialization (pretrain)", "per_run"),
    _m("token_class_specialization_pretrain", "token-class specialization (pretrain)",
       "per_run"),
    _m("vocabulary_specialization_pretrain", "vocabulary specialization (pretrain)", "per_run"),
    _m("coactivation_max_pretrain", "co-activation, max per expert (pretrain)", "per_run"),
    _m("saturation_pretrain_sft", "router saturation pretrain->SFT", "per_run"),
    _m("saturation_first_snapshot", "router saturation at the first snapshot (pretrain)",
       "per_run"),
    _m("bias_override_rate_last", "bias override rate (last 25% of pretraining)", "per_run"),
    _m("tokens_per_s_pretrain", "tokens/s (pretrain)", "per_run", "higher", timing=True),
])

def metric(key: str) -> Metric:
    """The catalogue entry of ``key``; a clear error naming it when there is none."""
    try:
        return CATALOGUE[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}; known: {', '.join(CATALOGUE)}") from None
