"""Deterministic GPU kernels, so that a rerun on the same GPU writes the same bytes.

Measured on one H200 (torch 2.11, CUDA 13; results/gpu_check/README.md): two 60-step
pretraining runs of config/gpu.yaml with the same seed already differed at the first step
compared, the 10th (val loss 4.671 against 4.648 at step 60); cuDNN's attention backward was
the kernel torch named. With ``torch.use_deterministic_algorithms(True)`` and cuBLAS's fixed
workspace the two runs wrote the same weights and routing.parquet, byte for byte, at no
visible cost in wall time.

CPU kernels need neither setting: CPU reruns are bit-identical already (the e2e test checks
it), so this changes nothing on a CPU and every committed CPU result stands.
"""

from __future__ import annotations

import os

# cuBLAS's deterministic mode needs a fixed workspace; ":4096:8" is one of the two values
# NVIDIA documents (CUDA Toolkit docs, cuBLAS "Results reproducibility").
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def deterministic_kernels(device) -> None:
    """On a CUDA ``device``: make torch choose deterministic kernels, and raise on an
    operation that has none rather than let it vary. Call it before the process's first CUDA
    matmul: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when it creates its handle. A value the
    user already set is kept. Does nothing on other devices."""
    import torch

    if torch.device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(True)
