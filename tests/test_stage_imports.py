"""One home per concept: a stage module (a value of cli.STAGES) imports what it shares with
other stages from a helper module, never from another stage."""

import pytest

from moebalance.cli import STAGES
from moebalance.codehash import SOURCE_ROOT, closure, direct_imports

STAGE_MODULES = frozenset(STAGES.values())
def stages_imported_by(stage: str, stages=STAGE_MODULES, root=SOURCE_ROOT) -> set[str]:
    """The other modules of ``stages`` that ``stage`` imports, at top level or inside
    functions, itself or through the helper modules it imports (the walk stops at each
    stage module it meets)."""
    found, seen, todo = set(), {stage}, [stage]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        parents = {".".join(parts[:i]) for i in range(1, len(parts))}
        for name in direct_imports(module, root) | parents:
            if name in stages and name != stage:
                found.add(name)
            elif name not in seen:
                seen.add(name)
                todo.append(name)
    return found


def test_a_stage_reached_lazily_through_a_helper_counts(tmp_path):
    files = {
        "moebalance/__init__.py": "",
        "moebalance/first.py": "from moebalance import shared\n",
        "moebalance/shared.py": "def f():\n    from moebalance.second import g\n",
        "moebalance/second.py": "from moebalance.third import h\n",
        "moebalance/third.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    stages = {"moebalance.first", "moebalance.second", "moebalance.third"}
    assert stages_imported_by("moebalance.first", stages, tmp_path) == {"moebalance.second"}
    assert stages_imported_by("moebalance.second", stages, tmp_path) == {"moebalance.third"}


@pytest.mark.parametrize("stage", sorted(STAGE_MODULES))
def test_a_stage_imports_no_other_stage(stage):
    assert stages_imported_by(stage) == set(), (
        f"{stage} imports another stage; move what they share into a helper module")


DATA_AND_EVALUATION = sorted(
    ".".join(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    for folder in ("data", "evaluation")
    for path in (SOURCE_ROOT / "moebalance" / folder).rglob("*.py") if path.stem != "__init__")


@pytest.mark.parametrize("module", DATA_AND_EVALUATION)
def test_data_and_evaluation_import_nothing_of_training(module):
    """The pipeline runs one way: what the trainer uses (the validation windows, the
    baselines' counts) lives in data/, and no data or evaluation module reaches training/."""
    assert not {name for name in closure(module) if name.startswith("moebalance.training")}
