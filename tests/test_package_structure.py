"""Package hygiene: no import cycles between vipaint modules, no module importing another module's private
names, no source file over the size ceiling. Imports inside functions count too: a lazy import still ties
two modules together."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "vipaint"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, list[str], int]]]:
    """module -> [(imported module, imported names, line)] for imports of vipaint modules."""
    out: dict[str, list[tuple[str, list[str], int]]] = {}
    for mod, path in mods.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "vipaint"]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, path.name == "__init__.py", node)
                if target.split(".")[0] != "vipaint":
                    continue
                names = [a.name for a in node.names]
                subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]   # `from pkg import submodule`
                edges += [(s, [], node.lineno) for s in subs]
                edges.append((target, [n for n in names if f"{target}.{n}" not in mods], node.lineno))
        out[mod] = edges
    return out


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The module that defines `name` (a module, or the closest enclosing package)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, edges in _imports(mods).items():
        for target, _names, _line in edges:
            owner = _owner(target, mods)
            # a package's __init__ re-exporting its submodules is not a cycle with them
            if owner and owner != mod and not owner.startswith(mod + "."):
                graph[mod].add(owner)
    return graph


def test_find_cycles_detects_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(_graph())
    assert not cycles, "import cycles between vipaint modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules() -> None:
    """Inside the package, and from the scripts and benchmarks that use it."""
    mods = _modules()
    users = {_module_name(p): p for top in ("benchmarks", "scripts") for p in sorted((ROOT / top).rglob("*.py"))}
    edges = _imports({**mods, **users})
    bad = [f"{path.relative_to(ROOT)}:{line} imports {n} from {target}"
           for mod, path in {**mods, **users}.items() for target, names, line in edges[mod]
           for n in names if n.startswith("_") and not n.startswith("__") and target != mod]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("top", ["vipaint", "tests", "benchmarks", "scripts"])
def test_no_source_file_over_the_ceiling(top: str) -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted((ROOT / top).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines (split them): " + ", ".join(long)


def test_citations_stay_inside_the_repository() -> None:
    """Docstrings, comments, specs and docs cite `docs/algorithm.md`, never notes that live outside the repo."""
    outside = re.compile(r"(?<![\w/])(ALGORITHM|PEERS)\.md|shared/docs")
    files = [p for top in ("vipaint", "benchmarks", "experiments", "docs", "scripts") for p in (ROOT / top).rglob("*")
             if p.suffix in (".py", ".md", ".yaml", ".sh")] + [ROOT / "README.md"]
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
           if outside.search(line)]
    assert not bad, "citations of files outside the repository: " + ", ".join(bad)
