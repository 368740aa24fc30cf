"""The documentation: tables copied from the committed results, relative links that resolve, and every
study reachable from the README."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tables_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLES = _tables_script()
DOCS = TABLES.doc_files(ROOT)
STUDIES = sorted(p for p in (ROOT / "benchmarks" / "results").iterdir() if p.is_dir())


def _strip_code(text: str) -> str:
    """The text without fenced code blocks and inline code spans (no links live there)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _heading_anchors(text: str) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", _strip_code(text), re.MULTILINE)}


def broken_links(text: str, base: Path) -> list[str]:
    """Relative Markdown links in `text` (a file in folder `base`) whose file, or heading anchor in a
    Markdown file, does not exist; web links are not followed."""
    bad = []
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", _strip_code(text)):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        if not name:
            if anchor not in _heading_anchors(text):
                bad.append(target)
            continue
        path = (base / name).resolve()
        if not path.exists():
            bad.append(target)
            continue
        if anchor and path.suffix == ".md" and anchor not in _heading_anchors(path.read_text()):
            bad.append(target)
    return bad


def test_the_docs_are_the_readme_the_benchmark_notes_and_docs():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "benchmarks/README.md", "docs/running.md", "docs/limitations.md"} <= names
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")} <= names
    for study in STUDIES:
        assert (study / "NOTES.md") in DOCS, f"{study.name} has no NOTES.md"


def test_tables_are_copies_of_the_committed_results():
    """Every table behind a `<!-- table: PATH -->` marker equals the table in PATH (regenerate with
    `python scripts/readme_tables.py`), in every doc."""
    count = 0
    for path in DOCS:
        text = path.read_text()
        count += text.count("<!-- table: ")
        assert TABLES.fill(text) == text, f"{path.relative_to(ROOT)}: run python scripts/readme_tables.py"
    assert count >= 33          # the 33 tables of the README before the studies moved out, at least
    with pytest.raises(SystemExit) as stop:
        TABLES.main(["--check"])
    assert stop.value.code == 0


@pytest.mark.parametrize("doc, row, bad", [
    ("README.md", "| all | 36 | 0.2113 | 20.11 | 16.62", "| all | 36 | 0.2113 | 20.12 | 16.62"),
    # selected columns
    ("README.md", "| 3 | vipaint_published | published | 19.69", "| 3 | vipaint_published | published | 19.96"),
    ("benchmarks/results/gaussian_mixture/NOTES.md", "| vipaint | 16 | 251 | 0.02748",
     "| vipaint | 16 | 251 | 0.01000"),
    ("benchmarks/README.md", "| ddnm | blur | 1.5725", "| ddnm | blur | 0.0100"),
])
def test_a_broken_table_is_detected_and_fixed(tmp_path, doc, row, bad):
    text = (ROOT / doc).read_text()
    broken = text.replace(row, bad, 1)
    assert broken != text and TABLES.fill(broken) == text
    # the same through the command line on a copy of the repository's docs
    for path in DOCS:
        rel = path.relative_to(ROOT)
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / rel)
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.png", "*.json", "*.csv"))
    (tmp_path / doc).write_text(broken)
    root = TABLES.ROOT
    try:
        TABLES.ROOT = tmp_path
        with pytest.raises(SystemExit) as stop:
            TABLES.main(["--check"])
        assert stop.value.code == 1
        assert (tmp_path / doc).read_text() == broken                  # --check writes nothing
        TABLES.main([])
        assert (tmp_path / doc).read_text() == text
    finally:
        TABLES.ROOT = root


def test_a_marker_without_a_table_gets_one_and_the_rest_is_untouched():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    marker = "<!-- table: benchmarks/results/exact_methods.md -->\n"
    first = text.index(marker) + len(marker)
    block = text[first:text.index("\n\n", first) + 1]
    assert block.startswith("| method | task |")
    bare = text[:first] + "\n" + text[first + len(block):]
    assert TABLES.fill(bare) == text[:first] + block + "\n" + text[first + len(block):]


def test_a_marker_naming_a_missing_file_or_column_stops():
    with pytest.raises(SystemExit, match="does not exist"):
        TABLES.fill("<!-- table: benchmarks/results/no_such/summary.md -->\n")
    with pytest.raises(SystemExit, match="no_such_column"):
        TABLES.fill("<!-- table: benchmarks/results/mnist/summary.md columns: method no_such_column -->\n")
    picked = TABLES.fill("<!-- table: benchmarks/results/mnist/summary.md columns: fid method -->\n")
    assert picked.splitlines()[1:4] == ["| fid | method |", "|---|---|", "| 152.2 | vipaint |"]


def test_relative_links_point_to_existing_files():
    for path in DOCS:
        assert broken_links(path.read_text(), path.parent) == [], path.relative_to(ROOT)


def test_the_link_check_finds_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# A heading\n")
    text = ("[ok](a.md) [ok](a.md#a-heading) [web](https://example.org/x) `[code](no.md)`\n"
            "[gone](b.md) [bad anchor](a.md#nothing) [here](#top)\n# Top\n")
    assert broken_links(text, tmp_path) == ["b.md", "a.md#nothing"]


def test_every_study_is_one_click_from_the_readme_and_opens_with_its_answer():
    readme = (ROOT / "README.md").read_text()
    index = (ROOT / "benchmarks" / "README.md").read_text()
    assert "(benchmarks/README.md)" in readme
    for study in STUDIES:
        assert f"(benchmarks/results/{study.name}/NOTES.md)" in readme, study.name
        assert f"(results/{study.name}/NOTES.md)" in index, study.name
        head = (study / "NOTES.md").read_text()[:3000]
        for part in ("**Question.**", "**Command", "**Answer"):
            assert part in head, f"{study.name}/NOTES.md does not open with {part}"


def test_no_doc_cites_a_file_outside_the_repository():
    for path in DOCS:
        text = path.read_text()
        assert "shared/docs" not in text and not re.search(r"\b(ALGORITHM|PEERS)\.md", text), path


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
