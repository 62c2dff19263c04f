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
- Prometheus metrics, /healthz and /readyz on the metrics port.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
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
from engine_host.data.cached_tables import CachedTables
from engine_host.data.object_cache import ObjectCache
from engine_host.data.table_sources import ObjectStoreTables
from engine_host.engine.masking import ensure_mask_keys
from engine_host.engine.memory import EngineMemory
from engine_host.ops.health_server import HealthServer, heartbeat_check
from engine_host.ops.metrics import HostMetrics
from engine_host.runtime.heartbeat_loop import ControlPlaneHeartbeat, HeartbeatChannel, HeartbeatLoop, host_report
from engine_host.runtime.host import EngineHost, HostHooks, HostSettings
from engine_host.wire.credentials import EngineCredentials
from engine_host.wire.tls import TlsFilesUnusable, ensure_self_signed_certificate, server_ssl_context
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.adapters.s3_objects import S3ObjectSource
from hd_core.control_settings import ControlApiSettings
from hd_core.errors import HdError
from hd_core.query_audit_chain import CHECKPOINT_PREFIX as QUERY_CHECKPOINT_PREFIX
from hd_core.query_audit_chain import QueryChainCheckpointer
from hd_core.services import assemble_services

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/v1/fleet/heartbeat"


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

    @classmethod
    def for_region(cls, region: str) -> AwsClients:
        import boto3

        session = boto3.session.Session(region_name=region)
        return cls(s3=session.client("s3"), kms=session.client("kms"), dynamodb=session.client("dynamodb"))


class FleetEngineHost:
    """One fleet instance's engine host, built from its configuration and identity."""

    def __init__(self, config: EngineConfig, identity: InstanceIdentity, clients: AwsClients, *,
                 heartbeat: HeartbeatChannel | None = None,
                 cache_mounted: Callable[[Path], bool] = os.path.ismount) -> None:
        """`heartbeat` replaces the SigV4 channel to `config.control_api_url` (tests use the in-process one)."""
        self.config = config
        self.identity = identity
        self.clients = clients
        self._heartbeat_channel = heartbeat
        self._cache_mounted = cache_mounted
        self.metrics = HostMetrics()
        self.engine: EngineHost | None = None
        self.heartbeat: HeartbeatLoop | None = None
        self.health: HealthServer | None = None

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
        self.engine = EngineHost(
            HostSettings(host=config.listen_host, port=config.listen_port, memory=EngineMemory(
                memory_limit_bytes=config.memory_limit_bytes, temp_directory=config.temp_directory,
                max_result_bytes=config.max_result_bytes, max_value_bytes=config.max_value_bytes)),
            store=store, authenticate=credentials.authenticate,
            audit_sink=S3AuditSink(self.clients.s3, config.audit_bucket, host_id=identity.instance_id,
                                   checkpointer=QueryChainCheckpointer(S3CheckpointStore(
                                       self.clients.s3, config.audit_bucket, prefix=QUERY_CHECKPOINT_PREFIX), keys)),
            tables=self._table_source(), database_path=Path(config.cache_mount) / "engine.duckdb",
            ssl_context=server_ssl_context(*self._tls_files(state_dir)), default_org_id=config.org_id,
            mask_keys=lambda: ensure_mask_keys(store, keys),
            hooks=HostHooks(admission=self.heartbeat.gate.check_new_connection, metrics=self.metrics),
        )
        self.metrics.bind_heartbeat(self.heartbeat.status)
        self.health = HealthServer(self.metrics, config.metrics_host, config.metrics_port, readiness={
            "policy_snapshot": lambda: self.engine is not None and self.engine.ready,
            "cache_mounted": lambda: self._cache_mounted(config.cache_mount),
            "heartbeat": heartbeat_check(self.heartbeat.status),
        })
        self.health.start()  # /healthz answers while the rest starts; /readyz says when it is ready
        self.heartbeat.start()
        await self.engine.start()
        log.info("engine host %s serving on %s:%s (metrics on %s:%s)", identity.instance_id, config.listen_host,
                 self.engine.server.port if self.engine.server else config.listen_port, config.metrics_host,
                 self.health.port)

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


async def serve_until_signalled(host: FleetEngineHost, announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT or SIGTERM (systemd's stop, or the ASG's termination), then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await host.start()
        assert host.engine is not None and host.engine.server is not None and host.health is not None
        announce(f"HD_READY port={host.engine.server.port} metrics_port={host.health.port}")
        await stop.wait()
        announce("shutting down: finishing in-flight statements")
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
        asyncio.run(serve_until_signalled(FleetEngineHost(config, identity, clients), _announce))

    return run_engine_command("hd engine serve", steps)


def _announce(text: str) -> None:
    print(text, flush=True)
