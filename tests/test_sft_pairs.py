from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moebalance.cli import main
from moebalance.config import SftDataSettings
from moebalance.data.sft_pairs import mine_pairs

FIXTURE = (Path(__file__).parent / "fixtures" / "sample_module.py").read_text()


def mined(limits=None):
    limits = limits or SftDataSettings()
    return {entry: (prompt, completion)
            for prompt, completion, entry in mine_pairs(FIXTURE, limits, Counter())}


def test_mines_only_top_level_undecorated_functions_with_docstring_and_body():
    assert set(mined()) == {"count_words", "join_paths"}


def test_prompt_is_needed_imports_then_signature_and_docstring():
    prompt, _ = mined()["count_words"]
    assert prompt == (
        "from collections import Counter\n\n\n"
        "def count_words(text: str) -> Counter:\n"
        '    """Count the words of ``text``, case-insensitively."""\n'
    )


def test_imports_are_pruned_to_the_names_the_function_uses():
    prompt, _ = mined()["join_paths"]
    assert prompt.startswith("import os\nfrom typing import List\n\n\ndef join_paths")
    assert "OrderedDict" not in prompt and "import re" not in prompt


def test_completion_is_the_verbatim_body_after_the_docstring():
    _, completion = mined()["join_paths"]
    assert completion == (
        "    # one statement after a comment\n"
        "    result = os.path.join(*parts)\n"
        "    return result\n"
    )


def test_length_filter_applies_to_non_blank_body_lines():
    assert "too_short" in mined(SftDataSettings(min_completion_lines=1))
    assert set(mined(SftDataSettings(max_completion_lines=1))) == set()


def test_unparsable_module_yields_nothing_and_is_counted():
    counts = Counter()
    assert list(mine_pairs("def broken(:\n", SftDataSettings(), counts)) == []
    assert counts["modules_unparsable"] == 1


def test_stage_writes_train_and_val_with_the_contract_columns(tmp_path):
    train = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(
        [{"doc_id": "d1", "path": "sample_module.py", "text": FIXTURE}]), train)
    for out in ("sft", "again"):
        assert main(["sft-data", "--train", str(train), "--out-dir", str(tmp_path / out),
                     "--settings", '{"val_fraction": 0.01}', "--no-tracking"]) == 0
    for name in ("train.parquet", "val.parquet"):  # the same input, the same bytes
        assert (tmp_path / "sft" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    rows = pq.read_table(tmp_path / "sft" / "train.parquet").to_pylist()
    rows += pq.read_table(tmp_path / "sft" / "val.parquet").to_pylist()
    assert {r["entry_point"] for r in rows} == {"count_words", "join_paths"}
    assert {"prompt", "completion", "entry_point", "source"} <= set(rows[0])
