"""The scheduled key lifecycle Lambda (issue 19): KMS rotation status recorded and counted, failures counted.

moto KMS for the keys, a local control store installed for the Lambda (as the wipe hook's tests do).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from functions.key_lifecycle import handler
from hd_core.kms_rotation import ROTATION_STATUS_SETTING
from hd_core.services import ControlServices
from tests.integration import test_wipe_hook as wipe_world
from tests.integration.test_wipe_hook import FakeContext

aws = wipe_world.aws  # moto, by name
control = wipe_world.control  # services over a local store, installed for the Lambda


def _scheduled_event() -> dict[str, Any]:
    return {"id": "evt-daily", "source": "aws.events", "detail-type": "Scheduled Event",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "detail": {}}


def _metric_values(text: str) -> dict[str, float]:
    """Metric name -> value of every EMF document Powertools printed."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("{") and "_aws" in line:
            document = json.loads(line)
            for directive in document["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    value = document[metric["Name"]]  # one value, or a list when a name was added twice
                    values[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return values


@pytest.fixture
def kms_keys(control: ControlServices, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    kms = boto3.client("kms")
    rotating = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.enable_key_rotation(KeyId=rotating)
    not_rotating = kms.create_key()["KeyMetadata"]["KeyId"]
    signing = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    missing = "11111111-2222-3333-4444-555555555555"
    keys = {"rotating": rotating, "not_rotating": not_rotating, "signing": signing, "missing": missing}
    monkeypatch.setenv("HD_LIFECYCLE_KMS_ROTATION_KEY_IDS", ",".join(keys.values()))
    handler.lifecycle_settings.cache_clear()
    handler.rotation_inspector.cache_clear()
    yield keys
    handler.lifecycle_settings.cache_clear()
    handler.rotation_inspector.cache_clear()


def test_the_daily_run_records_each_keys_rotation_and_counts_those_that_need_attention(
    control: ControlServices, kms_keys: dict[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    result = handler.lambda_handler(_scheduled_event(), FakeContext())
    by_key = {status["key_id"]: status for status in result["kms_rotation"]}
    assert by_key[kms_keys["rotating"]]["rotation_enabled"] is True
    assert by_key[kms_keys["not_rotating"]]["rotation_enabled"] is False
    assert by_key[kms_keys["signing"]]["rotation_enabled"] is None  # asymmetric: not KMS's to rotate
    assert "NotFoundException" in by_key[kms_keys["missing"]]["note"]
    attention = {key for key, status in by_key.items() if status["needs_attention"]}
    assert attention == {kms_keys["not_rotating"], kms_keys["missing"]}  # a key that cannot be checked never passes
    stored = control.store.get_setting(ROTATION_STATUS_SETTING)
    assert stored is not None
    assert {s["key_id"] for s in json.loads(stored)["keys"]} == set(kms_keys.values())
    metrics = _metric_values(capsys.readouterr().out)
    assert metrics["KmsKeysWithoutRotation"] == 2
    assert metrics["KeyLifecycleFailures"] == 0
    assert result["signing_keys"] == {"created": [], "disabled": [], "deleted": [], "failed": [],
                                      "checkpoint_created": []}


def test_a_signing_key_the_run_cannot_make_is_counted_as_a_failure(
    control: ControlServices, kms_keys: dict[str, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hd_core.errors import KeyUnavailable
    from hd_core.signing_keys import JWT_RING_SETTING, SigningKey, SigningKeyRing

    def refuse() -> str:
        raise KeyUnavailable("KMS CreateKey failed (AccessDeniedException)")

    kid = control.keys.jwt_signing_kid()
    due = SigningKeyRing((SigningKey(kid=kid, created_at=datetime.now(UTC) - timedelta(days=91)),))
    control.store.put_setting(JWT_RING_SETTING, due.to_json())
    monkeypatch.setattr(control.keys, "create_jwt_key", refuse)
    result = handler.lambda_handler(_scheduled_event(), FakeContext())
    assert result["signing_keys"]["failed"] == [kid] and result["signing_keys"]["created"] == []
    assert _metric_values(capsys.readouterr().out)["KeyLifecycleFailures"] == 1
