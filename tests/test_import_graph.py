"""The project's modules import each other one way only (issue 25, item 9): no import circle, counting the
imports inside functions too (a lazy import hides a circle from Python, not from a reader).

The graph is read from the source with `ast` (nothing is imported); networkx (a dependency of torch) finds
the circles. Layers are checked as docs/ARCHITECTURE.md states them: trainables imports neither study nor
analysis, analysis imports neither study nor trainables.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (`from a.b import c` counts `a.b.c` when
    that is a module, else `a.b`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return {m for m in found if m in known}


def import_graph() -> nx.DiGraph:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    graph = nx.DiGraph()
    for p in files:
        for target in project_imports(p, known):
            if target != module_name(p):
                graph.add_edge(module_name(p), target)
    return graph


def test_no_module_imports_back_what_imports_it() -> None:
    graph = import_graph()
    assert graph.has_edge("study.driver", "study.batch") and graph.has_edge("study.search", "study.batch")
    cycles = sorted(nx.simple_cycles(graph), key=len)
    assert cycles == [], f"import circles: {cycles[:5]}"


def test_layers_import_one_way() -> None:
    graph = import_graph()
    wrong = [(a, b) for a, b in graph.edges
             if (a.startswith("trainables") and b.split(".")[0] in ("study", "analysis"))
             or (a.startswith("analysis") and b.split(".")[0] in ("study", "trainables"))]
    assert wrong == []
