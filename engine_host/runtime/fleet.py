"""`hd engine serve`: the engine host as a fleet member, after `hd engine boot` has mounted the cache.

Everything comes from the provisioned configuration (engine_host/boot/config.py) and this instance's
identity (IMDSv2), re-checked against each other at every start, so a host moved to another region,
account, VPC or security group refuses to serve even if its disk came along:

- control state in DynamoDB, keys in KMS, query audit records group-committed to the audit bucket;
- table data from the data bucket through the object cache on the encrypted NVMe mount, with native
  DuckDB copies of the tables beside it in the same byte budget (`tables/native/`), the DuckDB
  database file (and so its spill directory) on that mount too, DuckDB allowed to read nothing else;
- the heartbeat to the customer's own control plane (the only destination it reports to), driving
  the gate that refuses new connections once the 4-hour grace period is over;
- Prometheus metrics, /healthz and /readyz on the metrics port; fleet totals to CloudWatch (scaling, alarms);
- concurrency and memory sized from the instance (engine_host/boot/sizing.py) unless the configuration says;
- a termination notice (scale-in, Spot interruption) drains the host; scale-in protection while it holds
  sessions (engine_host/runtime/fleet_lifecycle.py);
- a renewed certificate in the TLS secret is served to new connections without a restart;
- policy previews (dry runs, explain) the control API stores are answered here (hd_core/policy_previews.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine_host.boot.binding import check_binding
from engine_host.boot.cache_volume import describe_cache_key, require_usable_key
from engine_host.boot.cli import KnownIdentity, load_engine_config, run_engine_command
from engine_host.boot.config import EngineConfig
from engine_host.boot.imds import ImdsClient, InstanceIdentity
from engine_host.boot.region_pin import aws_region_lookup, check_region_pin
from engine_host.boot.sizing import HostSizing, derive_sizing, this_machine
from engine_host.boot.tls_material import install_tls_material
from engine_host.data.cached_tables import CachedTables
from engine_host.data.object_cache import ObjectCache
from engine_host.data.table_sources import ObjectStoreTables
from engine_host.engine.masking import ensure_mask_keys
from engine_host.engine.memory import EngineMemory
from engine_host.ops.cloudwatch import CloudWatchPublisher
from engine_host.ops.health_server import HealthServer, heartbeat_check
from engine_host.ops.metrics import HostMetrics
from engine_host.pipeline.governor import HostLimits
from engine_host.pipeline.policy_preview import EnginePolicyPreview, PreviewWorker
from engine_host.runtime.erasure import FleetErasureIdentity
from engine_host.runtime.fleet_lifecycle import (
    NOTICE_POLL_SECONDS,
    NoticeWatcher,
    ScaleInProtection,
    termination_notice,
)
from engine_host.runtime.heartbeat_loop import ControlPlaneHeartbeat, HeartbeatChannel, HeartbeatLoop, host_report
from engine_host.runtime.host import EngineHost, HostHooks, HostSettings
from engine_host.wire.credentials import EngineCredentials
from engine_host.wire.tls import (
    CertificateReloader,
    TlsFilesUnusable,
    ensure_self_signed_certificate,
    server_ssl_context,
)
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.adapters.s3_objects import S3ObjectSource
from hd_core.control_settings import ControlApiSettings
from hd_core.errors import HdError
from hd_core.query_audit_chain import CHECKPOINT_PREFIX as QUERY_CHECKPOINT_PREFIX
from hd_core.query_audit_chain import QUERY_CHECKPOINT_MESSAGE_TYPE, QueryChainCheckpointer
from hd_core.services import assemble_services

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/v1/fleet/heartbeat"
# How often the host re-reads its TLS secret for a renewed certificate (rotation writes a new version).
TLS_REFRESH_SECONDS = 600.0


class CacheNotMounted(HdError):
    """The cache mount is not a mounted filesystem: `hd engine boot` has not run (or failed) on this boot."""

    code = "HD_ERR_CACHE_NOT_MOUNTED"


class HeartbeatNotConfigured(HdError):
    """The configuration names no control plane to report to, so the host could never be confirmed."""

    code = "HD_ERR_HEARTBEAT_NOT_CONFIGURED"


@dataclass(frozen=True)
class AwsClients:
    """The boto3 clients the host uses (one of each; boto3 clients are safe to share across threads)."""

    s3: Any
    kms: Any
    dynamodb: Any
    cloudwatch: Any = None  # None: no CloudWatch metrics
    autoscaling: Any = None  # None: no scale-in protection
    secretsmanager: Any = None  # None: the TLS secret is not re-read for renewals

    @classmethod
    def for_region(cls, region: str) -> AwsClients:
        import boto3

        session = boto3.session.Session(region_name=region)
        return cls(s3=session.client("s3"), kms=session.client("kms"), dynamodb=session.client("dynamodb"),
                   cloudwatch=session.client("cloudwatch"), autoscaling=session.client("autoscaling"),
                   secretsmanager=session.client("secretsmanager"))


class FleetEngineHost:
    """One fleet instance's engine host, built from its configuration and identity."""

    def __init__(self, config: EngineConfig, identity: InstanceIdentity, clients: AwsClients, *,
                 heartbeat: HeartbeatChannel | None = None,
                 cache_mounted: Callable[[Path], bool] = os.path.ismount,
                 notices: Callable[[], str | None] | None = None, machine: tuple[int, int] | None = None,
                 tls_refresh_seconds: float = TLS_REFRESH_SECONDS,
                 notice_poll_seconds: float = NOTICE_POLL_SECONDS) -> None:
        """`heartbeat` replaces the SigV4 channel to `config.control_api_url` (tests use the in-process one);
        `notices` reports a coming termination (default: none; `run_serve` passes the IMDS check); `machine` is
        (vCPUs, memory bytes) to size from (default: this machine's)."""
        self.config = config
        self.identity = identity
        self.clients = clients
        self._heartbeat_channel = heartbeat
        self._cache_mounted = cache_mounted
        self._notices = notices
        self._tls_refresh_seconds = tls_refresh_seconds
        self._notice_poll_seconds = notice_poll_seconds
        vcpus, memory = machine or this_machine()
        self.sizing: HostSizing = derive_sizing(
            vcpus, memory, max_concurrent_statements=config.max_concurrent_statements,
            max_queued_statements=config.max_queued_statements, worker_threads=config.worker_threads,
            duckdb_threads=config.duckdb_threads, memory_limit_bytes=config.memory_limit_bytes)
        self.metrics = HostMetrics()
        self.engine: EngineHost | None = None
        self.heartbeat: HeartbeatLoop | None = None
        self.health: HealthServer | None = None
        self.draining = False
        self.drain_reason: str | None = None
        self.drain_requested: asyncio.Event | None = None  # created on the serving loop by start()
        self.certificate: CertificateReloader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: list[Any] = []  # things with stop(): publisher, watchers
        self._tls_stop = threading.Event()
        self.protection: ScaleInProtection | None = None

    async def start(self) -> None:
        config, identity = self.config, self.identity
        if not self._cache_mounted(config.cache_mount):
            raise CacheNotMounted(f"{config.cache_mount} is not mounted: run `hd engine boot` first (it opens the "
                                  "encrypted cache volume), and check its log if it did run")
        state_dir = Path(config.state_dir)
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = DynamoDbControlStore(config.control_table, client=self.clients.dynamodb)
        keys = KmsKeyProvider(self.clients.kms, jwt_key_ids=[config.signing_key_arn],
                              checkpoint_key_id=config.checkpoint_key_arn, data_key_id=config.kms_key_arn)
        control = assemble_services(
            ControlApiSettings(jwt_issuer=config.jwt_issuer, jwt_audience=config.jwt_audience), store=store, keys=keys,
            checkpoints=S3CheckpointStore(self.clients.s3, config.audit_bucket),
            query_audit=S3AuditArchive(self.clients.s3, config.audit_bucket),
        )
        credentials = EngineCredentials(control.api_keys, control.requests, on_failure=self.metrics.auth_failed)
        self.heartbeat = self._heartbeat_loop(store, state_dir)
        self._loop = asyncio.get_running_loop()
        self.drain_requested = asyncio.Event()
        sizing = self.sizing
        cert_file, key_file = self._tls_files(state_dir)
        ssl_context = server_ssl_context(cert_file, key_file)
        self.certificate = CertificateReloader(ssl_context, cert_file, key_file)
        self.metrics.bind_certificate(lambda: self._served_certificate_expiry())
        self.engine = EngineHost(
            HostSettings(host=config.listen_host, port=config.listen_port, memory=EngineMemory(
                memory_limit_bytes=sizing.memory_limit_bytes, temp_directory=config.temp_directory,
                max_result_bytes=config.max_result_bytes, max_value_bytes=config.max_value_bytes),
                limits=HostLimits(max_concurrent_statements=sizing.max_concurrent_statements,
                                  max_queued_statements=sizing.max_queued_statements),
                shutdown_grace_seconds=float(config.drain_grace_seconds),
                duckdb_threads=sizing.duckdb_threads, worker_threads=sizing.worker_threads,
                otel_endpoint=config.otel_endpoint),
            store=store, authenticate=credentials.authenticate,
            audit_sink=S3AuditSink(self.clients.s3, config.audit_bucket, host_id=identity.instance_id,
                                   checkpointer=QueryChainCheckpointer(S3CheckpointStore(
                                       self.clients.s3, config.audit_bucket, prefix=QUERY_CHECKPOINT_PREFIX,
                                       message_type=QUERY_CHECKPOINT_MESSAGE_TYPE),
                                       control.checkpoint_keys)),  # the ring's current key, as rotation moves it
            tables=self._table_source(), database_path=Path(config.cache_mount) / "engine.duckdb",
            ssl_context=ssl_context, default_org_id=config.org_id,
            mask_keys=lambda: ensure_mask_keys(store, keys),
            hooks=HostHooks(admission=self.heartbeat.gate.check_new_connection, metrics=self.metrics,
                            erasure=FleetErasureIdentity(identity.instance_id, config.org_id, keys)),
        )
        self.metrics.bind_heartbeat(self.heartbeat.status)
        self.health = HealthServer(self.metrics, config.metrics_host, config.metrics_port, readiness={
            "policy_snapshot": lambda: self.engine is not None and self.engine.ready,
            "cache_mounted": lambda: self._cache_mounted(config.cache_mount),
            "heartbeat": heartbeat_check(self.heartbeat.status),
            # A draining host fails readiness, so the NLB stops sending it new connections.
            "not_draining": lambda: not self.draining,
        })
        self.health.start()  # /healthz answers while the rest starts; /readyz says when it is ready
        self.heartbeat.start()
        await self.engine.start()
        self._start_fleet_duties(store)
        log.info("engine host %s serving on %s:%s (metrics on %s:%s)", identity.instance_id, config.listen_host,
                 self.engine.server.port if self.engine.server else config.listen_port, config.metrics_host,
                 self.health.port)

    def _start_fleet_duties(self, store: DynamoDbControlStore) -> None:
        """CloudWatch metrics, scale-in protection, termination notices, certificate refresh (as configured) and
        the answers to policy previews."""
        config, clients = self.config, self.clients
        group = config.auto_scaling_group_name
        if group and clients.cloudwatch is not None:
            publisher = CloudWatchPublisher(self.metrics.registry, clients.cloudwatch, auto_scaling_group=group)
            publisher.start()
            self._background.append(publisher)
        if group and clients.autoscaling is not None:
            server = self.engine.server if self.engine is not None else None
            self.protection = ScaleInProtection(
                clients.autoscaling, auto_scaling_group=group, instance_id=self.identity.instance_id,
                sessions=lambda: server.connection_count if server is not None else 0)
            self.protection.start()
            self._background.append(self.protection)
        if self._notices is not None:
            watcher = NoticeWatcher(self._notices, self.request_drain, interval_seconds=self._notice_poll_seconds)
            watcher.start()
            self._background.append(watcher)
        if config.tls_secret_arn is not None and clients.secretsmanager is not None:
            thread = threading.Thread(target=self._refresh_certificate_forever, name="hd-tls-refresh", daemon=True)
            thread.start()
        engine = self.engine
        if engine is not None and engine.pipeline is not None and engine.database is not None:
            # Policy previews the control API's Lambda cannot answer without an engine (hd_core/policy_previews.py).
            previews = PreviewWorker(store, self.identity.instance_id,
                                     EnginePolicyPreview(engine.pipeline.governor, engine.database),
                                     store.policy_snapshot)
            previews.start()
            self._background.append(previews)

    def request_drain(self, reason: str) -> None:
        """Begin the drain (any thread): fail /readyz, drop scale-in protection, then stop serving (`serve` waits
        for it): no new connections, running statements get `drain_grace_seconds`."""
        if self.draining:
            return
        self.draining, self.drain_reason = True, reason
        log.warning("draining (%s): no new connections; running statements have %ss to finish", reason,
                    self.config.drain_grace_seconds)
        if self.protection is not None:
            try:
                self.protection.release()
            except Exception:  # the drain goes on; Auto Scaling ends protection with the instance anyway
                log.warning("could not release scale-in protection", exc_info=True)
        if self._loop is not None and self.drain_requested is not None:
            self._loop.call_soon_threadsafe(self.drain_requested.set)

    def refresh_certificate(self) -> bool:
        """Install the TLS secret's current version and serve it to new connections if it changed (any thread);
        True when a renewed certificate is now served. A bad new version is logged and the old one kept."""
        if self.certificate is None or self._loop is None:
            return False
        install_tls_material(self.config, self.clients.secretsmanager, log)
        reloaded = asyncio.run_coroutine_threadsafe(self._reload_on_loop(), self._loop)
        return reloaded.result(timeout=30)

    async def _reload_on_loop(self) -> bool:
        # On the loop: handshakes run here, so none sees the new certificate without its key.
        assert self.certificate is not None
        return self.certificate.reload_if_changed()

    def _refresh_certificate_forever(self) -> None:
        while not self._tls_stop.wait(self._tls_refresh_seconds):
            try:
                self.refresh_certificate()
            except Exception:  # the current certificate stays; the expiry alarm speaks if this persists
                log.warning("could not refresh the TLS certificate from %s", self.config.tls_secret_arn,
                            exc_info=True)

    def _served_certificate_expiry(self) -> Any:
        assert self.certificate is not None
        return self.certificate.not_valid_after

    def _heartbeat_loop(self, store: DynamoDbControlStore, state_dir: Path) -> HeartbeatLoop:
        config, identity = self.config, self.identity
        channel = self._heartbeat_channel
        if channel is None:
            if not config.control_api_url:
                raise HeartbeatNotConfigured("the engine configuration has no control_api_url: the host must report "
                                             "to its control plane to serve; set it in the deployment's config")
            channel = ControlPlaneHeartbeat(config.control_api_url.rstrip("/") + HEARTBEAT_PATH, identity.region)
        report = host_report(config.org_id, instance_id=identity.instance_id, account_id=identity.account_id,
                             region=identity.region, launch_time=identity.launch_time)
        return HeartbeatLoop(channel, state_dir / "heartbeat-gate.json", report, config.heartbeat_interval_seconds)

    def _table_source(self) -> ObjectStoreTables:
        config = self.config
        source = S3ObjectSource(self.clients.s3, config.data_bucket, config.data_prefix)
        mount = Path(config.cache_mount)
        capacity = config.cache_capacity_bytes or shutil.disk_usage(mount).total
        cache = ObjectCache(source, mount / "tables", capacity)
        return ObjectStoreTables(CachedTables(source, cache), cache)

    def _tls_files(self, state_dir: Path) -> tuple[Path, Path]:
        """The provisioned certificate, or a self-signed one: the load balancer re-encrypts to targets
        without verifying their certificate, while clients verify the load balancer's."""
        cert, key = Path(self.config.tls_cert_file), Path(self.config.tls_key_file)
        if cert.exists() and key.exists():
            return cert, key
        if cert.exists() or key.exists() or self.config.tls_secret_arn is not None:
            # Half a pair, or a configured secret boot did not install: serving a self-signed certificate
            # instead would silently break every client that verifies the provisioned one.
            secret = self.config.tls_secret_arn
            raise TlsFilesUnusable(
                f"the provisioned TLS pair {cert} and {key} is incomplete; "
                + (f"run `hd engine boot` again to install it from {secret}" if secret else
                   "install both files, or remove the one present to serve a self-signed certificate"))
        log.warning("no certificate at %s; using a self-signed one for the load balancer's hop", cert)
        return ensure_self_signed_certificate(state_dir / "tls")

    async def stop(self) -> None:
        self._tls_stop.set()
        for part in reversed(self._background):
            part.stop()
        self._background = []
        if self.engine is not None:
            await self.engine.stop()
            sink = self.engine.audit_sink
            if isinstance(sink, S3AuditSink):
                sink.close()
            self.engine = None
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.health is not None:
            self.health.stop()
            self.health = None


async def serve_until_signalled(host: FleetEngineHost, announce: Callable[[str], None] = print, *,
                                handle_signals: bool = True) -> None:
    """Run until SIGINT or SIGTERM (systemd's stop, which the wipe hook's erase document sends first) or a
    termination notice, then drain and shut down cleanly. `handle_signals` False: a loop off the main thread."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM) if handle_signals else ():
        loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
        assert host.engine is not None and host.engine.server is not None and host.health is not None
        assert host.drain_requested is not None
        announce(f"HD_READY port={host.engine.server.port} metrics_port={host.health.port}")
        signalled, drained = asyncio.create_task(stop.wait()), asyncio.create_task(host.drain_requested.wait())
        await asyncio.wait({signalled, drained}, return_when=asyncio.FIRST_COMPLETED)
        for task in (signalled, drained):
            task.cancel()
        announce(f"draining ({host.drain_reason}): finishing in-flight statements" if host.draining
                 else "shutting down: finishing in-flight statements")
    finally:
        await host.stop()


def run_serve(args: argparse.Namespace) -> int:
    """`hd engine serve`: check the binding again (every restart), then serve until signalled."""
    def steps() -> None:
        imds = KnownIdentity(ImdsClient(args.imds_url))
        config = load_engine_config(args, imds)
        identity = imds.identity()
        clients = AwsClients.for_region(config.region)
        key_metadata = describe_cache_key(clients.kms, config.kms_key_arn)
        check_binding(config, identity, key_metadata)
        check_region_pin(config, aws_region_lookup(config.region, s3=clients.s3, dynamodb=clients.dynamodb,
                                                   kms=clients.kms))
        # A key disabled or scheduled for deletion since boot stops the host at its next start (seed 002).
        require_usable_key(key_metadata)
        notices = imds_notices(ImdsClient(args.imds_url))
        asyncio.run(serve_until_signalled(FleetEngineHost(config, identity, clients, notices=notices), _announce))

    return run_engine_command("hd engine serve", steps)


def imds_notices(imds: ImdsClient) -> Callable[[], str | None]:
    """The termination-notice check of a fleet instance: Auto Scaling's lifecycle state and Spot's notice."""
    return lambda: termination_notice(imds)


def _announce(text: str) -> None:
    print(text, flush=True)
