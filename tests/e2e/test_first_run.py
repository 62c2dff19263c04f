"""A newcomer's first minutes with `hd dev`: a taken port, and an Owner that has a key but no password."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import start_engine_host


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(("flag", "others"), [
    ("--port", ["--api-port", "0"]),
    ("--api-port", ["--port", "0"]),
    ("--metrics-port", ["--port", "0", "--api-port", "0"]),
])
def test_a_taken_port_stops_hd_dev_with_one_line_naming_the_port_and_its_flag(
    tmp_path: Path, taken_port: int, flag: str, others: list[str]
) -> None:
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "engine_host.cli", "dev", "--state-dir", str(state),
                           flag, str(taken_port), *others], capture_output=True, text=True, timeout=120)

    assert done.returncode != 0
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert f"port {taken_port} " in done.stderr and f"{flag} N" in done.stderr and "already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert not state.exists()  # refused before anything was written


def _login(api_url: str, password: str) -> int:
    request = urllib.request.Request(f"{api_url}/v1/auth/login", method="POST",
                                     data=json.dumps({"email": "owner@localhost", "password": password}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_the_banner_says_the_owner_has_no_password_and_how_to_set_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    host = start_engine_host(state)
    try:
        banner = "".join(host.output)
        assert "The Owner is owner@localhost with no password" in banner
        assert f"hd set-owner-password --state-dir {state.resolve()}" in banner
        assert f"lost or leaked: `hd reissue-owner-key --state-dir {state.resolve()}`" in banner

        done = subprocess.run([sys.executable, "-m", "engine_host.cli", "set-owner-password", "--state-dir",
                               str(state)], input="a first long password\n", capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert _login(host.api_url, "a first long password") == 200
        assert _login(host.api_url, "not the password") == 401
    finally:
        assert host.stop() == 0

    again = start_engine_host(state)
    try:
        assert "no password" not in "".join(again.output)
    finally:
        again.stop()


# Import names of what only the extras install ([aws], [cdk], [dev]); the base install has none of them.
EXTRAS_ONLY = ("aws_xray_sdk", "aws_cdk", "constructs", "cdk_nag", "cfnlint", "moto", "pytest", "hypothesis",
               "schemathesis", "psycopg", "asyncpg", "pg8000", "sqlalchemy", "mypy", "pytz")
# As if not installed: importing fails and importlib.util.find_spec answers None.
_WITHOUT_EXTRAS = """
import importlib.abc, importlib.util, sys
blocked = {blocked!r}
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the base install)")
sys.meta_path.insert(0, Missing())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in blocked else find_spec(name, package))
from engine_host.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_hd_dev_demo_starts_on_the_base_install_without_any_extra(tmp_path: Path) -> None:
    """`pip install .` (no extras) runs `hd dev --demo`: nothing on its path imports what only an extra installs."""
    code = _WITHOUT_EXTRAS.format(blocked=set(EXTRAS_ONLY))
    process = subprocess.Popen([sys.executable, "-c", code, "dev", "--demo", "--state-dir", str(tmp_path / "state"),
                                "--port", "0", "--api-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"})
    output = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("HD_READY"):
                break
    finally:
        process.terminate()
        process.wait(60)
    assert any(line.startswith("HD_READY") for line in output), "".join(output)
    assert "Traceback" not in "".join(output)
