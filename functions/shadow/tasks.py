"""The shadow state machine's task Lambdas: Prepare, ReplayBatch, WriteReport and EndReplay (`hd_core.shadow.replay`).

EndReplay runs in WriteReport's function (the same grants; cdk/hd_cdk/shadow.py SHARED_FUNCTIONS), which
tells them apart by the event: the EndReplay state's input has a `status`, and an EventBridge event (the
rule on the state machine's executions that end FAILED, TIMED_OUT or ABORTED, which no Catch sees) has a
`detail-type` and goes to `execution_ended`.

Step Functions invokes each with the state's input (`hd_core.shadow.state_machine`); `hd dev` runs the
same functions through the local interpreter. An exception leaves as its type and a message that
names no secret, so the execution history (where Step Functions keeps a failure's cause) holds none.
"""

from __future__ import annotations

from typing import Any

# ReplayBatch's PostgreSQL client, loaded at cold start here; hd_core.shadow.replay imports it only where a
# replay runs, so `hd dev` on the base install (no psycopg) still starts.
import psycopg  # noqa: F401

from functions.shadow.wiring import shadow_services
from functions.shared.lambda_entry import scheduled_entry
from hd_core.shadow import replay

SERVICE = "hd-shadow-replay"


def _prepare(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return replay.prepare(event, shadow_services())


def _replay_batch(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return replay.replay_batch(event, shadow_services())


def _write_report(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if "detail-type" in event:
        return replay.execution_ended(event, shadow_services()) or {"ignored": True}
    if "status" in event:
        return replay.end_replay(event, shadow_services())
    return replay.write_report(event, shadow_services())


prepare_handler = scheduled_entry(_prepare, SERVICE)
replay_batch_handler = scheduled_entry(_replay_batch, SERVICE)
write_report_handler = scheduled_entry(_write_report, SERVICE)
