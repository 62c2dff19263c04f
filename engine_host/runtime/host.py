"""The engine host's moving parts, composed once for both local mode and a fleet instance.

What differs between `hd dev` (engine_host/runtime/local.py) and `hd engine serve` (engine_host/runtime/fleet.py) is
handed in: the control store, how credentials are checked, where audit records go, where table data
comes from (a local folder, or the object store through the encrypted cache), and the TLS context.
Everything else (the locked-down DuckDB, the governance pipeline, the wire server, the policy
watcher and the usage flush) is built here, in one order:

1. DuckDB is opened, set up (tables, catalog objects, masking macros) and locked down.
2. The wire server starts listening: until the policy snapshot is in, clients get 57P03, not a hang.
3. The policy snapshot is loaded and watched; usage is flushed every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine_host.data.native_tables import NativeTables
from engine_host.data.table_sources import TableSource
from engine_host.engine.duckdb_engine import Database
from engine_host.engine.masking import install_mask_macros
from engine_host.engine.memory import EngineMemory
from engine_host.engine.table_catalog import TableCatalog
from engine_host.ops.metrics import HostMetrics, gate_reading
from engine_host.ops.quota_utilisation import quota_reader
from engine_host.ops.tracing import StatementTracer, statement_tracer_from_environment
from engine_host.pgcompat.catalog import CatalogResponder
from engine_host.pipeline.governor import AuditWriter, Governor, HostLimits
from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.pipeline.policy_state import PolicyState
from engine_host.runtime.erasure import ErasureWatcher, FleetErasureIdentity, host_erasures
from engine_host.wire.limits import ConnectionLimits
from engine_host.wire.server import Admission, Authenticate, PgServer
from hd_core.catalog_schemas import CatalogRecorder
from hd_core.metering import UsageMeter
from hd_core.phi_disclosures import disclosure_key
from hd_core.ports import AuditSink, ControlStore
from hd_core.table_owners import record_registered_owners

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostSettings:
    """Listening, limits and timings of one engine host."""

    host: str = "127.0.0.1"
    port: int = 5439
    allow_plaintext: bool = False
    shutdown_grace_seconds: float = 10.0
    limits: HostLimits = field(default_factory=HostLimits)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    memory: EngineMemory = field(default_factory=EngineMemory)
    policy_poll_seconds: float = 1.0
    usage_flush_seconds: float = 5.0
    # None: DuckDB's own default (every core) and PgServer's (the concurrency limit plus spare threads);
    # a fleet host sets both from its size (engine_host/boot/sizing.py).
    duckdb_threads: int | None = None
    worker_threads: int | None = None
    # Where statement spans go (a fleet host's EngineConfig.otel_endpoint); None: HD_OTEL_ENDPOINT, or no tracing.
    otel_endpoint: str | None = None


@dataclass
class HostHooks:
    """Optional parts around the host: the heartbeat gate's admission check, metrics, and on a fleet host who it
    is to GDPR forget requests (it erases its own writable tables for them)."""

    admission: Admission | None = None
    metrics: HostMetrics | None = None
    erasure: FleetErasureIdentity | None = None


class EngineHost:
    """The database, the pipeline and the wire server around one control store."""

    def __init__(self, settings: HostSettings, *, store: ControlStore, authenticate: Authenticate,
                 audit_sink: AuditSink, tables: TableSource, database_path: Path | None,
                 ssl_context: ssl.SSLContext | None, default_org_id: str,
                 mask_keys: Callable[[], Mapping[str, bytes]], hooks: HostHooks | None = None) -> None:
        """`mask_keys` gives the hash-mask keys at start (see `engine.masking.ensure_mask_keys`)."""
        self.settings = settings
        self.store = store
        self._authenticate = authenticate
        self.audit_sink = audit_sink
        self.table_source = tables
        self._database_path = database_path
        self._ssl_context = ssl_context
        self._default_org_id = default_org_id
        self._mask_keys = mask_keys
        self._hooks = hooks or HostHooks()
        self.database: Database | None = None
        self.tables: TableCatalog | None = None
        self.policies: PolicyState | None = None
        self.meter: UsageMeter | None = None
        self.pipeline: StatementPipeline | None = None
        self.server: PgServer | None = None
        self._stopping = threading.Event()
        self._flusher: threading.Thread | None = None
        self.erasure_watcher: ErasureWatcher | None = None
        self._catalog_recorder: CatalogRecorder | None = None
        self.tracer: StatementTracer | None = None  # HD_OTEL_ENDPOINT's spans; None (off) by default

    @property
    def ready(self) -> bool:
        """Whether the policy snapshot is loaded (the host answers statements)."""
        return self.policies is not None and self.policies.ready

    async def start(self) -> None:
        # First: a bad endpoint stops the start.
        self.tracer = statement_tracer_from_environment(configured=self.settings.otel_endpoint)
        catalog = CatalogResponder()
        database = Database(self._database_path, allowed_directories=self.table_source.allowed_directories,
                            memory=self.settings.memory, threads=self.settings.duckdb_threads)
        mask_keys = self._mask_keys()
        database.open(setup=[self.table_source.register, catalog.install,
                             lambda con: install_mask_macros(con, mask_keys)])
        self.database = database
        self.tables = TableCatalog(database.connection)
        await asyncio.get_running_loop().run_in_executor(
            None, self.table_source.attach, database.connection, self.tables)
        self.policies = PolicyState(self.store, interval_seconds=self.settings.policy_poll_seconds)
        self.meter = UsageMeter(self.store)
        metrics = self._hooks.metrics
        writer = AuditWriter(self.audit_sink, on_record=metrics.observe_statement if metrics else None,
                             on_write_failure=metrics.audit_write_failed if metrics else None,
                             phi_key=disclosure_key(mask_keys["live"]) if "live" in mask_keys else None)
        # The native copies' precomputed hash masks, where the table source keeps copies (data/stored_masks.py).
        native = getattr(self.table_source, "native", None)
        stored_masks = native.stored_masks if isinstance(native, NativeTables) else None
        governor = Governor(policies=self.policies, tables=self.tables, store=self.store, audit=writer,
                            meter=self.meter, default_org_id=self._default_org_id, limits=self.settings.limits,
                            stored_masks=stored_masks, tracer=self.tracer)
        self.pipeline = StatementPipeline(database, governor, catalog, table_data=self.table_source.table_data)
        self.server = PgServer(
            self.pipeline,
            self._authenticate,
            ssl_context=self._ssl_context,
            host=self.settings.host,
            port=self.settings.port,
            allow_plaintext=self.settings.allow_plaintext,
            worker_threads=self.settings.worker_threads,
            admission=self._hooks.admission,
            limits=self.settings.connections,
        )
        if metrics is not None:
            self._bind_metrics(metrics, self.server, governor)
        await self.server.start()
        # Listening before the snapshot is in: early connections get 57P03 (the startup gate), not a hang.
        tables = self.tables
        tables.on_change.append(self._record_registered_owners)  # tables an S3 prefix gains later
        await asyncio.get_running_loop().run_in_executor(None, self._record_registered_owners, tables.names())
        # The control plane checks policies against the columns recorded here (hd_core/catalog_schemas.py).
        self._catalog_recorder = CatalogRecorder(self.store)
        tables.on_change.append(self._record_schemas)
        await asyncio.get_running_loop().run_in_executor(None, self._record_schemas, tables.names())
        # Erasures run elsewhere (the forget Lambda, another host) announce the tables they rewrote here; a fleet
        # host also erases its writable tables for waiting forget requests, once before the snapshot opens the gate.
        identity = self._hooks.erasure
        self.erasure_watcher = ErasureWatcher(self.store, self.table_source.invalidate, host_erasures=None if (
            identity is None) else host_erasures(identity, self.store, database, tables, self.table_source,
                                                 self.audit_sink))
        await asyncio.get_running_loop().run_in_executor(None, self.erasure_watcher.start)
        await asyncio.get_running_loop().run_in_executor(None, self.policies.load)
        self.policies.start()
        self._flusher = threading.Thread(target=self._flush_usage, name="hd-usage-flush", daemon=True)
        self._flusher.start()

    def _record_schemas(self, names: list[str]) -> None:
        """Every served table's columns and types, for the control plane's policy checks; dropped ones marked."""
        tables, recorder = self.tables, self._catalog_recorder
        if tables is None or recorder is None:
            return
        recorder.record({name: info.columns for name in names if (info := tables.get(name)) is not None})

    def _record_registered_owners(self, names: list[str]) -> None:
        """Tables registered from Parquet or an S3 prefix belong to the deployment's organisation (see README).

        Runs after every catalog change, DDL included: names the loaded snapshot already binds (a table
        created over the wire was claimed before it ran) cost no read of the store.
        """
        policies = self.policies
        if policies is not None and policies.ready:
            bound = {binding.table for binding in policies.snapshot.table_bindings}
            names = [name for name in names if name not in bound]
            if not names:
                return
        recorded = record_registered_owners(self.store, names, self._default_org_id)
        if recorded:
            log.info("recorded the deployment's organisation as owner of %d table(s)", len(recorded))

    def _bind_metrics(self, metrics: HostMetrics, server: PgServer, governor: Governor) -> None:
        """Gauges read at scrape time: sessions, the concurrency gate, quotas, and the cache if there is one."""
        metrics.bind_sessions(lambda: server.connection_count)
        metrics.bind_gate(gate_reading(governor.gate))
        assert self.policies is not None and self.meter is not None
        metrics.bind_quota(quota_reader(self.policies, self.meter))
        cache_stats = self.table_source.cache_stats
        if cache_stats is not None:
            metrics.bind_cache(cache_stats)

    def _flush_usage(self) -> None:
        while not self._stopping.wait(self.settings.usage_flush_seconds):
            self._flush_meter()

    def _flush_meter(self) -> None:
        if self.meter is not None:
            try:
                self.meter.flush()
            except Exception:  # kept pending and retried on the next tick
                log.exception("usage flush failed")

    async def stop(self) -> None:
        """Finish or cancel in-flight statements, then make everything written durable."""
        if self.server is not None:
            await self.server.shutdown(self.settings.shutdown_grace_seconds)
            self.server = None
        self._stopping.set()
        if self.erasure_watcher is not None:
            self.erasure_watcher.stop()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self._flush_meter()
        if self.policies is not None:
            self.policies.stop()
        if self.pipeline is not None:
            self.pipeline.governor.watchdog.stop()
        if self.tracer is not None:  # after the last statement's record: its spans go out with the rest
            self.tracer.shutdown()
            self.tracer = None
        self.table_source.close()
        if self.tables is not None:
            self.tables.close()
            self.tables = None
        if self.database is not None:
            self.database.checkpoint()
            self.database.close()
            self.database = None
