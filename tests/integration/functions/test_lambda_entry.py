"""The Lambda entry point: tracing follows Powertools' own switch, and costs nothing when off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
    # Both invocations were traced (two subsegments), the failure reached the runtime, and no
    # segment holds the secret the response carried or the exception quoted.
    assert out.stderr.strip().splitlines()[-1] == "200 UnhandledFailure 2 False"
