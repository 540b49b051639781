# Shared by every rules file: config validation, paths, variants and seeds, and the code
# hash that makes a change to a stage's code re-run that stage (and only the stages it
# affects).
import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from moebalance.cli import STAGES
from moebalance.codehash import code_hash as module_code_hash
from moebalance.config import (
    BalanceSetSettings,
    BaselinesSettings,
    CompareSettings,
    CorpusSettings,
    FrontierSettings,
    GenerateSettings,
    ScoreSettings,
    SftDataSettings,
    SolutionNllSettings,
    SweepSettings,
    TokenizerSettings,
    TrainSettings,
    UtilizationSettings,
    section_of,
)
from moebalance.study import (
    RunPaths,
    apply_sweep,
    choice_path,
    execution_settings,
    read_choice,
    sft_settings,
    study_hash,
    sweep_settings,
    trained_length,
    variant_settings,
)

min_version("9.0")

# Validates the merged config (config.yaml plus any --configfile overlay) and fills
# in the schema's defaults; an invalid value stops Snakemake before any job starts.
validate(config, "../schemas/config.schema.yaml")

# Sweep grids become ordinary variants (tune phase) or their chosen values (report phase).
SWEEP = sweep_settings(config)
config.update(apply_sweep(config, read_choice(config)))

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
# MOEBALANCE_STUDY names the MLflow parent run that every stage run of this study nests under.
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    MLFLOW_TRACKING_URI=os.environ.get("MLFLOW_TRACKING_URI") or _STORE_URI,
    MLFLOW_EXPERIMENT_NAME=config["mlflow"]["experiment"],
    MOEBALANCE_STUDY=study_hash(config),
)
PACKAGE = Path(workflow.basedir) / "src" / "moebalance"


def stage_code(stage):
    """Hash of the code of `moebalance <stage>`: its module and every project module it
    imports, transitively (moebalance.codehash reads the import graph). A rule takes it as a
    param, so editing any code a stage runs re-runs that stage and what depends on it."""
    return module_code_hash(STAGES[stage], PACKAGE.parent)


# Variants and seeds, shared by the training, evaluation and analysis rules. A variant's
# science settings are one JSON param; execution knobs (threads, log_every,
# checkpoint_every) travel outside params, so changing one plans no job and a killed run
# still resumes (see moebalance.config).
VARIANTS = list(config["variants"])
SETTINGS = {variant: variant_settings(config, variant) for variant in VARIANTS}
SFT_SETTINGS = {variant: sft_settings(SETTINGS[variant], config["finetune"])
                for variant in VARIANTS}
TRAINED_LENGTH = {variant: trained_length(SETTINGS[variant], SFT_SETTINGS[variant])
                  for variant in VARIANTS}
_LOOPS = {"pretrain": config["pretrain"], "sft": config["finetune"]["train"]}
# threads go through the `threads:` directive (Snakemake may scale them to --cores)
EXECUTION = {stage: json.dumps({k: v for k, v in execution_settings(loop).items()
                                if k != "threads"}, sort_keys=True)
             for stage, loop in _LOOPS.items()}
THREADS = {stage: max(1, loop.get("threads", 1)) for stage, loop in _LOOPS.items()}
SEEDS = config["seeds"]
RUNS = f"{RESULTS}/runs"
RUN = RunPaths(RUNS)  # {variant} and {seed} left as wildcards: the per-run rules' patterns


wildcard_constraints:
    variant="|".join(map(re.escape, VARIANTS)) or "(?!)",
    seed=r"\d+",


def uses_gpu(settings):
    """1 when a job's settings ask for CUDA (a `resources: gpu` count for SLURM)."""
    return int(settings["train"].get("device", "auto").startswith("cuda"))


def run_file(stage, name):
    """A per-run output: the file `name` in the `stage` folder of each (variant, seed)."""
    return str(RUN.stage(stage) / name)


def run_log(rule_name):
    """The log of one (variant, seed)'s job of a per-run rule."""
    return f"{LOGS}/{rule_name}/{RUN.name}.log"


def run_benchmark(rule_name):
    """The benchmark of one (variant, seed)'s job of a per-run rule."""
    return f"{BENCH}/{rule_name}/{RUN.name}.tsv"


def checkpoint_dir(stage):
    """Checkpoints sit outside the declared outputs: Snakemake deletes those of a failed
    job, and a rerun resumes from the checkpoint instead."""
    return lambda wildcards: str(RunPaths(f"{RESULTS}/checkpoints", wildcards.variant,
                                          wildcards.seed).stage(stage))


def settings_param(cls, values):
    """A stage's science settings (its config section, or the part of one that is its) as its
    `--settings` param: validated now, so a bad value stops Snakemake before any job starts;
    JSON with sorted keys, so a change re-runs exactly the stages it reaches. Keys left out
    take their defaults in moebalance.config."""
    cls.from_dict(values)
    return json.dumps(values, sort_keys=True)


def parent_of(kind, name):
    """A params function: the folder holding the named input or output file."""
    return lambda wildcards, input, output: str(Path(dict(input=input, output=output)[kind][name]).parent)
