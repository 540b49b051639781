"""The `moebalance` command line: one sub-command per pipeline stage.

Each stage module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args)``. Stage modules keep heavy imports (torch, transformers, mlflow)
inside ``run`` so that ``moebalance --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# sub-command name -> module implementing it, in pipeline order.
STAGES: dict[str, str] = {
    "init-tracking": "moebalance.tracking",
    "corpus": "moebalance.data.corpus",
    "tokenizer": "moebalance.data.tokenizer",
    "tokens": "moebalance.data.tokens",
    "sft-data": "moebalance.data.sft_pairs",
    "baselines": "moebalance.evaluation.baselines",
    "pretrain": "moebalance.training.pretrain",
    "sft": "moebalance.training.sft",
    "generate": "moebalance.evaluation.generate",
    "score": "moebalance.evaluation.scoring",
    "solution-nll": "moebalance.evaluation.solution_nll",
    "utilization": "moebalance.analysis.utilization",
    "compare": "moebalance.analysis.compare",
    "sweep-select": "moebalance.sweep",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moebalance",
        description=(
            "Stages of the moebalance study. Snakemake calls these; each also runs alone. "
            "Run `moebalance <stage> --help` for a stage's inputs, outputs and options."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for name, module_name in STAGES.items():
        module = importlib.import_module(module_name)
        stage_parser = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args._run(args)
    except UsageError as err:
        print(f"moebalance {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


class UsageError(Exception):
    """Bad input or option: reported as one line naming the file or option, exit status 2."""


if __name__ == "__main__":
    sys.exit(main())
