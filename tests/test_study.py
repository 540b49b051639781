"""The run-folder layout: one spelling for the rules' patterns and the stages' reads."""

from pathlib import Path

from moebalance.study import RunPaths


def test_a_runs_stage_folder_is_variant_then_seed_then_stage():
    paths = RunPaths("results/runs", "loss_free", 3)
    assert paths.name == "loss_free/seed3"
    assert paths.stage("pretrain") == Path("results/runs/loss_free/seed3/pretrain")


def test_without_a_variant_and_seed_the_paths_are_snakemake_patterns():
    pattern = str(RunPaths("results/runs").stage("sft") / "metrics.parquet")
    assert pattern == "results/runs/{variant}/seed{seed}/sft/metrics.parquet"
    assert pattern.format(variant="none", seed=0) == \
        str(RunPaths("results/runs", "none", 0).stage("sft") / "metrics.parquet")
