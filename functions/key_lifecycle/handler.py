"""Key lifecycle Lambda (issue 19): the daily EventBridge schedule runs `hd_core.key_lifecycle.run_key_lifecycle`.

The schedule's event starts one run over every organisation at the event's own time (so a retried
invocation of the same event is the same run: the job is idempotent, and its notices are keyed to the
key and the threshold, not to the run). An admin's run on demand is the control API's
`POST /v1/organizations/{org}/keys/lifecycle-runs` (functions/api_keys), over that organisation only.
The result names key ids only: a successor's plaintext goes to its Secrets Manager secret and nowhere else.

The scheduled run also rotates the deployment's JWT signing keys (hd_core.signing_keys) and records whether
KMS rotates the keys HD_LIFECYCLE_KMS_ROTATION_KEY_IDS names (hd_core.kms_rotation). Two metrics alarm
(cdk/hd_cdk/lifecycle.py): `KeyLifecycleFailures` (a successor or a signing key the run could not make,
deliver or retire: the next run retries, but someone should look) and `KmsKeysWithoutRotation`. A run
that raises fails the invocation, which the function's Errors alarm reports.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.shared.lambda_entry import METRICS_NAMESPACE, scheduled_entry
from functions.shared.wiring import services
from hd_core.errors import InvalidRequest
from hd_core.key_lifecycle import LifecycleReport, run_key_lifecycle
from hd_core.kms_rotation import KeyRotationInspector, KeyRotationStatus, check_key_rotation
from hd_core.models import utc_now

SERVICE = "hd-key-lifecycle"
# Metrics of one namespace and service share their set: `scheduled_entry`'s flush publishes these too.
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)


class LifecycleSettings(BaseSettings):
    """The scheduled job's own configuration, from `HD_LIFECYCLE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="HD_LIFECYCLE_", extra="ignore")

    # Comma-separated KMS key ids or ARNs whose rotation status the run records (the CDK app's symmetric keys).
    kms_rotation_key_ids: str = ""

    def rotation_key_ids(self) -> list[str]:
        return [key.strip() for key in self.kms_rotation_key_ids.split(",") if key.strip()]


@lru_cache(maxsize=1)
def lifecycle_settings() -> LifecycleSettings:
    """The settings, read once per container."""
    return LifecycleSettings()


@lru_cache(maxsize=1)
def rotation_inspector() -> KeyRotationInspector:
    """KMS's answers about key rotation, through a client built once (boto3 is imported on first use only)."""
    import boto3

    from hd_core.adapters.kms_keys import KmsRotationInspector

    return KmsRotationInspector(boto3.client("kms"))


def _failures(report: LifecycleReport) -> int:
    return len(report.rotation_failed) + (len(report.signing_keys.failed) if report.signing_keys else 0)


def _event_time(event: dict[str, Any]) -> datetime:
    """The schedule's time (`time`, ISO 8601 with Z), or now for an event without one."""
    stamp = event.get("time")
    if not isinstance(stamp, str):
        return utc_now()
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest("the scheduled event's time is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise InvalidRequest("the scheduled event's time has no time zone")
    # A replayed or delayed event never runs the job in the future.
    return min(moment, utc_now())


def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One scheduled run: `{"run_id", ...the report}`; anything but an EventBridge scheduled event is refused."""
    if event.get("source") != "aws.events" or event.get("detail-type") != "Scheduled Event":
        raise InvalidRequest("the key lifecycle function runs on its EventBridge schedule only")
    at = _event_time(event)
    run_id = f"lifecycle-{event.get('id') or at.strftime('%Y%m%dT%H%M%SZ')}"
    svc = services()
    report = run_key_lifecycle(svc, at, request_id=run_id)
    metrics.add_metric(name="KeyLifecycleFailures", unit=MetricUnit.Count, value=_failures(report))
    rotation: list[KeyRotationStatus] = []
    key_ids = lifecycle_settings().rotation_key_ids()
    if key_ids:
        rotation = check_key_rotation(rotation_inspector(), key_ids, svc.store, at)
        metrics.add_metric(name="KmsKeysWithoutRotation", unit=MetricUnit.Count,
                           value=sum(status.needs_attention for status in rotation))
    return {"run_id": run_id, **report.as_dict(), "kms_rotation": [status.as_dict() for status in rotation]}


lambda_handler = scheduled_entry(run, SERVICE)
