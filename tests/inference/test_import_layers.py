"""Deployment modules build on each other in one direction: no import cycles, not even ones
hidden in function bodies (the backends/export cycle of the first layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import minimaxad

PACKAGE = Path(minimaxad.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every ``minimaxad`` module ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # "from minimaxad.inference import export" imports a module
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_inference_modules_have_no_import_cycle():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph = {name: imports_of(path, known) - {name} for name, path in files.items()}
    cycles = {name: cycle_through(graph, name) for name in known if name.startswith("minimaxad.inference.")}
    assert {k: v for k, v in cycles.items() if v} == {}
