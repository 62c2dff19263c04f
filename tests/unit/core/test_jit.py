"""Just-in-time elevation: requesting, approving and denying, and the grant an approval writes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from hd_core import jit
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hd_core.iam_events import IamEventType
from hd_core.models import JitRequest, JitStatus, Role, User, UserStatus
from hd_core.permissions import ROLE_SCOPES
from hd_core.policies import JitGrant, PolicyKind
from tests.unit.core.test_directory import ControlPlane, control_plane, only_event


@pytest.fixture
def plane(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from control_plane(tmp_path, tmp_path_factory)


def ask(plane: ControlPlane, user: User, role: Role = Role.DEVELOPER, duration: int = 3600) -> JitRequest:
    return jit.request_elevation(
        plane.store, plane.trail, plane.ctx(user), org_id=plane.org.org_id, role=role,
        reason="hotfix for INC-42", duration_seconds=duration, now=plane.clock,
    )


# --- requesting ---------------------------------------------------------------------------------


def test_request_elevation_records_jit_requested_for_the_actor(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)

    request = ask(plane, analyst, Role.ADMIN, 1800)

    assert plane.store.get_jit_request(request.request_id) == request
    assert (request.user_id, request.role, request.status) == (analyst.user_id, Role.ADMIN, JitStatus.PENDING)
    assert (request.reason, request.duration_seconds) == ("hotfix for INC-42", 1800)
    assert request.requested_at == plane.clock()
    event = only_event(plane)
    assert (event.event_type, event.actor, event.target) == (IamEventType.JIT_REQUESTED, analyst.user_id,
                                                             request.request_id)
    assert event.before is None and event.after is not None and event.after["status"] == "pending"


@pytest.mark.parametrize(("current", "wanted"), [(Role.ANALYST, Role.ANALYST), (Role.DEVELOPER, Role.ANALYST),
                                                 (Role.ANALYST, Role.AUDITOR)])
def test_the_requested_role_must_rank_above_the_current_one(plane: ControlPlane, current: Role, wanted: Role) -> None:
    with pytest.raises(Conflict):
        ask(plane, plane.add_user(current), wanted)
    assert plane.events() == []


def test_nobody_is_elevated_to_owner(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        ask(plane, plane.add_user(Role.ADMIN), Role.OWNER)


@pytest.mark.parametrize("duration", [59, 8 * 3600 + 1, 0, -60])
def test_the_duration_is_one_minute_to_eight_hours(plane: ControlPlane, duration: int) -> None:
    with pytest.raises(InvalidRequest):
        ask(plane, plane.add_user(Role.ANALYST), duration=duration)


@pytest.mark.parametrize("duration", [60, 8 * 3600])
def test_the_duration_bounds_themselves_are_allowed(plane: ControlPlane, duration: int) -> None:
    assert ask(plane, plane.add_user(Role.ANALYST), duration=duration).duration_seconds == duration


def test_a_reason_is_required(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    with pytest.raises(InvalidRequest):
        jit.request_elevation(
            plane.store, plane.trail, plane.ctx(analyst), org_id=plane.org.org_id, role=Role.DEVELOPER,
            reason="   ", duration_seconds=600,
        )


def test_nobody_requests_elevation_in_another_tenant(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    with pytest.raises(NotFound):
        jit.request_elevation(
            plane.store, plane.trail, plane.ctx(analyst), org_id=plane.add_org().org_id, role=Role.DEVELOPER,
            reason="r", duration_seconds=600,
        )


# --- approving ------------------------------------------------------------------------------------


def test_approve_writes_a_grant_from_now_for_the_requested_duration(plane: ControlPlane) -> None:
    analyst, admin = plane.add_user(Role.ANALYST), plane.add_user(Role.ADMIN)
    request = ask(plane, analyst, Role.DEVELOPER, 1800)
    plane.clock.advance(minutes=10)
    version = plane.store.policy_version()

    approved = jit.approve(
        plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, request.request_id, "ok, INC-42",
        now=plane.clock,
    )

    assert (approved.status, approved.decided_by, approved.decided_at) == (
        JitStatus.APPROVED, admin.user_id, plane.clock(),
    )
    assert approved.decision_reason == "ok, INC-42"
    assert plane.store.get_jit_request(request.request_id) == approved
    grant = plane.store.get_policy(PolicyKind.JIT_GRANT, approved.grant_id)  # type: ignore[arg-type]
    assert grant == JitGrant(
        grant_id=approved.grant_id,  # type: ignore[arg-type]
        org_id=plane.org.org_id,
        user_id=analyst.user_id,
        role=Role.DEVELOPER,
        reason="hotfix for INC-42",
        starts_at=plane.clock(),
        expires_at=plane.clock() + timedelta(seconds=1800),
        approved_by=admin.user_id,
    )
    assert grant.active(plane.clock()) and not grant.active(plane.clock() + timedelta(seconds=1800))
    assert plane.store.policy_version() == version + 1  # the engine hosts pick the grant up
    _, event = plane.events()
    assert (event.event_type, event.actor, event.target) == (IamEventType.JIT_APPROVED, admin.user_id,
                                                             request.request_id)
    assert (event.before["status"], event.after["status"]) == ("pending", "approved")  # type: ignore[index]
    assert event.after["grant_id"] == approved.grant_id  # type: ignore[index]


def test_approving_needs_users_manage(plane: ControlPlane) -> None:
    request = ask(plane, plane.add_user(Role.ANALYST))
    developer = plane.add_user(Role.DEVELOPER)
    with pytest.raises(Forbidden):
        jit.approve(plane.store, plane.trail, plane.ctx(developer), plane.org.org_id, request.request_id)
    admin = plane.add_user(Role.ADMIN)
    narrow_admin_key = tuple(sorted(ROLE_SCOPES[Role.ADMIN] - {"users:manage"}))
    with pytest.raises(Forbidden):
        jit.approve(plane.store, plane.trail, plane.ctx(admin, scopes=narrow_admin_key), plane.org.org_id,
                    request.request_id)
    assert plane.store.get_jit_request(request.request_id) == request


def test_nobody_approves_their_own_request(plane: ControlPlane) -> None:
    # An analyst already elevated to Admin holds users:manage; it still cannot approve its next request.
    analyst = plane.add_user(Role.ANALYST)
    request = ask(plane, analyst, Role.ADMIN)
    with pytest.raises(Forbidden):
        jit.approve(plane.store, plane.trail, plane.ctx(analyst, role=Role.ADMIN), plane.org.org_id, request.request_id)
    assert plane.store.list_policies(kind=PolicyKind.JIT_GRANT) == []


def test_nobody_grants_a_role_above_their_own(plane: ControlPlane) -> None:
    request = ask(plane, plane.add_user(Role.ANALYST), Role.ADMIN)
    # A credential that manages users while acting as a Developer (say, a stale elevated session).
    approver = plane.add_user(Role.DEVELOPER)
    ctx = plane.ctx(approver, scopes=tuple(sorted(ROLE_SCOPES[Role.DEVELOPER] | {"users:manage"})))
    with pytest.raises(Forbidden):
        jit.approve(plane.store, plane.trail, ctx, plane.org.org_id, request.request_id)


def test_a_decided_request_cannot_be_decided_again(plane: ControlPlane) -> None:
    request = ask(plane, plane.add_user(Role.ANALYST))
    ctx = plane.ctx(plane.owner)
    jit.approve(plane.store, plane.trail, ctx, plane.org.org_id, request.request_id, now=plane.clock)
    with pytest.raises(Conflict):
        jit.approve(plane.store, plane.trail, ctx, plane.org.org_id, request.request_id, now=plane.clock)
    with pytest.raises(Conflict):
        jit.deny(plane.store, plane.trail, ctx, plane.org.org_id, request.request_id)
    assert len(plane.store.list_policies(kind=PolicyKind.JIT_GRANT)) == 1
    assert plane.event_types() == [IamEventType.JIT_REQUESTED, IamEventType.JIT_APPROVED]


def test_a_request_of_a_user_suspended_since_is_not_approved(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    request = ask(plane, analyst)
    plane.store.put_user(replace(analyst, status=UserStatus.SUSPENDED))
    with pytest.raises(Conflict):
        jit.approve(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, request.request_id)
    assert plane.store.list_policies(kind=PolicyKind.JIT_GRANT) == []


def test_another_tenants_requests_are_not_found(plane: ControlPlane) -> None:
    other = plane.add_org()
    stranger = plane.add_user(Role.ANALYST, org=other)
    request = jit.request_elevation(
        plane.store, plane.trail, plane.ctx(stranger), org_id=other.org_id, role=Role.DEVELOPER, reason="r",
        duration_seconds=600,
    )
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound):
        jit.approve(plane.store, plane.trail, ctx, plane.org.org_id, request.request_id)
    with pytest.raises(NotFound):
        jit.deny(plane.store, plane.trail, ctx, other.org_id, request.request_id)
    with pytest.raises(NotFound):
        jit.list_requests(plane.store, ctx, other.org_id)
    assert plane.store.get_jit_request(request.request_id) == request


# --- denying and listing ---------------------------------------------------------------------------


def test_deny_records_jit_denied_and_grants_nothing(plane: ControlPlane) -> None:
    request = ask(plane, plane.add_user(Role.ANALYST))
    admin = plane.add_user(Role.ADMIN)

    denied = jit.deny(plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, request.request_id,
                      "use the runbook", now=plane.clock)

    assert (denied.status, denied.decided_by, denied.decision_reason, denied.grant_id) == (
        JitStatus.DENIED, admin.user_id, "use the runbook", None,
    )
    assert plane.store.get_jit_request(request.request_id) == denied
    assert plane.store.list_policies(kind=PolicyKind.JIT_GRANT) == []
    _, event = plane.events()
    assert event.event_type == IamEventType.JIT_DENIED
    assert (event.before["status"], event.after["status"]) == ("pending", "denied")  # type: ignore[index]


def test_denying_needs_users_manage(plane: ControlPlane) -> None:
    request = ask(plane, plane.add_user(Role.ANALYST))
    with pytest.raises(Forbidden):
        jit.deny(plane.store, plane.trail, plane.ctx(plane.add_user(Role.AUDITOR)), plane.org.org_id,
                 request.request_id)


def test_list_requests_shows_everyone_to_managers_and_only_their_own_to_others(plane: ControlPlane) -> None:
    analyst, developer = plane.add_user(Role.ANALYST), plane.add_user(Role.DEVELOPER)
    mine = ask(plane, analyst)
    plane.clock.advance(seconds=1)
    theirs = ask(plane, developer, Role.ADMIN)
    plane.clock.advance(seconds=1)
    approved = jit.approve(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, theirs.request_id,
                           now=plane.clock)
    admin_ctx = plane.ctx(plane.owner)

    assert jit.list_requests(plane.store, admin_ctx, plane.org.org_id) == [mine, approved]
    assert jit.list_requests(plane.store, admin_ctx, plane.org.org_id, "pending") == [mine]
    assert jit.list_requests(plane.store, plane.ctx(analyst), plane.org.org_id) == [mine]
    with pytest.raises(InvalidRequest):
        jit.list_requests(plane.store, admin_ctx, plane.org.org_id, "expired")


# --- privileged approvals and revocation -----------------------------------------------------------


def test_an_admin_cannot_approve_an_elevation_to_admin(plane: ControlPlane) -> None:
    # Like a role change: handing out Admin, even for a while, takes an Owner.
    request = ask(plane, plane.add_user(Role.ANALYST), Role.ADMIN)
    with pytest.raises(Forbidden, match="Owner"):
        jit.approve(plane.store, plane.trail, plane.ctx(plane.add_user(Role.ADMIN)), plane.org.org_id,
                    request.request_id)
    assert plane.store.get_jit_request(request.request_id) == request
    assert plane.store.list_policies(kind=PolicyKind.JIT_GRANT) == []
    approved = jit.approve(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, request.request_id)
    assert approved.status == JitStatus.APPROVED


def _approved(plane: ControlPlane, user: User, role: Role = Role.DEVELOPER) -> JitRequest:
    request = ask(plane, user, role)
    return jit.approve(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, request.request_id,
                       now=plane.clock)


def _grant(plane: ControlPlane, request: JitRequest) -> JitGrant:
    grant = plane.store.get_policy(PolicyKind.JIT_GRANT, request.grant_id or "")
    assert isinstance(grant, JitGrant)
    return grant


def test_revoke_ends_the_grant_at_once_and_records_jit_revoked(plane: ControlPlane) -> None:
    analyst, admin = plane.add_user(Role.ANALYST), plane.add_user(Role.ADMIN)
    approved = _approved(plane, analyst)
    plane.clock.advance(minutes=5)
    version = plane.store.policy_version()

    revoked = jit.revoke(plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, approved.request_id,
                         "incident closed", now=plane.clock)

    assert revoked == replace(approved, status=JitStatus.REVOKED)
    assert plane.store.get_jit_request(approved.request_id) == revoked
    grant = _grant(plane, approved)
    assert grant.revoked_at == plane.clock() and not grant.active(plane.clock())
    assert plane.store.policy_version() == version + 1  # the engine hosts reload and stop honouring it
    event = plane.events()[-1]
    assert (event.event_type, event.actor, event.target) == (IamEventType.JIT_REVOKED, admin.user_id,
                                                             approved.request_id)
    assert event.before is not None and event.before["status"] == "approved"
    assert event.after is not None and event.after["request"]["status"] == "revoked"  # type: ignore[index]
    assert event.after["reason"] == "incident closed"


def test_revoking_twice_changes_nothing_the_second_time(plane: ControlPlane) -> None:
    approved = _approved(plane, plane.add_user(Role.ANALYST))
    ctx = plane.ctx(plane.owner)
    first = jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, approved.request_id, now=plane.clock)
    events, version = len(plane.events()), plane.store.policy_version()
    assert jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, approved.request_id, now=plane.clock) == first
    assert (len(plane.events()), plane.store.policy_version()) == (events, version)


def test_the_grantee_may_give_up_their_own_elevation(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    approved = _approved(plane, analyst)
    revoked = jit.revoke(plane.store, plane.trail, plane.ctx(analyst), plane.org.org_id, approved.request_id,
                         now=plane.clock)
    assert revoked.status == JitStatus.REVOKED and _grant(plane, approved).revoked_at is not None


def test_revoking_someone_elses_elevation_needs_users_manage(plane: ControlPlane) -> None:
    approved = _approved(plane, plane.add_user(Role.ANALYST))
    with pytest.raises(Forbidden):
        jit.revoke(plane.store, plane.trail, plane.ctx(plane.add_user(Role.DEVELOPER)), plane.org.org_id,
                   approved.request_id)
    assert _grant(plane, approved).revoked_at is None


def test_only_an_owner_revokes_another_users_admin_elevation(plane: ControlPlane) -> None:
    approved = _approved(plane, plane.add_user(Role.ANALYST), Role.ADMIN)
    with pytest.raises(Forbidden):
        jit.revoke(plane.store, plane.trail, plane.ctx(plane.add_user(Role.ADMIN)), plane.org.org_id,
                   approved.request_id)
    assert _grant(plane, approved).revoked_at is None
    jit.revoke(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, approved.request_id,
               now=plane.clock)
    assert _grant(plane, approved).revoked_at is not None


def test_only_an_approved_unexpired_grant_can_be_revoked(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)
    pending = ask(plane, plane.add_user(Role.ANALYST))
    with pytest.raises(Conflict):
        jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, pending.request_id)
    to_deny = ask(plane, plane.add_user(Role.ANALYST))
    denied = jit.deny(plane.store, plane.trail, ctx, plane.org.org_id, to_deny.request_id)
    with pytest.raises(Conflict):
        jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, denied.request_id)
    approved = _approved(plane, plane.add_user(Role.ANALYST))
    plane.clock.advance(hours=2)
    with pytest.raises(Conflict, match="expired"):
        jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, approved.request_id, now=plane.clock)
    assert plane.store.get_jit_request(approved.request_id) == approved


def test_another_tenants_request_cannot_be_revoked_and_reads_like_a_made_up_id(plane: ControlPlane) -> None:
    other = plane.add_org()
    stranger = plane.add_user(Role.ANALYST, org=other)
    request = jit.request_elevation(
        plane.store, plane.trail, plane.ctx(stranger), org_id=other.org_id, role=Role.DEVELOPER, reason="r",
        duration_seconds=600,
    )
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound) as theirs:
        jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, request.request_id)
    with pytest.raises(NotFound) as made_up:
        jit.revoke(plane.store, plane.trail, ctx, plane.org.org_id, "jitreq_madeup")
    assert str(theirs.value) == str(made_up.value)
