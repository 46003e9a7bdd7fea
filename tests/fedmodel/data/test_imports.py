"""The modules of fedmodel.data import one another without a cycle (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedmodel.data

PACKAGE = Path(fedmodel.data.__file__).parent


def _graph() -> dict[str, set[str]]:
    """Module name -> the fedmodel.data modules it imports, at any depth of its code."""
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        edges: set[str] = set()
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges |= {t.split(".")[2] for t in targets
                      if t.startswith("fedmodel.data.") and t.split(".")[2] in modules}
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_the_readers() -> None:
    graph = _graph()
    assert {"reader", "dataset"} <= graph["files"]
    assert {"bundled", "cleaning", "files"} <= graph["loading"]


def test_no_import_cycle_inside_fedmodel_data() -> None:
    assert _cycle(_graph()) is None


def test_a_cycle_is_found() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
