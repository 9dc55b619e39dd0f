"""Dependencies point inward: no import cycle between the project's packages, not even one
hidden under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "llmproxy"


def _package(module: str) -> str:
    """``llmproxy.gateway.app`` → ``gateway``; a top-level module is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(("llmproxy", *path.relative_to(ROOT).with_suffix("").parts))
        source = _package(module.removesuffix(".__init__"))
        edges = graph.setdefault(source, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("llmproxy."):
                    target = _package(name)
                    if target != source:
                        edges.add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_packages_import_without_cycles() -> None:
    """The package graph (cli, daemon, gateway, auth, routing, ...) has no cycle."""
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_request_path_does_not_know_the_daemon() -> None:
    """gateway reads a snapshot through its own protocol; auth, routing, limits, usage,
    keystore and config never reach up to gateway, daemon or cli."""
    graph = _graph()
    assert "daemon" not in graph["gateway"]
    for inner in ("auth", "routing", "limits", "usage", "keystore", "config"):
        assert not graph[inner] & {"gateway", "daemon", "cli"}, (inner, graph[inner])
