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
