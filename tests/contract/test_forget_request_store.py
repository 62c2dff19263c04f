"""The `ForgetRequestStore` part of the control store contract (GDPR erasure), on every adapter."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hd_core.erasure_models import FORGET_SLA, ForgetRequest, ForgetStatus
from hd_core.errors import Conflict, NotFound

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _request(request_id: str = "fgt_1", org_id: str = "org_1", at: datetime = T0) -> ForgetRequest:
    return ForgetRequest(
        request_id=request_id, org_id=org_id, subject_hmac="ab" * 32, reason="art. 17 request",
        requested_by="usr_admin", status=ForgetStatus.PENDING, requested_at=at, sla_deadline=at + FORGET_SLA,
        subject_sealed="hdsealed:v1:abc:def",
    )


def test_requests_round_trip_with_every_field_and_never_overwrite(store: Any) -> None:
    request = _request()
    store.put_forget_request(request)
    assert store.get_forget_request("fgt_1") == request
    assert store.get_forget_request("fgt_missing") is None
    with pytest.raises(Conflict):
        store.put_forget_request(replace(request, reason="other"))
    done = replace(
        request, status=ForgetStatus.COMPLETED, subject_sealed=None, started_at=T0, finished_at=T0 + timedelta(1),
        tables=("crm.customers", "sales.leads"), rows_removed=3, purge_after=T0 + timedelta(hours=2),
        table_results={"crm.customers": {"storage": "parquet", "rows_removed": 2, "objects_rewritten": 1},
                       "sales.leads": {"storage": "writable", "rows_removed": 1, "objects_rewritten": 0}},
        purge_versions=("crm/customers/part-0.parquet\tv1",),
    )
    store.update_forget_request(done, from_status=ForgetStatus.PENDING)
    assert store.get_forget_request("fgt_1") == done


def test_an_update_from_a_status_the_request_left_is_a_conflict(store: Any) -> None:
    request = _request()
    store.put_forget_request(request)
    running = replace(request, status=ForgetStatus.RUNNING, started_at=T0)
    store.update_forget_request(running, from_status=ForgetStatus.PENDING)
    with pytest.raises(Conflict):  # a second worker that read it pending loses
        store.update_forget_request(replace(request, status=ForgetStatus.RUNNING), from_status=ForgetStatus.PENDING)
    assert store.get_forget_request("fgt_1") == running
    with pytest.raises(NotFound):
        store.update_forget_request(_request("fgt_missing"), from_status=ForgetStatus.PENDING)


def test_requests_are_listed_per_org_oldest_first(store: Any) -> None:
    later = _request("fgt_b", at=T0 + timedelta(minutes=1))
    earlier = _request("fgt_a", at=T0)
    other = _request("fgt_c", org_id="org_2")
    for request in (later, earlier, other):
        store.put_forget_request(request)
    assert store.list_forget_requests("org_1") == [earlier, later]
    assert store.list_forget_requests("org_2") == [other]
    assert store.list_forget_requests("org_none") == []


def test_unsettled_lists_open_requests_and_completed_ones_with_versions_to_purge(store: Any) -> None:
    pending = _request("fgt_p")
    settled = replace(_request("fgt_s", at=T0 + timedelta(minutes=1)), status=ForgetStatus.COMPLETED,
                      subject_sealed=None)
    purging = replace(_request("fgt_v", at=T0 + timedelta(minutes=2)), status=ForgetStatus.COMPLETED,
                      purge_versions=("a/b/c.parquet\tv9",), purge_after=T0 + timedelta(days=1))
    failed = replace(_request("fgt_f", org_id="org_2", at=T0 + timedelta(minutes=3)), status=ForgetStatus.FAILED,
                     error="boom")
    for request in (pending, settled, purging, failed):
        store.put_forget_request(request)
    assert store.list_unsettled_forget_requests() == [pending, purging, failed]
    store.update_forget_request(replace(purging, purge_versions=(), purge_after=None),
                                from_status=ForgetStatus.COMPLETED)
    assert store.list_unsettled_forget_requests() == [pending, failed]
