"""A fleet host's part in the deployed fleet (issue 21): drain on a termination notice with a statement in flight,
IMDSv2 termination notices, scale-in protection, CloudWatch metrics and a renewed TLS certificate served without a
restart. moto for AWS, a real TLS socket and psycopg against the host, a small IMDSv2 server on a real socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from moto import mock_aws

from engine_host.boot.imds import ImdsClient
from engine_host.boot.tls_material import TlsMaterialInvalid, install_tls_material
from engine_host.ops.cloudwatch import DIMENSION, ENGINE_NAMESPACE, CloudWatchPublisher
from engine_host.ops.metrics import HostMetrics
from engine_host.runtime.fleet import serve_until_signalled
from engine_host.runtime.fleet_lifecycle import (
    SPOT_INSTANCE_ACTION_PATH,
    TARGET_LIFECYCLE_STATE_PATH,
    ScaleInProtection,
    termination_notice,
)
from engine_host.wire.tls import ensure_self_signed_certificate
from tests.harness import BackgroundLoop
from tests.integration.test_fleet_host import REGION, Account, _dsn, _get

SSL_REQUEST = struct.pack("!ii", 8, 80877103)


# --- drain -----------------------------------------------------------------------------------------------


def test_a_termination_notice_drains_the_host_and_the_running_statement_finishes(
        account: Account, loop: BackgroundLoop) -> None:
    account.config_document["drain_grace_seconds"] = 60
    notice = threading.Event()
    host = account.host(notices=lambda: "spot-interruption" if notice.is_set() else None, notice_poll_seconds=0.1)
    announced: list[str] = []
    serving = asyncio.run_coroutine_threadsafe(
        serve_until_signalled(host, announced.append, handle_signals=False), loop.loop)
    deadline = time.monotonic() + 30
    while not announced and time.monotonic() < deadline:
        time.sleep(0.05)
    assert announced and announced[0].startswith("HD_READY")
    dsn = _dsn(host, account)
    n = 150_000_000
    result: list[Any] = []

    def long_statement() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            result.append(conn.execute(f"SELECT count(*) FROM range({n}) a WHERE a.range % 7 = 3").fetchone())

    worker = threading.Thread(target=long_statement)
    worker.start()
    gate = host.engine.pipeline.governor.gate  # type: ignore[union-attr]
    while gate.running == 0 and worker.is_alive():
        time.sleep(0.01)
    assert gate.running == 1
    assert _get(host, "/readyz")[0] == 200

    notice.set()  # what IMDS would say two minutes before a Spot interruption
    while not host.draining:
        time.sleep(0.01)
    assert _get(host, "/readyz")[0] == 503  # the NLB stops sending new connections
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn)  # and the host itself no longer accepts them
    worker.join(60)
    serving.result(60)  # serve returned once the drain finished
    assert result == [((n - 4) // 7 + 1,)]  # the statement in flight finished, with its whole answer
    assert any(line.startswith("draining (spot-interruption)") for line in announced)


# --- IMDSv2 termination notices ----------------------------------------------------------------------------


class _Imds(BaseHTTPRequestHandler):
    paths: dict[str, str] = {}

    def do_PUT(self) -> None:
        self._answer(200, "token-123" if self.path == "/latest/api/token" else None)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "token-123":
            self._answer(401, None)
            return
        self._answer(200, self.paths.get(self.path))

    def _answer(self, status: int, body: str | None) -> None:
        if body is None:
            status = 404 if status == 200 else status
        data = (body or "").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[tuple[ImdsClient, dict[str, str]]]:
    paths: dict[str, str] = {}
    handler = type("Imds", (_Imds,), {"paths": paths})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImdsClient(f"http://127.0.0.1:{server.server_address[1]}"), paths
    finally:
        server.shutdown()
        server.server_close()


def test_imds_termination_notices(imds: tuple[ImdsClient, dict[str, str]]) -> None:
    client, paths = imds
    assert termination_notice(client) is None  # neither path exists: no notice
    paths[TARGET_LIFECYCLE_STATE_PATH] = "InService"
    assert termination_notice(client) is None
    paths[SPOT_INSTANCE_ACTION_PATH] = json.dumps({"action": "terminate", "time": "2026-12-07T21:30:00Z"})
    assert termination_notice(client) == "spot-interruption"
    paths[TARGET_LIFECYCLE_STATE_PATH] = "Terminated"
    assert termination_notice(client) == "auto-scaling-termination"
    del paths[TARGET_LIFECYCLE_STATE_PATH]
    paths[SPOT_INSTANCE_ACTION_PATH] = "not json"
    assert termination_notice(client) is None  # nothing we can read as an interruption


# --- scale-in protection ---------------------------------------------------------------------------------


def test_scale_in_protection_follows_sessions_and_is_released_for_good_by_a_drain(aws_credentials: None) -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        autoscaling = boto3.client("autoscaling", region_name=REGION)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="hd-engine", LaunchTemplateData={"ImageId": image,
                                                                                "InstanceType": "t3.micro"})
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName="hd-fleet", MinSize=1, MaxSize=2, DesiredCapacity=1,
            LaunchTemplate={"LaunchTemplateName": "hd-engine"}, AvailabilityZones=[f"{REGION}a"])
        (instance,) = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"]
        instance_id = instance["InstanceId"]
        sessions = [0]
        protection = ScaleInProtection(autoscaling, auto_scaling_group="hd-fleet", instance_id=instance_id,
                                       sessions=lambda: sessions[0])

        def protected() -> bool:
            (found,) = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])["AutoScalingInstances"]
            return bool(found["ProtectedFromScaleIn"])

        protection.update()
        assert protected() is False
        sessions[0] = 3
        protection.update()
        assert protected() is True and protection.protected is True
        sessions[0] = 0
        protection.update()
        assert protected() is False
        sessions[0] = 5
        protection.update()
        protection.release()  # a drain: the host must not hold the group up any more
        assert protected() is False
        protection.update()
        assert protected() is False  # sessions or not, never again


# --- CloudWatch --------------------------------------------------------------------------------------------


def _record(outcome: str, total_ms: float, org: str = "org_secret_name") -> dict[str, Any]:
    error = None if outcome == "ok" else {"sqlstate": "XX000", "code": "HD_ERR_ENGINE"}
    return {"org_id": org, "statement_kind": "select", "error": error, "verdicts": [],
            "rows_returned": 1, "bytes_returned": 10, "timings_ms": {"total": total_ms}}


def test_cloudwatch_publisher_sends_fleet_totals_without_tenant_dimensions(aws_credentials: None) -> None:
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        metrics = HostMetrics()
        metrics.bind_sessions(lambda: 7)
        metrics.bind_heartbeat(lambda: {"state": "degraded"})
        metrics.observe_statement(_record("ok", 5))  # before the baseline: not published as new
        publisher = CloudWatchPublisher(metrics.registry, cloudwatch, auto_scaling_group="hd-fleet")
        first = publisher.sample()
        assert {d["MetricName"] for d in first} == {"ActiveConnections", "HeartbeatGrace"}
        for total_ms in (20, 30, 800):
            metrics.observe_statement(_record("ok", total_ms))
        metrics.observe_statement(_record("error", 40))
        metrics.audit_write_failed()
        sent = publisher.publish_once()
        assert sent >= 8
        listed = cloudwatch.list_metrics(Namespace=ENGINE_NAMESPACE)["Metrics"]
        assert {m["MetricName"] for m in listed} >= {"ActiveConnections", "Statements", "StatementErrors",
                                                    "StatementLatency", "HeartbeatGrace", "AuditWriteFailures"}
        for metric in listed:  # the Auto Scaling group is the only dimension: no organisation leaves the host
            assert metric["Dimensions"] == [{"Name": DIMENSION, "Value": "hd-fleet"}]
        assert "org_secret_name" not in json.dumps(listed)

        def total(name: str) -> float:
            stats = cloudwatch.get_metric_statistics(
                Namespace=ENGINE_NAMESPACE, MetricName=name, Dimensions=[{"Name": DIMENSION, "Value": "hd-fleet"}],
                StartTime=time.time() - 3600, EndTime=time.time() + 60, Period=3600, Statistics=["Sum", "Maximum"])
            return sum(point["Sum"] for point in stats["Datapoints"])

        assert total("Statements") == 4  # the 4 since the baseline, not the one before
        assert total("StatementErrors") == 1
        assert total("AuditWriteFailures") == 1
        assert total("HeartbeatGrace") == 1  # degraded, in the one sample sent (the baseline was only taken)
        assert total("ActiveConnections") == 7


def test_statement_latency_goes_out_as_bucket_values_and_counts() -> None:
    metrics = HostMetrics()
    publisher = CloudWatchPublisher(metrics.registry, client=None, auto_scaling_group="hd-fleet")
    publisher.sample()
    for total_ms in (20, 30, 800, 120_000):
        metrics.observe_statement(_record("ok", total_ms))
    (latency,) = [d for d in publisher.sample() if d["MetricName"] == "StatementLatency"]
    # Each bucket's upper bound: 20 ms -> 0.025 s, 30 ms -> 0.05 s, 800 ms -> 1 s, 2 minutes -> the last (60 s).
    assert dict(zip(latency["Values"], latency["Counts"], strict=True)) == {0.025: 1, 0.05: 1, 1.0: 1, 60.0: 1}
    assert latency["Unit"] == "Seconds"
    assert not [d for d in publisher.sample() if d["MetricName"] == "StatementLatency"]  # nothing new


# --- certificate renewal -----------------------------------------------------------------------------------


def _served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the engine is shown (SSLRequest, then the handshake)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _pem_pair(directory: Path) -> dict[str, str]:
    cert, key = ensure_self_signed_certificate(directory, ["warehouse.internal.example.com"])
    return {"certificate": cert.read_text(), "private_key": key.read_text()}


def test_a_renewed_certificate_is_served_to_new_connections_without_a_restart(
        account: Account, loop: BackgroundLoop, tmp_path: Path) -> None:
    secrets = boto3.client("secretsmanager", region_name=REGION)
    first, second = _pem_pair(tmp_path / "first"), _pem_pair(tmp_path / "second")
    arn = secrets.create_secret(Name="hd/engine-tls", SecretString=json.dumps(first))["ARN"]
    account.config_document.update({"tls_secret_arn": arn, "tls_cert_file": str(tmp_path / "tls" / "server.crt"),
                                     "tls_key_file": str(tmp_path / "tls" / "server.key")})
    install_tls_material(account.config, secrets, logging.getLogger("boot"))  # what `hd engine boot` does
    account.clients = account.clients.__class__(**{**account.clients.__dict__, "secretsmanager": secrets})
    host = account.host()
    loop.run(host.start())
    try:
        port = host.engine.server.port  # type: ignore[union-attr]
        original = _served_certificate(port)
        with psycopg.connect(_dsn(host, account), autocommit=True) as open_session:
            assert host.refresh_certificate() is False  # the secret did not change: nothing reloaded

            secrets.put_secret_value(SecretId=arn, SecretString=json.dumps(second))  # what rotation writes
            assert host.refresh_certificate() is True
            renewed = _served_certificate(port)
            assert renewed != original
            assert renewed == x509.load_pem_x509_certificate(second["certificate"].encode()).public_bytes(
                serialization.Encoding.DER)
            assert open_session.execute("SELECT 1").fetchone() == (1,)  # open sessions go on undisturbed

            broken = {"certificate": first["certificate"], "private_key": second["private_key"]}
            secrets.put_secret_value(SecretId=arn, SecretString=json.dumps(broken))
            with pytest.raises(TlsMaterialInvalid):
                host.refresh_certificate()
            assert _served_certificate(port) == renewed  # a bad version never replaces a working certificate
        status, body = _get(host, "/metrics")
        assert status == 200 and "hd_tls_certificate_expiry_timestamp_seconds" in body
    finally:
        loop.run(host.stop())
