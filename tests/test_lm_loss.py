"""The training forward: chunked LM-head cross-entropy and the compiled step."""

import functools
import math

import pytest
import torch
from moe_helpers import tiny_trainer

from moebalance.training.batches import IGNORE_INDEX
from moebalance.training.lm_loss import linear_cross_entropy_sum

# global_aux_loss stays out: on one micro-batch it equals aux_loss, and compiled, the two
# identical terms get twice the gradient (the Trainer refuses that combination under compile)
ALL_STRATEGIES = {"strategies": ["loss_free", "aux_loss", "seq_aux_loss", "z_loss"]}


def test_chunked_cross_entropy_matches_a_hand_computed_token_and_skips_masked_ones():
    # logits z = h W^T = [1, 0, 0], target 0: CE = log(e + 2) - 1
    h = torch.tensor([[1.0, 0.0], [0.5, 2.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, IGNORE_INDEX])
    ce = linear_cross_entropy_sum(h, w, labels, chunk_tokens=1)
    ce.backward()
    e = math.e
    assert ce.item() == pytest.approx(math.log(e + 2) - 1, rel=1e-6)
    # dCE/dz = softmax(z) - onehot = [e/(e+2) - 1, 1/(e+2), 1/(e+2)]
    g = [e / (e + 2) - 1, 1 / (e + 2), 1 / (e + 2)]
    assert h.grad.flatten().tolist() == pytest.approx([g[0], g[1], 0.0, 0.0], rel=1e-6)
    assert w.grad.flatten().tolist() == pytest.approx([g[0], 0.0, g[1], 0.0, g[2], 0.0],
                                                      rel=1e-6)


@pytest.mark.parametrize("chunk", [3, 7, 64])
def test_chunked_cross_entropy_and_gradients_equal_the_whole_logits_way(chunk):
    torch.manual_seed(0)
    h0, w0 = torch.randn(20, 8), torch.randn(50, 8)
    labels = torch.randint(0, 50, (20,))
    labels[::4] = IGNORE_INDEX
    results = []
    for c in (0, chunk):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        (2.0 * linear_cross_entropy_sum(h, w, labels, chunk_tokens=c)).backward()
        results.append((h.grad, w.grad))
    for whole, chunked in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def _trainer(**train):
    return tiny_trainer(ALL_STRATEGIES, train={"steps": 2, **train})


@pytest.mark.slow
def test_training_forward_compiles_to_one_graph_with_every_strategy():
    t = _trainer(loss_chunk_tokens=16)
    explained = torch._dynamo.explain(t.training_forward)(**t.train_batches.micro_batch(0, 0))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_compile_refuses_aux_loss_beside_global_aux_loss():
    with pytest.raises(ValueError, match="global_aux_loss"):
        tiny_trainer({"strategies": ["aux_loss", "global_aux_loss"]}, train={"compile": True})


# The compiled step is traced by Dynamo and differentiated by AOTAutograd (backend
# aot_eager), as Inductor's would be, but not built into kernels: on a CPU Inductor writes and
# compiles C++ (52 kernels here, ~55 s of CPU with an empty compile cache, as on a fresh CI
# machine), which no CPU preset uses; the GPU preset's Triton kernels are built and timed by
# benchmarks/gpu_check.sh. Inductor does build the chunked loss below, the one hand-written
# autograd function in the step.
@pytest.mark.slow
def test_compiled_first_step_matches_the_eager_step(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    eager, compiled = _trainer(), _trainer(compile=True, loss_chunk_tokens=16)
    rows = [eager.train_step(), compiled.train_step()]
    for key in ("lm_loss", "grad_norm", "aux_loss", "seq_aux_loss", "z_loss"):
        assert rows[1][key] == pytest.approx(rows[0][key], rel=1e-5), key
    routing = [t.telemetry.routing[0] for t in (eager, compiled)]
    assert (routing[0][1] == routing[1][1]).all()  # the same counts reach the bias update


@pytest.mark.slow
def test_inductor_builds_the_chunked_cross_entropy_and_its_gradients(monkeypatch):
    # in this process, not in a pool of compile workers that would each import torch first
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    torch._dynamo.reset()
    torch.manual_seed(0)
    h0, w0 = torch.randn(20, 8), torch.randn(50, 8)
    labels = torch.randint(0, 50, (20,))
    labels[::4] = IGNORE_INDEX
    compiled = torch.compile(linear_cross_entropy_sum, fullgraph=True)
    results = []
    for fn in (linear_cross_entropy_sum, compiled):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = fn(h, w, labels, chunk_tokens=7)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    for eager, built in zip(*results, strict=True):
        torch.testing.assert_close(built, eager, rtol=1e-5, atol=1e-6)
