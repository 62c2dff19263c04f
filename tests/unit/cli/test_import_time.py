"""`hd --help` and the API commands start fast: the command line imports no engine code until a command runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ENGINE_MODULES = ("duckdb", "pyarrow", "sqlglot", "aws_lambda_powertools")
# The command line's import against the engine's, measured side by side (a wall-clock budget failed on
# slower machines though nothing had changed): ~0.3 here; importing the engine would make it >= 1.
BUDGET_SHARE_OF_ENGINE = 0.5


def _import_times(*argv: str, run: tuple[str, ...] = ("-m", "engine_host.cli")) -> dict[str, int]:
    """Run `python -X importtime -m engine_host.cli ARGV`; each top-level package imported, with its cumulative µs."""
    result = subprocess.run([sys.executable, "-X", "importtime", *run, *argv],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    times: dict[str, int] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if cumulative.strip().isdigit():
            times[name.strip()] = max(times.get(name.strip(), 0), int(cumulative))
    return times


@pytest.mark.parametrize("argv", [("--help",), ("keys", "list", "--help"), ("local-policy", "--help")])
def test_the_command_line_imports_no_engine_code_for_help(argv: tuple[str, ...]) -> None:
    imported = _import_times(*argv)

    assert "engine_host.cli" in imported
    assert not [name for name in imported if name.split(".")[0] in ENGINE_MODULES]


@pytest.mark.slow  # imports the engine in fresh interpreters, several times: CI runs it (`pytest -m slow`)
def test_importing_the_command_line_costs_a_fraction_of_importing_the_engine() -> None:
    # Best of three each, interleaved, so a busy test machine does not fail it; one slow import is still caught.
    cli, engine = [], []
    for _ in range(3):
        cli.append(_import_times("--help")["engine_host.cli"])
        engine.append(_import_times(run=("-c", "import engine_host.runtime.local"))["engine_host.runtime.local"])
    share = min(cli) / min(engine)

    assert share < BUDGET_SHARE_OF_ENGINE, (
        f"importing engine_host.cli took {min(cli) / 1000:.0f} ms, "
        f"{share:.0%} of the engine's {min(engine) / 1000:.0f} ms")
