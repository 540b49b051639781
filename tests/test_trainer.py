"""The training loop: bias updates, accumulation, DDP, checkpoints and resume."""

import functools
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from moe_helpers import VOCAB, tiny_model, tiny_train, tiny_trainer

from moebalance.config import ExecutionSettings
from moebalance.model.router import routers_of
from moebalance.training.batches import IGNORE_INDEX
from moebalance.training.trainer import build_optimizer, lr_at

LOSS_FREE = {"strategies": ["loss_free"], "loss_free": {"gamma": 0.01}}
SMEBU = {"strategies": ["smebu"], "smebu": {"gamma": 0.01, "beta": 0.9}}
QUANTILE = {"strategies": ["quantile"]}


class FixedBatch:
    """One fixed batch of B sequences, served whole or as equal slices (micro-batch ``index``)."""

    def __init__(self, input_ids, parts: int) -> None:
        self.input_ids, self.parts = input_ids, parts

    def micro_batch(self, step, index):
        rows = self.input_ids.chunk(self.parts)[index]
        return {"input_ids": rows[:, :-1], "labels": rows[:, 1:]}


def biases(model) -> torch.Tensor:
    return torch.stack([r.e_score_correction_bias for r in routers_of(model)]).clone()


def trainer(model=None, balancing=LOSS_FREE, batches=None, **train):
    return tiny_trainer(balancing, model=model, batches=batches, train=train)


def test_lr_warms_up_then_decays_to_min_ratio():
    s = tiny_train(steps=10, lr=1.0, warmup_steps=2, min_lr_ratio=0.1)
    assert [lr_at(0, s), lr_at(1, s)] == [0.5, 1.0]
    assert lr_at(10, s) == pytest.approx(0.1)


def test_router_bias_is_a_buffer_outside_the_optimizer():
    t = trainer(balancing={"strategies": []})
    before = biases(t.model)
    t.train()
    optimized = {id(p) for group in t.optimizer.param_groups for p in group["params"]}
    assert all(id(r.e_score_correction_bias) not in optimized for r in t.routers)
    assert torch.equal(biases(t.model), before)


@pytest.mark.parametrize("router_decay", [True, False])
def test_router_weight_decay_follows_the_setting(router_decay):
    model = tiny_model()
    optimizer = build_optimizer(model, tiny_train(router_weight_decay=router_decay), fused=False)
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    gate_weights = [r.weight for r in routers_of(model)]
    assert all((id(w) in decayed) is router_decay for w in gate_weights)
    expert = model.model.layers[1].mlp.experts.gate_up_proj
    assert id(expert) in decayed


def test_loss_mask_excludes_masked_targets():
    x = torch.randint(0, VOCAB, (2, 9))
    masked = {"input_ids": x[:, :-1], "labels": x[:, 1:].clone()}
    masked["labels"][:, :4] = IGNORE_INDEX
    t = trainer()
    ce_sum, n = t._ce_sum(masked)
    logits = t.model(input_ids=x[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].flatten(0, 1),
                                                 x[:, 5:].flatten(), reduction="sum")
    assert n.item() == 8
    assert ce_sum.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("balancing", [LOSS_FREE, QUANTILE], ids=["loss_free", "quantile"])
def test_two_half_micro_batches_count_and_update_like_one_batch(balancing):
    x = torch.randint(0, VOCAB, (4, 17))
    whole = trainer(batches=FixedBatch(x, 1), steps=1, balancing=balancing)
    halves = trainer(batches=FixedBatch(x, 2), steps=1, micro_batch_size=2, grad_accum=2,
                     balancing=balancing)
    rows = [whole.train_step(), halves.train_step()]
    tokens = [np.stack([r[1] for r in t.telemetry.routing]) for t in (whole, halves)]
    assert np.array_equal(tokens[0], tokens[1])
    assert torch.equal(biases(whole.model), biases(halves.model))
    assert rows[0]["lm_loss"] == pytest.approx(rows[1]["lm_loss"], rel=1e-5)


def test_bias_is_fp32_and_updated_under_bf16_autocast():
    t = trainer(steps=2, precision="bf16")
    t.train()
    assert all(r.e_score_correction_bias.dtype == torch.float32 for r in t.routers)
    assert biases(t.model).abs().sum() > 0


def _ddp_worker(rank, world, port, runs, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # The ranks compile with AOTAutograd but without Inductor's code generation: on a CPU,
    # Inductor writes and builds C++ (a GPU gets Triton kernels instead, benchmarks/
    # gpu_check.sh), which cost each rank ~40 s of CPU with an empty compile cache. What
    # this run is for (Dynamo tracing DDP, autocast and accumulation into graphs that give
    # the ranks one bias) does not need it (test_lm_loss says what Inductor builds here).
    torch.compile = functools.partial(torch.compile, backend="aot_eager")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = []
        for x, train in runs:
            t = trainer(batches=FixedBatch(x, world * train.get("grad_accum", 1)), **train)
            t.train()
            out.append((biases(t.model), [row["lm_loss"] for row in t.telemetry.metrics]))
        result[rank] = out
    finally:
        dist.destroy_process_group()


def train_on_two_ranks(*runs: tuple[torch.Tensor, dict]) -> list[list[tuple[torch.Tensor,
                                                                             list[float]]]]:
    """Per run (input rows, trainer options), the (biases, lm_loss per step) of each of two
    gloo DDP ranks sharing the rows; the runs share the two processes (one start-up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        result = manager.dict()
        procs = [ctx.Process(target=_ddp_worker, args=(rank, 2, port, runs, result))
                 for rank in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=900)  # compiling ranks are slow on a loaded machine
        assert all(p.exitcode == 0 for p in procs)
        return [list(pair) for pair in zip(result[0], result[1], strict=True)]


# The runs of both DDP tests: one start-up of two ranks (each imports torch and transformers
# and, for the GPU preset's path, compiles) serves them all.
BIAS_RUNS = {name: dict(steps=2, micro_batch_size=2, balancing=balancing)
             for name, balancing in (("loss_free", LOSS_FREE), ("quantile", QUANTILE))}
# config/gpu.yaml's code path, but for the device: bf16 autocast, torch.compile (traced, see
# _ddp_worker), gradient accumulation and two DDP ranks (gloo), so that a slip in those
# branches fails here first
GPU_PRESET_RUN = dict(steps=2, micro_batch_size=2, grad_accum=2, precision="bf16", compile=True,
                      loss_chunk_tokens=16)


@pytest.fixture(scope="module")
def two_ranks():
    """name -> (input rows, trainer options, [(biases, lm_loss per step) of each rank])."""
    runs = {name: (torch.randint(0, VOCAB, (4, 17)), train) for name, train in BIAS_RUNS.items()}
    runs["gpu_preset"] = (torch.randint(0, VOCAB, (8, 17)), GPU_PRESET_RUN)
    ranks = train_on_two_ranks(*runs.values())
    return {name: (*run, pair) for (name, run), pair in zip(runs.items(), ranks, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("name", BIAS_RUNS)
def test_ddp_ranks_share_the_bias_of_single_process_training_on_the_whole_batch(two_ranks,
                                                                                 name):
    # the counts (and QB's margin histogram) are sums: all-reduced, they are the whole batch's
    x, run, ranks = two_ranks[name]
    per_rank = [bias for bias, _ in ranks]
    single = trainer(batches=FixedBatch(x, 2), grad_accum=2, **run)
    single.train()
    assert torch.equal(per_rank[0], per_rank[1])
    assert torch.equal(per_rank[0], biases(single.model))
    assert per_rank[0].abs().sum() > 0


@pytest.mark.slow
def test_gpu_preset_path_bf16_compiled_accumulated_ddp_runs_on_cpu(two_ranks):
    _, _, [(bias0, loss0), (bias1, loss1)] = two_ranks["gpu_preset"]
    assert torch.equal(bias0, bias1) and bias0.abs().sum() > 0
    assert loss0 == loss1 and np.isfinite(loss0).all()


def test_checkpoint_round_trips_bias_and_optimizer_state(tmp_path):
    t = tiny_trainer(LOSS_FREE, model=tiny_model(bias_init_skew=0.05), train={"steps": 4},
                     checkpoint_dir=tmp_path)
    t.train(stop_after=2)
    t.save_checkpoint()
    restored = tiny_trainer(LOSS_FREE, model=tiny_model(seed=1), train={"steps": 4},
                            checkpoint_dir=tmp_path)
    assert restored.step == 2
    assert torch.equal(biases(restored.model), biases(t.model))
    assert biases(t.model).abs().sum() > 0
    saved, loaded = t.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key]["exp_avg_sq"], loaded[key]["exp_avg_sq"])


@pytest.mark.parametrize("balancing", [LOSS_FREE, SMEBU], ids=["loss_free", "smebu"])
def test_killed_run_resumes_to_the_same_final_weights(tmp_path, balancing):
    # SMEBU carries a momentum between steps: resuming must restore it too
    def run(checkpoint_dir, stop_after=None):
        t = tiny_trainer(balancing, train={"steps": 6}, checkpoint_dir=checkpoint_dir,
                         execution=ExecutionSettings(checkpoint_every=2, progress=False))
        t.train(stop_after=stop_after)
        return t

    uninterrupted = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=3)  # "killed" after step 3: the last checkpoint is step 2
    resumed = run(tmp_path / "b")
    final = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, final[name]), name
    assert [r["step"] for r in resumed.telemetry.metrics] == list(range(6))


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    def make(fingerprint):
        return tiny_trainer(LOSS_FREE, train={"steps": 4}, checkpoint_dir=tmp_path,
                            fingerprint=fingerprint)

    first = make("a")
    first.train(stop_after=2)
    first.save_checkpoint()
    assert make("a").step == 2
    assert make("b").step == 0


@pytest.mark.parametrize("strategy", ["loss_free", "quantile"])
def test_bias_strategies_lower_maxvio_from_an_imbalanced_router_init(strategy):
    def final_maxvio(strategies):
        t = trainer(model=tiny_model(bias_init_skew=0.3), steps=40,
                    balancing={"strategies": strategies, "loss_free": {"gamma": 0.01}})
        t.train()
        return np.mean([row["maxvio_batch"] for row in t.telemetry.metrics[-10:]])

    none, balanced = final_maxvio([]), final_maxvio([strategy])
    assert none > 1.5  # the skewed bias keeps sending most tokens to the same experts
    assert balanced < 0.6 * none


def test_quantile_balancing_balances_a_fixed_router_within_two_steps():
    # lr 1e-30 (a learning rate must be > 0): the router's scores stay put to float precision
    # and every step routes the same batch, each with the
    # bias set from the margins of the step before: one alternating step per optimizer
    # step, no step size, so the skewed start is undone at once (a sign rule at gamma 0.01
    # needs ~30 steps to cancel a 0.3 skew)
    x = torch.randint(0, VOCAB, (8, 33))
    t = trainer(model=tiny_model(bias_init_skew=0.3), balancing=QUANTILE, lr=1e-30,
                batches=FixedBatch(x, 1), steps=3, micro_batch_size=8, seq_len=32)
    maxvio = [t.train_step()["maxvio_batch"] for _ in range(3)]
    assert maxvio[0] > 2.5 and maxvio[2] < 0.25


def test_compile_refuses_strategies_that_cannot_be_compiled_together():
    with pytest.raises(ValueError, match="cannot combine aux_loss with global_aux_loss"):
        trainer(balancing={"strategies": ["aux_loss", "global_aux_loss"]}, compile=True)


def test_aux_losses_train_under_activation_checkpointing():
    t = trainer(steps=2, activation_checkpointing=True,
                balancing={"strategies": ["aux_loss", "seq_aux_loss", "z_loss"]})
    rows = [t.train_step() for _ in range(2)]
    assert all(row["aux_loss"] > 0 and row["z_loss"] > 0 for row in rows)
    assert all(np.isfinite(row["grad_norm"]) for row in rows)
