"""Token classes of Python source: which kind of token (keyword, identifier, string, ...)
each character, and each BPE token, belongs to.

Classes come from Python's ``tokenize`` mapped onto BPE tokens by character offsets: a
BPE token takes the class of its first non-whitespace character (whitespace if it has
none). Classes: keyword (incl. soft keywords), identifier, operator, number, string
(docstrings and f-strings too), comment, whitespace (spaces, newlines, indents) and other
(text ``tokenize`` rejects: everything from a tokenize error onwards, and error tokens
such as a stray ``$``).

A property of the text, not of any model: the utilization stage groups routing counts by
these classes.
"""

from __future__ import annotations

import io
import keyword
import tokenize

import numpy as np

TOKEN_CLASSES = ("keyword", "identifier", "operator", "number", "string", "comment",
                 "whitespace", "other")
CLASS_ID = {name: i for i, name in enumerate(TOKEN_CLASSES)}
_KEYWORDS = set(keyword.kwlist) | set(keyword.softkwlist)
_TYPE_CLASS = {tokenize.NUMBER: "number", tokenize.STRING: "string", tokenize.OP: "operator",
               tokenize.COMMENT: "comment", tokenize.NEWLINE: "whitespace",
               tokenize.NL: "whitespace", tokenize.INDENT: "whitespace",
               tokenize.DEDENT: "whitespace", tokenize.ERRORTOKEN: "other"}


def char_classes(text: str) -> np.ndarray:
    """The token class id of every character of ``text`` (whitespace where no token is)."""
    classes = np.full(len(text), CLASS_ID["whitespace"], dtype=np.int8)
    line_starts = np.cumsum([0] + [len(line) + 1 for line in text.split("\n")])
    reached = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.ENDMARKER:
                break
            start = line_starts[tok.start[0] - 1] + tok.start[1]
            end = line_starts[tok.end[0] - 1] + tok.end[1]
            if tok.type == tokenize.NAME:
                name = "keyword" if tok.string in _KEYWORDS else "identifier"
            else:
                name = _TYPE_CLASS.get(tok.type, "other")
            classes[start:end] = CLASS_ID[name]
            reached = max(reached, end)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        classes[reached:] = CLASS_ID["other"]
    # whitespace inside no token (between tokens) stays whitespace; "other" spans keep theirs
    return classes


def bpe_token_classes(text: str, offsets_T2: np.ndarray) -> np.ndarray:
    """Class id of each BPE token (character span): that of its first non-space character."""
    classes = char_classes(text)
    is_space = np.array([c.isspace() for c in text], dtype=bool)
    # next_solid[i] = first non-space character at or after i (len(text) if none)
    idx = np.where(is_space, len(text), np.arange(len(text)))
    next_solid = np.minimum.accumulate(idx[::-1])[::-1] if len(text) else idx
    next_solid = np.append(next_solid, len(text))
    starts, ends = offsets_T2[:, 0], offsets_T2[:, 1]
    first = next_solid[np.minimum(starts, len(text))]
    solid = first < ends
    return np.where(solid, classes[np.minimum(first, len(text) - 1)],
                    CLASS_ID["whitespace"]).astype(np.int8)
