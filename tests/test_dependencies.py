"""Every third-party module that the package, the tests or the benchmarks import at module level is
declared in ``pyproject.toml``: on a fresh machine an undeclared one stops pytest at collection (or a
command at start-up), while an environment that happens to have it installed hides the omission.

Which declaration counts:
- ``src/``: the dependencies or any extra (optional features import their libraries inside functions);
- ``tests/``: the dependencies or ``[test]``, the environment ``scripts/setup.sh --test`` builds;
- ``tests/integrations/``: the dependencies, ``[anomalib]``, ``[onnx]`` or pytest, the environment
  ``scripts/test.sh`` builds for them (./.venv-anomalib);
- ``benchmarks/``: the dependencies or any extra.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# Import names whose distribution is named otherwise, for modules not installed here (installed ones
# are looked up in their metadata).
KNOWN_DISTRIBUTIONS = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "multipart": "python-multipart",
    "mlflow": "mlflow-skinny",
    "prometheus_client": "prometheus-client",
    "huggingface_hub": "huggingface-hub",
}


def normalize(name: str) -> str:
    """A distribution name in PEP 503 form (``Scikit_Learn`` -> ``scikit-learn``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """``"onnx>=1.14; python_version < '3.11'"`` -> ``"onnx"``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read a distribution name from requirement {requirement!r} in pyproject.toml"
    return normalize(match.group(1))


def module_level_imports(source: str) -> list[tuple[str, int]]:
    """(top-level module, line) of each import that runs when the file is imported: the module body,
    ``if``/``try``/``with`` blocks and class bodies; not functions, nor ``if TYPE_CHECKING:``."""
    found: list[tuple[str, int]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module.split(".")[0], node.lineno))
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, (ast.With, ast.ClassDef)):
                visit(node.body)

    visit(ast.parse(source).body)
    return found


def distribution_names(module: str, installed: dict[str, list[str]]) -> set[str]:
    """The distributions that may provide top-level ``module``: from the installed metadata, else a
    known alias, else the module's own name."""
    if module in installed:
        return {normalize(name) for name in installed[module]}
    return {normalize(KNOWN_DISTRIBUTIONS.get(module, module))}


def undeclared_imports(repo: Path, installed: dict[str, list[str]] | None = None) -> list[str]:
    """One line per module-level import in ``repo``'s src/, tests/ and benchmarks/ that its
    pyproject.toml does not declare where that folder's code is run from (see the module docstring)."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    extras = {
        name: {requirement_name(r) for r in reqs} for name, reqs in project.get("optional-dependencies", {}).items()
    }
    base = {requirement_name(r) for r in project.get("dependencies", [])}
    any_extra = base.union(*extras.values())
    allowed = {"src": any_extra, "tests": base | extras.get("test", set()), "benchmarks": any_extra}
    integrations = base | extras.get("anomalib", set()) | extras.get("onnx", set()) | {"pytest"}
    installed = importlib.metadata.packages_distributions() if installed is None else installed
    standard = set(sys.stdlib_module_names) | {"__future__"}
    # our own code: the package, the tests package and the scripts that tests and benchmarks put on sys.path
    local = {"minimaxad", "tests"} | {
        p.stem for folder in ("tests", "benchmarks") for p in (repo / folder).rglob("*.py")
    }
    problems = []
    for folder in allowed:
        for path in sorted((repo / folder).rglob("*.py")):
            where = "[test] or the dependencies" if folder == "tests" else "the dependencies or an extra"
            if folder == "tests" and path.relative_to(repo / folder).parts[0] == "integrations":
                declared, where = integrations, "[anomalib], [onnx] or the dependencies"
            else:
                declared = allowed[folder]
            for module, line in module_level_imports(path.read_text(encoding="utf-8")):
                if module in standard or module in local:
                    continue
                if not distribution_names(module, installed) & declared:
                    problems.append(
                        f"{path.relative_to(repo)}:{line} imports {module!r}, which is not declared in "
                        f"pyproject.toml ({where}); add its distribution "
                        f"({' or '.join(sorted(distribution_names(module, installed)))}) there"
                    )
    return problems


def test_every_module_level_import_is_declared():
    problems = undeclared_imports(REPO)
    assert not problems, "\n".join(problems)


def test_an_undeclared_test_import_is_found(tmp_path):
    """The check itself: a test tool imported by a test but declared only for the package's users."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["numpy>=1", "Pillow"]\n'
        '[project.optional-dependencies]\nserve = ["fastapi"]\n'
        'test = ["pytest>=7", "scikit-learn; python_version >= \'3.8\'"]\n'
    )
    for folder in ("src/pkg", "tests", "benchmarks"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "app.py").write_text(
        "import numpy\nfrom PIL import Image\n\n\ndef serve():\n    import uvicorn  # inside a function: optional\n"
    )
    (tmp_path / "src" / "pkg" / "web.py").write_text(
        "try:\n    import fastapi\nexcept ImportError:\n    fastapi = None\n"
    )
    (tmp_path / "tests" / "helpers.py").write_text("X = 1\n")
    (tmp_path / "tests" / "test_a.py").write_text(
        "from typing import TYPE_CHECKING\nimport pytest\nimport sklearn.metrics\nfrom helpers import X\n"
        "from hypothesis import given\nif TYPE_CHECKING:\n    import pandas\nclass T:\n    import fastapi\n"
    )
    (tmp_path / "benchmarks" / "b.py").write_text("import fastapi\nimport pandas\n")
    problems = undeclared_imports(tmp_path, installed={"PIL": ["Pillow"], "sklearn": ["scikit-learn"]})
    assert [p.split(" which")[0] for p in problems] == [
        "tests/test_a.py:5 imports 'hypothesis',",
        "tests/test_a.py:9 imports 'fastapi',",  # declared for users ([serve]), not for the tests
        "benchmarks/b.py:2 imports 'pandas',",
    ]
    assert "add its distribution (hypothesis)" in problems[0]
