"""The one-GPU check of the pretraining stack, on real tokens, in at most ~8 minutes.

    python benchmarks/gpu_check.py OUT [--tiny] [--run-seconds S]
    (benchmarks/gpu_check.sh wraps it: installs the carried wheels, logs, time limit)

1. Builds real tokens from this Python's standard library through the `moebalance` CLI
   (corpus -> tokenizer -> tokens, tracking off), in the background while 2. runs.
2. benchmarks/train_step.py on the config/gpu.yaml model: tokens/s and MFU of ours vs the
   plain transformers model, eager and compiled (bf16 autocast on a GPU).
3. Two short pretraining runs through `moebalance pretrain --no-tracking`: aux_loss
   (alpha 1e-3) and loss_free (gamma 1e-3), each sized from 2.'s tokens/s to take about
   --run-seconds: loss curves against an interpolated bigram baseline on the same val
   tokens, MaxVio_batch curves and the final bias spread.
4. Top-K agreement: the share of tokens whose expert set under bf16 autocast equals the
   set under fp32 on the same batch, per MoE layer, with the loss_free run's model.

Writes under OUT: summary.parquet (metric, value), curves.parquet (run, step, lm_loss,
val_loss, maxvio_batch, bias_spread), train_step.parquet, the runs' own outputs and
gpu_check.log (the shell wrapper's copy of everything printed), and prints one summary table.
--tiny: a tiny model, a few hundred documents and CPU bf16, to rehearse the whole path here.
Needs neither snakemake, mlflow, pandas, datasets nor the network.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from train_step import format_table  # noqa: E402

from moebalance.atomic import write_parquet  # noqa: E402
from moebalance.data.shards import open_split, read_meta  # noqa: E402
from moebalance.study import deep_merge, variant_settings  # noqa: E402

FALLBACK_STEPS = 150  # per run, when train_step.py gave no tokens/s to size the runs by
RUNS = {  # name: the balancing of one short run (the papers' coefficients)
    "aux_loss": {"strategies": ["aux_loss"], "aux_loss": {"alpha": 1e-3}},
    "loss_free": {"strategies": ["loss_free"], "loss_free": {"gamma": 1e-3}},
}
TINY = {  # --tiny: the same code path, small enough for a CPU rehearsal
    "tokenizer": {"vocab_size": 1024},
    "model": {"hidden_size": 64, "layers": 2, "heads": 2, "dense_size": 128,
              "routed_experts": 8, "top_k": 2, "shared_experts": 1, "expert_size": 32,
              "q_lora_rank": None, "kv_lora_rank": 32, "qk_rope_head_dim": 8,
              "qk_nope_head_dim": 8, "v_head_dim": 16},
    "pretrain": {"micro_batch_size": 4, "seq_len": 128, "device": "cpu", "precision": "bf16",
                 "threads": 0},
}


def moebalance(*args: str, log: Path) -> subprocess.Popen:
    """``python -m moebalance ARGS`` in the background, its output appended to ``log``."""
    with open(log, "a") as stream:
        return subprocess.Popen([sys.executable, "-m", "moebalance", *args],
                                stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)


def wait(proc: subprocess.Popen, what: str, log: Path) -> None:
    if proc.wait() != 0:
        tail = "".join(open(log).readlines()[-20:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); end of {log}:\n{tail}")


def build_tokens(out: Path, vocab_size: int, tiny: bool) -> subprocess.Popen:
    """corpus -> tokenizer -> tokens on the stdlib, as one background shell pipeline."""
    data, py = out / "data", f"{sys.executable} -m moebalance"
    # the stdlib alone: the GPU image has no installed moebalance for the site-packages source
    # to start its dependency closure from, and the check needs only real tokens
    stdlib = {"site_packages": False, "stdlib": True}
    corpus = shlex.quote(json.dumps(stdlib | {"max_documents": 400} if tiny else stdlib))
    tokenizer = shlex.quote(json.dumps({"vocab_size": vocab_size}))
    script = (f"set -e; {py} corpus --out-dir {data}/corpus --decontamination "
              f"{data}/decontamination.parquet --settings {corpus} --no-tracking; "
              f"{py} tokenizer --train {data}/corpus/train.parquet --out-dir {data}/tokenizer "
              f"--settings {tokenizer} --no-tracking; "
              f"{py} tokens --corpus-dir {data}/corpus --tokenizer-dir {data}/tokenizer "
              f"--out-dir {data}/tokens --no-tracking")
    with open(out / "tokens.log", "w") as stream:
        return subprocess.Popen(["bash", "-c", script], stdout=stream, stderr=subprocess.STDOUT,
                                cwd=REPO)


def bigram_val_loss(tokens_dir: Path) -> float:
    """Val cross-entropy (nats/token) of an interpolated bigram fitted on the train tokens.

    Jelinek-Mercer interpolation (Chen & Goodman 1999, "An empirical study of smoothing
    techniques for language modeling"): p(b|a) = lam c(a,b)/c(a) + (1-lam) p_uni(b), with
    add-one unigrams and lam chosen on the val tokens from a grid (the project's positive
    control, docs/reference.md §6).
    """
    V = read_meta(tokens_dir)["vocab_size"]
    train = np.asarray(open_split(tokens_dir, "train"), dtype=np.int64)
    val = np.asarray(open_split(tokens_dir, "val"), dtype=np.int64)
    unigram_V = (np.bincount(train, minlength=V) + 1.0) / (len(train) + V)
    context_V = np.bincount(train[:-1], minlength=V).astype(np.float64)
    pairs, counts = np.unique(train[:-1] * V + train[1:], return_counts=True)
    query = val[:-1] * V + val[1:]
    at = np.clip(np.searchsorted(pairs, query), 0, len(pairs) - 1)
    pair_count = np.where(pairs[at] == query, counts[at], 0)
    p_bigram = pair_count / np.maximum(context_V[val[:-1]], 1)
    p_uni = unigram_V[val[1:]]
    return min(float(-np.mean(np.log(lam * p_bigram + (1 - lam) * p_uni)))
               for lam in np.linspace(0.0, 0.95, 20))


def train_step_benchmark(out: Path, configs: list[Path], tiny: bool) -> list[dict]:
    """train_step.py: 10 timed steps after 3 (the first compiles), within 210 s on the GPU."""
    steps, timeout = (["--steps", "2", "--warmup", "1"], 1800) if tiny else \
        (["--steps", "10", "--warmup", "3"], 210)
    args = [sys.executable, str(REPO / "benchmarks/train_step.py"), *steps, "--repeats", "1",
            "--out", str(out / "train_step.parquet")]
    for config in configs:
        args += ["--config", str(config)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        # the rest of the check still runs; its runs are then sized by FALLBACK_STEPS
        print(f"train_step.py did not finish within {timeout} s; partial output:\n"
              f"{(err.stdout or b'').decode()[-3000:]}", flush=True)
        return []
    print(proc.stdout + proc.stderr[-3000:], flush=True)
    if proc.returncode != 0:
        print(f"train_step.py failed (exit {proc.returncode}); continuing", flush=True)
        return []
    print(f"train_step.py: {time.perf_counter() - started:.0f} s", flush=True)
    return pq.read_table(out / "train_step.parquet").to_pylist()


def pretrain(out: Path, name: str, settings: dict, tokens_dir: Path) -> Path:
    run_dir = out / "runs" / name
    log = out / f"pretrain_{name}.log"
    proc = moebalance("pretrain", "--tokens-dir", str(tokens_dir), "--out-dir",
                      str(run_dir), "--checkpoint-dir", str(out / "checkpoints" / name),
                      "--settings", json.dumps(settings), "--no-tracking", "--no-progress",
                      "--execution", json.dumps({"checkpoint_every": 0}), "--seed", "0",
                      log=log)
    started = time.perf_counter()
    wait(proc, f"pretrain {name}", log)
    print(f"pretrain {name}: {settings['train']['steps']} steps in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


def curves(name: str, run_dir: Path) -> list[dict]:
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    routing = pq.read_table(run_dir / "routing.parquet",
                            columns=["step", "layer", "bias"]).to_pydict()
    step_N, layer_N, bias_N = (np.asarray(routing[k]) for k in ("step", "layer", "bias"))
    rows = []
    for m in metrics:
        here = step_N == m["step"]
        spreads = [np.ptp(bias_N[here & (layer_N == layer)]) for layer in np.unique(layer_N)]
        rows.append({"run": name, "step": m["step"], "lm_loss": m["lm_loss"],
                     "val_loss": m["val_loss"], "maxvio_batch": m["maxvio_batch"],
                     "tokens_per_s": m["tokens_per_s"], "bias_spread": float(np.mean(spreads))})
    return rows


@torch.no_grad()
def topk_agreement(model_dir: Path, tokens_dir: Path, device: str, seq_len: int,
                   batch: int) -> list[float]:
    """Per MoE layer: share of tokens whose top-K expert set is the same under bf16 autocast
    as under fp32, on the same val batch."""
    from moebalance.model import load_model
    from moebalance.model.router import routers_of

    model = load_model(model_dir).to(device).eval()
    val = np.asarray(open_split(tokens_dir, "val")[: batch * seq_len], dtype=np.int64)
    x = torch.from_numpy(val).view(batch, seq_len).to(device)
    chosen: dict[str, list[torch.Tensor]] = {}
    for precision in ("fp32", "bf16"):
        picks: list[torch.Tensor] = []
        hooks = [r.register_forward_hook(lambda _m, _i, output, picks=picks:
                                         picks.append(output[2].sort(-1).values))
                 for r in routers_of(model)]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(input_ids=x, use_cache=False)
        for hook in hooks:
            hook.remove()
        chosen[precision] = picks
    return [float((a == b).all(-1).float().mean())
            for a, b in zip(chosen["fp32"], chosen["bf16"], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU rehearsal: tiny model, 400 documents, CPU bf16")
    parser.add_argument("--run-seconds", type=float, default=None,
                        help="target seconds per pretraining run (default 80; --tiny: 15)")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_seconds = args.run_seconds or (15.0 if args.tiny else 80.0)
    configs = [REPO / "config/config.yaml", REPO / "config/gpu.yaml"]
    if args.tiny:
        (out / "tiny.yaml").write_text(yaml.safe_dump(TINY))
        configs.append(out / "tiny.yaml")
    config: dict = {}
    for path in configs:
        config = deep_merge(config, yaml.safe_load(open(path)) or {})
    started = time.perf_counter()
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"python {sys.version.split()[0]}, out {out}", flush=True)

    tokens_proc = build_tokens(out, config["tokenizer"]["vocab_size"], args.tiny)
    bench = train_step_benchmark(out, configs, args.tiny)
    wait(tokens_proc, "token build (corpus, tokenizer, tokens)", out / "tokens.log")
    tokens_dir = out / "data" / "tokens"
    meta = read_meta(tokens_dir)
    n_train = meta["splits"]["train"]["n_tokens"]
    print(f"tokens ready at {time.perf_counter() - started:.0f} s: {n_train} train, "
          f"{meta['splits']['val']['n_tokens']} val, vocab {meta['vocab_size']}", flush=True)
    bigram = bigram_val_loss(tokens_dir)

    eager = {r["model"]: r["tokens_per_s"] for r in bench if r["mode"] == "eager"}
    summary: dict[str, float] = {"bigram_val_loss": bigram, "train_tokens": n_train}
    for r in bench:
        key = f"{r['model']}_{r['mode']}"
        summary |= {f"tok_s_{key}": r["tokens_per_s"], f"mfu_square_{key}": r["mfu_square"],
                    f"first_step_s_{key}": r["first_step_s"]}
    rows, model_dir = [], None
    for name, balancing in RUNS.items():
        config["variants"] = {name: {"balancing": balancing}}
        settings = variant_settings(config, name)
        t = settings["train"]
        tokens_per_step = t["micro_batch_size"] * t["seq_len"] * t.get("grad_accum", 1)
        steps = FALLBACK_STEPS if "ours" not in eager else \
            int(np.clip(run_seconds * eager["ours"] / tokens_per_step, 20, 5000))
        t.update(steps=steps, warmup_steps=max(1, steps // 20), eval_every=max(1, steps // 5),
                 eval_batches=4, snapshot_every=0)
        summary[f"passes_{name}"] = steps * tokens_per_step / n_train
        run_dir = pretrain(out, name, settings, tokens_dir)
        run_rows = curves(name, run_dir)
        rows += run_rows
        last = run_rows[-1]
        finals = [r["val_loss"] for r in run_rows if not math.isnan(r["val_loss"])]
        summary |= {f"steps_{name}": steps, f"val_loss_{name}": finals[-1],
                    f"maxvio_batch_last10_{name}": float(np.mean(
                        [r["maxvio_batch"] for r in run_rows[-10:]])),
                    f"bias_spread_final_{name}": last["bias_spread"]}
        model_dir = run_dir / "model"
    write_parquet(pa.Table.from_pylist(rows), out / "curves.parquet")

    t = config["pretrain"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    agreement = topk_agreement(model_dir, tokens_dir, device, t["seq_len"],
                               min(8, t["micro_batch_size"]))
    summary["topk_agreement_bf16_vs_fp32_min_layer"] = min(agreement)
    summary["topk_agreement_bf16_vs_fp32_mean"] = float(np.mean(agreement))
    summary["seconds_total"] = time.perf_counter() - started
    write_parquet(pa.table({"metric": list(summary), "value": [float(v) for v in
                                                               summary.values()]}),
                  out / "summary.parquet")
    every = max(1, len(rows) // 20)
    print("\nloss curves (about every 10th step, and every validated step):")
    print(format_table([r for r in rows
                        if r["step"] % every == 0 or not math.isnan(r["val_loss"])]))
    print("\nsummary")
    print(format_table([{"metric": k, "value": float(v)} for k, v in summary.items()]),
          flush=True)


if __name__ == "__main__":
    main()
