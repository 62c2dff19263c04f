"""The Lambda entry point: tracing follows Powertools' own switch and costs nothing when off; logs carry ids."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from functions.shared.lambda_entry import function_logger
from tests.integration.functions.conftest import ControlApi

_PROBE = "import sys, functions.users.handler; print('aws_xray_sdk.core' in sys.modules)"


@pytest.mark.parametrize(("disabled", "xray_loaded"), [("true", "False"), ("false", "True"), (None, "True")])
def test_the_xray_sdk_is_loaded_only_when_tracing_is_on(disabled: str | None, xray_loaded: str) -> None:
    env = {name: value for name, value in os.environ.items() if name != "POWERTOOLS_TRACE_DISABLED"}
    env["POWERTOOLS_METRICS_DISABLED"] = "true"
    if disabled is not None:
        env["POWERTOOLS_TRACE_DISABLED"] = disabled
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == xray_loaded


# Runs as a Lambda would (tracing on, a trace id from the runtime), with the X-Ray SDK's emitter
# replaced by one that keeps every serialized segment, then prints whether any holds the secret.
_SEGMENT_PROBE = r"""
import os, sys
from aws_xray_sdk.core import xray_recorder
sent = []
class KeepSegments:
    ip, port = "127.0.0.1", 2000
    def send_entity(self, entity): sent.append(entity.serialize())
    def set_daemon_address(self, address): pass
xray_recorder.configure(emitter=KeepSegments(), sampling=False)
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from functions.shared.lambda_entry import lambda_entry
SECRET = "hd_live_" + "S3CRETS3CRET" * 3
app = APIGatewayRestResolver()
@app.get("/key")
def key(): return {"api_key": SECRET}
@app.get("/fails")
def fails(): raise RuntimeError("failed on " + SECRET)
handler = lambda_entry(app, "hd-probe")
class Context:
    function_name, memory_limit_in_mb, aws_request_id = "hd-probe", 128, "r1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:hd-probe"
    def get_remaining_time_in_millis(self): return 1000
outcomes = []
for path in ("/key", "/fails"):
    event = {"path": path, "httpMethod": "GET", "resource": path, "headers": {}, "body": None,
             "requestContext": {"requestId": "r1"}}
    try:
        outcomes.append(str(handler(event, Context())["statusCode"]))
    except Exception as error:
        outcomes.append(type(error).__name__)
print(" ".join(outcomes), len(sent), any(SECRET in segment for segment in sent), file=sys.stderr)
"""


def test_traces_never_hold_a_response_body_or_an_exception_message() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("POWERTOOLS_")}
    env.update({"POWERTOOLS_TRACE_DISABLED": "false", "POWERTOOLS_METRICS_DISABLED": "true",
                "LAMBDA_TASK_ROOT": "/var/task", "AWS_LAMBDA_FUNCTION_NAME": "hd-probe",
                "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"})
    out = subprocess.run([sys.executable, "-c", _SEGMENT_PROBE], check=True, capture_output=True, text=True, env=env)
    # Both invocations were traced (two subsegments), the failure reached the runtime as itself,
    # and no segment holds the secret the response carried or the exception quoted.
    assert out.stderr.strip().splitlines()[-1] == "200 RuntimeError 2 False"


# --- structured logs: every line of an invocation carries its request and correlation ids ----------


@dataclass(frozen=True)
class Context:
    aws_request_id: str
    function_name: str = "hd-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:000000000000:function:hd-test"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


@contextmanager
def log_lines(service: str) -> Iterator[list[dict[str, Any]]]:
    """The JSON lines the function `service` logs inside the block, formatted by its Powertools formatter."""
    lines: list[dict[str, Any]] = []
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(function_logger(service).registered_formatter)
    logging.getLogger(service).addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger(service).removeHandler(handler)
        lines.extend(json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{"))


def _line(lines: list[dict[str, Any]], message: str) -> dict[str, Any]:
    found = [line for line in lines if line["message"] == message]
    assert found, [line["message"] for line in lines]
    return found[-1]


def _api_event(control: ControlApi, path: str, *, key: str, correlation_id: str) -> dict[str, Any]:
    return {
        "resource": path, "path": path, "httpMethod": "GET", "body": None, "isBase64Encoded": False,
        "headers": {"X-API-Key": key}, "multiValueHeaders": {"X-API-Key": [key]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
        "requestContext": {"requestId": correlation_id, "identity": {"sourceIp": "127.0.0.1"}, "stage": "v1"},
    }


def test_an_error_log_line_carries_the_function_request_id_and_the_api_gateway_request_id(
    control: ControlApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.policies import handler

    def failing(*args: object, **kwargs: object) -> object:
        raise RuntimeError("the store fell over")

    monkeypatch.setattr(handler.policy_admin, "policy_listing", failing)
    path = f"/v1/organizations/{control.org_id}/policies"
    with log_lines("hd-policies") as lines:
        failed = handler.lambda_handler(_api_event(control, path, key=control.owner_key, correlation_id="apigw-1"),
                                        Context(aws_request_id="lambda-1"))
        refused = handler.lambda_handler(_api_event(control, path, key="hd_live_nope", correlation_id="apigw-2"),
                                         Context(aws_request_id="lambda-2"))
    assert (failed["statusCode"], refused["statusCode"]) == (500, 401)
    error = _line(lines, "unexpected error")
    assert (error["level"], error["service"]) == ("ERROR", "hd-policies")
    assert (error["function_request_id"], error["correlation_id"]) == ("lambda-1", "apigw-1")
    assert "the store fell over" in error["exception"]
    refusal = _line(lines, "authentication refused")
    assert (refusal["function_request_id"], refusal["correlation_id"]) == ("lambda-2", "apigw-2")


def test_a_scheduled_handler_logs_with_its_request_id_and_a_failure_is_logged_with_it(
    control: ControlApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from functions.audit import handler

    schedule = {"id": "evt-1", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    with log_lines("hd-audit") as lines:
        assert handler.lambda_handler(schedule, Context(aws_request_id="lambda-s1")) == {"checkpoints_written": 0}
    done = _line(lines, "scheduled run done")
    assert (done["function_request_id"], done["correlation_id"], done["service"]) == ("lambda-s1", "evt-1", "hd-audit")

    def failing() -> int:
        raise RuntimeError("checkpoint store unreachable")

    monkeypatch.setattr(handler, "write_due_checkpoints", failing)
    with log_lines("hd-audit") as lines, pytest.raises(Exception, match=r"RuntimeError|checkpoint store unreachable"):
        handler.lambda_handler({**schedule, "id": "evt-2"}, Context(aws_request_id="lambda-s2"))
    failure = _line(lines, "scheduled run failed")
    assert (failure["level"], failure["error_type"]) == ("ERROR", "RuntimeError")
    assert (failure["function_request_id"], failure["correlation_id"]) == ("lambda-s2", "evt-2")
    assert "checkpoint store unreachable" in failure["exception"]
