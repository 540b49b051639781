"""Mine HumanEval-style (prompt, completion) pairs from the corpus's train split.

For every top-level, undecorated function with a docstring:

    prompt      the module-level imports the function uses, two blank lines, then the
                function's own source from ``def`` to the end of its docstring
    completion  the rest of the function's source (its body), verbatim

which is the shape of a HumanEval problem (prompt = imports + signature + docstring,
canonical solution = body). A pair is kept only when ``prompt + completion`` parses
with ``ast`` and it passes the length filters. Pairs are split into train and val by
the hash of the prompt, so the split is stable across runs. The filters and the split are
the config's `sft` section, taken as ``--settings`` (moebalance.config.SftDataSettings).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from moebalance.atomic import atomic_path, write_parquet
from moebalance.config import SftDataSettings, add_settings_argument, parse_settings
from moebalance.errors import UsageError
from moebalance.tracking import add_tracking_arguments, stage_run

HELP = "mine HumanEval-style (prompt, completion) pairs from the train split for SFT"
SFT_SCHEMA = pa.schema([("prompt", pa.string()), ("completion", pa.string()),
                        ("entry_point", pa.string()), ("source", pa.string()),
                        ("doc_id", pa.string())])
log = logging.getLogger(__name__)


def bound_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """Names an import statement binds in the module namespace."""
    return [(alias.asname or alias.name).split(".")[0] for alias in node.names]


def used_names(function: ast.FunctionDef) -> set[str]:
    """Every bare name the function mentions (body, defaults and annotations)."""
    return {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}


def needed_imports(module: ast.Module, function: ast.FunctionDef) -> list[str]:
    """Module-level imports the function uses, pruned to the names it uses, as source."""
    used = used_names(function)
    lines = []
    for node in module.body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        keep = [alias for alias, name in zip(node.names, bound_names(node), strict=True)
                if name in used and alias.name != "*"]
        if keep:
            pruned = (ast.Import(names=keep) if isinstance(node, ast.Import)
                      else ast.ImportFrom(module=node.module, names=keep, level=node.level))
            lines.append(ast.unparse(pruned))
    return lines


def mine_pairs(text: str, limits: SftDataSettings,
               counts: Counter) -> Iterator[tuple[str, str, str]]:
    """(prompt, completion, entry_point) for each qualifying function of one module."""
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError):
        counts["modules_unparsable"] += 1
        return
    lines = text.splitlines(keepends=True)
    for function in module.body:
        if not isinstance(function, ast.FunctionDef) or function.decorator_list:
            continue
        counts["functions_seen"] += 1
        docstring = ast.get_docstring(function, clean=False)
        if docstring is None or len(docstring.strip()) < limits.min_docstring_chars:
            counts["dropped_no_docstring"] += 1
            continue
        doc_node = function.body[0]
        if len(function.body) < 2 or function.body[1].lineno <= doc_node.end_lineno:
            counts["dropped_no_body"] += 1
            continue
        imports = needed_imports(module, function)
        head = "".join(lines[function.lineno - 1:doc_node.end_lineno])
        prompt = ("\n".join(imports) + "\n\n\n" if imports else "") + head
        completion = "".join(lines[doc_node.end_lineno:function.end_lineno])
        if not prompt.endswith("\n") or not completion.endswith("\n"):
            prompt, completion = prompt.rstrip("\n") + "\n", completion.rstrip("\n") + "\n"
        body_lines = sum(1 for line in completion.splitlines() if line.strip())
        if not limits.min_completion_lines <= body_lines <= limits.max_completion_lines:
            counts["dropped_completion_length"] += 1
            continue
        if len(prompt) > limits.max_prompt_chars:
            counts["dropped_prompt_length"] += 1
            continue
        try:
            ast.parse(prompt + completion)
        except SyntaxError:
            counts["dropped_unparsable"] += 1
            continue
        yield prompt, completion, function.name


def is_val(prompt: str, val_fraction: float) -> bool:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:15], 16) / 16**15 < val_fraction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument_group("inputs").add_argument(
        "--train", required=True, help="train.parquet of the corpus stage")
    parser.add_argument_group("outputs").add_argument(
        "--out-dir", required=True, help="directory for train.parquet/val.parquet")
    add_settings_argument(parser, SftDataSettings, "sft")
    add_tracking_arguments(parser)


def run(args: argparse.Namespace) -> None:
    if not Path(args.train).is_file():
        raise UsageError(f"missing corpus train split {args.train}; run the corpus stage first")
    limits = parse_settings(SftDataSettings, args.settings)
    params = {**asdict(limits), "train": str(args.train)}
    table = pq.read_table(args.train, columns=["doc_id", "path", "text"])
    counts: Counter = Counter()
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    seen: set[tuple[str, str]] = set()
    with stage_run(args, "sft_data", params, torch_kernels=False) as mlflow:
        for doc in tqdm(table.to_pylist(), desc="mine pairs", unit="doc"):
            for prompt, completion, entry_point in mine_pairs(doc["text"], limits, counts):
                if (prompt, completion) in seen:
                    counts["dropped_duplicate"] += 1
                    continue
                seen.add((prompt, completion))
                split = "val" if is_val(prompt, limits.val_fraction) else "train"
                rows[split].append({"prompt": prompt, "completion": completion,
                                    "entry_point": entry_point, "source": doc["path"],
                                    "doc_id": doc["doc_id"]})
        if not rows["train"]:
            raise UsageError(f"no SFT pair survived the filters in {args.train}: {dict(counts)}")
        counts.update({f"{split}_pairs": len(split_rows) for split, split_rows in rows.items()})
        with atomic_path(args.out_dir, directory=True) as tmp:
            for split, split_rows in rows.items():
                write_parquet(pa.Table.from_pylist(split_rows, schema=SFT_SCHEMA),
                              tmp / f"{split}.parquet")
        log.info("sft pairs: %s", dict(sorted(counts.items())))
        if mlflow is not None:
            mlflow.log_metrics({k: float(v) for k, v in counts.items()})
