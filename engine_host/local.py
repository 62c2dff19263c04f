"""Local mode (`hd dev`): the engine host on one machine with embedded defaults and no setup.

State directory layout (default `~/.hd`, or `HD_STATE_DIR`):
    control.sqlite3          organisations, users, API keys (SQLite ControlStore)
    owner.key                the Owner API key, mode 0600, written on first start
    tls/server.crt, .key     self-signed certificate generated on first start
    data/<schema>/<table>/   Parquet files; each folder is a table `<schema>.<table>`
    engine.duckdb            DuckDB database file for writable tables
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from engine_host.demo import write_demo_dataset
from engine_host.engine.catalog import CatalogResponder
from engine_host.engine.duckdb_engine import Database
from engine_host.engine.tables import register_parquet_tables
from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.tls import ensure_self_signed_certificate, server_ssl_context
from engine_host.wire.server import PgServer
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner, ensure_pepper

log = logging.getLogger(__name__)

DATABASE_NAME = "hd"


def default_state_dir() -> Path:
    return Path(os.environ.get("HD_STATE_DIR") or Path.home() / ".hd")


@dataclass(frozen=True)
class LocalConfig:
    state_dir: Path
    port: int = 5439
    host: str = "127.0.0.1"
    demo: bool = False
    insecure_plaintext: bool = False
    shutdown_grace_seconds: float = 10.0


@dataclass(frozen=True)
class Banner:
    """What a newcomer needs to connect, printed at startup."""

    port: int
    user: str
    key_file: Path
    new_key: bool
    plaintext_allowed: bool

    def render(self) -> str:
        psql = (f'PGPASSWORD="$(cat {self.key_file})" psql '
                f'"host=127.0.0.1 port={self.port} dbname={DATABASE_NAME} user={self.user} sslmode=require"')
        lines = [
            f"Hardened Duck engine host listening on 127.0.0.1:{self.port} (TLS 1.3 only"
            + (", plaintext allowed on loopback)" if self.plaintext_allowed else ")"),
            f"Owner API key {'created and ' if self.new_key else ''}stored in {self.key_file} (mode 0600)",
            "Connect with:",
            f"  {psql}",
        ]
        return "\n".join(lines)


class LocalEngineHost:
    """Builds and runs every part of the engine host from a state directory."""

    def __init__(self, config: LocalConfig):
        self.config = config
        self.state_dir = config.state_dir.expanduser().resolve()
        self.data_dir = self.state_dir / "data"
        self.store: SqliteControlStore | None = None
        self.database: Database | None = None
        self.server: PgServer | None = None
        self.banner: Banner | None = None

    async def start(self) -> Banner:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        store = SqliteControlStore(self.state_dir / "control.sqlite3")
        self.store = store
        owner = bootstrap_local_owner(store, ApiKeyHasher())
        key_file = self.state_dir / "owner.key"
        if owner.api_key_plaintext is not None:
            _write_secret(key_file, owner.api_key_plaintext + "\n")
        if self.config.demo:
            tables = write_demo_dataset(self.data_dir)
            log.info("demo dataset ready: %s", ", ".join(f"{s}.{t}" for s, t in tables))
        authenticator = ApiKeyAuthenticator(store, ensure_pepper(store))
        catalog = CatalogResponder()
        database = Database(self.state_dir / "engine.duckdb", allowed_directories=[self.data_dir])
        database.open(setup=[self._register_tables, catalog.install])
        self.database = database
        cert, key = ensure_self_signed_certificate(self.state_dir / "tls")
        self.server = PgServer(
            StatementPipeline(database, catalog),
            authenticator.authenticate,
            ssl_context=server_ssl_context(cert, key),
            host=self.config.host,
            port=self.config.port,
            allow_plaintext=self.config.insecure_plaintext,
        )
        await self.server.start()
        self.banner = Banner(self.server.port, owner.user.user_id, key_file, owner.api_key_plaintext is not None,
                             self.config.insecure_plaintext)
        return self.banner

    def _register_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        tables = register_parquet_tables(con, self.data_dir)
        log.info("registered %d Parquet tables from %s", len(tables), self.data_dir)

    async def stop(self) -> None:
        """Finish or cancel in-flight statements, then make everything written durable."""
        if self.server is not None:
            await self.server.shutdown(self.config.shutdown_grace_seconds)
            self.server = None
        if self.database is not None:
            self.database.checkpoint()
            self.database.close()
            self.database = None
        if self.store is not None:
            self.store.close()
            self.store = None


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed


async def run_local(config: LocalConfig, announce: Callable[[str], None] = print) -> None:
    """Run local mode until SIGINT or SIGTERM, then shut down cleanly."""
    host = LocalEngineHost(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        banner = await host.start()
        announce(banner.render())
        announce(f"HD_READY port={banner.port}")
        await stop.wait()
        announce("shutting down: finishing in-flight statements")
    finally:
        await host.stop()
    announce("stopped")
