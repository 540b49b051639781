"""Two 60-step pretraining runs of the config/gpu.yaml model (loss_free, gamma 1e-3), same seed,
on the tokens gpu_check.sh left in /tmp/gc/data/tokens; prints whether their files match.

    python rerun.py [off|warn|strict]    (run from the repository root, on the GPU machine)

off: torch's default kernels (the code before moebalance/determinism.py existed);
warn: torch.use_deterministic_algorithms(True, warn_only=True), its warnings kept in
/tmp/rr/err1.log; strict: the same with warn_only=False, which moebalance now does itself
on CUDA. warn and strict also set CUBLAS_WORKSPACE_CONFIG=:4096:8. The three logs beside
this file are its output for each mode, on one H200 on 2026-11-30.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

sys.path.insert(0, "src")
from moebalance.study import deep_merge, variant_settings  # noqa: E402

MODE = sys.argv[1] if len(sys.argv) > 1 else "off"
WRAP = ("import sys, torch, warnings; warnings.simplefilter('always'); "
        f"torch.use_deterministic_algorithms(True, warn_only={MODE == 'warn'}); "
        "from moebalance.cli import main; sys.argv[0] = 'moebalance'; sys.exit(main())")
cfg = {}
for p in ["config/config.yaml", "config/gpu.yaml"]:
    cfg = deep_merge(cfg, yaml.safe_load(open(p)))
cfg["variants"] = {"loss_free": {"balancing": {"strategies": ["loss_free"],
                                               "loss_free": {"gamma": 1e-3}}}}
s = variant_settings(cfg, "loss_free")
s["train"].update(steps=60, warmup_steps=3, eval_every=30, eval_batches=4, snapshot_every=0)
out = Path("/tmp/rr") / MODE
out.mkdir(parents=True, exist_ok=True)
for i in (1, 2):
    start = [sys.executable, "-m", "moebalance"] if MODE == "off" else [sys.executable, "-c", WRAP]
    env = os.environ | ({} if MODE == "off" else {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    subprocess.run(start + [
        "pretrain", "--tokens-dir", "/tmp/gc/data/tokens", "--out-dir", f"{out}/run{i}",
        "--checkpoint-dir", f"{out}/ck{i}", "--settings", json.dumps(s), "--no-tracking",
        "--no-progress", "--execution", json.dumps({"checkpoint_every": 0}), "--seed", "0"],
        check=MODE != "strict", stdout=subprocess.DEVNULL, stderr=open(out / f"err{i}.log", "w"),
        env=env)
for name in ["model/model.safetensors", "metrics.parquet", "routing.parquet"]:
    h = [hashlib.sha256((out / f"run{i}" / name).read_bytes()).hexdigest()[:16] for i in (1, 2)]
    print(name, h, "same" if h[0] == h[1] else "DIFFERENT")
m = [pq.read_table(out / f"run{i}/metrics.parquet").to_pylist() for i in (1, 2)]
for a, b in zip(m[0], m[1], strict=True):
    if a["step"] % 10 == 9 or a["step"] == 59:
        print(a["step"], a["lm_loss"], b["lm_loss"], a.get("val_loss"), b.get("val_loss"),
              a["maxvio_batch"], b["maxvio_batch"])
if MODE != "off":
    print(sorted({line.strip()[:300] for line in open(out / "err1.log")
                  if "determin" in line.lower()}))
