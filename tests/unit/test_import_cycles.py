"""No import cycles between tessera's modules (issue 9 §7): every dependency points one way.

The graph is read from the source (``ast``), not by importing, and counts every import statement: at module level,
inside functions (a "local import" that hides a cycle from Python is still a cycle in the design) and under
``TYPE_CHECKING`` (a cycle for the type checker and for the reader). A module may import its own package's
``__init__``; that is not counted, as Python imports parents first anyway.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("core", "handlers", "local", "client")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["tessera", *parts])] = path
    return found


def imports_of(source: str, module: str, is_package: bool, mods: set[str] | dict[str, Path]) -> set[str]:
    """The tessera modules that ``source`` (the text of ``module``) imports anywhere in it."""

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    package = module.split(".") if is_package else module.split(".")[:-1]
    edges: set[str | None] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            edges |= {owner(alias.name) for alias in node.names if alias.name.startswith("tessera.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.startswith("tessera."):
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    edges.add(submodule if submodule in mods else owner(origin))
    return {edge for edge in edges if edge and edge != module}


def import_graph() -> dict[str, set[str]]:
    """module → the tessera modules it imports (``from tessera.core import crypto`` names ``tessera.core.crypto``)."""
    mods = modules()
    return {module: imports_of(path.read_text(), module, path.name == "__init__.py", mods) for module, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in component)


def test_the_detector_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_local_and_type_checking_imports():
    mods = {"tessera.core", "tessera.core.a", "tessera.core.b", "tessera.core.c", "tessera.core.d", "tessera.core.e"}
    source = """
from typing import TYPE_CHECKING
from tessera.core import a
from . import e
if TYPE_CHECKING:
    from tessera.core.b import Thing
def later():
    import tessera.core.c.inner
    from .d import other
"""
    assert imports_of(source, "tessera.core.x", False, mods) == {f"tessera.core.{m}" for m in "abcde"}
    graph = import_graph()
    assert "tessera.core.model" in graph["tessera.core.policy"]


def test_no_import_cycles_in_core():
    graph = import_graph()
    found = [c for c in cycles(graph) if any(m.startswith("tessera.core.") for m in c)]
    assert not found, "\n".join(describe(graph, c) for c in found)


def test_no_import_cycles_anywhere():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "\n".join(describe(graph, c) for c in found)
