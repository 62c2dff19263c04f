"""OpenTelemetry in the control plane: with HD_OTEL_ENDPOINT set, each invocation of a real function handler
sends one span to a real OTLP/HTTP receiver on loopback, naming no path, key, caller or body; unset, nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from functions.shared.lambda_entry import OutsideLambdaContext
from functions.shared.otel_spans import REQUEST_SPAN, SCHEDULED_SPAN, invocation_spans
from hd_core.telemetry import ALLOWED_ATTRIBUTES
from tests.integration.functions.conftest import ControlApi
from tests.otlp_receiver import OtlpReceiver, otlp_receiver


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with otlp_receiver() as found:
        monkeypatch.setenv("HD_OTEL_ENDPOINT", found.url)
        yield found


def _event(path: str, key: str) -> dict[str, Any]:
    return {
        "resource": path, "path": path, "httpMethod": "GET", "body": None, "isBase64Encoded": False,
        "headers": {"X-API-Key": key}, "multiValueHeaders": {"X-API-Key": [key]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
        "requestContext": {"requestId": "apigw-otel", "identity": {"sourceIp": "203.0.113.9"}, "stage": "v1"},
    }


def _no_leak(receiver: OtlpReceiver, *secrets: str) -> None:
    for span in receiver.spans:
        assert set(span.attributes) <= set(ALLOWED_ATTRIBUTES), span
        for text in span.texts():
            assert not any(secret in text for secret in secrets), (span.name, text)


def test_an_api_request_is_one_server_span_with_its_status(control: ControlApi, receiver: OtlpReceiver) -> None:
    from functions.users import handler

    path = f"/v1/organizations/{control.org_id}/users"
    ok = handler.lambda_handler(_event(path, control.owner_key), OutsideLambdaContext(function_name="hd-users"))
    refused = handler.lambda_handler(_event(path, "hd_live_" + "N" * 32), OutsideLambdaContext(function_name="x"))
    assert (ok["statusCode"], refused["statusCode"]) == (200, 401)

    # Flushed before the handler returned: no waiting for a batch.
    spans = [s for s in receiver.spans if s.name == REQUEST_SPAN]
    assert [s.attributes for s in spans] == [
        {"hd.function": "hd-users", "faas.trigger": "http", "http.request.method": "GET",
         "http.response.status_code": 200, "hd.outcome": "ok"},
        {"hd.function": "hd-users", "faas.trigger": "http", "http.request.method": "GET",
         "http.response.status_code": 401, "hd.outcome": "denied", "hd.error.code": "HD_ERR_INVALID_API_KEY_FORMAT"},
    ]
    assert [(s.kind, s.status_code, s.parent_span_id) for s in spans] == [(2, 0, ""), (2, 2, "")]
    assert spans[0].trace_id != spans[1].trace_id
    assert spans[0].resource["service.name"] == "hardened-duck-control"
    _no_leak(receiver, control.owner_key, control.org_id, control.owner_id, "203.0.113.9", "apigw-otel", "/v1/")


def test_a_scheduled_run_is_one_span_and_a_failure_says_error(
    control: ControlApi, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.audit import handler

    schedule = {"id": "evt-otel", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    assert handler.lambda_handler(schedule, OutsideLambdaContext(function_name="hd-audit")) == {
        "checkpoints_written": 0}

    def failing() -> int:
        raise RuntimeError(f"failed near {control.org_id}")

    monkeypatch.setattr(handler, "write_due_checkpoints", failing)
    with pytest.raises(RuntimeError):
        handler.lambda_handler(schedule, OutsideLambdaContext(function_name="hd-audit"))
    spans = [s for s in receiver.spans if s.name == SCHEDULED_SPAN]
    assert [(s.attributes, s.status_code) for s in spans] == [
        ({"hd.function": "hd-audit", "faas.trigger": "timer", "hd.outcome": "ok"}, 0),
        ({"hd.function": "hd-audit", "faas.trigger": "timer", "hd.outcome": "error"}, 2),
    ]
    _no_leak(receiver, control.org_id, "evt-otel", "failed near")


def test_an_unusable_endpoint_leaves_tracing_off_and_the_api_serving(
    control: ControlApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from functions.users import handler

    monkeypatch.delenv("HD_OTEL_ENDPOINT", raising=False)
    assert invocation_spans() is None  # the container's state now: off, nothing built
    monkeypatch.setenv("HD_OTEL_ENDPOINT", "collector:4318")
    path = f"/v1/organizations/{control.org_id}/users"
    response = handler.lambda_handler(_event(path, control.owner_key), OutsideLambdaContext("hd-users"))
    assert response["statusCode"] == 200
    assert "OpenTelemetry is off (HD_ERR_OTEL_MISCONFIGURED)" in caplog.text
    assert invocation_spans() is None


_UNSET_PROBE = textwrap.dedent("""
    import json, socket, sys
    opened = []
    real = socket.socket.connect
    def connect(self, address):
        opened.append(repr(address))
        return real(self, address)
    socket.socket.connect = connect
    from functions.shared.lambda_entry import OutsideLambdaContext
    from functions.users import handler
    event = {"resource": "/v1/organizations/o/users", "path": "/v1/organizations/o/users", "httpMethod": "GET",
             "body": None, "headers": {"X-API-Key": "hd_live_" + "N" * 32},
             "requestContext": {"requestId": "r", "identity": {"sourceIp": "127.0.0.1"}},
             "queryStringParameters": None, "pathParameters": None}
    status = handler.lambda_handler(event, OutsideLambdaContext("hd-users"))["statusCode"]
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    print(json.dumps({"status": status, "opened": opened, "otel_modules": loaded}))
""")


def test_unset_a_function_imports_builds_and_sends_nothing(tmp_path: Path) -> None:
    with otlp_receiver() as receiver:
        env = {name: value for name, value in os.environ.items() if name != "HD_OTEL_ENDPOINT"}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, POWERTOOLS_TRACE_DISABLED="true",
                   POWERTOOLS_METRICS_DISABLED="true", HD_SQLITE_PATH=str(tmp_path / "control.db"),
                   HD_LOCAL_KEY_FILE=str(tmp_path / "keys.json"), HD_AUDIT_DIR=str(tmp_path))
        out = subprocess.run([sys.executable, "-c", _UNSET_PROBE], capture_output=True, text=True, env=env,
                             cwd=Path(__file__).parents[3], timeout=120)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"status": 401, "opened": [], "otel_modules": []}
    assert receiver.requests == []
