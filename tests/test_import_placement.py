"""Imports go at the top of a module (the rule and its exceptions: moebalance.cli's docstring).
Inside a function: never the standard library, a project module only where it imports
torch, transformers or mlflow at its top, and at most MAX_LOCAL_IMPORTS in all."""

import ast
import sys
from pathlib import Path

from moebalance.codehash import SOURCE_ROOT, module_path

MAX_LOCAL_IMPORTS = 50
TORCH_LIKE = frozenset({"torch", "transformers", "mlflow"})


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The absolute names an import statement in module ``name`` loads: each ``import a.b``,
    or the base of a ``from`` import and ``base.x`` for each imported x (which may be a
    submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = name.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def function_local_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements whose nearest enclosing scope is a function (a class body
    inside a function counts as the function's)."""
    found = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            walk(child, in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    walk(tree, False)
    return found


def runs_on_import(node: ast.AST) -> bool:
    """False for the body of ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":``."""
    if not isinstance(node, ast.If):
        return True
    test = ast.unparse(node.test)
    return test not in ("TYPE_CHECKING", "typing.TYPE_CHECKING", "__name__ == '__main__'")


def top_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported, outside functions."""
    found = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            elif runs_on_import(child) and not isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                walk(child)

    walk(tree)
    return found


def torch_like_modules(root: Path, package: str) -> set[str]:
    """Project modules that load torch, transformers or mlflow when imported: through an
    import at their top, their package's ``__init__``, or another such project module
    imported at their top."""
    top: dict[str, set[str]] = {}
    for path in (root / package).rglob("*.py"):
        name = module_name(path, root)
        parts = name.split(".")
        top[name] = {".".join(parts[:i]) for i in range(1, len(parts))}
        for node in top_imports(ast.parse(path.read_text())):
            top[name].update(imported_modules(node, name, path.name == "__init__.py"))
    heavy = {m for m, deps in top.items() if {d.split(".")[0] for d in deps} & TORCH_LIKE}
    while grown := {m for m, deps in top.items() if m not in heavy and deps & heavy}:
        heavy |= grown
    return heavy


def classify(root: Path, package: str) -> dict[str, list[str]]:
    """Every function-local import under ``root/package``, as ``file:line module``, by kind:
    stdlib, project (a project module that is not torch-like), torch (torch, transformers,
    mlflow or a torch-like project module), other (any other third-party package)."""
    heavy = torch_like_modules(root, package)
    kinds: dict[str, list[str]] = {"stdlib": [], "project": [], "torch": [], "other": []}
    for path in sorted((root / package).rglob("*.py")):
        name = module_name(path, root)
        for node in function_local_imports(ast.parse(path.read_text())):
            modules = imported_modules(node, name, path.name == "__init__.py")
            top_level = modules[0].split(".")[0]
            if top_level == package:
                ours = {m for m in modules if module_path(m, root) is not None}
                kind = "torch" if ours & heavy else "project"
            elif top_level in TORCH_LIKE:
                kind = "torch"
            elif top_level in sys.stdlib_module_names:
                kind = "stdlib"
            else:
                kind = "other"
            kinds[kind].append(f"{path.relative_to(root)}:{node.lineno} {modules[0]}")
    return kinds


def test_each_kind_of_local_import_is_told_apart(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/light.py": "import json\n",
        "pkg/heavy.py": "import torch\n",
        "pkg/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
        "pkg/via_heavy.py": "from pkg import heavy\n",
        "pkg/user.py": ("import os\n\n"
                        "def f():\n"
                        "    import json\n"
                        "    from pkg import light\n"
                        "    from . import via_heavy\n"
                        "    from pkg.typed import x\n"
                        "    import transformers\n"
                        "    import pandas\n"
                        "    class Inner:\n"
                        "        import re\n"),
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert classify(tmp_path, "pkg") == {
        "stdlib": ["pkg/user.py:4 json", "pkg/user.py:11 re"],
        "project": ["pkg/user.py:5 pkg", "pkg/user.py:7 pkg.typed"],
        "torch": ["pkg/user.py:6 pkg", "pkg/user.py:8 transformers"],
        "other": ["pkg/user.py:9 pandas"],
    }


KINDS = classify(SOURCE_ROOT, "moebalance")


def test_no_standard_library_import_inside_a_function():
    assert KINDS["stdlib"] == []


def test_a_project_module_is_imported_inside_a_function_only_where_it_brings_torch():
    assert KINDS["project"] == []


def test_at_most_50_imports_inside_functions():
    total = sum(len(found) for found in KINDS.values())
    assert total <= MAX_LOCAL_IMPORTS, {kind: len(found) for kind, found in KINDS.items()}
