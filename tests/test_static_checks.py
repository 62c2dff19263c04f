"""ruff and mypy are part of the test run, so style and type errors fail CI like any other test."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_reports_no_problems() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # a minute of type checking; CI runs it (`pytest -m slow`)
def test_mypy_reports_no_type_errors() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


# The one engine-host module that may import the Lambdas: it serves them over local HTTP in `hd dev`.
LAMBDA_SERVING_MODULES = {Path("engine_host/devmode/control_server.py")}


def _imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in `path` names, at any depth (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


def test_the_engine_host_imports_no_lambda_module() -> None:
    """Shared service wiring lives in hd_core; the engine host runs without the control-plane functions."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in _imported_modules(path)
                                           if name == "functions" or name.startswith("functions."))
        for path in sorted((ROOT / "engine_host").rglob("*.py"))
        if path.relative_to(ROOT) not in LAMBDA_SERVING_MODULES
    }
    assert {path: names for path, names in offenders.items() if names} == {}
