"""The Snakemake DAG: config validation, dry runs, and the smoke study end to end."""

import json
import re
from collections import Counter

import mlflow
import pytest
import yaml
from conftest import run_snakemake

PROFILE = ("--workflow-profile", "workflow/profiles/default")


def planned_jobs(output: str) -> set[str]:
    """Rule names of a dry run's job table."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"job"}


def bad_config(workdir, overlay: dict):
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return run_snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", str(path),
                         check=False)


@pytest.mark.parametrize("config", ["config/config.yaml", "config/smoke.yaml",
                                    "config/long.yaml"])
def test_dag_dry_runs(workdir, config):
    proc = run_snakemake(workdir, "-n", "--configfile", config)
    assert {"corpus", "tokenizer", "tokens", "sft_data", "mlflow_store",
            "baselines"} <= planned_jobs(proc.stdout)


def test_long_study_tune_phase_plans_the_grid_on_the_tuning_seeds(workdir):
    proc = run_snakemake(workdir, "sweep_select", "-n", "--configfile", "config/long.yaml",
                         "--config", "sweep={phase: tune}")
    assert {"pretrain", "sweep_select"} <= planned_jobs(proc.stdout)
    assert "runs/aux_loss@alpha=1e-3/seed100/pretrain/metrics.parquet" in proc.stdout
    assert "runs/loss_free@gamma=3e-2/seed101/pretrain/metrics.parquet" in proc.stdout
    assert "seed0/" not in proc.stdout  # the reporting seeds are not trained for tuning


def test_negative_vocab_size_fails_naming_the_key(workdir):
    proc = bad_config(workdir, {"tokenizer": {"vocab_size": -5}})
    assert proc.returncode != 0
    assert "vocab_size" in proc.stdout + proc.stderr
    assert "-5 is less than the minimum" in proc.stdout + proc.stderr


def test_misspelt_key_fails_naming_it(workdir):
    proc = bad_config(workdir, {"tokenizer": {"vocab_sise": 1000}})
    assert proc.returncode != 0
    assert "vocab_sise" in proc.stdout + proc.stderr


def test_schema_fills_in_defaults(workdir):
    (workdir / "minimal.yaml").write_text("results: elsewhere\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "minimal.yaml")
    assert "elsewhere/data/tokens/meta.json" in proc.stdout


@pytest.mark.e2e
def test_whole_dag_runs_end_to_end_on_smoke(workdir):
    run_snakemake(workdir, *PROFILE, "--configfile", "config/smoke.yaml")
    results = workdir / "results" / "smoke"
    for rel in ("data/corpus/train.parquet", "data/corpus/manifest.json",
                "data/decontamination.parquet", "data/tokenizer/tokenizer.json",
                "data/tokens/meta.json", "data/sft/train.parquet", "data/sft/val.parquet",
                "tables/comparison.md", "tables/comparison.csv", "figures/maxvio_batch.png"):
        assert (results / rel).is_file(), rel
    for variant in ("none", "aux_loss", "loss_free", "loss_free_seq_aux"):
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

    # MLflow: one run per stage run, tagged.
    mlflow.set_tracking_uri(f"sqlite:///{results / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["moebalance"], output_format="list")
    stages = Counter(r.data.tags["stage"] for r in runs)
    assert all(stages[s] == 1 for s in ("corpus", "sft_data", "tokenizer", "tokens", "compare"))
    assert all(stages[s] == 4 for s in ("pretrain", "sft", "generate", "score", "solution_nll"))
    assert all(r.data.tags["git_commit"] and r.data.tags["config_hash"] for r in runs)
    corpus_run = next(r for r in runs if r.data.tags["stage"] == "corpus")
    assert corpus_run.data.metrics["train_documents"] > 0

    # A second run has nothing to do.
    proc = run_snakemake(workdir, *PROFILE, "--configfile", "config/smoke.yaml", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # A new vocab size re-runs the tokenizer and what reads it, nothing upstream.
    (workdir / "vocab.yaml").write_text("tokenizer:\n  vocab_size: 600\n")
    proc = run_snakemake(workdir, "-n", "--configfile", "config/smoke.yaml", "vocab.yaml")
    jobs = planned_jobs(proc.stdout)
    assert {"tokenizer", "tokens", "pretrain", "compare"} <= jobs
    assert not jobs & {"corpus", "sft_data", "mlflow_store"}
