"""Starting a real `hd dev` engine host process, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hd_core.errors import HdError

if TYPE_CHECKING:
    from engine_host.runtime.local import LocalEngineHost

READY_TIMEOUT_SECONDS = 90


@dataclass
class EngineHostProcess:
    """A running `hd dev` subprocess and what clients need to reach it."""

    process: subprocess.Popen[str]
    state_dir: Path
    port: int
    user: str
    password: str
    output: list[str]
    api_port: int | None = None

    @property
    def api_url(self) -> str:
        """Base URL of the local control API."""
        assert self.api_port is not None, "this host was started without the control API"
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def cert(self) -> Path:
        return self.state_dir / "tls" / "server.crt"

    def dsn(self, **overrides: str) -> str:
        params = {"host": "127.0.0.1", "port": str(self.port), "dbname": "hd", "user": self.user,
                  "password": self.password, "sslmode": "require", "connect_timeout": "10"}
        params.update(overrides)
        return " ".join(f"{k}={_quote(v)}" for k, v in params.items())

    def demo_dsn(self, person: str, **overrides: str) -> str:
        """DSN for one of the demo people of `hd dev --demo` (e.g. "acme-analyst")."""
        key = (self.state_dir / "demo-keys" / f"{person}.key").read_text().strip()
        return self.dsn(user=f"usr_demo_{person.replace('-', '_')}", password=key, **overrides)

    def mask_keys(self) -> dict[str, bytes]:
        """The host's hash-mask keys per environment, unwrapped with its local key file (as a test may)."""
        from engine_host.engine.masking import stored_mask_keys
        from hd_core.adapters.local_keys import LocalKeyFile
        from hd_core.adapters.sqlite_store import SqliteControlStore

        store = SqliteControlStore(self.state_dir / "control.sqlite3")
        return stored_mask_keys(store, LocalKeyFile(self.state_dir / "keys" / "local-keys.json"))

    def url(self, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/hd"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _quote(value: str) -> str:
    """A libpq conninfo value: quoted when it has spaces or quotes."""
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def start_engine_host(state_dir: Path, *extra: str, env: Mapping[str, str] | None = None,
                      log_level: str = "WARNING") -> EngineHostProcess:
    """Start `hd dev` on a free port and wait until it says it is ready; `env` adds environment variables."""
    cmd = [sys.executable, "-m", "engine_host.cli", "--log-level", log_level, "dev",
           "--state-dir", str(state_dir), "--port", "0", "--api-port", "0", *extra]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    port = api_port = None
    while port is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            process.kill()
            raise RuntimeError("hd dev did not become ready:\n" + "".join(output))
        try:
            line = lines.get(timeout=min(remaining, 1.0))
        except queue.Empty:
            continue
        if line.startswith("HD_API_READY port="):
            api_port = int(line.split("=", 1)[1])
        if line.startswith("HD_READY port="):
            port = int(line.split("=", 1)[1])
    key = (state_dir / "owner.key").read_text().strip()
    user = next(part.split("=", 1)[1] for line in output for part in line.split()
                if part.startswith("user="))
    return EngineHostProcess(process, state_dir, port, user, key, output, api_port)


def query_audit_records(state_dir: Path) -> list[dict[str, Any]]:
    """Every complete query audit record a local host has written so far, oldest file first.

    The host appends one JSON line per record while tests read: a line without its newline is still
    being written and is left for the next read, never parsed half."""
    records = []
    for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl")):
        complete = path.read_text().split("\n")[:-1]
        records += [json.loads(line) for line in complete if line.strip()]
    return records


DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres connect_timeout=5"


def reference_postgres_dsn() -> str | None:
    """DSN of a real PostgreSQL to compare against ($HD_TEST_PG_DSN or the local default), if reachable."""
    import psycopg

    dsn = os.environ.get("HD_TEST_PG_DSN", DEFAULT_PG_DSN)
    try:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return None
    return dsn


_T = TypeVar("_T")


class BackgroundLoop:
    """An event loop on a thread of its own, so blocking clients can talk to an in-process host from a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 60) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class AuditStorageDown(HdError):
    code = "HD_ERR_AUDIT_UNAVAILABLE"


class SwitchableAuditSink:
    """An in-memory audit sink that can be made to fail, as audit storage that has gone away."""

    def __init__(self) -> None:
        self.failing = False
        self.records: list[Mapping[str, object]] = []

    def write(self, record: Mapping[str, object]) -> None:
        if self.failing:
            raise AuditStorageDown("audit storage unavailable")
        self.records.append(record)


@contextmanager
def in_process_host(state_dir: Path) -> Iterator[tuple[LocalEngineHost, SwitchableAuditSink, str]]:
    """A local engine host in this process (plaintext, any free port) auditing to a switchable sink.

    Yields the host, its audit sink and the Owner's key; stops the host and its loop at the end.
    """
    from engine_host.runtime.local import LocalConfig, LocalEngineHost

    loop = BackgroundLoop()
    sink = SwitchableAuditSink()
    engine = LocalEngineHost(LocalConfig(state_dir=state_dir, port=0, insecure_plaintext=True), audit_sink=sink)
    loop.run(engine.start())
    try:
        yield engine, sink, (state_dir / "owner.key").read_text().strip()
    finally:
        loop.run(engine.stop())
        loop.close()


def sqlite_root_page(data: bytes, table: str) -> int:
    """The root page of `table` in the SQLite database image `data` (an interior page once it has many rows).

    Found by name, not by offset: every migration that adds a table moves the pages after it.
    """
    image = sqlite3.connect(":memory:")
    try:
        image.deserialize(data[:18] + b"\x01\x01" + data[20:])  # header bytes 18-19: rollback journal, not WAL
        return int(image.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0])
    finally:
        image.close()


def overwrite_sqlite_page(data: bytes, page: int, size: int = 4096) -> bytes:
    """`data` with page number `page` (1-based) overwritten by garbage: damage that only quick_check finds."""
    return data[: (page - 1) * size] + b"\x5a" * size + data[page * size :]
