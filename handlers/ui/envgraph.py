"""The inheritance of environments as a picture: a layered tree laid out here, drawn as inline SVG by the template.

``default`` is the root; each env sits one layer below its parent; leaves take consecutive columns and a parent
is centred over its children. The selected env's chain (where its reads look) is marked.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.core.model import DEFAULT, Environment

BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 120, 32, 24, 44, 12


@dataclass
class Node:
    name: str
    x: float
    y: float
    on_chain: bool
    nearest: bool


@dataclass
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    on_chain: bool


@dataclass
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    width: float
    height: float
    box_w: int = BOX_W
    box_h: int = BOX_H


def env_graph(envs: list[Environment], chain: list[str]) -> Graph:
    parent = {env.name: (env.parent or DEFAULT) if env.name != DEFAULT else None for env in envs}
    parent.setdefault(DEFAULT, None)
    children: dict[str, list[str]] = {name: [] for name in parent}
    for name, up in parent.items():
        if up is not None:
            children.setdefault(up, []).append(name)
    for names in children.values():
        names.sort()
    column: dict[str, float] = {}
    depth: dict[str, int] = {}
    next_column = 0

    def place(name: str, level: int, seen: frozenset[str]) -> None:
        nonlocal next_column
        depth[name] = level
        kids = [kid for kid in children.get(name, []) if kid not in seen]
        for kid in kids:
            place(kid, level + 1, seen | {kid})
        if kids:
            column[name] = (column[kids[0]] + column[kids[-1]]) / 2
        else:
            column[name] = next_column
            next_column += 1

    place(DEFAULT, 0, frozenset({DEFAULT}))
    for name in sorted(parent):  # anything unreachable from default (never expected): its own column, top row
        if name not in column:
            column[name], depth[name] = next_column, 0
            next_column += 1
    on_chain = set(chain)

    def x_of(name: str) -> float:
        return MARGIN + column[name] * (BOX_W + GAP_X)

    def y_of(name: str) -> float:
        return MARGIN + depth[name] * (BOX_H + GAP_Y)

    nodes = [Node(name, x_of(name), y_of(name), name in on_chain, bool(chain) and name == chain[0]) for name in sorted(column)]
    edges = [
        Edge(x_of(up) + BOX_W / 2, y_of(up) + BOX_H, x_of(name) + BOX_W / 2, y_of(name), name in on_chain and up in on_chain)
        for name, up in sorted(parent.items())
        if up is not None and up in column
    ]
    width = MARGIN * 2 + max(next_column, 1) * (BOX_W + GAP_X) - GAP_X
    height = MARGIN * 2 + (max(depth.values(), default=0) + 1) * (BOX_H + GAP_Y) - GAP_Y
    return Graph(nodes, edges, width, height)
