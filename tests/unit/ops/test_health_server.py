"""HealthServer over real HTTP on an ephemeral port: /metrics, /healthz, /readyz, 404 and 405."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine_host.ops.health_server import HealthServer, ReadinessCheck, heartbeat_check
from engine_host.ops.metrics import HostMetrics
from hd_core.heartbeat import ServiceGate

Serve = Callable[[Mapping[str, ReadinessCheck]], HealthServer]


class _Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self) -> Any:
        return json.loads(self.body)


def _request(server: HealthServer, method: str, path: str, headers: Mapping[str, str] | None = None) -> _Reply:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(method, path, headers=dict(headers or {}))
        return _Reply(connection.getresponse())
    finally:
        connection.close()


@pytest.fixture
def metrics() -> HostMetrics:
    return HostMetrics()


@pytest.fixture
def serve(metrics: HostMetrics) -> Iterator[Serve]:
    """Start a HealthServer on port 0 with the given readiness checks (stopped after the test)."""
    started: list[HealthServer] = []

    def start(checks: Mapping[str, ReadinessCheck]) -> HealthServer:
        server = HealthServer(metrics, "127.0.0.1", 0, checks)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(serve: Serve) -> HealthServer:
    return serve({})


def test_port_zero_binds_an_ephemeral_port(server: HealthServer) -> None:
    assert server.port > 0


def test_metrics_serves_the_registry_in_prometheus_text_format(server: HealthServer, metrics: HostMetrics) -> None:
    metrics.auth_failed("HD_ERR_AUTH_FAILED")
    metrics.bind_sessions(lambda: 4)
    reply = _request(server, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    assert families["hd_auth_failures"].samples[0].value == 1
    assert families["hd_sessions_active"].samples[0].value == 4


def test_metrics_speaks_openmetrics_when_asked(server: HealthServer) -> None:
    reply = _request(server, "GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert reply.body.rstrip().endswith(b"# EOF")


def test_healthz_answers_ok_while_the_process_runs(server: HealthServer) -> None:
    reply = _request(server, "GET", "/healthz")
    assert (reply.status, reply.body) == (200, b"ok\n")


def test_readyz_is_200_when_every_check_passes(serve: Serve) -> None:
    server = serve({"policy_snapshot": lambda: True, "cache_mounted": lambda: (True, "mounted at /mnt/hd-cache")})
    reply = _request(server, "GET", "/readyz")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {"ready": True, "checks": {
        "policy_snapshot": {"ok": True, "reason": "ok"},
        "cache_mounted": {"ok": True, "reason": "mounted at /mnt/hd-cache"},
    }}


def test_readyz_is_503_naming_the_failing_check(serve: Serve) -> None:
    server = serve({"policy_snapshot": lambda: False, "cache_mounted": lambda: (False, "cache device not open")})
    reply = _request(server, "GET", "/readyz")
    assert reply.status == 503
    assert reply.json()["checks"] == {
        "policy_snapshot": {"ok": False, "reason": "not ready"},
        "cache_mounted": {"ok": False, "reason": "cache device not open"},
    }


def test_a_check_that_raises_fails_closed_without_its_message(serve: Serve) -> None:
    def broken() -> bool:
        raise OSError("secret path /var/lib/hd/keys")

    def truthy_not_bool() -> bool:
        return 1  # type: ignore[return-value]

    server = serve({"ok": lambda: True, "broken": broken, "truthy_not_bool": truthy_not_bool})
    reply = _request(server, "GET", "/readyz")
    assert reply.status == 503
    body = reply.json()
    assert body["checks"] == {"ok": {"ok": True, "reason": "ok"},
                              "broken": {"ok": False, "reason": "check raised OSError"},
                              "truthy_not_bool": {"ok": False, "reason": "not ready"}}
    assert b"/var/lib/hd" not in reply.body


def test_readyz_follows_the_heartbeat_gate(serve: Serve) -> None:
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    gate = ServiceGate(now=lambda: clock[0])
    server = serve({"heartbeat": heartbeat_check(gate.status)})
    assert _request(server, "GET", "/readyz").status == 200
    gate.record(None, error="no route to control plane")
    assert _request(server, "GET", "/readyz").json()["checks"] == {"heartbeat": {"ok": True,
                                                                                 "reason": "heartbeat degraded"}}
    clock[0] += timedelta(hours=4)
    reply = _request(server, "GET", "/readyz")
    assert reply.status == 503
    assert reply.json()["checks"] == {"heartbeat": {"ok": False, "reason": "heartbeat refusing"}}


def test_readyz_with_no_checks_is_ready(server: HealthServer) -> None:
    assert _request(server, "GET", "/readyz").status == 200


@pytest.mark.parametrize("path", ["/", "/metricsx", "/healthz/extra", "/../metrics"])
def test_unknown_paths_are_404(server: HealthServer, path: str) -> None:
    assert _request(server, "GET", path).status == 404


def test_query_strings_are_ignored(server: HealthServer) -> None:
    assert _request(server, "GET", "/healthz?verbose=1").status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND"])
def test_methods_other_than_get_are_405(server: HealthServer, method: str) -> None:
    reply = _request(server, method, "/metrics")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET"


def test_stop_closes_the_port(metrics: HostMetrics) -> None:
    server = HealthServer(metrics, "127.0.0.1", 0)
    server.start()
    port = server.port
    assert _request(server, "GET", "/healthz").status == 200
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/healthz")
