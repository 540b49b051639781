#!/usr/bin/env bash
# One-GPU check of the pretraining stack (fits in ~8 minutes on one H100/H200):
#   1. benchmarks/train_step.py on the config/gpu.yaml preset: tokens/s of our full step
#      vs the plain transformers model, eager vs grouped_mm experts, MFU vs a measured
#      bf16 matmul peak;
#   2. a 60-step `moebalance pretrain` run of the preset (loss_free + seq_aux_loss) on
#      random tokens, printing tokens/s, MaxVio and the final bias spread from its outputs.
# Usage: benchmarks/gpu_check.sh [OUTDIR]   (run from the repository root)
set -euo pipefail
OUT=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

timeout 300 $PY benchmarks/train_step.py --config config/config.yaml --config config/gpu.yaml \
    --steps 10 --warmup 3 --experts grouped_mm eager 2>&1 | tee "$OUT/train_step.txt"

timeout 240 $PY - "$OUT" <<'PYEOF' 2>&1 | tee "$OUT/pretrain.txt"
import json, sys, time
from pathlib import Path
import numpy as np, pandas as pd, yaml
from moebalance.cli import main
from moebalance.config import deep_merge, variant_settings

out = Path(sys.argv[1])
config = deep_merge(yaml.safe_load(open("config/config.yaml")),
                    yaml.safe_load(open(sys.argv[2] if len(sys.argv) > 2 else "config/gpu.yaml")))
settings = variant_settings(config, "loss_free_seq_aux")
settings["train"].update(steps=60, warmup_steps=10, eval_every=30, eval_batches=4)
vocab = 8192
tokens = out / "tokens"
tokens.mkdir(parents=True, exist_ok=True)
meta = {"dtype": "<u2", "eot_id": 0, "pad_id": 1, "vocab_size": vocab, "splits": {}}
for split, n in (("train", 8_000_000), ("val", 200_000)):
    np.random.default_rng(0).integers(2, vocab, n).astype(np.uint16).tofile(tokens / f"{split}.bin")
    meta["splits"][split] = {"file": f"{split}.bin", "n_tokens": n, "n_documents": 1}
(tokens / "meta.json").write_text(json.dumps(meta))
started = time.time()
rc = main(["pretrain", "--tokens-dir", str(tokens), "--out-dir", str(out / "pretrain"),
           "--checkpoint-dir", str(out / "checkpoints"), "--settings", json.dumps(settings),
           "--no-tracking", "--no-progress", "--seed", "0"])
print(f"pretrain exit {rc} in {time.time() - started:.0f}s")
m = pd.read_parquet(out / "pretrain" / "metrics.parquet")
r = pd.read_parquet(out / "pretrain" / "routing.parquet")
print(m[["step", "lm_loss", "seq_aux_loss", "grad_norm", "tokens_per_s", "maxvio_batch",
         "val_loss"]].iloc[::10].to_string(index=False))
print(f"median tokens/s (steps 10+): {m.tokens_per_s.iloc[10:].median():.0f}")
last = r[r.step == r.step.max()]
spread = last.groupby('layer').bias.agg(lambda b: float(b.max() - b.min()))
print(f"final bias spread per layer: {spread.round(4).to_dict()}")
PYEOF
