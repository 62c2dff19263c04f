"""Quotas and usage: the organisation's single quota object, usage reports and month-to-date credits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from hd_core import quotas
from hd_core.errors import Forbidden, InvalidRequest, NotFound, PolicyInvalid
from hd_core.iam_events import IamEventType
from hd_core.models import Role, UsageDelta
from hd_core.policies import PolicyKind, QuotaLimit
from hd_core.policy_codec import to_document
from tests.unit.core.test_directory import ControlPlane, control_plane, only_event


@pytest.fixture
def plane(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from control_plane(tmp_path, tmp_path_factory)


def set_quota(plane: ControlPlane, **limits: float | None) -> QuotaLimit:
    return quotas.set_quota(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id,
        monthly_credits=limits.get("monthly_credits"), max_rows_per_query=limits.get("max_rows_per_query"),  # type: ignore[arg-type]
        statements_per_second=limits.get("statements_per_second"), now=plane.clock,
    )


# --- the quota ------------------------------------------------------------------------------------


def test_an_organisation_without_a_quota_is_unlimited(plane: ControlPlane) -> None:
    assert quotas.get_quota(plane.store, plane.ctx(plane.owner), plane.org.org_id) is None


def test_set_quota_stores_one_quota_under_a_stable_id_and_records_each_change(plane: ControlPlane) -> None:
    version = plane.store.policy_version()

    first = set_quota(plane, monthly_credits=100.0, max_rows_per_query=1_000_000)
    second = set_quota(plane, monthly_credits=250.0, max_rows_per_query=None, statements_per_second=20.0)

    assert first.quota_id == second.quota_id == f"quota_{plane.org.org_id}"
    assert plane.store.list_policies(org_id=plane.org.org_id, kind=PolicyKind.QUOTA) == [second]
    assert quotas.get_quota(plane.store, plane.ctx(plane.add_user(Role.ANALYST)), plane.org.org_id) == second
    assert plane.store.policy_version() == version + 2
    created, changed = plane.events()
    assert (created.event_type, created.target) == (IamEventType.QUOTA_CHANGED, first.quota_id)
    assert (created.before, created.after) == (None, to_document(first))
    assert (changed.before, changed.after) == (to_document(first), to_document(second))


def test_setting_the_quota_needs_billing_manage(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    with pytest.raises(Forbidden):
        quotas.set_quota(plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, monthly_credits=1.0,
                         max_rows_per_query=None)
    owner_without_billing = plane.ctx(plane.owner, scopes=("query:read", "users:manage"))
    with pytest.raises(Forbidden):
        quotas.set_quota(plane.store, plane.trail, owner_without_billing, plane.org.org_id, monthly_credits=1.0,
                         max_rows_per_query=None)
    assert quotas.get_quota(plane.store, plane.ctx(plane.owner), plane.org.org_id) is None


@pytest.mark.parametrize("limits", [{"monthly_credits": -1.0}, {"max_rows_per_query": -5},
                                    {"statements_per_second": float("inf")}])
def test_a_negative_or_infinite_limit_is_refused(plane: ControlPlane, limits: dict[str, float]) -> None:
    with pytest.raises(PolicyInvalid):
        set_quota(plane, **limits)
    assert plane.events() == []


def test_setting_the_quota_replaces_one_loaded_under_another_id(plane: ControlPlane) -> None:
    plane.store.put_policy(QuotaLimit("quota_from_file", plane.org.org_id, monthly_credits=10.0))
    assert quotas.get_quota(plane.store, plane.ctx(plane.owner), plane.org.org_id).quota_id == "quota_from_file"  # type: ignore[union-attr]

    quota = set_quota(plane, monthly_credits=50.0)

    assert plane.store.list_policies(org_id=plane.org.org_id, kind=PolicyKind.QUOTA) == [quota]
    assert only_event(plane).before["quota_id"] == "quota_from_file"  # type: ignore[index]


def test_another_tenants_quota_is_not_found(plane: ControlPlane) -> None:
    other = plane.add_org()
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound):
        quotas.get_quota(plane.store, ctx, other.org_id)
    with pytest.raises(NotFound):
        quotas.set_quota(plane.store, plane.trail, ctx, other.org_id, monthly_credits=0.0, max_rows_per_query=0)
    assert plane.store.list_policies(kind=PolicyKind.QUOTA) == []


# --- usage --------------------------------------------------------------------------------------


def add_usage(plane: ControlPlane, org_id: str | None = None) -> None:
    org = org_id or plane.org.org_id
    plane.store.add_usage([
        UsageDelta(org, date(2026, 2, 27), "usr_a", None, 1, 0.5, 10, 100),
        UsageDelta(org, date(2026, 3, 1), "usr_a", "agent_x", 2, 1.25, 20, 200),
        UsageDelta(org, date(2026, 3, 1), "usr_b", None, 3, 2.0, 30, 300),
        UsageDelta(org, date(2026, 3, 2), "usr_b", "agent_x", 4, 0.125, 40, 400),
    ])


def report(plane: ControlPlane, group_by: str, start: date = date(2026, 3, 1), end: date = date(2026, 3, 31)):
    return quotas.usage_report(plane.store, plane.ctx(plane.owner), plane.org.org_id, start=start, end=end,
                               group_by=group_by)


def test_usage_report_sums_per_user_agent_or_day_within_the_range(plane: ControlPlane) -> None:
    add_usage(plane)
    add_usage(plane, plane.add_org().org_id)  # another tenant's usage never shows

    assert report(plane, "user") == [
        {"user_id": "usr_a", "statements": 2, "credits": 1.25, "rows": 20, "bytes": 200},
        {"user_id": "usr_b", "statements": 7, "credits": 2.125, "rows": 70, "bytes": 700},
    ]
    assert report(plane, "agent") == [
        {"agent_id": "agent_x", "statements": 6, "credits": 1.375, "rows": 60, "bytes": 600},
        {"agent_id": None, "statements": 3, "credits": 2.0, "rows": 30, "bytes": 300},
    ]
    assert report(plane, "day", start=date(2026, 2, 1)) == [
        {"day": "2026-02-27", "statements": 1, "credits": 0.5, "rows": 10, "bytes": 100},
        {"day": "2026-03-01", "statements": 5, "credits": 3.25, "rows": 50, "bytes": 500},
        {"day": "2026-03-02", "statements": 4, "credits": 0.125, "rows": 40, "bytes": 400},
    ]
    assert report(plane, "day", start=date(2026, 4, 1), end=date(2026, 4, 30)) == []


@pytest.mark.parametrize(
    ("group_by", "start", "end"),
    [("org", date(2026, 3, 1), date(2026, 3, 2)), ("day", date(2026, 3, 2), date(2026, 3, 1)),
     ("day", date(2025, 1, 1), date(2026, 1, 2))],  # 367 days counting both ends
)
def test_a_bad_grouping_or_range_is_an_invalid_request(
    plane: ControlPlane, group_by: str, start: date, end: date
) -> None:
    with pytest.raises(InvalidRequest):
        report(plane, group_by, start, end)


def test_a_report_may_cover_366_days(plane: ControlPlane) -> None:
    add_usage(plane)
    rows = report(plane, "day", date(2025, 3, 2), date(2026, 3, 2))
    assert [row["day"] for row in rows] == ["2026-02-27", "2026-03-01", "2026-03-02"]


def test_usage_of_another_tenant_is_not_found(plane: ControlPlane) -> None:
    with pytest.raises(NotFound):
        quotas.usage_report(plane.store, plane.ctx(plane.owner), plane.add_org().org_id, start=date(2026, 3, 1),
                            end=date(2026, 3, 2), group_by="day")


def test_month_to_date_credits_count_this_utc_month_of_the_organisation_only(plane: ControlPlane) -> None:
    add_usage(plane)
    add_usage(plane, plane.add_org().org_id)

    assert quotas.month_to_date_credits(plane.store, plane.org.org_id, now=datetime(2026, 3, 1, 23, tzinfo=UTC)) == 3.25
    assert quotas.month_to_date_credits(plane.store, plane.org.org_id, now=datetime(2026, 3, 9, tzinfo=UTC)) == 3.375
    assert quotas.month_to_date_credits(plane.store, plane.org.org_id, now=datetime(2026, 2, 28, tzinfo=UTC)) == 0.5
    with pytest.raises(InvalidRequest):
        quotas.month_to_date_credits(plane.store, plane.org.org_id, now=datetime(2026, 3, 9))
