"""The documentation inside the repository: every citation of a docs page resolves, the
README stays a front door, and nothing points at design notes outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where the repository cites its docs: code, workflow, config, tests, benchmarks, docs, READMEs.
SCANNED_DIRS = ("src", "tests", "benchmarks", "workflow", "config", "docs")
SCANNED_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".smk", ".sh", ".rst", ".txt", ".toml"}
# A docs page, optionally followed by a section: the page path, then "§N" or "§N.M".
CITATION = re.compile(r"docs/([\w/-]+\.md)(?:`?\s*§(\d+(?:\.\d+)*))?")
README_MAX_LINES = 200


def scanned_files(root: Path) -> list[Path]:
    files = [root / "README.md", root / "Snakefile", *sorted(root.glob("results/**/README.md"))]
    for name in SCANNED_DIRS:
        files += sorted(p for p in (root / name).rglob("*")
                        if p.is_file() and p.suffix in SCANNED_SUFFIXES)
    return [p for p in files if p.is_file()]


def sections(page: Path) -> set[str]:
    """The section numbers a page's headings declare ("## §4 Measuring ..." -> "4")."""
    return set(re.findall(r"^#{1,6}\s+§(\d+(?:\.\d+)*)\b", page.read_text(), re.MULTILINE))


def dangling_citations(root: Path, files: list[Path]) -> list[str]:
    """'file:line: citation (why)' for every docs citation that does not resolve."""
    problems = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in CITATION.finditer(line):
                page, section = root / "docs" / match[1], match[2]
                where = f"{path.relative_to(root)}:{number}: {match[0]}"
                if not page.is_file():
                    problems.append(f"{where} (no such page)")
                elif section is not None and section not in sections(page):
                    problems.append(f"{where} (no section §{section} in docs/{match[1]})")
    return problems


def test_every_docs_citation_in_the_repository_resolves_to_a_page_and_section():
    files = scanned_files(ROOT)
    assert any("src" in p.parts for p in files)  # the scan reaches the code
    assert dangling_citations(ROOT, files) == []


def test_a_citation_of_a_missing_page_or_section_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "reference.md").write_text("# Ref\n\n## §1 Routing\n\n### §1.2 Gate\n")
    docs = "docs" + "/"  # split, so that this file's own scan does not see these citations
    cites = tmp_path / "cites.py"
    cites.write_text(f"# {docs}reference.md §1\n# {docs}reference.md §1.2\n"
                     f"# {docs}reference.md §7\n# {docs}missing.md\n")
    problems = dangling_citations(tmp_path, [cites])
    assert problems == [
        f"cites.py:3: {docs}reference.md §7 (no section §7 in {docs}reference.md)",
        f"cites.py:4: {docs}missing.md (no such page)"]


def test_the_method_reference_has_the_six_sections_the_code_cites():
    assert {"1", "2", "3", "4", "5", "6"} <= sections(ROOT / "docs" / "reference.md")


def test_nothing_points_at_design_notes_outside_the_repository():
    outside = ("shared/" + "design", "REFERENCE" + ".md", "ARCHITECTURE" + ".md")
    hits = [f"{p.relative_to(ROOT)}: {word}" for p in scanned_files(ROOT)
            for word in outside if word in p.read_text(errors="replace")]
    assert hits == []


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    layout = next(i for i, line in enumerate(lines, 1) if line == "## Where the code lives")
    assert layout < 80
