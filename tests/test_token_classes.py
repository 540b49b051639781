"""Token classes of Python source, per character and per BPE token."""

import numpy as np
from moe_helpers import PY_SOURCE

from moebalance.data.token_classes import TOKEN_CLASSES, bpe_token_classes, char_classes


def classes_of(text):
    return [TOKEN_CLASSES[c] for c in char_classes(text)]


def test_char_classes_follow_python_tokenize():
    got = classes_of("if x1 >= 2.5:  # c\n")
    expected = (["keyword"] * 2 + ["whitespace"] + ["identifier"] * 2 + ["whitespace"]
                + ["operator"] * 2 + ["whitespace"] + ["number"] * 3 + ["operator"]
                + ["whitespace"] * 2 + ["comment"] * 3 + ["whitespace"])
    assert got == expected


def test_strings_and_docstrings_are_strings():
    got = classes_of(PY_SOURCE)
    start = PY_SOURCE.index('"""')
    assert set(got[start:start + len('"""Doc."""')]) == {"string"}


def test_untokenizable_text_falls_back_to_other():
    text = "def f():\n  x\n y\n"  # inconsistent dedent: tokenize stops at " y"
    assert classes_of(text)[:3] == ["keyword"] * 3
    assert classes_of(text)[-3:] == ["other"] * 3
    assert TOKEN_CLASSES[char_classes("a $ b")[2]] == "other"


def test_bpe_tokens_take_the_class_of_their_first_non_space_character():
    text = "def  f"
    offsets = np.array([[0, 3], [3, 5], [3, 6], [5, 6]])  # "def", "  ", "  f", "f"
    got = [TOKEN_CLASSES[c] for c in bpe_token_classes(text, offsets)]
    assert got == ["keyword", "whitespace", "identifier", "identifier"]
