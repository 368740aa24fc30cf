#!/usr/bin/env python
"""Copy the benchmark tables into README.md from the committed result files, so the README never holds a
hand-typed number: the Markdown table right after each `<!-- table: PATH -->` marker is replaced by the
table in PATH (a summary.md / exact_methods.md written by the benchmark commands); a marker followed by
anything else gets the table inserted after it (a new marker needs no placeholder).

    python scripts/readme_tables.py [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return "\n".join(lines)


def fill(readme: str) -> str:
    out, pos = [], 0
    for m in re.finditer(r"<!-- table: (\S+) -->\n", readme):
        out.append(readme[pos:m.end()])
        path = ROOT / m.group(1)
        if not path.is_file():
            raise SystemExit(f"README marker names {m.group(1)}, which does not exist")
        new = _table(path.read_text()) + "\n"
        block = re.match(r"(?:\|[^\n]*\n)+", readme[m.end():])     # only a table directly below the marker
        out.append(new)
        pos = m.end() + (block.end() if block else 0)
    out.append(readme[pos:])
    return "".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = p.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = fill(old)
    if args.check:
        sys.exit(0 if new == old else 1)
    path.write_text(new)
    print("README.md tables " + ("updated" if new != old else "already up to date"))


if __name__ == "__main__":
    main()
