"""The `FleetErasureStore` part of the control store contract (GDPR erasure of the fleet hosts' writable tables),
on every adapter: the registry of hosts, their acks of forget requests, and a request waiting for them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hd_core.erasure_models import FORGET_SLA, AckStatus, FleetHost, ForgetHostAck, ForgetRequest, ForgetStatus

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _host(host_id: str, org_id: str = "org_1", seen: datetime = T0) -> FleetHost:
    return FleetHost(host_id=host_id, org_id=org_id, last_seen=seen, heartbeat_seconds=900)


def _ack(host_id: str, status: AckStatus, *, request_id: str = "fgt_1", rows: int = 0,
         attempt: datetime | None = T0) -> ForgetHostAck:
    return ForgetHostAck(request_id=request_id, host_id=host_id, org_id="org_1", status=status, acked_at=T0,
                         attempt_started_at=attempt,
                         table_results={"crm.contacts": {"storage": "writable", "rows_removed": rows}},
                         rows_removed=rows, error="" if status is AckStatus.DONE else "boom")


def test_a_host_entry_is_replaced_by_its_next_heartbeat_and_listed_under_its_organisation_only(store: Any) -> None:
    store.record_fleet_host(_host("i-0bbbbbbbbbbbbbbbb"))
    store.record_fleet_host(_host("i-0aaaaaaaaaaaaaaaa"))
    store.record_fleet_host(_host("i-0cccccccccccccccc", org_id="org_2"))
    store.record_fleet_host(_host("i-0bbbbbbbbbbbbbbbb", seen=T0 + timedelta(minutes=15)))

    assert store.list_fleet_hosts("org_1") == [
        _host("i-0aaaaaaaaaaaaaaaa"), _host("i-0bbbbbbbbbbbbbbbb", seen=T0 + timedelta(minutes=15))]
    assert store.list_fleet_hosts("org_2") == [_host("i-0cccccccccccccccc", org_id="org_2")]
    assert store.list_fleet_hosts("org_3") == []


def test_a_done_ack_is_never_replaced_and_a_failed_one_is(store: Any) -> None:
    done = _ack("i-0aaaaaaaaaaaaaaaa", AckStatus.DONE, rows=2)
    assert store.put_forget_host_ack(done) is True
    assert store.put_forget_host_ack(replace(done, rows_removed=0, table_results={})) is False
    assert store.put_forget_host_ack(replace(done, status=AckStatus.FAILED, error="late")) is False

    failed = _ack("i-0bbbbbbbbbbbbbbbb", AckStatus.FAILED)
    assert store.put_forget_host_ack(failed) is True
    retried = _ack("i-0bbbbbbbbbbbbbbbb", AckStatus.DONE, rows=1, attempt=T0 + timedelta(hours=1))
    assert store.put_forget_host_ack(retried) is True
    store.put_forget_host_ack(_ack("i-0aaaaaaaaaaaaaaaa", AckStatus.DONE, request_id="fgt_2"))

    assert store.list_forget_host_acks("fgt_1") == [done, retried]
    assert [ack.host_id for ack in store.list_forget_host_acks("fgt_2")] == ["i-0aaaaaaaaaaaaaaaa"]
    assert store.list_forget_host_acks("fgt_missing") == []


def test_a_request_waiting_for_hosts_keeps_its_host_tables_and_is_unsettled(store: Any) -> None:
    request = ForgetRequest(
        request_id="fgt_1", org_id="org_1", subject_hmac="ab" * 32, reason="", requested_by="usr_admin",
        status=ForgetStatus.PENDING, requested_at=T0, sla_deadline=T0 + FORGET_SLA, subject_sealed="hdsealed:v1:a:b")
    store.put_forget_request(request)
    waiting = replace(request, status=ForgetStatus.WAITING_FOR_HOSTS, started_at=T0,
                      host_tables={"crm.contacts": {"column": "customer_id", "tenant_column": None},
                                   "crm.shared": {"column": "customer_id", "tenant_column": "org_id"}})
    store.update_forget_request(waiting, from_status=ForgetStatus.PENDING)

    assert store.get_forget_request("fgt_1") == waiting
    assert [r.request_id for r in store.list_unsettled_forget_requests()] == ["fgt_1"]


def test_a_forgotten_host_leaves_the_registry_and_the_other_hosts_stay(store: Any) -> None:
    store.record_fleet_host(_host("i-0aaaaaaaaaaaaaaaa"))
    store.record_fleet_host(_host("i-0bbbbbbbbbbbbbbbb"))

    store.forget_fleet_host("i-0aaaaaaaaaaaaaaaa")
    store.forget_fleet_host("i-0aaaaaaaaaaaaaaaa")  # again: nothing there, nothing happens
    store.forget_fleet_host("i-0cccccccccccccccc")  # never registered

    assert store.list_fleet_hosts("org_1") == [_host("i-0bbbbbbbbbbbbbbbb")]
    store.record_fleet_host(_host("i-0aaaaaaaaaaaaaaaa", seen=T0 + timedelta(days=30)))  # a later heartbeat: back
    assert [host.host_id for host in store.list_fleet_hosts("org_1")] == ["i-0aaaaaaaaaaaaaaaa", "i-0bbbbbbbbbbbbbbbb"]
