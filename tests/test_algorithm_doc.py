"""docs/algorithm.md, the maths reference: its section numbers are a contract that citations rely on.

- The contracted sections (§1–§10, §3a–§3c, §10.0–§10.7) exist as headings.
- Every section the doc cites internally, and every `docs/algorithm.md §X` citation in the repository's
  code and docs, names a heading that exists. (Citations still pointing at the old, external ALGORITHM.md
  / PEERS.md are not checked here.)
- Every `vipaint.…` object and every repository path the doc names exists, so the doc cannot silently
  drift from the code.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "algorithm.md"
CONTRACT = {str(i) for i in range(1, 11)} | {"3a", "3b", "3c"} | {f"10.{i}" for i in range(8)}
SECTION_ID = r"(\d+(?:\.\d+)?[a-z]?)"
CITATION = re.compile(r"docs/algorithm\.md`?(?P<rest>[^)\n]*)")
SCANNED = ["vipaint", "benchmarks", "experiments", "docs", "tests", "README.md"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".cfg", ".toml"}


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _headings() -> set[str]:
    pattern = re.compile(rf"^#{{2,4}}\s+{SECTION_ID}\.?\s")
    return {m.group(1) for line in _text().splitlines() if (m := pattern.match(line))}


def _cited_ids(rest: str) -> list[str]:
    """Section ids in the text after one `docs/algorithm.md`, up to the next other `.md` file."""
    rest = re.split(r"\b\w+\.md\b", rest, maxsplit=1)[0]
    return re.findall(rf"§\s?{SECTION_ID}", rest)


def _scanned_files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        p = ROOT / name
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in SUFFIXES
                    and "results" not in f.parts]
    return [f for f in out if f != DOC]


def _resolve(dotted: str) -> bool:
    """True if `dotted` is an importable module, or an attribute / dataclass field reached from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if hasattr(obj, name):
                obj = getattr(obj, name)
            elif dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
                return name == parts[-1]
            else:
                return False
        return True
    return False


def test_contracted_sections_exist():
    missing = CONTRACT - _headings()
    assert not missing, f"docs/algorithm.md lacks the contracted sections {sorted(missing)}"


def test_internal_section_references_exist():
    ids = set(re.findall(rf"§{SECTION_ID}", _text()))
    assert ids, "expected the doc to cross-reference its sections"
    assert ids <= _headings(), f"docs/algorithm.md cites sections it does not have: {sorted(ids - _headings())}"


def test_citation_parser():
    assert _cited_ids(" §2 transitions, §4 refinement)") == ["2", "4"]
    assert _cited_ids(" §3a, the p-side; ECOSYSTEM.md §3.4") == ["3a"]
    assert _cited_ids("` §10.1 \"DPS\"") == ["10.1"]
    assert _cited_ids(" §1–§4. Each") == ["1", "4"]


def test_repository_citations_name_existing_sections():
    headings = _headings()
    bad = []
    for f in _scanned_files():
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                bad += [f"{f.relative_to(ROOT)}:{i}: §{s}" for s in _cited_ids(m.group("rest"))
                        if s not in headings]
    assert not bad, "citations of sections docs/algorithm.md does not have:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", sorted(set(re.findall(r"`(vipaint(?:\.[A-Za-z_]\w*)+)`", _text()))))
def test_named_code_objects_exist(name: str):
    assert _resolve(name), f"docs/algorithm.md names `{name}`, which does not exist"


def test_named_repository_paths_exist():
    paths = set(re.findall(r"`((?:vipaint|experiments|benchmarks|tests|docs)/[\w./-]*)`", _text()))
    paths |= set(re.findall(r"\(`((?:experiments|benchmarks)/[\w./-]+)`", _text()))
    assert paths, "expected the doc to name repository files"
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/algorithm.md names missing paths {missing}"
