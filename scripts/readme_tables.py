#!/usr/bin/env python
"""Copy the benchmark tables into the docs from the committed result files, so no doc holds a hand-typed
number: the Markdown table right after each `<!-- table: PATH -->` marker is replaced by the table in PATH
(a summary.md / results.md / fid_bootstrap.md ... written by the benchmark commands, PATH relative to the
repository root); a marker followed by anything else gets the table inserted after it (a new marker needs
no placeholder). `<!-- table: PATH columns: method nfe fid -->` copies only those columns, in that order.

The files filled are README.md, benchmarks/README.md, every benchmarks/results/*/NOTES.md and docs/*.md.

    python scripts/readme_tables.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- table: (\S+)(?: columns: ([^>]*?))? -->\n")


def doc_files(root: Path = ROOT) -> list[Path]:
    """Every Markdown file whose markers this script fills, in a fixed order."""
    files = [root / "README.md", root / "benchmarks" / "README.md"]
    files += sorted((root / "benchmarks" / "results").glob("*/NOTES.md"))
    files += sorted((root / "docs").glob("*.md"))
    return [f for f in files if f.is_file()]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _select(lines: list[str], columns: list[str], source: str) -> list[str]:
    """The table's columns named in `columns`, in that order (the second line is the separator row)."""
    header = _cells(lines[0])
    missing = [c for c in columns if c not in header]
    if missing:
        raise SystemExit(f"table marker asks for columns {missing} that {source} does not have ({header})")
    idx = [header.index(c) for c in columns]
    rows = ["| " + " | ".join(_cells(ln)[i] for i in idx) + " |" for ln in lines]
    rows[1] = "|" + "---|" * len(idx)
    return rows


def table(path: Path, columns: list[str] | None = None) -> str:
    """The Markdown table held in `path` (its lines starting with `|`), optionally only some columns."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    if columns:
        lines = _select(lines, columns, str(path))
    return "\n".join(lines)


def fill(text: str, root: Path = ROOT) -> str:
    """`text` with the table below every marker replaced by (or, if there is none, given) the table of
    the file the marker names."""
    out, pos = [], 0
    for m in MARKER.finditer(text):
        out.append(text[pos:m.end()])
        path = root / m.group(1)
        if not path.is_file():
            raise SystemExit(f"table marker names {m.group(1)}, which does not exist")
        columns = m.group(2).split() if m.group(2) else None
        new = table(path, columns) + "\n"
        block = re.match(r"(?:\|[^\n]*\n)+", text[m.end():])     # only a table directly below the marker
        out.append(new)
        pos = m.end() + (block.end() if block else 0)
    out.append(text[pos:])
    return "".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if any doc's tables are out of date")
    args = p.parse_args(argv)
    stale = []
    for path in doc_files(ROOT):
        old = path.read_text()
        new = fill(old, ROOT)
        if new == old:
            continue
        stale.append(path.relative_to(ROOT).as_posix())
        if not args.check:
            path.write_text(new)
    if args.check:
        if stale:
            print("tables out of date (run python scripts/readme_tables.py): " + ", ".join(stale))
        sys.exit(1 if stale else 0)
    print("tables updated in " + ", ".join(stale) if stale else "tables already up to date")


if __name__ == "__main__":
    main()
