#!/usr/bin/env python
"""Copy the benchmark tables into README.md from the committed result files, so the README never holds a
hand-typed number: the first Markdown table after each `<!-- table: PATH -->` marker is replaced by the
table in PATH (a summary.md / exact_methods.md written by the benchmark commands).

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
        rest = readme[m.end():]
        start = rest.find("\n|") + 1 if not rest.startswith("|") else 0
        block = re.match(r"(?:\|[^\n]*\n)+", rest[start:])
        new = _table((ROOT / m.group(1)).read_text()) + "\n"
        if block is None:
            raise SystemExit(f"no table after the marker for {m.group(1)}")
        out.append(rest[:start] + new)
        pos = m.end() + start + block.end()
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
