"""Training throughput of our full step against the plain transformers model, in one run.

    python benchmarks/train_step.py [--config config/config.yaml ...] [--variant NAME]

For each experts implementation (transformers' ``experts_implementation``: eager,
grouped_mm) it times

  ours   the Trainer's optimizer step: counting routers, the variant's balancing
         (losses and bias update), telemetry, AdamW, clipping;
  plain  the same config as a stock DeepseekV3ForCausalLM (stock router, no hooks)
         with the loss from ``labels``, backward, clipping and AdamW,

on the same random tokens, and prints tokens/s, the ratio ours/plain (target >= 0.95)
and the model FLOP utilisation against a matmul peak measured in the same run.
Later --config files override earlier ones (as Snakemake's --configfile does).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import numpy as np
import torch
import yaml

from moebalance.config import ExecutionSettings, deep_merge, variant_settings
from moebalance.model import build_model
from moebalance.model.balancing import Balancing
from moebalance.model.config import ModelSettings, build_hf_config
from moebalance.training.batches import TokenWindows
from moebalance.training.trainer import Trainer, TrainSettings, build_optimizer, lr_at

VOCAB = 8192


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matmul: the denominator of MFU."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    reps = 20 if device.type == "cuda" else 5
    sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(model, m: ModelSettings, seq_len: int) -> float:
    """6 x active (non-embedding) parameters + attention scores, forward and backward."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.model.embed_tokens.weight.numel()
    per_expert = 3 * m.hidden_size * m.expert_size
    inactive = len(m.moe_layers) * (m.routed_experts - m.top_k) * per_expert
    qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
    attention = 6 * m.layers * m.heads * (qk_head + m.v_head_dim) * seq_len / 2  # causal half
    return 6 * (total - embedding - inactive) + attention


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / steps


def plain_step_fn(model, s: TrainSettings, batches: TokenWindows, device, autocast_dtype):
    """A training step of the stock model: HF loss from labels, no counting, no balancing."""
    optimizer = build_optimizer(model, s, fused=device.type == "cuda")
    state = {"step": 0}

    def step():
        for group in optimizer.param_groups:
            group["lr"] = lr_at(state["step"], s)
        for m in range(s.grad_accum):
            batch = batches.micro_batch(state["step"], m)
            x = batch["input_ids"].to(device)
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else \
                contextlib.nullcontext()
            with ctx:
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            (loss / s.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=None,
                        help="config YAML (repeatable; default config/config.yaml)")
    parser.add_argument("--variant", default="loss_free_seq_aux", help="variant to time")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved measurements per model; the fastest counts")
    parser.add_argument("--experts", nargs="+", default=["eager", "grouped_mm"],
                        help="experts implementations to compare")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = parser.parse_args()

    config: dict = {}
    for path in args.config or ["config/config.yaml"]:
        config = deep_merge(config, yaml.safe_load(open(path)) or {})
    resolved = variant_settings(config, args.variant)
    model_cfg, train_cfg, balancing_cfg = (resolved[k] for k in ("model", "train", "balancing"))
    train_cfg.update(eval_every=0, compile=args.compile)
    s = TrainSettings.from_dict(train_cfg)
    quiet = ExecutionSettings(threads=config.get("pretrain", {}).get("threads", 0),
                              checkpoint_every=0, progress=False)
    if quiet.threads:
        torch.set_num_threads(quiet.threads)
    tokens = np.random.default_rng(0).integers(2, VOCAB, size=2_000_000).astype(np.uint16)
    batches = TokenWindows(tokens, s.seq_len, s.micro_batch_size, seed=0)

    probe = Trainer(build_model(ModelSettings.from_dict(model_cfg), VOCAB, 0, 1, 0),
                    Balancing(), s, batches, execution=quiet)
    device, autocast_dtype = probe.device, probe.autocast_dtype
    del probe
    peak = matmul_peak(device, autocast_dtype or torch.float32)
    tokens_per_step = s.micro_batch_size * s.seq_len * s.grad_accum
    print(f"device {device}, {'bf16 autocast' if autocast_dtype else 'fp32'}, "
          f"threads {torch.get_num_threads()}, variant {args.variant} "
          f"({balancing_cfg.get('strategies', [])}), {tokens_per_step} tokens/step, "
          f"matmul peak {peak / 1e12:.3f} TFLOP/s")
    for impl in args.experts:
        m = ModelSettings.from_dict({**model_cfg, "experts_implementation": impl})
        ours = Trainer(build_model(m, VOCAB, 0, 1, 0), Balancing.from_dict(
            copy.deepcopy(balancing_cfg)), s, batches, execution=quiet)
        from transformers import DeepseekV3ForCausalLM

        torch.manual_seed(0)
        plain = DeepseekV3ForCausalLM(build_hf_config(m, VOCAB, 0, 1)).to(device).train()
        plain_forward = torch.compile(plain) if args.compile else plain
        plain_step = plain_step_fn(plain_forward, s, batches, device, autocast_dtype)
        # interleave the two so that drifting machine load hits both alike
        t_ours, t_plain = [], []
        for _ in range(args.repeats):
            t_ours.append(time_steps(ours.train_step, args.steps, args.warmup, device))
            t_plain.append(time_steps(plain_step, args.steps, args.warmup, device))
        ours_tps, plain_tps = tokens_per_step / min(t_ours), tokens_per_step / min(t_plain)
        fpt = flops_per_token(plain, m, s.seq_len)
        print(f"experts={impl:10s} ours {ours_tps:9.0f} tok/s ({1e3 * min(t_ours):.0f} ms/step)"
              f"  plain {plain_tps:9.0f} tok/s ({1e3 * min(t_plain):.0f} ms/step)"
              f"  ratio {ours_tps / plain_tps:.3f}  MFU ours {ours_tps * fpt / peak:.2%}"
              f" plain {plain_tps * fpt / peak:.2%}", flush=True)
        del ours, plain, plain_forward


if __name__ == "__main__":
    main()
