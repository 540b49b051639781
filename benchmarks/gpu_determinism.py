"""Same seed, same bytes on a GPU: every balancing strategy trains under the deterministic
kernels that moebalance.determinism turns on for CUDA, and reruns match byte for byte.

    python benchmarks/gpu_determinism.py OUT [--cpu]

1. Builds a small token set from this Python's standard library (corpus -> tokenizer ->
   tokens through the `moebalance` CLI, tracking off).
2. Pretrains every registered strategy (and none) for 8 steps with the config/gpu.yaml model,
   all at once (one process each): an operation without a deterministic kernel would raise.
3. Trains aux_loss a second time and samples HumanEval completions twice from the loss_free
   model (temperature 0.8, 2 per problem), and compares the bytes.
Prints one line per run and per comparison; the processes' logs are under OUT.
--cpu: the same path on the CPU with a tiny model (a rehearsal; CPU kernels are
deterministic without any setting). Needs neither snakemake, mlflow nor the network: run it
the way benchmarks/gpu_check.sh runs gpu_check.py (wheels on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from moebalance.model.balancing import STRATEGIES  # noqa: E402
from moebalance.study import deep_merge, variant_settings  # noqa: E402

TINY_MODEL = {"hidden_size": 64, "layers": 2, "heads": 2, "dense_size": 128, "routed_experts": 8,
              "top_k": 2, "shared_experts": 1, "expert_size": 32, "q_lora_rank": None,
              "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
              "v_head_dim": 16}


def start(out: Path, log: str, *args: str) -> subprocess.Popen:
    with open(out / log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "moebalance", *args], cwd=REPO,
                                stdout=stream, stderr=subprocess.STDOUT)


def finish(out: Path, log: str, proc: subprocess.Popen) -> None:
    if proc.wait() != 0:
        raise RuntimeError(f"{log}: exit {proc.returncode}\n{(out / log).read_text()[-3000:]}")


def build_tokens(out: Path) -> Path:
    data = out / "data"
    stdlib = json.dumps({"site_packages": False, "max_documents": 150})
    for log, args in [
            ("corpus.log", ["corpus", "--out-dir", f"{data}/corpus", "--decontamination",
                            f"{data}/decontamination.parquet", "--settings", stdlib]),
            ("tokenizer.log", ["tokenizer", "--train", f"{data}/corpus/train.parquet",
                               "--out-dir", f"{data}/tokenizer",
                               "--settings", json.dumps({"vocab_size": 2048})]),
            ("tokens.log", ["tokens", "--corpus-dir", f"{data}/corpus", "--tokenizer-dir",
                            f"{data}/tokenizer", "--out-dir", f"{data}/tokens"])]:
        finish(out, log, start(out, log, *args, "--no-tracking"))
    return data


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def compare(what: str, a: Path, b: Path) -> bool:
    same = digest(a) == digest(b)
    print(f"{what}: {digest(a)} {digest(b)} {'same' if same else 'DIFFERENT'}", flush=True)
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--cpu", action="store_true", help="rehearse on the CPU, tiny model")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = build_tokens(out)
    config: dict = {}
    for path in ("config/config.yaml", "config/gpu.yaml"):
        config = deep_merge(config, yaml.safe_load(open(REPO / path)))
    if args.cpu:
        config = deep_merge(config, {"model": TINY_MODEL, "pretrain": {"device": "cpu"}})
    runs = {name: {"strategies": [name]} for name in STRATEGIES} | {
        "none": {"strategies": []}, "aux_loss_again": {"strategies": ["aux_loss"]}}
    procs = {}
    for name, balancing in runs.items():
        config["variants"] = {name: {"balancing": balancing}}
        settings = variant_settings(config, name)
        settings["train"].update(steps=8, warmup_steps=2, eval_every=4, eval_batches=2,
                                 snapshot_every=0, micro_batch_size=8, seq_len=512)
        procs[name] = start(
            out, f"pretrain_{name}.log", "pretrain", "--tokens-dir", f"{data}/tokens",
            "--out-dir", f"{out}/runs/{name}", "--checkpoint-dir", f"{out}/checkpoints/{name}",
            "--settings", json.dumps(settings), "--no-tracking", "--no-progress",
            "--execution", json.dumps({"checkpoint_every": 0}), "--seed", "0")
    for name, proc in procs.items():
        finish(out, f"pretrain_{name}.log", proc)
        print(f"pretrain {name}: 8 steps, no error", flush=True)
    same = [compare(f"aux_loss twice, {rel}", out / "runs/aux_loss" / rel,
                    out / "runs/aux_loss_again" / rel)
            for rel in ("model/model.safetensors", "routing.parquet")]
    sampling = json.dumps({"max_new_tokens": 16, "batch_size": 82, "samples": 2,
                           "temperature": 0.8})
    generations = [start(out, f"generate{i}.log", "generate", "--model",
                         f"{out}/runs/loss_free/model", "--tokenizer", f"{data}/tokenizer",
                         "--out", f"{out}/samples{i}.jsonl", "--settings", sampling,
                         "--no-tracking", *(["--device", "cpu"] if args.cpu else []))
                   for i in (1, 2)]
    for i, proc in enumerate(generations, 1):
        finish(out, f"generate{i}.log", proc)
    same.append(compare("sampled generation twice", out / "samples1.jsonl",
                        out / "samples2.jsonl"))
    print(f"{time.perf_counter() - started:.0f} s", flush=True)
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
