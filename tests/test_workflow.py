"""The Snakemake DAG: config validation, dry runs, and the smoke study end to end."""

import json
import re
import shutil
from collections import Counter

import mlflow
import pytest
import yaml
from conftest import REPO, finish_snakemake, run_snakemake, start_snakemake

from moebalance.study import deep_merge

pytestmark = pytest.mark.slow  # every test here starts Snakemake
PROFILE = ("--workflow-profile", "workflow/profiles/default")


def planned_counts(output: str) -> Counter:
    """Jobs per rule of a dry run's job table."""
    table = output.split("Job stats:")[1].split("total")[0]
    return Counter({m.group(1): int(m.group(2))
                    for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)})


def planned_jobs(output: str) -> set[str]:
    """Rule names of a dry run's job table."""
    return set(planned_counts(output))


def bad_config(workdir, overlay: dict):
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return run_snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", str(path),
                         check=False)


PER_RUN_RULES = ("pretrain", "sft", "generate", "solution_nll", "score", "utilization")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``snakemake -n -p`` of a preset's whole study, its output (job table and shell
    commands) read by every test of this module that plans that preset: one Snakemake
    start-up per preset."""
    plans = {}

    def plan(preset: str) -> str:
        if preset not in plans:
            plans[preset] = run_snakemake(tmp_path_factory.mktemp("dry_run"), "-n", "-p",
                                          "--configfile", preset).stdout
        return plans[preset]

    return plan


@pytest.mark.parametrize("preset", ["config/config.yaml", "config/smoke.yaml",
                                    "config/long.yaml", "config/gpu.yaml"])
def test_every_preset_plans_its_data_and_one_training_chain_per_run(dry_run, preset):
    config = yaml.safe_load(open(REPO / "config" / "config.yaml"))
    config = deep_merge(config, yaml.safe_load(open(REPO / preset)) or {})
    runs = len(config["variants"]) * len(config["seeds"])
    jobs = planned_counts(dry_run(preset))
    assert all(jobs[rule] == 1 for rule in ("corpus", "tokenizer", "tokens", "sft_data",
                                            "mlflow_store", "baselines", "compare"))
    assert {rule: jobs[rule] for rule in PER_RUN_RULES} == dict.fromkeys(PER_RUN_RULES, runs)


def test_long_study_tune_phase_plans_the_grid_on_the_tuning_seeds(workdir):
    import shlex

    from moebalance.config import SweepSettings, parse_settings

    proc = run_snakemake(workdir, "sweep_select", "-n", "-p", "--configfile", "config/long.yaml",
                         "--config", "sweep={phase: tune}")
    assert {"pretrain", "sweep_select"} <= planned_jobs(proc.stdout)
    assert "runs/aux_loss@alpha=1e-3/seed100/pretrain/metrics.parquet" in proc.stdout
    assert "runs/loss_free@gamma=3e-2/seed101/pretrain/metrics.parquet" in proc.stdout
    assert "seed0/" not in proc.stdout  # the reporting seeds are not trained for tuning
    select = next(shlex.split(line.split("Shell command:", 1)[1])
                  for line in proc.stdout.splitlines() if "moebalance sweep-select" in line)
    sweep = parse_settings(SweepSettings, select[select.index("--settings") + 1])
    assert sweep.seeds == (100, 101) and sweep.selection.max_maxvio == 0.2


def test_frontier_preset_plans_every_point_on_the_paired_seeds_as_pretrained_models(workdir):
    config = deep_merge(yaml.safe_load(open(REPO / "config" / "config.yaml")),
                        yaml.safe_load(open(REPO / "config" / "frontier.yaml")))
    sweep = config["sweep"]
    points = sum(len(grid["values"]) for grid in sweep["grids"].values()) + len(
        sweep["references"])
    runs = points * len(sweep["seeds"])
    proc = run_snakemake(workdir, "frontier", "-n", "-p", "--configfile",
                         "config/frontier.yaml")
    jobs = planned_counts(proc.stdout)
    assert jobs["frontier"] == 1
    assert points >= 10 and len(sweep["seeds"]) >= 4
    assert {rule: jobs[rule] for rule in ("pretrain", "frontier_utilization",
                                          "frontier_solution_nll")} == dict.fromkeys(
        ("pretrain", "frontier_utilization", "frontier_solution_nll"), runs)
    assert not {"sft", "generate", "score"} & set(jobs)  # base models only
    commands = [line for line in proc.stdout.splitlines() if "Shell command:" in line]
    measured = [c for c in commands if "moebalance utilization" in c]
    assert measured and all("--sft-model" not in c and "balance/test.parquet" in c
                            for c in measured)
    assert all('{"fit_tokens": 256}' in c for c in commands if "moebalance solution-nll" in c)
    report = next(c for c in commands if "moebalance frontier" in c)
    assert '--frontier \'{"primary": "heldout_bpb", "reference_grid": "aux_loss"}\'' in report
    for seed in sweep["seeds"]:  # the same seeds at every point: paired
        assert f"runs/aux_loss@alpha=3e-1/seed{seed}/pretrain/metrics.parquet" in proc.stdout
        assert f"runs/ds_v3/seed{seed}/frontier/solution_nll.parquet" in proc.stdout


def test_negative_vocab_size_fails_naming_the_key(workdir):
    proc = bad_config(workdir, {"tokenizer": {"vocab_size": -5}})
    assert proc.returncode != 0
    assert "vocab_size" in proc.stdout + proc.stderr
    assert "-5 is less than the minimum" in proc.stdout + proc.stderr


def test_a_primary_without_an_equivalence_margin_fails_naming_it(workdir):
    proc = bad_config(workdir, {"analysis": {
        "primary": [{"metric": "val_loss_pretrain", "better": "lower"}]}})
    assert proc.returncode != 0
    assert "no margin for primary 'val_loss_pretrain'" in proc.stdout + proc.stderr


def test_misspelt_key_fails_naming_it(workdir):
    proc = bad_config(workdir, {"tokenizer": {"vocab_sise": 1000}})
    assert proc.returncode != 0
    assert "vocab_sise" in proc.stdout + proc.stderr


def test_schema_fills_in_defaults(workdir):
    (workdir / "minimal.yaml").write_text("results: elsewhere\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "minimal.yaml")
    assert "elsewhere/data/tokens/meta.json" in proc.stdout


def test_stage_settings_left_out_take_the_settings_classes_defaults(dry_run):
    """A key the config leaves out is left out of the stage's --settings, which the stage
    reads with its settings class's default (config.yaml sets no utilization key, no
    corpus.extensions and no humaneval.memory_gib)."""
    import shlex

    from moebalance.config import (
        CorpusSettings,
        ScoreSettings,
        UtilizationSettings,
        parse_settings,
    )

    commands = [shlex.split(line.split("Shell command:", 1)[1])
                for line in dry_run("config/config.yaml").splitlines()
                if "Shell command:" in line]
    # `moebalance STAGE ...`, some after an environment assignment (OMP_NUM_THREADS=1)
    settings = {words[words.index("moebalance") + 1]: words[words.index("--settings") + 1]
                for words in commands if "moebalance" in words and "--settings" in words}
    assert {"corpus", "tokenizer", "sft-data", "baselines", "utilization", "compare",
            "generate", "solution-nll", "score"} <= set(settings)
    assert settings["utilization"] == "{}"
    assert parse_settings(UtilizationSettings, settings["utilization"]).jitter_fraction == 0.1
    assert "extensions" not in json.loads(settings["corpus"])
    assert parse_settings(CorpusSettings, settings["corpus"]).extensions == (".py",)
    # the shared `humaneval` section: each stage gets its own keys only
    assert json.loads(settings["score"]) == {"timeout": 3.0, "isolation": "process-pair"}
    assert parse_settings(ScoreSettings, settings["score"]).memory_gib == 4.0
    assert "timeout" not in json.loads(settings["generate"])
    assert json.loads(settings["solution-nll"]) == {"fit_tokens": 256}  # the trained length


@pytest.mark.e2e
def test_whole_dag_runs_end_to_end_on_smoke(workdir):
    run_snakemake(workdir, *PROFILE, "--configfile", "config/smoke.yaml")
    results = workdir / "results" / "smoke"
    for rel in ("data/corpus/train.parquet", "data/corpus/manifest.json",
                "data/decontamination.parquet", "data/tokenizer/tokenizer.json",
                "data/tokens/meta.json", "data/sft/train.parquet", "data/sft/val.parquet",
                "tables/comparison.md", "tables/comparison.csv", "figures/maxvio_batch.png"):
        assert (results / rel).is_file(), rel
    for variant in ("none", "aux_loss", "loss_free"):
        run = results / "runs" / variant / "seed0"
        for rel in ("pretrain/model/config.json", "pretrain/routing.parquet",
                    "sft/model/model.safetensors", "sft/metrics.parquet",
                    "humaneval/samples.jsonl", "humaneval/executions.parquet",
                    "humaneval/solution_nll.parquet", "utilization/counts.parquet"):
            assert (run / rel).is_file(), f"{variant}: {rel}"
        summary = json.loads((run / "humaneval" / "summary.json").read_text())
        assert {"pass@1", "mean_nll", "mean_bits_per_byte"} <= set(summary)
    assert not (results / "checkpoints").exists() or not any(
        (results / "checkpoints").rglob("*.pt")), "checkpoints of finished jobs are removed"

    # The same study again, into another folder, gives the same outputs: in a copy of the
    # study, loss_free's models (the variant whose bias carries state) are trained again,
    # and what reads their weights and routing is re-made from them. Generation and scoring
    # are left out of this re-run: greedy generation from the same weights is the same text
    # (test_generation), and scoring the same text gives the same verdicts (test_scoring).
    # The data stages' same-input-same-bytes checks are their unit tests too. Tracking is
    # off for it (an execution knob, so the outputs must not change; it saves each stage
    # MLflow's start-up, ~3 s of CPU). It runs while the checks below read the first study.
    again = workdir / "results" / "smoke_again"
    shutil.copytree(results, again, symlinks=True)
    rerun = start_snakemake(workdir, *(f"results/smoke_again/{rel}" for rel in AGAIN), *PROFILE,
                            "--configfile", "config/smoke.yaml", "--config",
                            "results=results/smoke_again", "--forcerun", "pretrain",
                            env={"MOEBALANCE_NO_TRACKING": "1"})

    # MLflow: one run per stage run, tagged.
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    every = mlflow.search_runs(experiment_names=["moebalance"], output_format="list")
    runs = [r for r in every if "stage" in r.data.tags]
    stages = Counter(r.data.tags["stage"] for r in runs)
    assert all(stages[s] == 1 for s in ("corpus", "sft_data", "tokenizer", "tokens", "compare"))
    assert all(stages[s] == 3 for s in ("pretrain", "sft", "generate", "score", "solution_nll"))
    assert all(r.data.tags["git_commit"] and r.data.tags["config_hash"] for r in runs)
    corpus_run = next(r for r in runs if r.data.tags["stage"] == "corpus")
    assert corpus_run.data.metrics["train_documents"] > 0
    # ... nested: one study run, one run per (variant, seed) holding the headline metrics
    parents = {r.info.run_id: r for r in every if "moebalance.level" in r.data.tags}
    levels = Counter(r.data.tags["moebalance.level"] for r in parents.values())
    assert levels == {"study": 1, "run": 3}
    assert all(r.data.tags.get("mlflow.parentRunId") in parents for r in runs)

    # A second run has nothing to do, even with other execution knobs: they are not science.
    (workdir / "knobs.yaml").write_text(yaml.safe_dump({
        "pretrain": {"threads": 2, "log_every": 7, "checkpoint_every": 3},
        "finetune": {"train": {"threads": 2, "log_every": 1, "checkpoint_every": 1}}}))
    proc = run_snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", "knobs.yaml")
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # Every stage's code hash covered every project module it loaded.
    logs = "".join(p.read_text(errors="replace") for p in (results / "logs").rglob("*.log"))
    assert "misses modules it imported" not in logs

    # Each training run records what produced it.
    provenance = json.loads((results / "runs/none/seed0/pretrain/provenance.json").read_text())
    assert provenance["threads"] == 1 and provenance["numerics_key"]

    # A new vocab size re-runs the tokenizer and what reads it, nothing upstream.
    (workdir / "vocab.yaml").write_text("tokenizer:\n  vocab_size: 600\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", "vocab.yaml")
    jobs = planned_jobs(proc.stdout)
    assert {"tokenizer", "tokens", "pretrain", "compare"} <= jobs
    assert not jobs & {"corpus", "sft_data", "mlflow_store"}

    proc = finish_snakemake(rerun)
    assert planned_jobs(proc.stdout + proc.stderr) == {
        "pretrain", "sft", "solution_nll", "utilization"}
    assert_same_outputs(results, again)


# The outputs the second run re-makes: loss_free's, from pretraining to the solution NLL
# and the utilization counts.
AGAIN = ("runs/loss_free/seed0/humaneval/solution_nll.parquet",
         "runs/loss_free/seed0/utilization/counts.parquet")


# Fields that measure time or name the sandbox's per-run uid, not the study's results, and
# the comparison rows of the training speed (a metric of the machine, not of the model).
VOLATILE = {"tokens_per_s", "seconds", "wall_seconds", "samples_per_s", "elapsed_s", "uid"}
VOLATILE_ROWS = {"tokens_per_s_pretrain": "tokens/s (pretrain)"}
# Bookkeeping that differs by design: logs, timings, the MLflow store and its address.
NOT_OUTPUTS = {"logs", "benchmarks", "mlartifacts", "mlflow.db", "mlflow.json",
               "mlflow.parents.lock", ".snakemake"}


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def assert_same_outputs(a, b):
    """The same output files under ``a`` and ``b``, each equal to its twin, volatile
    fields aside."""
    import pandas as pd

    def outputs(root):
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and not set(p.relative_to(root).parts) & NOT_OUTPUTS)

    files = outputs(a)
    assert len(files) > 50 and files == outputs(b)
    for rel in files:
        x, y = a / rel, b / rel
        if rel.suffix in (".parquet", ".csv"):
            frames = [pd.read_parquet(p) if rel.suffix == ".parquet" else pd.read_csv(p)
                      for p in (x, y)]
            frames = [f[~f["metric"].isin(VOLATILE_ROWS)] if "metric" in f else f
                      for f in frames]
            frames = [f.drop(columns=[c for c in f.columns if c in VOLATILE]) for f in frames]
            pd.testing.assert_frame_equal(*frames, obj=str(rel))
        elif rel.suffix == ".md":
            assert [line for line in x.read_text().splitlines()
                    if not any(name in line for name in VOLATILE_ROWS.values())] == \
                [line for line in y.read_text().splitlines()
                 if not any(name in line for name in VOLATILE_ROWS.values())], rel
        elif rel.suffix in (".json", ".jsonl"):
            parse = (lambda t: [json.loads(line) for line in t.splitlines()]) \
                if rel.suffix == ".jsonl" else json.loads
            assert _without_volatile(parse(x.read_text())) == \
                _without_volatile(parse(y.read_text())), rel
        else:
            assert x.read_bytes() == y.read_bytes(), rel
