"""No import cycles among the project's modules: every module under src/ and local/ is read with `ast`
(never imported), and every import of a project module counts, wherever it is written: at the top, inside
a function (a lazy import) or under `if TYPE_CHECKING:`. A cycle is a set of modules that reach each
other through their imports (a strongly connected component of more than one module), or a module that
imports itself."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "src", ROOT / "local")


def modules() -> dict[str, Path]:
    """Each project module's dotted name and its file (a package is its `__init__.py`)."""
    found: dict[str, Path] = {}
    for source in SOURCES:
        for path in sorted(source.rglob("*.py")):
            parts = list(path.relative_to(source).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                found[".".join(parts)] = path
    return found


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """The project modules `module` imports, with the line of each import: the most specific module an
    `import a.b.c` names, and for `from a.b import c` the submodule `a.b.c` when there is one, else
    `a.b`. Relative imports are resolved against the module's package."""

    def deepest(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := deepest(alias.name)) is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module, path).split(".")
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in known else deepest(base)
                if target is not None:
                    yield target, node.lineno


def graph() -> dict[str, dict[str, int]]:
    """Each module's project imports: the module imported and the line of its first import."""
    found = modules()
    known = set(found)
    edges: dict[str, dict[str, int]] = {name: {} for name in found}
    for name, path in found.items():
        for target, line in imported(name, path, known):
            edges[name].setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, and the self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def describe(component: list[str], edges: dict[str, dict[str, int]]) -> str:
    members = set(component)
    lines = [
        f"  {source} -> {target} (line {line})"
        for source in component
        for target, line in sorted(edges[source].items())
        if target in members
    ]
    return " <-> ".join(component) + "\n" + "\n".join(lines)


def test_the_project_has_no_import_cycle() -> None:
    edges = graph()
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n".join(describe(c, edges) for c in found)


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The check itself: a lazy import, a TYPE_CHECKING import, a relative import and a submodule named
    by `from package import name` each close a cycle it reports."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\n"
    )
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from . import d\n")
    (package / "e.py").write_text("import os\nfrom pkg.a import f\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.e"}
    paths = {name: tmp_path / (name.replace(".", "/") + ".py") for name in known - {"pkg"}}
    paths["pkg"] = package / "__init__.py"
    edges = {name: {t: line for t, line in imported(name, paths[name], known)} for name in known}
    assert edges["pkg.a"] == {"pkg.b": 2}
    assert edges["pkg.b"] == {"pkg.c": 3}
    assert edges["pkg.c"] == {"pkg.a": 1}
    assert edges["pkg.e"] == {"pkg.a": 2}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.d"]]
