# Shared by every rules file: config validation, paths, and the code hash that makes
# a change to a stage's code re-run that stage (and only the stages it affects).
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# Validates the merged config (config.yaml plus any --configfile overlay) and fills
# in the schema's defaults; an invalid value stops Snakemake before any job starts.
validate(config, "../schemas/config.schema.yaml")

RESULTS = config["results"]
DATA = f"{RESULTS}/data"
LOGS = f"{RESULTS}/logs"
BENCH = f"{RESULTS}/benchmarks"
MLFLOW_DB = f"{RESULTS}/mlflow.db"
MLFLOW_READY = f"{RESULTS}/mlflow.json"
# Jobs inherit this environment. The `moebalance` command of the Python running
# Snakemake comes first on PATH, so a virtual environment works without activation.
# Tracking goes through MLflow's own variables: a MLFLOW_TRACKING_URI set by the user
# (a server) wins over the study's SQLite file, and neither is an output-changing param.
# (Local and SLURM jobs inherit the environment, so no `envvars:` is needed.)
_STORE_URI = f"sqlite:///{Path(MLFLOW_DB).resolve()}"
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    MLFLOW_TRACKING_URI=os.environ.get("MLFLOW_TRACKING_URI") or _STORE_URI,
    MLFLOW_EXPERIMENT_NAME=config["mlflow"]["experiment"],
)
PACKAGE = Path(workflow.basedir) / "src" / "moebalance"


def code_hash(*modules):
    """Hash of the given package modules (paths relative to src/moebalance). A rule takes
    it as a param, so editing the code that computes a stage's output re-runs that stage
    and what depends on it; plumbing shared by all stages (cli.py, io.py, tracking.py)
    is left out so that adding a sub-command does not re-run the whole study."""
    digest = hashlib.sha256()
    for rel in sorted(modules):
        digest.update(rel.encode())
        digest.update((PACKAGE / rel).read_bytes())
    return digest.hexdigest()[:16]


def parent_of(kind, name):
    """A params function: the folder holding the named input or output file."""
    return lambda wildcards, input, output: str(Path(dict(input=input, output=output)[kind][name]).parent)


def cli_flags(options):
    """`--key value` flags from a mapping; lists repeat the flag, None and False are left out."""
    flags = []
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        for item in value if isinstance(value, list) else [value]:
            if item is None or item is False:
                continue
            flags.append(flag if item is True else f"{flag} {shlex.quote(str(item))}")
    return " ".join(flags)


def corpus_flags(corpus):
    """The corpus settings as `moebalance corpus` flags."""
    return cli_flags({
        "no_site_packages": not corpus["site_packages"],
        "site_packages_root": corpus["site_packages_root"] or "all",
        "no_stdlib": not corpus["stdlib"],
        "include": corpus["include"],
        "file": corpus["files"],
        "hf_dataset": [json.dumps(spec, sort_keys=True) for spec in corpus["hf_datasets"]],
        "extension": corpus["extensions"],
        "min_bytes": corpus["min_bytes"],
        "max_bytes": corpus["max_bytes"],
        "max_documents": corpus["max_documents"],
        "val_fraction": corpus["val_fraction"],
        "test_fraction": corpus["test_fraction"],
        "heldout_min_documents": corpus["heldout_min_documents"],
        "heldout_min_bytes": corpus["heldout_min_bytes"],
        "near_duplicate_threshold": corpus["near_duplicate_threshold"],
        "ngram": corpus["decontamination_ngram"],
    })
