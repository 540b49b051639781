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
import dataclasses
import math
import time

import numpy as np
import torch
import yaml

from moebalance.config import (
    EXECUTION_KEYS,
    ExecutionSettings,
    ModelSettings,
    TrainSettings,
)
from moebalance.model import build_hf_config, build_model
from moebalance.model.balancing import Balancing
from moebalance.study import deep_merge, variant_settings
from moebalance.training.batches import TokenWindows
from moebalance.training.trainer import Trainer, build_optimizer, lr_at

VOCAB = 8192


def _matmul_rate(shapes: list[tuple[int, int, int]], device, dtype, reps: int) -> float:
    """FLOP/s of running each (m, k, n) matmul ``reps`` times: total FLOPs / total time."""
    pairs = [(torch.randn(m, k, device=device, dtype=dtype),
              torch.randn(k, n, device=device, dtype=dtype)) for m, k, n in shapes]
    for a, b in pairs:
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        for a, b in pairs:
            a @ b
    sync(device)
    return sum(2 * m * k * n for m, k, n in shapes) * reps / (time.perf_counter() - started)


def matmul_peaks(device: torch.device, dtype: torch.dtype, m: ModelSettings, tokens: int,
                 vocab: int) -> dict[str, float]:
    """Measured matmul FLOP/s, the denominators of MFU: a large square, and the model's own
    shapes for one micro-batch of ``tokens`` (LM head, dense MLP, one routed expert's share)."""
    n = 8192 if device.type == "cuda" else 1024
    model_shapes = [(tokens, m.hidden_size, vocab), (tokens, m.hidden_size, m.dense_size),
                    (max(1, tokens * m.top_k // m.routed_experts), m.hidden_size,
                     2 * m.expert_size)]
    reps = 20 if device.type == "cuda" else 5
    return {"square": _matmul_rate([(n, n, n)], device, dtype, reps),
            "model": _matmul_rate(model_shapes, device, dtype, reps)}


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


def time_steps(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step over ``steps`` timed steps, seconds of the first warmup step)."""
    first = math.nan
    for i in range(warmup):
        started = time.perf_counter()
        step()
        sync(device)
        if i == 0:
            first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / steps, first


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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", default=None,
                        help="config YAML (repeatable; default config/config.yaml)")
    parser.add_argument("--variant", default="loss_free",
                        help="variant of the config to time (its balancing strategies)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first (the first one compiles)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved measurements per model; the fastest counts")
    parser.add_argument("--experts", nargs="+", default=["grouped_mm"],
                        help="experts implementations to compare (eager, grouped_mm, batched_mm)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled"], help="eager and/or torch.compile'd steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pretrain setting, e.g. --set loss_chunk_tokens=512 "
                             "(YAML value; repeatable)")
    parser.add_argument("--out", default=None, help="also write the table to this .parquet")
    args = parser.parse_args(argv)

    config: dict = {}
    for path in args.config or ["config/config.yaml"]:
        config = deep_merge(config, yaml.safe_load(open(path)) or {})
    resolved = variant_settings(config, args.variant)
    model_cfg, train_cfg, balancing_cfg = (resolved[k] for k in ("model", "train", "balancing"))
    train_cfg.update(eval_every=0)
    knobs = {"threads": config.get("pretrain", {}).get("threads", 0)}
    for item in args.set:
        key, _, value = item.partition("=")
        (knobs if key in EXECUTION_KEYS else train_cfg)[key] = yaml.safe_load(value)
    s = TrainSettings.from_dict(train_cfg)
    quiet = ExecutionSettings(threads=knobs["threads"], checkpoint_every=0, progress=False)
    if quiet.threads:
        torch.set_num_threads(quiet.threads)
    vocab = int(config.get("tokenizer", {}).get("vocab_size", VOCAB))
    tokens = np.random.default_rng(0).integers(2, vocab, size=2_000_000).astype(np.uint16)
    batches = TokenWindows(tokens, s.seq_len, s.micro_batch_size, seed=0)

    probe = Trainer(build_model(ModelSettings.from_dict(model_cfg), vocab, 0, 1, 0),
                    Balancing(), s, batches, execution=quiet)
    device, autocast_dtype = probe.device, probe.autocast_dtype
    del probe
    dtype = autocast_dtype or torch.float32
    tokens_per_step = s.micro_batch_size * s.seq_len * s.grad_accum
    peaks = matmul_peaks(device, dtype, ModelSettings.from_dict(model_cfg),
                         s.micro_batch_size * s.seq_len, vocab)
    print(f"device {device}, {'bf16 autocast' if autocast_dtype else 'fp32'}, "
          f"threads {torch.get_num_threads()}, variant {args.variant} "
          f"({balancing_cfg.get('strategies', [])}), {tokens_per_step} tokens/step, "
          f"loss_chunk_tokens {s.loss_chunk_tokens}, matmul peak {str(dtype)[6:]}: "
          f"square {peaks['square'] / 1e9:.1f} GFLOP/s, "
          f"model shapes {peaks['model'] / 1e9:.1f} GFLOP/s", flush=True)
    from transformers import DeepseekV3ForCausalLM

    rows = []
    for impl in args.experts:
        m = ModelSettings.from_dict({**model_cfg, "experts_implementation": impl})
        steps = {}
        for mode in args.modes:
            compiled = mode == "compiled"
            ours = Trainer(build_model(m, vocab, 0, 1, 0), Balancing.from_dict(
                copy.deepcopy(balancing_cfg)), dataclasses.replace(s, compile=compiled),
                batches, execution=quiet)
            torch.manual_seed(0)
            plain = DeepseekV3ForCausalLM(build_hf_config(m, vocab, 0, 1)).to(device).train()
            steps["ours", mode] = ours.train_step
            steps["plain", mode] = plain_step_fn(torch.compile(plain) if compiled else plain,
                                                 s, batches, device, autocast_dtype)
        fpt = flops_per_token(plain, m, s.seq_len)
        # interleave the measurements so that drifting machine load hits all alike
        times: dict = {key: [] for key in steps}
        first: dict = {}
        for _ in range(args.repeats):
            for key, step in steps.items():
                per_step, first_step = time_steps(step, args.steps, args.warmup, device)
                times[key].append(per_step)
                first.setdefault(key, first_step)
        for (model, mode), ts in times.items():
            tps = tokens_per_step / min(ts)
            rows.append({"experts": impl, "model": model, "mode": mode, "tokens_per_s": tps,
                         "ms_per_step": 1e3 * min(ts),
                         "first_step_s": first[model, mode],
                         "mfu_square": tps * fpt / peaks["square"],
                         "mfu_model_shapes": tps * fpt / peaks["model"]})
        del steps
    plain_tps = {(r["experts"], r["mode"]): r["tokens_per_s"] for r in rows
                 if r["model"] == "plain"}
    for r in rows:
        r["vs_plain_same_mode"] = r["tokens_per_s"] / plain_tps[r["experts"], r["mode"]]
        r["vs_plain_eager"] = r["tokens_per_s"] / plain_tps.get((r["experts"], "eager"), math.nan)
    print(format_table(rows), flush=True)
    if args.out:
        import pyarrow as pa

        from moebalance.atomic import write_parquet

        write_parquet(pa.Table.from_pylist(rows), args.out)
    return rows


def format_table(rows: list[dict]) -> str:
    """Rows of equal keys as aligned text columns (no pandas: the GPU image lacks it)."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()] for r in rows]
    header = list(rows[0])
    widths = [max(len(c) for c in col) for col in zip(header, *cells, strict=True)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
                     for line in [header, *cells])


if __name__ == "__main__":
    main()
