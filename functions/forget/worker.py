"""The forget worker Lambda: the EventBridge schedule (every `constants.ERASURE_SWEEP_MINUTES`) runs a sweep that

- runs every pending forget request (the API function only records them), and again every failed one
  whose last attempt is older than `RETRY_FAILED_AFTER`;
- settles the requests waiting for the fleet hosts' writable tables: completed once every registered host
  has acked or is gone (EC2 DescribeInstances, asked only about hosts whose heartbeats stopped), failed on a
  host's failure or past the SLA while a live host has not acked, and lists the ones still waiting for the
  hosts (hd_core/erasure_fleet.py);
- deletes the replaced object versions whose retention has passed;
- emits `ForgetRequestsPastSla`, the number of requests still open past their 72 h deadline, which the
  CloudWatch alarm of cdk/hd_cdk/erasure.py watches, and `ForgetRequestsOpen`.

`{"request_id": "fgt_..."}` (a manual invoke) runs that one request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from functions.forget.wiring import erasure
from functions.shared.lambda_entry import METRICS_NAMESPACE, scheduled_entry
from hd_core import erasure as erasure_domain
from hd_core import erasure_fleet
from hd_core.client_values import is_client_id
from hd_core.erasure_models import ForgetStatus
from hd_core.errors import InvalidRequest

SERVICE = "hd-forget-worker"
RETRY_FAILED_AFTER = timedelta(hours=1)
PAST_SLA_METRIC = "ForgetRequestsPastSla"
OPEN_METRIC = "ForgetRequestsOpen"

_metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)


def sweep() -> dict[str, Any]:
    """Run pending requests and failed ones due a retry, purge due versions, and measure the SLA."""
    wiring = erasure()
    svc = wiring.services
    now = svc.now()
    ran = []
    for request in svc.store.list_unsettled_forget_requests():
        retry = request.status is ForgetStatus.FAILED and (
            request.finished_at is None or now - request.finished_at >= RETRY_FAILED_AFTER)
        if request.status is ForgetStatus.PENDING or retry:
            ran.append(erasure_domain.run(svc, request.request_id).request_id)
    # Also those the runs above just left waiting (no host to wait for: done at once).
    settled = erasure_fleet.settle_all(svc, wiring.fleet_instances)
    purged = erasure_domain.purge_due_versions(svc)
    past_sla = erasure_domain.requests_past_sla(svc.store, svc.now())
    open_requests = [r for r in svc.store.list_unsettled_forget_requests() if r.status is not ForgetStatus.COMPLETED]
    _metrics.add_metric(name=PAST_SLA_METRIC, unit=MetricUnit.Count, value=len(past_sla))
    _metrics.add_metric(name=OPEN_METRIC, unit=MetricUnit.Count, value=len(open_requests))
    return {"ran": ran, "settled": [r.request_id for r in settled], "purged": purged,
            "past_sla": [r.request_id for r in past_sla], "open": len(open_requests)}


def run(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One request (`{"request_id"}`) or the scheduled sweep; anything else is refused."""
    request_id = event.get("request_id")
    if request_id is not None:
        if not isinstance(request_id, str) or not is_client_id(request_id):
            raise InvalidRequest("request_id must be a forget request id")
        svc = erasure().services
        done = erasure_domain.run(svc, request_id)
        if done.status is ForgetStatus.WAITING_FOR_HOSTS:
            erasure_fleet.publish_host_work(svc.store)  # the hosts start at once; the next sweep settles it
        return {"request_id": done.request_id, "status": done.status.value, "rows_removed": done.rows_removed}
    if event.get("source") != "aws.events" or event.get("detail-type") != "Scheduled Event":
        raise InvalidRequest("the forget worker takes {\"request_id\": ...} or its EventBridge schedule")
    return sweep()  # the metrics go out with the entry point's own (Powertools shares one metric set)


lambda_handler = scheduled_entry(run, SERVICE)
