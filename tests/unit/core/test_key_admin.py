"""API key administration: who may create, see, rotate and revoke which keys, and what the audit trail shows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from hd_core import key_admin
from hd_core.api_keys import ApiKeyAuthenticator, issue_api_key
from hd_core.errors import AuthenticationFailed, Conflict, Forbidden, InvalidRequest, NotFound, ScopeNotAllowed
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import ApiKeyRecord, ApiScope, Role, User
from hd_core.permissions import SCOPE_BUNDLES
from tests.unit.core.test_directory import T0, ControlPlane, control_plane, only_event

PEPPER = b"k" * 32
READ_ONLY = SCOPE_BUNDLES["read_only"]


@pytest.fixture
def plane(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from control_plane(tmp_path, tmp_path_factory)


def create(
    plane: ControlPlane, actor: User, user: User, scopes: tuple[str, ...] = READ_ONLY, **options: object
) -> tuple[str, ApiKeyRecord]:
    return key_admin.create_key(
        plane.store, plane.trail, plane.ctx(actor), plane.hasher, org_id=plane.org.org_id, user_id=user.user_id,
        env="live", scopes=scopes, now=plane.clock, **options,  # type: ignore[arg-type]
    )


def seed_key(plane: ControlPlane, user: User, **options: object) -> ApiKeyRecord:
    """A key issued straight through api_keys (setup: no IAM event)."""
    _, record = issue_api_key(
        plane.store, plane.hasher, org_id=user.org_id, user_id=user.user_id, now=plane.clock, **options  # type: ignore[arg-type]
    )
    return record


# --- creating ------------------------------------------------------------------------------------


def test_a_user_creates_a_key_for_themselves_and_it_authenticates(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)

    plaintext, record = create(plane, analyst, analyst, ("read_only",), name="laptop")

    assert plane.store.get_api_key(record.key_id) == record
    assert record.scopes == READ_ONLY and record.name == "laptop" and record.user_id == analyst.user_id
    principal = ApiKeyAuthenticator(plane.store, PEPPER, hasher=plane.hasher, now=plane.clock).authenticate(
        analyst.user_id, plaintext
    )
    assert principal.key_id == record.key_id
    event = only_event(plane)
    assert (event.event_type, event.actor) == (IamEventType.API_KEY_CREATED, analyst.user_id)
    assert event.target == record.key_id
    assert event.before is None
    assert event.after is not None and event.after["scopes"] == list(READ_ONLY)
    assert "key_hash" not in event.after and plaintext not in str(event.after)


def test_creating_a_key_for_another_user_needs_keys_manage(plane: ControlPlane) -> None:
    analyst, colleague = plane.add_user(Role.ANALYST), plane.add_user(Role.ANALYST)
    with pytest.raises(Forbidden):
        create(plane, analyst, colleague)
    assert plane.store.list_api_keys(plane.org.org_id) == []


def test_an_admin_with_keys_manage_creates_a_key_for_an_analyst(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    _, record = create(plane, plane.add_user(Role.ADMIN), analyst, (ApiScope.QUERY_READ, ApiScope.QUERY_WRITE))
    assert record.user_id == analyst.user_id
    assert plane.event_types() == [IamEventType.API_KEY_CREATED]


def test_an_admin_cannot_create_a_key_for_the_owner(plane: ControlPlane) -> None:
    # A key acts as its user: an Admin holding one of the Owner's would be an Owner.
    with pytest.raises(Forbidden):
        create(plane, plane.add_user(Role.ADMIN), plane.owner)
    assert plane.store.list_api_keys(plane.org.org_id) == []


def test_a_key_cannot_carry_scopes_the_creating_credential_lacks(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    read_only_session = plane.ctx(analyst, scopes=READ_ONLY)
    with pytest.raises(Forbidden):
        key_admin.create_key(
            plane.store, plane.trail, read_only_session, plane.hasher, org_id=plane.org.org_id,
            user_id=analyst.user_id, env="live", scopes=[ApiScope.QUERY_WRITE],
        )
    assert plane.store.list_api_keys(plane.org.org_id) == []


def test_a_key_cannot_carry_scopes_beyond_its_users_role(plane: ControlPlane) -> None:
    with pytest.raises(ScopeNotAllowed):
        create(plane, plane.owner, plane.add_user(Role.ANALYST), (ApiScope.USERS_MANAGE,))


def test_allowed_cidrs_are_stored_normalised_and_bad_ones_refused(plane: ControlPlane) -> None:
    _, record = create(plane, plane.owner, plane.owner, allowed_cidrs=["10.1.2.3/8", "2001:db8::1"])
    assert record.allowed_cidrs == ("10.0.0.0/8", "2001:db8::1/128")
    with pytest.raises(InvalidRequest):
        create(plane, plane.owner, plane.owner, allowed_cidrs=["10.0.0.0/33"])


@pytest.mark.parametrize(("env", "expires_in"), [("live", timedelta(0)), ("prod", None)])
def test_a_past_expiry_or_unknown_environment_is_an_invalid_request(
    plane: ControlPlane, env: str, expires_in: timedelta | None
) -> None:
    with pytest.raises(InvalidRequest):
        key_admin.create_key(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.hasher, org_id=plane.org.org_id,
            user_id=plane.owner.user_id, env=env, scopes=READ_ONLY,
            expires_at=None if expires_in is None else plane.clock() + expires_in, now=plane.clock,
        )


def test_keys_of_another_tenant_are_not_found(plane: ControlPlane) -> None:
    other = plane.add_org()
    stranger_key = seed_key(plane, plane.add_user(Role.ANALYST, org=other))
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound):
        key_admin.get_key(plane.store, ctx, plane.org.org_id, stranger_key.key_id)
    with pytest.raises(NotFound):
        key_admin.revoke_key(plane.store, plane.trail, ctx, plane.org.org_id, stranger_key.key_id)
    with pytest.raises(NotFound):
        key_admin.list_keys(plane.store, ctx, other.org_id)
    with pytest.raises(NotFound):
        key_admin.create_key(
            plane.store, plane.trail, ctx, plane.hasher, org_id=other.org_id, user_id=stranger_key.user_id,
            env="live", scopes=READ_ONLY,
        )
    assert plane.store.get_api_key(stranger_key.key_id) == stranger_key


# --- reading --------------------------------------------------------------------------------------


def test_without_keys_manage_a_user_lists_and_reads_only_their_own_keys(plane: ControlPlane) -> None:
    analyst, colleague = plane.add_user(Role.ANALYST), plane.add_user(Role.ANALYST)
    own, theirs = seed_key(plane, analyst), seed_key(plane, colleague)
    ctx = plane.ctx(analyst)

    assert key_admin.list_keys(plane.store, ctx, plane.org.org_id) == [own]
    assert key_admin.get_key(plane.store, ctx, plane.org.org_id, own.key_id) == own
    with pytest.raises(Forbidden):
        key_admin.list_keys(plane.store, ctx, plane.org.org_id, user_id=colleague.user_id)
    with pytest.raises(Forbidden):
        key_admin.get_key(plane.store, ctx, plane.org.org_id, theirs.key_id)


def test_with_keys_manage_an_admin_lists_every_key_and_can_leave_out_revoked_ones(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    first = seed_key(plane, analyst)
    plane.clock.advance(seconds=1)
    second = seed_key(plane, plane.owner)
    revoked = plane.store.revoke_api_key(first.key_id, plane.clock())
    ctx = plane.ctx(plane.add_user(Role.ADMIN))

    assert key_admin.list_keys(plane.store, ctx, plane.org.org_id) == [revoked, second]
    assert key_admin.list_keys(plane.store, ctx, plane.org.org_id, include_revoked=False) == [second]
    assert key_admin.list_keys(plane.store, ctx, plane.org.org_id, user_id=analyst.user_id) == [revoked]


# --- rotating and revoking ---------------------------------------------------------------------------


def test_rotate_key_records_the_old_key_before_and_both_keys_after(plane: ControlPlane) -> None:
    old = seed_key(plane, plane.owner, scopes=READ_ONLY)
    plane.clock.advance(hours=1)

    plaintext, new = key_admin.rotate_key(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.hasher, plane.org.org_id, old.key_id,
        grace=timedelta(hours=24), now=plane.clock,
    )

    retired = plane.store.get_api_key(old.key_id)
    assert retired is not None and retired.rotated_to == new.key_id
    assert retired.expires_at == plane.clock() + timedelta(hours=24)
    assert new.scopes == old.scopes and plane.hasher.verify(new.key_hash, plaintext)
    event = only_event(plane)
    assert (event.event_type, event.target) == (IamEventType.API_KEY_ROTATED, old.key_id)
    assert event.before is not None and event.before["rotated_to"] is None
    assert event.after is not None
    assert event.after["old"]["rotated_to"] == new.key_id  # type: ignore[index]
    assert event.after["new"]["key_id"] == new.key_id  # type: ignore[index]
    assert "key_hash" not in event.after["new"]  # type: ignore[operator]


def test_rotating_another_users_key_needs_keys_manage(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    theirs = seed_key(plane, plane.add_user(Role.ANALYST))
    with pytest.raises(Forbidden):
        key_admin.rotate_key(
            plane.store, plane.trail, plane.ctx(analyst), plane.hasher, plane.org.org_id, theirs.key_id
        )
    assert plane.store.get_api_key(theirs.key_id) == theirs


def test_a_narrow_credential_cannot_rotate_a_broader_key_into_its_hands(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    broad = seed_key(plane, analyst, scopes=[ApiScope.QUERY_READ, ApiScope.QUERY_WRITE])
    with pytest.raises(Forbidden):
        key_admin.rotate_key(
            plane.store, plane.trail, plane.ctx(analyst, scopes=READ_ONLY), plane.hasher, plane.org.org_id,
            broad.key_id,
        )


def test_a_revoked_key_cannot_be_rotated(plane: ControlPlane) -> None:
    record = seed_key(plane, plane.owner)
    plane.store.revoke_api_key(record.key_id, plane.clock())
    with pytest.raises(Conflict):
        key_admin.rotate_key(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.hasher, plane.org.org_id, record.key_id,
            now=plane.clock,
        )
    assert plane.events() == []


def test_revoke_key_records_api_key_revoked_and_the_key_stops_working(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    plaintext, record = issue_api_key(
        plane.store, plane.hasher, org_id=plane.org.org_id, user_id=analyst.user_id, now=plane.clock
    )
    authenticator = ApiKeyAuthenticator(plane.store, PEPPER, hasher=plane.hasher, now=plane.clock)
    authenticator.authenticate(analyst.user_id, plaintext)
    ctx = plane.ctx(plane.add_user(Role.ADMIN))

    revoked = key_admin.revoke_key(
        plane.store, plane.trail, ctx, plane.org.org_id, record.key_id, authenticator=authenticator, now=plane.clock
    )

    assert revoked.revoked_at == plane.clock()
    with pytest.raises(AuthenticationFailed):
        authenticator.authenticate(analyst.user_id, plaintext)
    event = only_event(plane)
    assert (event.event_type, event.target) == (IamEventType.API_KEY_REVOKED, record.key_id)
    assert event.before["revoked_at"] is None and event.after["revoked_at"] is not None  # type: ignore[index]


def test_revoking_a_revoked_key_records_nothing_more(plane: ControlPlane) -> None:
    record = seed_key(plane, plane.owner)
    ctx = plane.ctx(plane.owner)
    first = key_admin.revoke_key(plane.store, plane.trail, ctx, plane.org.org_id, record.key_id, now=plane.clock)
    plane.clock.advance(minutes=1)
    again = key_admin.revoke_key(plane.store, plane.trail, ctx, plane.org.org_id, record.key_id, now=plane.clock)
    assert again.revoked_at == first.revoked_at == T0
    assert plane.event_types() == [IamEventType.API_KEY_REVOKED]


def test_revoking_another_users_key_needs_keys_manage(plane: ControlPlane) -> None:
    theirs = seed_key(plane, plane.add_user(Role.DEVELOPER))
    with pytest.raises(Forbidden):
        key_admin.revoke_key(plane.store, plane.trail, plane.ctx(plane.add_user(Role.ANALYST)), plane.org.org_id,
                             theirs.key_id)
    assert plane.store.get_api_key(theirs.key_id).revoked_at is None  # type: ignore[union-attr]


# --- the expiry sweep -------------------------------------------------------------------------------


def test_record_expired_keys_records_each_expiry_once_as_the_system(plane: ControlPlane) -> None:
    other = plane.add_org()
    stranger = plane.add_user(Role.ANALYST, org=other)
    expiring = seed_key(plane, plane.owner, expires_at=T0 + timedelta(hours=1))
    theirs = seed_key(plane, stranger, expires_at=T0 + timedelta(hours=2))
    later = seed_key(plane, plane.owner, expires_at=T0 + timedelta(days=30))
    forever = seed_key(plane, plane.owner)
    sweep_at = T0 + timedelta(hours=3)

    recorded = key_admin.record_expired_keys(plane.store, plane.trail, now=sweep_at)

    assert {record.key_id for record in recorded} == {expiring.key_id, theirs.key_id}
    assert all(record.expiry_recorded_at == sweep_at for record in recorded)
    assert plane.store.get_api_key(expiring.key_id).expiry_recorded_at == sweep_at  # type: ignore[union-attr]
    assert plane.store.get_api_key(later.key_id).expiry_recorded_at is None  # type: ignore[union-attr]
    assert plane.store.get_api_key(forever.key_id).expiry_recorded_at is None  # type: ignore[union-attr]
    for org_id, key in ((plane.org.org_id, expiring), (other.org_id, theirs)):
        event = only_event(plane, org_id)
        assert (event.event_type, event.actor, event.target) == (IamEventType.API_KEY_EXPIRED, SYSTEM_ACTOR, key.key_id)
        assert event.request_id == "sweep-20260302T120000Z"
        assert event.before["expiry_recorded_at"] is None  # type: ignore[index]
        assert event.after["expiry_recorded_at"] is not None  # type: ignore[index]

    assert key_admin.record_expired_keys(plane.store, plane.trail, now=sweep_at + timedelta(hours=1)) == []
    assert len(plane.events()) == 1


def test_record_expired_keys_needs_an_aware_time(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        key_admin.record_expired_keys(plane.store, plane.trail, now=T0.replace(tzinfo=None))
