"""Local mode (`hd dev`): the engine host on one machine with embedded defaults and no setup.

State directory layout (default `~/.hd`, or `HD_STATE_DIR`):
    control.sqlite3          organisations, users, API keys (SQLite ControlStore)
    owner.key                the Owner API key, mode 0600, written on first start
    tls/server.crt, .key     self-signed certificate generated on first start
    data/<schema>/<table>/   Parquet files; each folder is a table `<schema>.<table>`
    engine.duckdb            DuckDB database file for writable tables
    audit/queries/YYYY/MM/DD/<host>.jsonl   one query audit record per statement
    audit/iam-checkpoints/<org>/             signed checkpoints of each organisation's IAM audit chain
    audit/query-checkpoints/<chain>/         signed checkpoints of each host's daily query audit chain
    keys/local-keys.json     DEV ONLY stand-in for KMS: JWT signing keys, checkpoint key, data-key wrap key
    demo-keys/<name>.key     with --demo: API keys of the demo people (see engine_host/devmode/demo_policies.py)
    policies.json            optional: policies loaded at every start (format: hd_core/policy_codec.py)

Policies live in the control store; `hd local-policy add/list/remove` edits them, and a running host
picks up every change within about a second. The control API (the same Lambda handlers as in AWS)
listens on 127.0.0.1:8080 and shares the control store with the engine host.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from engine_host.boot.region_pin import check_data_source_region
from engine_host.data.cached_tables import CachedTables
from engine_host.data.object_cache import ObjectCache
from engine_host.data.table_sources import LocalFolderTables, NativeCache, ObjectStoreTables, TableSource
from engine_host.devmode.control_server import ControlApiServer
from engine_host.devmode.demo import write_demo_dataset
from engine_host.devmode.demo_policies import ACME, install_demo
from engine_host.engine.masking import ensure_mask_keys
from engine_host.engine.memory import EngineMemory
from engine_host.ops.health_server import HealthServer
from engine_host.ops.metrics import HostMetrics
from engine_host.pipeline.governor import HostLimits
from engine_host.pipeline.policy_preview import EnginePolicyPreview
from engine_host.runtime.erasure import local_erasure_services
from engine_host.runtime.host import EngineHost, HostHooks, HostSettings
from engine_host.runtime.local_state import (
    StateRefused,
    check_engine_database,
    damaged_store_advice,
    earlier_state,
    refuse_missing_store,
    start_afresh,
)
from engine_host.wire.credentials import EngineCredentials
from engine_host.wire.limits import ConnectionLimits
from engine_host.wire.server import PgServer
from engine_host.wire.tls import ensure_self_signed_certificate, server_ssl_context
from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.adapters.local_audit_exports import LocalFolderAuditExports
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import LocalInterpreterExecutions, local_replay_services
from hd_core.adapters.s3_objects import s3_source_from_url
from hd_core.adapters.sqlite_store import ControlStoreUnusable, SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import BootstrapRefused, bootstrap_local_owner, ensure_environments
from hd_core.control_settings import ControlApiSettings
from hd_core.errors import HdError, KeyUnavailable
from hd_core.object_source import ObjectChanged
from hd_core.policy_codec import load_policy_file
from hd_core.policy_preview import install_policy_engine
from hd_core.ports import AuditSink
from hd_core.query_audit_chain import CHECKPOINT_FOLDER as QUERY_CHECKPOINT_FOLDER
from hd_core.query_audit_chain import (
    OWED_SETTLE,
    QUERY_CHECKPOINT_MESSAGE_TYPE,
    QueryChainCheckpointer,
    QueryChainStores,
    sign_owed_query_checkpoints,
)
from hd_core.services import ControlServices, assemble_services, write_due_checkpoints
from hd_core.shadow.replay import EngineEndpoint, control_key_revoker
from hd_core.shadow.sample_masks import control_masking

log = logging.getLogger(__name__)

DATABASE_NAME = "hd"


class PortInUse(HdError):
    """A port `hd dev` was asked to listen on is taken; the message names it and the flag that moves it."""

    code = "HD_ERR_PORT_IN_USE"


def _port_in_use(host: str, port: int, flag: str, what: str) -> PortInUse:
    return PortInUse(f"port {port} on {host} ({what}) is already in use, perhaps by another `hd dev`: stop that, or "
                     f"choose another port with {flag} N (0 = any free port)")


@contextmanager
def _listening(host: str, port: int, flag: str, what: str) -> Iterator[None]:
    """Turn an 'address in use' from binding `port` into `PortInUse` (another process won the race)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _port_in_use(host, port, flag, what) from None
        raise


def refuse_taken_ports(host: str, ports: list[tuple[int | None, str, str]]) -> None:
    """Raise `PortInUse` for the first of (port, flag, what) another process listens on, before anything is written.

    Bound as the servers bind (SO_REUSEADDR), so a port left in TIME_WAIT by a stopped `hd dev` is free.
    """
    for port, flag, what in ports:
        if not port:  # None: not served; 0: any free port
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with _listening(host, port, flag, what):
                probe.bind((host, port))


@dataclass(frozen=True)
class LocalConfig:
    state_dir: Path
    port: int = 5439
    host: str = "127.0.0.1"
    demo: bool = False
    insecure_plaintext: bool = False
    shutdown_grace_seconds: float = 10.0
    limits: HostLimits = field(default_factory=HostLimits)
    policy_poll_seconds: float = 1.0
    usage_flush_seconds: float = 5.0
    api_port: int | None = None  # the local control API (`hd dev` asks for 8080); None: do not serve it
    data_source: str | None = None  # s3://bucket/prefix/: serve that bucket's tables through a local cache
    cache_capacity_bytes: int | None = None  # None: half the free space of the state directory's disk
    metrics_port: int | None = None  # Prometheus /metrics, /healthz and /readyz; None: not served
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    memory: EngineMemory = field(default_factory=EngineMemory)  # DuckDB's memory limit, spill folder, result caps


@dataclass(frozen=True)
class Banner:
    """What a newcomer needs to connect, printed at startup."""

    port: int
    user: str
    key_file: Path
    new_key: bool
    plaintext_allowed: bool
    demo_keys: dict[str, Path] | None = None
    api_port: int | None = None
    org_id: str = ""
    environments: tuple[tuple[str, str], ...] = ()  # (name, env id) of the Owner's organisation
    metrics_port: int | None = None
    key_file_missing: bool = False  # the Owner is recorded but its key file was deleted
    owner_email: str = ""
    owner_has_password: bool = True

    def render(self) -> str:
        psql = (f'PGPASSWORD="$(cat {self.key_file})" psql '
                f'"host=127.0.0.1 port={self.port} dbname={DATABASE_NAME} user={self.user} sslmode=require"')
        lines = [
            f"Hardened Duck engine host listening on 127.0.0.1:{self.port} (TLS 1.3 only"
            + (", plaintext allowed on loopback)" if self.plaintext_allowed else ")"),
            self._key_line(),
            *self._password_lines(),
            "Connect with:",
            f"  {psql}",
        ]
        if self.api_port is not None:
            lines += [
                f"Control API on http://127.0.0.1:{self.api_port} (OpenAPI: /v1/openapi.json), for example:",
                f'  curl -H "X-API-Key: $(cat {self.key_file})" '
                f"http://127.0.0.1:{self.api_port}/v1/organizations/{self.org_id}/users",
                "  environments: " + ", ".join(f"{name} {env_id}" for name, env_id in self.environments),
            ]
        if self.metrics_port is not None:
            lines.append(f"Prometheus metrics on http://127.0.0.1:{self.metrics_port}/metrics (also /healthz, /readyz)")
        if self.demo_keys:
            lines.append("Demo people (each sees what the demo policies allow; keys in "
                         f"{next(iter(self.demo_keys.values())).parent}):")
            lines += [f"  {name:15s} user usr_demo_{name.replace('-', '_')}, key {path.name}"
                      for name, path in self.demo_keys.items()]
        return "\n".join(lines)

    def _key_line(self) -> str:
        if self.key_file_missing:
            return (f"Owner API key file {self.key_file} is missing: run `hd reissue-owner-key --state-dir "
                    f"{self.key_file.parent}` to revoke the lost key and write a new one (recorded in the IAM audit "
                    "trail)")
        return (f"Owner API key {'created and ' if self.new_key else ''}stored in {self.key_file} (mode 0600; "
                f"lost or leaked: `hd reissue-owner-key --state-dir {self.key_file.parent}`)")

    def _password_lines(self) -> list[str]:
        if self.owner_has_password:
            return []
        return [f"The Owner is {self.owner_email} with no password (the API key is its only credential); to log in "
                "to the control API with a password, set one with:",
                f"  hd set-owner-password --state-dir {self.key_file.parent}"]


class LocalEngineHost:
    """Builds and runs every part of the engine host from a state directory."""

    def __init__(self, config: LocalConfig, *, audit_sink: AuditSink | None = None):
        """`audit_sink` replaces the local audit folder (tests use it to make the sink fail)."""
        self.config = config
        self._audit_override = audit_sink
        self.state_dir = config.state_dir.expanduser().resolve()
        self.data_dir = self.state_dir / "data"
        self.store: SqliteControlStore | None = None
        self.engine: EngineHost | None = None
        self.banner: Banner | None = None
        self.control_api: ControlApiServer | None = None
        self.metrics: HostMetrics | None = None
        self.health: HealthServer | None = None
        self._control: ControlServices | None = None
        self._checkpointer: threading.Thread | None = None
        self._shadow_executions: LocalInterpreterExecutions | None = None
        self._stopping = threading.Event()

    @property
    def server(self) -> PgServer | None:
        return self.engine.server if self.engine is not None else None

    async def start(self) -> Banner:
        """Check the ports and the state folder (refusing, with what to do, anything taken, damaged or
        inconsistent), then serve."""
        host = self.config.host
        refuse_taken_ports(host, [(self.config.port, "--port", "the Postgres port"),
                                  (self.config.api_port, "--api-port", "the control API"),
                                  (self.config.metrics_port, "--metrics-port", "the metrics endpoint")])
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = earlier_state(self.state_dir)
        store_path = self.state_dir / "control.sqlite3"
        refuse_missing_store(store_path, found)
        try:
            store = SqliteControlStore(store_path)
        except ControlStoreUnusable as exc:
            raise StateRefused(f"{exc}: {damaged_store_advice(store_path)}") from None
        self.store = store
        check_engine_database(self.state_dir / "engine.duckdb")
        cert, key = ensure_self_signed_certificate(self.state_dir / "tls")
        self.data_dir.mkdir(exist_ok=True)
        hasher = ApiKeyHasher()
        try:
            owner = bootstrap_local_owner(store, hasher, org_id=ACME if self.config.demo else None,
                                          org_name="Acme Corp (demo)" if self.config.demo else "Local Dev Org",
                                          earlier_state=found)
        except BootstrapRefused as exc:
            raise StateRefused(f"control store {store_path}: {exc}: restore control.sqlite3 from a backup, or "
                               f"{start_afresh(self.state_dir)}") from None
        key_file = self.state_dir / "owner.key"
        if owner.api_key_plaintext is not None:
            _write_secret(key_file, owner.api_key_plaintext + "\n")
        keys = LocalKeyFile(self.state_dir / "keys" / "local-keys.json", create_missing=owner.created)
        try:
            keys.check()
        except KeyUnavailable as exc:
            raise StateRefused(str(exc)) from None
        demo_keys = None
        self._finish_interrupted_swaps()
        if self.config.demo:
            written = write_demo_dataset(self.data_dir)
            log.info("demo dataset ready: %s", ", ".join(f"{s}.{t}" for s, t in written))
            demo_keys = install_demo(store, hasher, self.state_dir)
        policy_file = self.state_dir / "policies.json"
        if policy_file.exists():
            for obj in load_policy_file(policy_file):
                store.put_policy(obj)
        # The engine accepts API keys, and JWTs from the control API (verified with the same key file);
        # it shares the control API's key cache and brute-force throttle (HD_AUTH_* settings).
        control = self._control_services(store, keys)
        # A host of this state folder that died (kill -9, a crash) left its chain's tail unsigned, and nothing
        # else signs it: sign every such head now, before this host serves (or writes) anything.
        self._sign_owed_query_checkpoints(control, settle=timedelta(0))
        authenticator = control.api_keys
        self.metrics = HostMetrics() if self.config.metrics_port is not None else None
        credentials = EngineCredentials(authenticator, control.requests,
                                        on_failure=self.metrics.auth_failed if self.metrics else None)
        settings = HostSettings(
            host=self.config.host, port=self.config.port, allow_plaintext=self.config.insecure_plaintext,
            shutdown_grace_seconds=self.config.shutdown_grace_seconds, limits=self.config.limits,
            connections=self.config.connections, memory=self.config.memory,
            policy_poll_seconds=self.config.policy_poll_seconds, usage_flush_seconds=self.config.usage_flush_seconds,
        )
        self.engine = EngineHost(
            settings, store=store, authenticate=credentials.authenticate,
            audit_sink=self._audit_override or LocalFolderAuditSink(
                self.state_dir, host_id=f"local-{os.getpid()}", checkpointer=QueryChainCheckpointer(
                    LocalFolderCheckpointStore(self.state_dir, QUERY_CHECKPOINT_FOLDER,
                                               message_type=QUERY_CHECKPOINT_MESSAGE_TYPE),
                    control.checkpoint_keys)),  # the ring's current key: it follows checkpoint-key rotation
            tables=self._table_source(), database_path=self.state_dir / "engine.duckdb",
            ssl_context=server_ssl_context(cert, key), default_org_id=owner.org.org_id,
            mask_keys=lambda: ensure_mask_keys(store, control.keys, keep_legacy_plaintext=True),
            hooks=HostHooks(metrics=self.metrics),
        )
        engine = self.engine
        if self.metrics is not None and self.config.metrics_port is not None:
            with _listening(host, self.config.metrics_port, "--metrics-port", "the metrics endpoint"):
                self.health = HealthServer(self.metrics, self.config.host, self.config.metrics_port,
                                           readiness={"policy_snapshot": lambda: engine.ready})
            self.health.start()
        with _listening(host, self.config.port, "--port", "the Postgres port"):
            await self.engine.start()
        environments = tuple((env.name, env.env_id) for env in ensure_environments(store, owner.org.org_id))
        for org in store.list_orgs():
            ensure_environments(store, org.org_id)
        if self.config.api_port is not None:
            self._start_control_api(control, self.config.api_port)
        assert self.engine.server is not None
        self.banner = Banner(self.engine.server.port, owner.user.user_id, key_file,
                             owner.api_key_plaintext is not None, self.config.insecure_plaintext, demo_keys,
                             api_port=self.control_api.port if self.control_api else None,
                             org_id=owner.org.org_id, environments=environments,
                             metrics_port=self.health.port if self.health else None,
                             key_file_missing=not key_file.exists(), owner_email=owner.user.email,
                             owner_has_password=owner.user.password_hash is not None)
        return self.banner

    def _table_source(self) -> TableSource:
        """The data folder, or with `--data-source s3://...` the bucket through a cache in the state directory."""
        cache_dir = self.state_dir / "cache"
        cache_dir.mkdir(mode=0o700, exist_ok=True)
        capacity = self.config.cache_capacity_bytes or shutil.disk_usage(cache_dir).free // 2
        if self.config.data_source is None:
            return LocalFolderTables(self.data_dir, NativeCache(cache_dir, capacity))
        source = s3_source_from_url(self.config.data_source)
        check_data_source_region(self.config.data_source)  # before a byte of it is cached here
        cache = ObjectCache(source, cache_dir, capacity)
        return ObjectStoreTables(CachedTables(source, cache), cache)

    def _start_control_api(self, control: ControlServices, port: int) -> None:
        """Serve the control-plane Lambdas over HTTP, around this host's own store and key cache."""
        # EMF metrics go to stdout inside Lambda and traces to an X-Ray daemon; locally there is
        # neither, and they would only clutter the terminal and slow the start.
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
        with _listening(self.config.host, port, "--api-port", "the control API"):
            server = ControlApiServer(self.config.host, port)
        assert self.engine is not None and self.engine.server is not None
        # Shadow replays reach this host's engine over the wire like any client (governance and audit apply).
        wildcard = self.config.host in ("0.0.0.0", "::", "")  # noqa: S104 - recognising one, not binding
        engine = EngineEndpoint("127.0.0.1" if wildcard else self.config.host, self.engine.server.port,
                                sslmode="disable" if self.config.insecure_plaintext else "require")
        # A mismatch's rows are masked with the engine's rules and its mask keys (hd_core/shadow/sample_masks.py).
        masking = control_masking(control.store, lambda env: ensure_mask_keys(
            control.store, control.keys, keep_legacy_plaintext=True).get(env))
        shadow = local_replay_services(self.state_dir, control.keys, engine,
                                       revoke_key=control_key_revoker(control.store, control.trail, control.api_keys),
                                       sample_masks=masking)
        # Dry runs count rows and explain plans statements on this host's engine (hd_core/policy_preview.py).
        assert self.engine.pipeline is not None and self.engine.database is not None
        install_policy_engine(EnginePolicyPreview(self.engine.pipeline.governor, self.engine.database))
        # Forget requests run at once, on this host's data and writable tables (engine_host/runtime/erasure.py).
        server.start(control, shadow=shadow,
                     erasure=local_erasure_services(self.engine, control, self.data_dir, self.config.data_source))
        if isinstance(shadow.executions, LocalInterpreterExecutions):
            # A replay that was running when the last process stopped (or died) carries on where it was.
            self._shadow_executions = shadow.executions
            shadow.executions.resume()
        self.control_api = server
        self._control = control
        self._checkpointer = threading.Thread(target=self._checkpoint_chains, name="hd-iam-checkpoints", daemon=True)
        self._checkpointer.start()

    def _checkpoint_chains(self) -> None:
        """What the EventBridge schedule does in AWS: sign every IAM chain that grew, every interval."""
        interval = ControlApiSettings().checkpoint_interval_minutes * 60
        while not self._stopping.wait(interval):
            self._write_due_checkpoints()

    def _write_due_checkpoints(self) -> None:
        if self._control is None:
            return
        try:
            write_due_checkpoints(self._control)
        except Exception:  # the next tick (or the next append) retries
            log.exception("IAM chain checkpoint failed")
        self._sign_owed_query_checkpoints(self._control, settle=OWED_SETTLE)

    def _finish_interrupted_swaps(self) -> None:
        """An erasure that stopped part-way through swapping a table's files in the data folder (a crash) left
        its manifest: finish it before anything reads the folder in place (hd_core/table_swaps.py)."""
        from hd_core.adapters.erasure_objects import LocalFolderTableObjects
        from hd_core.table_swaps import SwapManifestInvalid, finish_interrupted_swaps

        try:
            finished = finish_interrupted_swaps(LocalFolderTableObjects(self.data_dir), self.data_dir)
        except (SwapManifestInvalid, ObjectChanged) as exc:
            raise StateRefused(f"an interrupted erasure left {self.data_dir} half swapped and it cannot be "
                               f"finished: {exc}; run the failed forget request again (hd forget --list)") from None
        for table in finished:
            log.warning("finished the swap of %s that an interrupted erasure left in the data folder", table)

    @staticmethod
    def _sign_owed_query_checkpoints(control: ControlServices, *, settle: timedelta) -> None:
        """What the AWS schedule does for hosts that stopped without signing their query chain's head."""
        if control.query_chain is None:
            return
        try:
            owed = sign_owed_query_checkpoints(control.query_chain, control.checkpoint_keys, settle=settle)
        except Exception:  # the folder could not even be listed: the next tick (or start) retries
            log.exception("query audit checkpoints owed by stopped hosts could not be signed")
            return
        for item in owed:
            if item.outcome == "signed":
                log.warning("signed the query audit head %s at %d, which its host left unsigned", item.chain_id,
                            item.size)

    def _control_services(self, store: SqliteControlStore, keys: LocalKeyFile) -> ControlServices:
        """The control plane's services on this host's store and state directory, configured by `HD_*` variables."""
        return assemble_services(
            ControlApiSettings(),
            store=store,
            keys=keys,
            checkpoints=LocalFolderCheckpointStore(self.state_dir),
            query_audit=LocalFolderAuditArchive(self.state_dir),
            audit_exports=LocalFolderAuditExports(self.state_dir),
            query_chain=QueryChainStores(LocalFolderAuditArchive(self.state_dir),
                                         LocalFolderCheckpointStore(self.state_dir, QUERY_CHECKPOINT_FOLDER,
                                                                    message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)),
        )

    async def stop(self) -> None:
        """Finish or cancel in-flight statements, then make everything written durable."""
        self._stopping.set()
        if self._shadow_executions is not None:
            # Replays stop before their next state and stay RUNNING on disk: the next start resumes them. Waited
            # for off the loop, which serves the statements of the batches still under way.
            await asyncio.to_thread(self._shadow_executions.stop, self.config.shutdown_grace_seconds)
            self._shadow_executions = None
        if self.control_api is not None:
            self.control_api.stop()
            install_policy_engine(None)
            if self._checkpointer is not None:
                self._checkpointer.join(timeout=5)
            self._write_due_checkpoints()  # seal the tail: nothing appended today goes unsigned
            self.control_api = None
            self._control = None
        if self.engine is not None:
            await self.engine.stop()
            if isinstance(self.engine.audit_sink, LocalFolderAuditSink):
                self.engine.audit_sink.close()
            self.engine = None
        if self.health is not None:
            self.health.stop()
            self.health = None
        if self.store is not None:
            self.store.close()
            self.store = None


def _write_secret(path: Path, text: str) -> None:
    """Write a new secret file, owner-only; an existing file is never overwritten (it may hold the only copy)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StateRefused(f"{path} appeared while a new Owner was being made; it was left as it is: move it away "
                           "and start again") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


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
        if banner.api_port is not None:
            announce(f"HD_API_READY port={banner.api_port}")
        announce(f"HD_READY port={banner.port}")
        await stop.wait()
        announce("shutting down: finishing in-flight statements")
    finally:
        await host.stop()
    announce("stopped")
