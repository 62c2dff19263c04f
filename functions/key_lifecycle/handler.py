"""Key lifecycle Lambda (issue 19): the daily EventBridge schedule runs `hd_core.key_lifecycle.run_key_lifecycle`.

The schedule's event starts one run over every organisation at the event's own time (so a retried
invocation of the same event is the same run: the job is idempotent, and its notices are keyed to the
key and the threshold, not to the run). An admin's run on demand is the control API's
`POST /v1/organizations/{org}/keys/lifecycle-runs` (functions/api_keys), over that organisation only.
The result names key ids only: a successor's plaintext goes to its Secrets Manager secret and nowhere else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from functions.shared.lambda_entry import scheduled_entry
from functions.shared.wiring import services
from hd_core.errors import InvalidRequest
from hd_core.key_lifecycle import run_key_lifecycle
from hd_core.models import utc_now

SERVICE = "hd-key-lifecycle"


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
    report = run_key_lifecycle(services(), at, request_id=run_id)
    return {"run_id": run_id, **report.as_dict()}


lambda_handler = scheduled_entry(run, SERVICE)
