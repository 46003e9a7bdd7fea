"""No import cycles in fedmodel, server, clients and simulations: each cycle points at a missing module.

The graph is built with ``ast`` from the source, so nothing is imported. Every ``import`` counts,
at module level or inside a function (a function-level import that dodges a cycle at run time is
still a cycle in the design); imports under ``if TYPE_CHECKING:`` do not count (they never run).
An edge goes to the module named (``from a.b import c`` to ``a.b.c`` when that is a module, else to
``a.b``); importing a submodule is not counted as importing its package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedmodel", "server", "clients", "simulations")
ROLES = ("server", "clients", "simulations")
"""Top-level folders whose modules are installed and imported as ``fedmodel.<role>`` (fedmodel/roles.py)."""


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts[0] in ROLES:
                parts.insert(0, "fedmodel")
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project modules ``name`` (its source at ``path``) imports anywhere but under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    out.add(f"{base}.{alias.name}")
                elif base in modules:
                    out.add(base)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    out.discard(name)
    return out


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = module_files(root, packages)
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def one_cycle(graph: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """A concrete cycle through ``component`` (a -> b -> ... -> a), for the failure message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first inside the component: the shortest way back to start
        nxt = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    nxt.append(target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")  # pragma: no cover


def test_the_role_folders_are_modules_of_fedmodel() -> None:
    graph = import_graph()
    assert "fedmodel.server.app" in graph and "fedmodel.clients.app" in graph
    assert "fedmodel.server.recorder" in graph["fedmodel.server.app"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(one_cycle(graph, c)) for c in found)


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"a/__init__.py": "", "a/x.py": "from a import y\n", "a/y.py": "def f():\n    from a.x import g\n"},
         ["a.x", "a.y", "a.x"]),
        ({"a/__init__.py": "", "a/x.py": "import a.y\n", "a/y.py": "from .x import g\n"}, ["a.x", "a.y", "a.x"]),
        ({"a/__init__.py": "", "a/x.py": "from a.y import g\n",
          "a/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a.x import h\n"}, None),
    ],
    ids=["function-level-counts", "relative-import", "type-checking-does-not"],
)
def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path, files: dict[str, str],
                                                            cycle: list[str] | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("a",))
    found = cycles(graph)
    if cycle is None:
        assert found == []
    else:
        assert len(found) == 1 and one_cycle(graph, found[0]) == cycle
