"""The pretrain stage end to end on fabricated token shards (a few seconds)."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from moe_helpers import TINY, assert_same_weights, kill_at_first_checkpoint, write_tokens_dir

from moebalance.cli import main
from moebalance.tracking import tracking_uri

GAMMA = 0.01
SETTINGS = {
    "model": {**TINY, "bias_init_skew": 0.05},
    "balancing": {"strategies": ["loss_free", "seq_aux_loss"], "loss_free": {"gamma": GAMMA}},
    "train": {"steps": 6, "micro_batch_size": 4, "grad_accum": 2, "seq_len": 16,
              "warmup_steps": 2, "eval_every": 3, "eval_batches": 2, "snapshot_every": 2,
              "device": "cpu"},
}
EXECUTION = {"checkpoint_every": 2, "log_every": 2}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, mlflow_store):
    root = tmp_path_factory.mktemp("pretrain")
    tokens = write_tokens_dir(root / "tokens")
    out = root / "runs" / "loss_free" / "seed0" / "pretrain"
    argv = ["pretrain", "--tokens-dir", str(tokens), "--out-dir", str(out),
            "--checkpoint-dir", str(root / "checkpoints"), "--settings", json.dumps(SETTINGS),
            "--execution", json.dumps(EXECUTION), "--threads", "1",
            "--mlflow-store", str(mlflow_store), "--experiment", "test_pretrain",
            "--variant", "loss_free_test", "--seed", "0",
            "--no-progress"]
    assert main(argv) == 0
    return root, out


def test_pretrain_writes_model_metrics_and_routing(pretrained):
    root, out = pretrained
    assert (out / "model" / "config.json").is_file()
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert metrics["step"].tolist() == list(range(6))
    for column in ("loss", "lm_loss", "aux_loss", "seq_aux_loss", "lr", "grad_norm",
                   "tokens_per_s", "maxvio_batch", "maxvio_layer1", "val_loss"):
        assert column in metrics
    assert metrics["val_loss"].notna().tolist() == [False, False, True, False, False, True]
    assert (metrics["seq_aux_loss"] > 0).all() and (metrics["aux_loss"] == 0).all()
    assert not (root / "checkpoints").exists()  # removed once the outputs are complete


def test_snapshots_of_intermediate_steps_are_model_folders(pretrained):
    from transformers import AutoModelForCausalLM

    _, out = pretrained
    snapshots = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snapshots == ["step_000002", "step_000004"]  # the final step is model/ itself
    AutoModelForCausalLM.from_pretrained(out / "snapshots" / "step_000004")


def test_routing_parquet_bias_follows_the_sign_rule(pretrained):
    _, out = pretrained
    routing = pd.read_parquet(out / "routing.parquet").sort_values(["layer", "expert", "step"])
    assert len(routing) == 6 * 1 * 8  # steps x MoE layers x experts
    for _, g in routing.groupby("layer"):
        tokens = g.pivot(index="step", columns="expert", values="tokens").to_numpy(float)
        bias = g.pivot(index="step", columns="expert", values="bias").to_numpy()
        expected = GAMMA * np.sign(tokens.mean(1, keepdims=True) - tokens)
        np.testing.assert_allclose(bias[1:] - bias[:-1], expected[:-1], atol=1e-6)
        assert (tokens.sum(1) == 2 * 4 * 16 * 2).all()  # micro-batches x B x S x K


def test_bias_override_rate_is_recorded_per_layer_and_as_a_mean(pretrained):
    _, out = pretrained
    routing = pd.read_parquet(out / "routing.parquet")
    per_layer = routing.groupby(["step", "layer"]).override_rate
    assert (per_layer.nunique() == 1).all()  # one value per (step, layer), on every expert row
    rate = per_layer.first().groupby("step").mean()
    # bias_init_skew = 0.05 starts with a bias ramp that already overrides some choices
    assert ((rate > 0) & (rate <= 1)).all()
    metrics = pd.read_parquet(out / "metrics.parquet").set_index("step")
    np.testing.assert_allclose(metrics.bias_override_rate, rate, rtol=1e-6)


def test_saved_model_loads_with_stock_transformers_and_generates(pretrained):
    from transformers import AutoModelForCausalLM

    _, out = pretrained
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    routing = pd.read_parquet(out / "routing.parquet")
    last = routing[routing["step"] == routing["step"].max()].sort_values("expert")
    bias = model.model.layers[1].mlp.gate.e_score_correction_bias
    # the saved bias is the last routed bias plus the update of the last step
    tokens = last["tokens"].to_numpy(float)
    expected = last["bias"].to_numpy() + GAMMA * np.sign(tokens.mean() - tokens)
    np.testing.assert_allclose(bias.numpy(), expected, atol=1e-6)
    generated = model.generate(torch.tensor([[0, 5, 7]]), max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 8)


def test_load_model_reattaches_the_counting_router(pretrained):
    from moebalance.model import load_model
    from moebalance.model.router import CountingRouter

    _, out = pretrained
    model = load_model(out / "model")
    gate = model.model.layers[1].mlp.gate
    assert isinstance(gate, CountingRouter)
    assert gate.e_score_correction_bias.abs().sum() > 0


def test_pretrain_logs_metrics_to_mlflow(pretrained, mlflow_store):
    client = mlflow.MlflowClient(tracking_uri(mlflow_store))
    experiment = client.get_experiment_by_name("test_pretrain")
    (run,) = client.search_runs(experiment.experiment_id,
                                "tags.stage = 'pretrain' and tags.variant = 'loss_free_test'")
    history = client.get_metric_history(run.info.run_id, "maxvio_batch")
    assert sorted(m.step for m in history) == list(range(6))


def test_bad_settings_are_a_usage_error_naming_the_key(tmp_path, capsys):
    bad = {**SETTINGS, "balancing": {"strategies": ["bogus"]}}
    argv = ["pretrain", "--tokens-dir", str(write_tokens_dir(tmp_path / "t")), "--out-dir",
            str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c"),
            "--settings", json.dumps(bad), "--no-tracking"]
    assert main(argv) == 2
    assert "bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_pretrain_process_resumes_to_the_same_final_weights(tmp_path):
    tokens = write_tokens_dir(tmp_path / "tokens")
    settings = {**SETTINGS, "train": {**SETTINGS["train"], "steps": 120, "eval_every": 100}}

    def argv(name):
        return ["pretrain", "--tokens-dir", str(tokens), "--out-dir", str(tmp_path / name),
                "--checkpoint-dir", str(tmp_path / f"ckpt-{name}"),
                "--settings", json.dumps(settings), "--execution", '{"checkpoint_every": 10}',
                "--threads", "1", "--no-tracking", "--no-progress"]

    kill_at_first_checkpoint(argv("killed"), tmp_path / "ckpt-killed")
    assert not (tmp_path / "killed" / "metrics.parquet").exists()
    assert main(argv("killed")) == 0  # resumes from the checkpoint left behind
    assert main(argv("whole")) == 0
    assert_same_weights(tmp_path / "killed" / "model", tmp_path / "whole" / "model")
    steps = pd.read_parquet(tmp_path / "killed" / "metrics.parquet")["step"]
    assert steps.tolist() == list(range(120))


def test_heldout_maxvio_is_recomputed_from_the_saved_model_with_stock_transformers(pretrained):
    """val_subset_maxvio of the last validation = MaxVio_global (Wang et al. 2024, Eq. 4) of the
    experts that stock DeepseekV3 routers choose for the same validation windows."""
    from transformers import AutoModelForCausalLM

    from moebalance.data.shards import open_split
    from moebalance.data.windows import VAL_SEED
    from moebalance.training.batches import TokenWindows

    root, out = pretrained
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert metrics["val_subset_maxvio"].notna().tolist() == metrics["val_loss"].notna().tolist()
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    gates = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    counts = np.zeros((len(gates), SETTINGS["model"]["routed_experts"]))
    for row, gate in enumerate(gates):
        gate.register_forward_hook(lambda _m, _i, output, row=row: np.add.at(
            counts[row], output[-1].reshape(-1).numpy(), 1))
    windows = TokenWindows(open_split(root / "tokens", "val"), 16, 4, VAL_SEED)
    with torch.no_grad():
        for i in range(SETTINGS["train"]["eval_batches"]):
            model(input_ids=windows.micro_batch(0, i)["input_ids"])
    mean = counts.mean(axis=1, keepdims=True)
    expected = ((counts.max(axis=1, keepdims=True) - mean) / mean).mean()
    assert metrics["val_subset_maxvio"].iloc[-1] == pytest.approx(expected, rel=1e-6)
