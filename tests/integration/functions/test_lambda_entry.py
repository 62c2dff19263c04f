"""The Lambda entry point: tracing follows Powertools' own switch, and costs nothing when off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = "import sys, functions.users.handler; print('aws_xray_sdk.core' in sys.modules)"


@pytest.mark.parametrize(("disabled", "xray_loaded"), [("true", "False"), ("", "True")])
def test_the_xray_sdk_is_loaded_only_when_tracing_is_on(disabled: str, xray_loaded: str) -> None:
    env = {**os.environ, "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_TRACE_DISABLED": disabled}
    out = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == xray_loaded
