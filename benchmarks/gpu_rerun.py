"""Two 60-step pretraining runs of the config/gpu.yaml model (loss_free, gamma 1e-3), same
seed, on the tokens benchmarks/gpu_check.sh built (its OUTDIR/data/tokens); prints whether
their files match.

    python benchmarks/gpu_rerun.py TOKENS_DIR OUT [off|warn|strict]   (on the GPU machine)

off: torch's default kernels, without moebalance.determinism's setting; warn:
torch.use_deterministic_algorithms(True, warn_only=True), its warnings kept in
OUT/MODE/err1.log; strict: the same with warn_only=False, which moebalance does itself on
CUDA. warn and strict also set CUBLAS_WORKSPACE_CONFIG=:4096:8. results/gpu_check/ holds its
output for each mode, on one H200.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from moebalance.study import deep_merge, variant_settings  # noqa: E402

STEPS = 60


def settings() -> dict:
    """The config/gpu.yaml model as loss_free (gamma 1e-3), trained for STEPS steps."""
    config = {}
    for path in ("config/config.yaml", "config/gpu.yaml"):
        config = deep_merge(config, yaml.safe_load(open(REPO / path)))
    config["variants"] = {"loss_free": {"balancing": {"strategies": ["loss_free"],
                                                      "loss_free": {"gamma": 1e-3}}}}
    resolved = variant_settings(config, "loss_free")
    resolved["train"].update(steps=STEPS, warmup_steps=3, eval_every=30, eval_batches=4,
                             snapshot_every=0)
    return resolved


def train_twice(tokens_dir: Path, out: Path, mode: str) -> None:
    wrap = ("import sys, torch, warnings; warnings.simplefilter('always'); "
            f"torch.use_deterministic_algorithms(True, warn_only={mode == 'warn'}); "
            "from moebalance.cli import main; sys.argv[0] = 'moebalance'; sys.exit(main())")
    start = [sys.executable, "-m", "moebalance"] if mode == "off" else [sys.executable, "-c", wrap]
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path} | (
        {} if mode == "off" else {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    for i in (1, 2):
        with open(out / f"err{i}.log", "w") as err:
            subprocess.run(start + [
                "pretrain", "--tokens-dir", str(tokens_dir), "--out-dir", f"{out}/run{i}",
                "--checkpoint-dir", f"{out}/ck{i}", "--settings", json.dumps(settings()),
                "--no-tracking", "--no-progress",
                "--execution", json.dumps({"checkpoint_every": 0}), "--seed", "0"],
                check=mode != "strict", stdout=subprocess.DEVNULL, stderr=err, env=env)


def report(out: Path, mode: str) -> None:
    for name in ["model/model.safetensors", "metrics.parquet", "routing.parquet"]:
        h = [hashlib.sha256((out / f"run{i}" / name).read_bytes()).hexdigest()[:16]
             for i in (1, 2)]
        print(name, h, "same" if h[0] == h[1] else "DIFFERENT")
    m = [pq.read_table(out / f"run{i}/metrics.parquet").to_pylist() for i in (1, 2)]
    for a, b in zip(m[0], m[1], strict=True):
        if a["step"] % 10 == 9 or a["step"] == STEPS - 1:
            print(a["step"], a["lm_loss"], b["lm_loss"], a.get("val_loss"), b.get("val_loss"),
                  a["maxvio_batch"], b["maxvio_batch"])
    if mode != "off":
        print(sorted({line.strip()[:300] for line in open(out / "err1.log")
                      if "determin" in line.lower()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tokens_dir", type=Path, help="token shards (tokens stage output)")
    parser.add_argument("out", type=Path, help="folder for the runs; MODE/ is made in it")
    parser.add_argument("mode", nargs="?", default="off", choices=["off", "warn", "strict"])
    args = parser.parse_args()
    out = args.out.resolve() / args.mode
    out.mkdir(parents=True, exist_ok=True)
    train_twice(args.tokens_dir.resolve(), out, args.mode)
    report(out, args.mode)


if __name__ == "__main__":
    main()
