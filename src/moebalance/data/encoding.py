"""Prompt and continuation as token ids, the same way in SFT, generation and the solution
NLL: the training data joins a newline to the next line's indentation, so a prompt must not
be tokenized apart from what follows it.
"""

from __future__ import annotations


def encode_continuation(tokenizer, prompt: str, continuation: str) -> tuple[list[int], int]:
    """Ids of ``prompt + continuation`` tokenized as ONE text, and the index of the first
    token holding any continuation character.

    Tokenized apart, a HumanEval-style prompt would end in a lone newline token, which
    code never shows in training: the pre-tokenizer joins a newline to the indentation
    of the next line ("\\n   " + " for"). The token straddling the boundary counts as
    continuation (it carries the continuation's first characters).
    """
    enc = tokenizer(prompt + continuation, add_special_tokens=False,
                    return_offsets_mapping=True, verbose=False)
    ids = enc["input_ids"]
    start = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prompt)),
                 len(ids))
    return ids, start


def heal_prompt(tokenizer, prompt: str) -> tuple[list[int], str]:
    """Ids of ``prompt`` without its trailing whitespace token, and that token's text.

    For the same reason as :func:`encode_continuation`: generation continues from the
    prompt minus its lone trailing newline, and its first token must start with the
    removed text (token healing), so "\\n" can become the natural "\\n   " token.
    """
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) > 1:
        tail = tokenizer.decode(ids[-1:])
        if tail and not tail.strip():
            return ids[:-1], tail
    return ids, ""
