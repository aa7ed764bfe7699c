"""The package's layers (docs/architecture.md) hold in the code: each module imports only modules
of its own layer or of the layers below it, function-local imports included; and deployment modules
have no import cycle, not even one hidden in a function body (the backends/export cycle of the
first layout)."""

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


# lowest first; a module is in the layer of its longest matching prefix
LAYERS = (
    ("files and downloads", ("minimaxad.files", "minimaxad.fetch")),
    ("the method", ("minimaxad.models", "minimaxad.losses", "minimaxad.anomaly_map", "minimaxad.tiling")),
    ("data and metrics", ("minimaxad.data", "minimaxad.metrics")),
    ("reporting", ("minimaxad.reporting",)),
    ("the engine", ("minimaxad.engine", "minimaxad.presets")),
    (
        "deployment and the command line",
        (
            "minimaxad.inference",
            "minimaxad.predict",
            "minimaxad.report",
            "minimaxad.cli",
            "minimaxad.demo",
            "minimaxad.__main__",
            "minimaxad.integrations",  # other frameworks' front-ends to the method, its engine and data
        ),
    ),
)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module``'s layer."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it to the layer it belongs to")


def test_each_module_imports_only_its_own_layer_and_those_below():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    # The package root is exempt both ways: Python imports it before any of its modules anyway
    # (``from minimaxad import __version__`` costs nothing), and its lazy ``minimaxad.MiniMaxAD``
    # imports the model only when that name is used.
    upward = sorted(
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, path in files.items()
        if name != "minimaxad"
        for target in imports_of(path, known)
        if target != "minimaxad" and layer_of(target) > layer_of(name)
    )
    assert upward == []


def test_the_layer_check_sees_function_local_imports(tmp_path):
    module = tmp_path / "runner.py"
    module.write_text(
        "import os\n\n\ndef fit():\n    from minimaxad.inference import export\n"
        "    from minimaxad.reporting.html import write_report\n"
    )
    found = imports_of(module, {"minimaxad.inference", "minimaxad.inference.export", "minimaxad.reporting.html"})
    assert found == {"minimaxad.inference.export", "minimaxad.reporting.html"}
    assert layer_of("minimaxad.reporting.html") < layer_of("minimaxad.engine.runner") < layer_of("minimaxad.cli")


def test_inference_modules_have_no_import_cycle():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph = {name: imports_of(path, known) - {name} for name, path in files.items()}
    cycles = {name: cycle_through(graph, name) for name in known if name.startswith("minimaxad.inference.")}
    assert {k: v for k, v in cycles.items() if v} == {}
