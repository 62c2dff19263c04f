"""`POST /v1/fleet/heartbeat` keeps the registry of live hosts a GDPR forget request waits for
(hd_core/erasure_fleet.py), on both control-store backends, through the real route and moto's EC2 (the
fixtures of test_fleet_heartbeat.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.integration.functions.test_fleet_heartbeat import Fleet, fleet, session_of  # noqa: F401 (fixture)


def test_an_accepted_heartbeat_registers_the_host_as_live_and_a_refused_one_does_not(fleet: Fleet) -> None:  # noqa: F811
    member, outsider = fleet.launch(), fleet.launch(asg=None)
    store = fleet.control.services.store

    status, refused = fleet.post(fleet.report(outsider), caller=session_of(outsider["InstanceId"]))
    assert status == 200 and refused["allowed"] is False
    assert store.list_fleet_hosts(fleet.control.org_id) == []

    status, verdict = fleet.post(fleet.report(member), caller=session_of(member["InstanceId"]))

    assert status == 200 and verdict["allowed"] is True
    (host,) = store.list_fleet_hosts(fleet.control.org_id)
    assert (host.host_id, host.heartbeat_seconds) == (member["InstanceId"], verdict["next_heartbeat_seconds"])
    assert host.last_seen == datetime.fromisoformat(verdict["checked_at"])
    assert host.live(datetime.now(UTC)) and not host.live(host.last_seen + timedelta(seconds=2 * 600 + 1))
