"""README's commands work as printed on a fresh machine.

Every command of README's fenced `sh` blocks is classified here. Those that can run offline run
against one `hd dev --demo` started as README's first line starts it, with `HOME` pointing at a
fresh folder so that `~/.hd` is the state folder the commands name (the only substitutions are
the free ports the server got for 5439 and 8080, and the banner's user for `<owner user id>`).
The rest (AWS, placeholders, a command that would replace the Owner key) are checked for what
they name: each `hd` subcommand and flag must be in that subcommand's `--help`. A command this
file does not know how to classify fails the test, so a new README command gets covered too.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.cli import main as hd_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
READY_SECONDS = 90
# Commands that would undo the state the others need, or that only make sense on EC2 or with S3.
NOT_RUN = {("reissue-owner-key",), ("engine",), ("dev",)}
SUBSTITUTIONS = {"<owner user id>": "{user}", "port=5439": "port={pg_port}", "127.0.0.1:8080": "127.0.0.1:{api_port}"}


def sh_commands(text: str = README) -> list[str]:
    """Each command of the `sh` blocks, continuation lines joined, in README order."""
    commands = []
    for block in re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", text, flags=re.M | re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                commands.append(line.strip())
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def _help(path: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as leaving:
        hd_main([*path, "--help"])
    assert leaving.value.code == 0, f"hd {' '.join(path)} --help failed"
    return out.getvalue()


def hd_subcommand(argv: list[str]) -> tuple[list[str], str]:
    """The subcommand path of `hd ARGV` (as far as `--help` lists choices) and its help text."""
    path: list[str] = []
    text = _help(path)
    for word in argv:
        listed = (re.search(r"\{[^}]*\b" + re.escape(word) + r"\b[^}]*\}", text)  # {dev,policy,...}
                  or re.search(r"^ {4}" + re.escape(word) + r"(?:\s|$)", text, flags=re.M))  # metavar ACTION
        if word.startswith("-") or not listed:
            break
        path.append(word)
        text = _help(path)
    return path, text


def assert_hd_names_exist(command: str) -> None:
    """Every subcommand and `--flag` an `hd` command names is in the matching `hd ... --help`."""
    argv = [w.strip("[]") for w in words(command)[1:]]
    path, text = hd_subcommand(argv)
    assert path, f"{command!r}: no such hd subcommand"
    top = _help([])
    for flag in (w.split("=", 1)[0] for w in argv if w.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text + top), \
            f"{command!r}: `hd {' '.join(path)} --help` does not list {flag}"


@dataclass
class Plan:
    setup: list[str]  # before the server starts (mkdir, cp)
    run: list[str]  # against the running server
    named_only: list[str]  # `hd` commands checked for their names only
    external: list[str]  # AWS and the CDK CLI, a remote psql: nothing local to run


def classify(commands: list[str]) -> Plan:
    plan = Plan([], [], [], [])
    for command in commands:
        argv = words(command)
        first = argv[0]
        if first == "python3" and argv[1:3] == ["-m", "venv"]:
            continue  # README's first two lines: test_the_first_lines_* below
        if first in ("mkdir", "cp"):
            plan.setup.append(command)
        elif first.startswith("PGPASSWORD=") and "host=127.0.0.1" in command:
            plan.run.append(command)
        elif first == "psql" or first in ("aws", "cdk"):
            plan.external.append(command)
        elif first == "curl" and "127.0.0.1:8080" in command:
            plan.run.append(command)
        elif first == "hd":
            placeholder = any("<" in w or "..." in w or w.startswith("[") for w in argv)
            if placeholder or tuple(argv[1:2]) in NOT_RUN:
                plan.named_only.append(command)
            else:
                plan.run.append(command)
        else:
            pytest.fail(f"README command not covered by tests/test_readme.py: {command!r}")
    return plan


def test_the_first_lines_install_the_base_to_start_local_mode_and_dev_to_run_the_tests() -> None:
    first, second = sh_commands()[:2]
    assert first == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/hd dev --demo"
    assert second == "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert second in ci.splitlines(), ".ci/run must run exactly README's test command"
    assert_hd_names_exist("hd dev --demo")


def test_every_hd_command_readme_names_exists_with_its_flags() -> None:
    plan = classify(sh_commands())
    for command in plan.named_only + [c for c in plan.run if c.startswith("hd ")]:
        assert_hd_names_exist(command)
    # Commands quoted in the prose, e.g. `hd reissue-owner-key --state-dir DIR`.
    for span in re.findall(r"`(hd [a-z][^`]*)`", README):
        if re.fullmatch(r"hd [a-z][\w -]*(?:--[\w-]+(?:[ =][^`-][^` ]*)?\s*)*", span):
            assert_hd_names_exist(span)


def test_every_python_module_readme_names_exists() -> None:
    import importlib.util

    modules = set(re.findall(r"python -m ([\w.]+)", README))
    assert "functions.openapi" in modules
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, f"README names python -m {module}, which is missing"


def test_the_hd_console_script_answers_help() -> None:
    done = subprocess.run([str(BIN / "hd"), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "set-owner-password" in done.stdout, done.stderr


@dataclass
class LocalMode:
    home: Path
    env: dict[str, str]
    pg_port: int
    api_port: int
    user: str
    output: list[str]


@pytest.fixture(scope="module")
def local_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    """README's setup commands, then `hd dev --demo` with ~ at a fresh folder."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HD_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               PGCONNECT_TIMEOUT="10")
    pq.write_table(pa.table({"invoice_id": [1, 2, 3], "amount": [10.5, 20.0, 7.25]}),
                   home / "invoices-2026-01.parquet")
    (home / "policies.json").write_text('{"version": 1, "policies": []}\n')
    for command in classify(sh_commands()).setup:
        done = subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{command!r}: {done.stderr}"
    process = subprocess.Popen([str(BIN / "hd"), "dev", "--demo", "--port", "0", "--api-port", "0"], cwd=home,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    ports: dict[str, int] = {}
    deadline = time.monotonic() + READY_SECONDS
    while "HD_READY" not in ports:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("hd dev --demo did not become ready:\n" + "".join(output))
        with contextlib.suppress(queue.Empty):
            line = lines.get(timeout=1)
            if match := re.match(r"(HD_API_READY|HD_READY) port=(\d+)", line):
                ports[match.group(1)] = int(match.group(2))
    user = next(part.split("=", 1)[1] for line in output for part in line.split() if part.startswith("user="))
    env["HD_API_URL"] = f"http://127.0.0.1:{ports['HD_API_READY']}"
    try:
        yield LocalMode(home, env, ports["HD_READY"], ports["HD_API_READY"], user, output)
    finally:
        process.terminate()
        process.wait(60)


def _as_run_here(command: str, mode: LocalMode) -> str:
    for printed, here in SUBSTITUTIONS.items():
        command = command.replace(printed, here.format(user=mode.user, pg_port=mode.pg_port, api_port=mode.api_port))
    return command


def test_readme_commands_run_against_local_mode(local_mode: LocalMode) -> None:
    skipped: list[str] = []
    ran: list[str] = []
    for command in classify(sh_commands()).run:
        tool = "psql" if command.startswith("PGPASSWORD=") else words(command)[0]
        if shutil.which(tool, path=local_mode.env["PATH"]) is None:
            skipped.append(f"{tool} not installed: {command}")
            continue
        # psql without -c reads SQL from stdin; `hd set-owner-password` reads the password from it.
        stdin = "SELECT 'readme' || 'ok';\n" if tool == "psql" else "a password for the readme test\n"
        done = subprocess.run(["bash", "-c", _as_run_here(command, local_mode)], cwd=local_mode.home,
                              env=local_mode.env, input=stdin, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr and '"error"' not in done.stdout, f"{command!r}: {done.stdout}"
        if tool == "psql":
            assert "ERROR" not in done.stderr and ("readmeok" in done.stdout or " -c " in command), done.stdout
        ran.append(command)
    assert any(c.startswith("hd ") for c in ran) and any(c.startswith("curl ") for c in ran)
    if skipped:
        print("\n".join(skipped))


def test_registered_parquet_is_a_table_as_readme_says(local_mode: LocalMode) -> None:
    key = (local_mode.home / ".hd" / "owner.key").read_text().strip()
    dsn = f"host=127.0.0.1 port={local_mode.pg_port} dbname=hd user={local_mode.user} sslmode=require"
    with psycopg.connect(dsn, password=key, connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM finance.invoices").fetchone() == (3,)


def test_the_banner_prints_what_readme_says_it_prints(local_mode: LocalMode) -> None:
    banner = "".join(local_mode.output)
    assert f'PGPASSWORD="$(cat {local_mode.home / ".hd" / "owner.key"})" psql "host=127.0.0.1 ' in banner
    assert "The Owner is owner@localhost with no password" in banner and "hd set-owner-password" in banner
