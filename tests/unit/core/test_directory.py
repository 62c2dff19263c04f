"""The organisation directory: organisations, environments, users, roles and federated identities.

Also home of `ControlPlane`, the real SQLite store + real IAM audit trail the other administrative
service tests build on: every test ends with each organisation's IAM chain verifying.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hd_core import directory
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher, issue_api_key
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.models import (
    ChangeContext,
    IamEvent,
    KeyEnv,
    Organization,
    OrgStatus,
    Principal,
    Role,
    User,
    UserStatus,
    new_id,
)
from hd_core.permissions import ROLE_SCOPES
from tests.clocks import HandWoundClock

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass
class ControlPlane:
    """A real control store and IAM audit trail with one organisation (`org`) and its Owner (`owner`)."""

    store: SqliteControlStore
    trail: IamAuditTrail
    clock: HandWoundClock
    hasher: ApiKeyHasher
    org: Organization
    owner: User

    def add_org(self, name: str = "Globex") -> Organization:
        """Another tenant, written straight to the store (setup, not under test: no IAM event)."""
        org = Organization(org_id=new_id("org"), name=name, status=OrgStatus.ACTIVE, created_at=self.clock())
        self.store.put_org(org)
        return org

    def add_user(
        self, role: Role, *, org: Organization | None = None, email: str | None = None, **fields: object
    ) -> User:
        """A user written straight to the store (setup: no IAM event)."""
        user = User(
            user_id=new_id("usr"),
            org_id=(org or self.org).org_id,
            email=email or f"{new_id('mail').lower()}@example.com",
            role=role,
            status=UserStatus.ACTIVE,
            department=None,
            region=None,
            created_at=self.clock(),
        )
        user = replace(user, **fields)  # type: ignore[arg-type]
        self.store.put_user(user)
        return user

    def ctx(self, user: User, *, scopes: tuple[str, ...] | None = None, role: Role | None = None) -> ChangeContext:
        """The change context of `user` acting with a credential holding `scopes` (default: all of its role's)."""
        acting_role = role or user.role
        return ChangeContext(
            actor=Principal(
                user_id=user.user_id,
                org_id=user.org_id,
                role=acting_role,
                key_id="jwt:ctx",
                env=KeyEnv.TEST,
                scopes=scopes if scopes is not None else tuple(sorted(ROLE_SCOPES[acting_role])),
                department=user.department,
                region=user.region,
                # A session: an actor claiming an API key must name a stored one (key_admin bounds keys by it).
                auth_method="jwt",
            ),
            request_id=f"req-{new_id('r')}",
        )

    def events(self, org_id: str | None = None) -> list[IamEvent]:
        """The IAM events of an organisation's chain (default: `org`), in order."""
        return self.store.list_iam_events(org_id or self.org.org_id)

    def event_types(self, org_id: str | None = None) -> list[str]:
        return [event.event_type for event in self.events(org_id)]


def make_control_plane(tmp_path: Path, key_file: LocalKeyFile) -> ControlPlane:
    """A fresh control plane in `tmp_path`."""
    clock = HandWoundClock(T0)
    store = SqliteControlStore(tmp_path / "control.db")
    trail = IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path / "checkpoints"), key_file, now=clock)
    org = Organization(org_id=new_id("org"), name="Acme", status=OrgStatus.ACTIVE, created_at=clock())
    store.put_org(org)
    owner = User(
        user_id=new_id("usr"), org_id=org.org_id, email="owner@acme.example", role=Role.OWNER,
        status=UserStatus.ACTIVE, department=None, region=None, created_at=clock(),
    )
    store.put_user(owner)
    # The smallest legal Argon2id cost keeps hashing out of the test run time.
    return ControlPlane(store, trail, clock, ApiKeyHasher(time_cost=1, memory_cost=8, parallelism=1), org, owner)


def assert_chains_valid(plane: ControlPlane) -> None:
    """Every organisation's IAM chain re-hashes and matches its signed checkpoint."""
    for org in plane.store.list_orgs():
        verification = plane.trail.verify_chain(org.org_id)
        assert verification.chain_valid, verification.first_break


def control_plane(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane for one test that, when the test ends, must still have every IAM chain valid.

    The checkpoint key file is shared by the session: generating RSA and EC keys per test would
    dominate the run time.
    """
    plane = make_control_plane(tmp_path, LocalKeyFile(tmp_path_factory.getbasetemp() / "iam-test-keys.json"))
    yield plane
    assert_chains_valid(plane)
    plane.store.close()


@pytest.fixture
def plane(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    yield from control_plane(tmp_path, tmp_path_factory)


def only_event(plane: ControlPlane, org_id: str | None = None) -> IamEvent:
    events = plane.events(org_id)
    assert len(events) == 1, [event.event_type for event in events]
    return events[0]


# --- organisations ------------------------------------------------------------------------------


def test_an_owner_creates_an_organization_whose_own_chain_opens_with_org_created(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)

    org = directory.create_org(plane.store, plane.trail, ctx, "  Initech  ", now=plane.clock)

    assert plane.store.get_org(org.org_id) == org
    assert (org.name, org.status) == ("Initech", OrgStatus.ACTIVE)
    event = only_event(plane, org.org_id)
    assert event.event_type == IamEventType.ORG_CREATED
    assert (event.actor, event.target, event.request_id) == (plane.owner.user_id, org.org_id, ctx.request_id)
    assert event.before is None
    assert event.after is not None and event.after["name"] == "Initech"
    assert plane.events() == []  # nothing lands in the creator's own organisation's chain


def test_only_an_owner_creates_organizations(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    with pytest.raises(Forbidden):
        directory.create_org(plane.store, plane.trail, plane.ctx(admin), "Initech")
    assert len(plane.store.list_orgs()) == 1


def test_an_organization_needs_a_name(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        directory.create_org(plane.store, plane.trail, plane.ctx(plane.owner), "   ")


def test_an_owner_suspends_and_reactivates_the_organization(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)

    suspended = directory.set_org_status(plane.store, plane.trail, ctx, plane.org.org_id, "suspended")
    reactivated = directory.set_org_status(plane.store, plane.trail, ctx, plane.org.org_id, OrgStatus.ACTIVE)

    assert suspended.status == OrgStatus.SUSPENDED
    assert reactivated.status == OrgStatus.ACTIVE == plane.store.get_org(plane.org.org_id).status  # type: ignore[union-attr]
    first, second = plane.events()
    assert first.event_type == IamEventType.ORG_SUSPENDED
    assert (first.before["status"], first.after["status"]) == ("active", "suspended")  # type: ignore[index]
    assert second.event_type == IamEventType.ORG_REACTIVATED
    assert (second.before["status"], second.after["status"]) == ("suspended", "active")  # type: ignore[index]


def test_setting_the_status_an_organization_already_has_records_nothing(plane: ControlPlane) -> None:
    org = directory.set_org_status(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "active")
    assert org == plane.org
    assert plane.events() == []


def test_an_admin_cannot_suspend_the_organization(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    with pytest.raises(Forbidden):
        directory.set_org_status(plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, "suspended")
    assert plane.store.get_org(plane.org.org_id) == plane.org


def test_another_tenants_organization_is_reported_as_not_found(plane: ControlPlane) -> None:
    other = plane.add_org()
    with pytest.raises(NotFound):
        directory.set_org_status(plane.store, plane.trail, plane.ctx(plane.owner), other.org_id, "suspended")
    with pytest.raises(NotFound):
        directory.set_mfa_required(plane.store, plane.trail, plane.ctx(plane.owner), other.org_id, True)
    assert plane.store.get_org(other.org_id) == other
    assert plane.events(other.org_id) == []


def test_an_unknown_organization_status_is_an_invalid_request(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        directory.set_org_status(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "paused")


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_owners_and_admins_require_mfa_for_the_organization(plane: ControlPlane, role: Role) -> None:
    actor = plane.owner if role is Role.OWNER else plane.add_user(role)

    org = directory.set_mfa_required(plane.store, plane.trail, plane.ctx(actor), plane.org.org_id, True)

    assert org.mfa_required is True
    event = only_event(plane)
    assert event.event_type == IamEventType.ORG_MFA_POLICY_CHANGED
    assert (event.before["mfa_required"], event.after["mfa_required"]) == (False, True)  # type: ignore[index]


def test_an_analyst_cannot_change_the_mfa_policy(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    with pytest.raises(Forbidden):
        directory.set_mfa_required(plane.store, plane.trail, plane.ctx(analyst), plane.org.org_id, True)
    assert plane.events() == []


# --- environments -------------------------------------------------------------------------------


def test_create_environment_records_environment_created(plane: ControlPlane) -> None:
    env = directory.create_environment(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "staging", "test", now=plane.clock
    )

    assert (env.name, env.key_env, env.org_id) == ("staging", KeyEnv.TEST, plane.org.org_id)
    assert directory.get_environment(plane.store, plane.ctx(plane.owner), plane.org.org_id, env.env_id) == env
    assert directory.list_environments(plane.store, plane.ctx(plane.owner), plane.org.org_id) == [env]
    event = only_event(plane)
    assert (event.event_type, event.target, event.before) == (IamEventType.ENVIRONMENT_CREATED, env.env_id, None)
    assert event.after is not None and event.after["key_env"] == "test"


def test_environment_names_are_unique_within_an_organization(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)
    directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "prod", KeyEnv.LIVE)
    with pytest.raises(Conflict):
        directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "PROD", KeyEnv.LIVE)
    assert plane.event_types() == [IamEventType.ENVIRONMENT_CREATED]


def test_an_unknown_key_environment_is_an_invalid_request(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        directory.create_environment(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "x", "dev")


def test_another_tenants_environments_are_not_found(plane: ControlPlane) -> None:
    other = plane.add_org()
    other_owner = plane.add_user(Role.OWNER, org=other)
    env = directory.create_environment(plane.store, plane.trail, plane.ctx(other_owner), other.org_id, "prod", "live")
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound):
        directory.get_environment(plane.store, ctx, plane.org.org_id, env.env_id)
    with pytest.raises(NotFound):
        directory.list_environments(plane.store, ctx, other.org_id)
    with pytest.raises(NotFound):
        directory.create_environment(plane.store, plane.trail, ctx, other.org_id, "mine", "live")


# --- inviting and finding users ------------------------------------------------------------------


def test_invite_user_records_user_invited_without_the_password_hash(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)

    user = directory.invite_user(
        plane.store, plane.trail, ctx, plane.org.org_id, " ana@acme.example ", "Analyst", name="Ana",
        department="finance", region="eu", password="correct horse battery", hasher=plane.hasher, now=plane.clock,
    )

    assert plane.store.get_user(user.user_id) == user
    assert (user.email, user.role, user.status, user.department, user.region) == (
        "ana@acme.example", Role.ANALYST, UserStatus.ACTIVE, "finance", "eu",
    )
    assert user.password_hash is not None and user.password_hash.startswith("$argon2id$")
    assert plane.hasher.verify(user.password_hash, "correct horse battery")
    event = only_event(plane)
    assert (event.event_type, event.target, event.actor) == (IamEventType.USER_INVITED, user.user_id, ctx.actor.user_id)
    assert event.before is None
    assert event.after is not None and event.after["email"] == "ana@acme.example"
    assert "password_hash" not in event.after


def test_a_password_shorter_than_twelve_characters_is_refused(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        directory.invite_user(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "a@acme.example", Role.ANALYST,
            password="short-pass1", hasher=plane.hasher,
        )
    assert plane.store.get_user_by_email("a@acme.example") is None


@pytest.mark.parametrize("email", ["not-an-email", "a b@acme.example", "@acme.example", "a@", "a@acme..example"])
def test_an_email_of_the_wrong_shape_is_refused(plane: ControlPlane, email: str) -> None:
    with pytest.raises(InvalidRequest):
        directory.invite_user(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, email, "Analyst")


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "ann\u202e@acme.example"), ("email", "ann\x00@acme.example"), ("name", "Ann\u2066Smith"),
     ("name", "Ann\x00"), ("department", "fin\u200eance"), ("region", "eu\x1b[31m")],
)
def test_hidden_characters_are_refused_in_every_invited_text(plane: ControlPlane, field: str, value: str) -> None:
    # A bidi override or NUL makes the name or e-mail an administrator reads differ from the stored one.
    texts: dict[str, str] = {"email": "ann@acme.example", field: value}
    email = texts.pop("email")
    with pytest.raises(InvalidRequest, match="control or formatting"):
        directory.invite_user(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, email, Role.ANALYST,
            **texts,  # type: ignore[arg-type]
        )
    assert plane.events() == []


def test_hidden_characters_are_refused_in_organisation_and_environment_names(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)
    with pytest.raises(InvalidRequest, match="U\\+202E"):
        directory.create_org(plane.store, plane.trail, ctx, "Acme\u202eevil")
    with pytest.raises(InvalidRequest, match="U\\+0000"):
        directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "prod\x00", KeyEnv.LIVE)
    assert plane.events() == []


def test_an_email_already_in_use_is_a_conflict_whatever_its_case(plane: ControlPlane) -> None:
    with pytest.raises(Conflict):
        directory.invite_user(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "OWNER@acme.example", "Analyst"
        )
    assert plane.events() == []


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
def test_only_an_owner_invites_admins_and_owners(plane: ControlPlane, role: Role) -> None:
    admin = plane.add_user(Role.ADMIN)
    with pytest.raises(Forbidden):
        directory.invite_user(plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, "b@acme.example", role)

    invited = directory.invite_user(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "b@acme.example", role
    )
    assert invited.role == role


def test_an_admin_invites_non_privileged_users(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    user = directory.invite_user(
        plane.store, plane.trail, plane.ctx(admin), plane.org.org_id, "d@acme.example", "Developer"
    )
    assert user.role == Role.DEVELOPER and user.password_hash is None


def test_an_unknown_role_is_an_invalid_request(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        directory.invite_user(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, "c@a.example", "Boss")


def test_nobody_invites_into_another_tenant(plane: ControlPlane) -> None:
    other = plane.add_org()
    with pytest.raises(NotFound):
        directory.invite_user(plane.store, plane.trail, plane.ctx(plane.owner), other.org_id, "c@a.example", "Analyst")


def test_list_users_narrows_by_role_status_email_and_department(plane: ControlPlane) -> None:
    plane.clock.advance(seconds=1)  # users list oldest first
    ana = plane.add_user(Role.ANALYST, email="ana@acme.example", department="finance")
    plane.clock.advance(seconds=1)
    bob = plane.add_user(Role.ANALYST, email="bob@acme.example", department="sales", status=UserStatus.SUSPENDED)
    plane.clock.advance(seconds=1)
    dev = plane.add_user(Role.DEVELOPER, email="dev@ACME.example", department="finance")
    plane.add_user(Role.ANALYST, org=plane.add_org(), email="ana@globex.example")
    ctx = plane.ctx(plane.owner)
    org_id = plane.org.org_id

    assert directory.list_users(plane.store, ctx, org_id) == [plane.owner, ana, bob, dev]
    assert directory.list_users(plane.store, ctx, org_id, role="Analyst") == [ana, bob]
    assert directory.list_users(plane.store, ctx, org_id, status=UserStatus.SUSPENDED) == [bob]
    assert directory.list_users(plane.store, ctx, org_id, email_contains="acme.EX") == [plane.owner, ana, bob, dev]
    assert directory.list_users(plane.store, ctx, org_id, email_contains="ana") == [ana]
    assert directory.list_users(plane.store, ctx, org_id, department="finance", role=Role.DEVELOPER) == [dev]
    with pytest.raises(InvalidRequest):
        directory.list_users(plane.store, ctx, org_id, status="sleeping")


def test_a_user_of_another_tenant_is_not_found(plane: ControlPlane) -> None:
    stranger = plane.add_user(Role.ANALYST, org=plane.add_org())
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound):
        directory.get_user(plane.store, ctx, plane.org.org_id, stranger.user_id)
    with pytest.raises(NotFound):
        directory.get_user(plane.store, ctx, stranger.org_id, stranger.user_id)
    with pytest.raises(NotFound):
        directory.suspend_user(plane.store, plane.trail, ctx, plane.org.org_id, stranger.user_id)
    with pytest.raises(NotFound):
        directory.list_users(plane.store, ctx, stranger.org_id)
    assert plane.store.get_user(stranger.user_id) == stranger


# --- suspending, reactivating, removing ----------------------------------------------------------


def test_suspend_user_records_user_suspended_and_calls_the_deprovisioning_hook(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    dropped: list[str] = []

    suspended = directory.suspend_user(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, analyst.user_id,
        on_deprovisioned=dropped.append,
    )

    assert suspended.status == UserStatus.SUSPENDED == plane.store.get_user(analyst.user_id).status  # type: ignore[union-attr]
    assert dropped == [analyst.user_id]
    event = only_event(plane)
    assert (event.event_type, event.target) == (IamEventType.USER_SUSPENDED, analyst.user_id)
    assert (event.before["status"], event.after["status"]) == ("active", "suspended")  # type: ignore[index]


def test_reactivate_user_records_user_reactivated(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST, status=UserStatus.SUSPENDED)

    user = directory.reactivate_user(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, analyst.user_id
    )

    assert user.status == UserStatus.ACTIVE
    event = only_event(plane)
    assert event.event_type == IamEventType.USER_REACTIVATED
    assert (event.before["status"], event.after["status"]) == ("suspended", "active")  # type: ignore[index]


def test_suspending_a_suspended_user_changes_and_records_nothing(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST, status=UserStatus.SUSPENDED)
    dropped: list[str] = []
    user = directory.suspend_user(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, analyst.user_id,
        on_deprovisioned=dropped.append,
    )
    assert user == analyst and dropped == [] and plane.events() == []


def test_nobody_suspends_or_removes_themselves(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    ctx = plane.ctx(admin)
    with pytest.raises(Forbidden):
        directory.suspend_user(plane.store, plane.trail, ctx, plane.org.org_id, admin.user_id)
    with pytest.raises(Forbidden):
        directory.remove_user(plane.store, plane.trail, ctx, plane.org.org_id, admin.user_id)
    assert plane.store.get_user(admin.user_id) == admin


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
def test_an_admin_cannot_suspend_remove_or_re_role_an_admin_or_owner(plane: ControlPlane, role: Role) -> None:
    target = plane.add_user(role)
    ctx = plane.ctx(plane.add_user(Role.ADMIN))
    org_id = plane.org.org_id
    with pytest.raises(Forbidden):
        directory.suspend_user(plane.store, plane.trail, ctx, org_id, target.user_id)
    with pytest.raises(Forbidden):
        directory.remove_user(plane.store, plane.trail, ctx, org_id, target.user_id)
    with pytest.raises(Forbidden):
        directory.change_role(plane.store, plane.trail, ctx, org_id, target.user_id, Role.ANALYST)
    assert plane.store.get_user(target.user_id) == target
    assert plane.events() == []


def test_an_owner_suspends_an_admin(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    user = directory.suspend_user(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, admin.user_id)
    assert user.status == UserStatus.SUSPENDED


def test_an_owner_suspends_another_owner_while_one_stays_active(plane: ControlPlane) -> None:
    second = plane.add_user(Role.OWNER)
    user = directory.suspend_user(plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, second.user_id)
    assert user.status == UserStatus.SUSPENDED


def test_the_last_active_owner_cannot_be_suspended_removed_or_demoted(plane: ControlPlane) -> None:
    # A stale session: this Owner was suspended after logging in, so `plane.owner` is the only active Owner.
    stale = plane.add_user(Role.OWNER, status=UserStatus.SUSPENDED)
    ctx = plane.ctx(stale)
    org_id, owner_id = plane.org.org_id, plane.owner.user_id
    with pytest.raises(Conflict):
        directory.suspend_user(plane.store, plane.trail, ctx, org_id, owner_id)
    with pytest.raises(Conflict):
        directory.remove_user(plane.store, plane.trail, ctx, org_id, owner_id)
    with pytest.raises(Conflict):
        directory.change_role(plane.store, plane.trail, ctx, org_id, owner_id, Role.ADMIN)
    assert plane.store.get_user(owner_id) == plane.owner
    assert plane.events() == []


def test_remove_user_keeps_the_user_as_removed_and_revokes_every_live_key(plane: ControlPlane) -> None:
    dev = plane.add_user(Role.DEVELOPER)
    _, live = issue_api_key(plane.store, plane.hasher, org_id=plane.org.org_id, user_id=dev.user_id, now=plane.clock)
    _, revoked_earlier = issue_api_key(
        plane.store, plane.hasher, org_id=plane.org.org_id, user_id=dev.user_id, now=plane.clock
    )
    plane.store.revoke_api_key(revoked_earlier.key_id, T0)
    _, owners_key = issue_api_key(
        plane.store, plane.hasher, org_id=plane.org.org_id, user_id=plane.owner.user_id, now=plane.clock
    )
    plane.clock.advance(minutes=5)
    dropped: list[str] = []

    removed = directory.remove_user(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, dev.user_id,
        on_deprovisioned=dropped.append, now=plane.clock,
    )

    assert removed.status == UserStatus.REMOVED == plane.store.get_user(dev.user_id).status  # type: ignore[union-attr]
    assert plane.store.get_api_key(live.key_id).revoked_at == plane.clock()  # type: ignore[union-attr]
    assert plane.store.get_api_key(revoked_earlier.key_id).revoked_at == T0  # type: ignore[union-attr]
    assert plane.store.get_api_key(owners_key.key_id).revoked_at is None  # type: ignore[union-attr]
    assert dropped == [dev.user_id]
    removal, revocation = plane.events()
    assert (removal.event_type, removal.target) == (IamEventType.USER_REMOVED, dev.user_id)
    assert (removal.before["status"], removal.after["status"]) == ("active", "removed")  # type: ignore[index]
    assert (revocation.event_type, revocation.target) == (IamEventType.API_KEY_REVOKED, live.key_id)
    assert revocation.before["revoked_at"] is None and revocation.after["revoked_at"] is not None  # type: ignore[index]
    assert "key_hash" not in revocation.after  # type: ignore[operator]


def test_removal_is_final(plane: ControlPlane) -> None:
    gone = plane.add_user(Role.ANALYST, status=UserStatus.REMOVED)
    ctx = plane.ctx(plane.owner)
    org_id = plane.org.org_id
    with pytest.raises(Conflict):
        directory.reactivate_user(plane.store, plane.trail, ctx, org_id, gone.user_id)
    with pytest.raises(Conflict):
        directory.suspend_user(plane.store, plane.trail, ctx, org_id, gone.user_id)
    with pytest.raises(Conflict):
        directory.change_role(plane.store, plane.trail, ctx, org_id, gone.user_id, Role.DEVELOPER)
    with pytest.raises(Conflict):
        directory.link_external_identity(plane.store, plane.trail, ctx, org_id, gone.user_id, "https://idp#gone")
    assert directory.remove_user(plane.store, plane.trail, ctx, org_id, gone.user_id) == gone
    assert plane.events() == []


# --- roles ----------------------------------------------------------------------------------------


def test_change_role_records_user_role_changed_with_both_roles(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)

    user = directory.change_role(
        plane.store, plane.trail, plane.ctx(plane.add_user(Role.ADMIN)), plane.org.org_id, analyst.user_id, "Developer"
    )

    assert user.role == Role.DEVELOPER == plane.store.get_user(analyst.user_id).role  # type: ignore[union-attr]
    event = only_event(plane)
    assert (event.event_type, event.target) == (IamEventType.USER_ROLE_CHANGED, analyst.user_id)
    assert (event.before["role"], event.after["role"]) == ("Analyst", "Developer")  # type: ignore[index]


def test_nobody_changes_their_own_role(plane: ControlPlane) -> None:
    with pytest.raises(Forbidden):
        directory.change_role(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, plane.owner.user_id, Role.ADMIN
        )


@pytest.mark.parametrize("role", [Role.ADMIN, Role.OWNER])
def test_only_an_owner_grants_admin_or_owner(plane: ControlPlane, role: Role) -> None:
    analyst = plane.add_user(Role.ANALYST)
    with pytest.raises(Forbidden):
        directory.change_role(
            plane.store, plane.trail, plane.ctx(plane.add_user(Role.ADMIN)), plane.org.org_id, analyst.user_id, role
        )

    user = directory.change_role(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, analyst.user_id, role
    )
    assert user.role == role
    assert plane.event_types() == [IamEventType.USER_ROLE_CHANGED]


def test_an_owner_demotes_another_owner(plane: ControlPlane) -> None:
    second = plane.add_user(Role.OWNER)
    user = directory.change_role(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, second.user_id, Role.ANALYST
    )
    assert user.role == Role.ANALYST


def test_giving_a_user_the_role_it_has_records_nothing(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    user = directory.change_role(
        plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, analyst.user_id, Role.ANALYST
    )
    assert user == analyst and plane.events() == []


# --- federated identities -------------------------------------------------------------------------


def test_link_and_unlink_an_external_identity_record_both_changes(plane: ControlPlane) -> None:
    analyst = plane.add_user(Role.ANALYST)
    ctx = plane.ctx(plane.owner)
    identity = "https://login.acme.example#00u1abc"

    linked = directory.link_external_identity(
        plane.store, plane.trail, ctx, plane.org.org_id, analyst.user_id, identity
    )
    assert plane.store.get_user_by_external_id(identity) == linked
    unlinked = directory.unlink_external_identity(
        plane.store, plane.trail, ctx, plane.org.org_id, analyst.user_id, identity
    )

    assert linked.external_ids == (identity,) and unlinked.external_ids == ()
    assert plane.store.get_user_by_external_id(identity) is None
    link, unlink = plane.events()
    assert link.event_type == IamEventType.FEDERATED_IDENTITY_LINKED
    assert (link.before["external_ids"], link.after["external_ids"]) == ([], [identity])  # type: ignore[index]
    assert unlink.event_type == IamEventType.FEDERATED_IDENTITY_UNLINKED
    assert (unlink.before["external_ids"], unlink.after["external_ids"]) == ([identity], [])  # type: ignore[index]


@pytest.mark.parametrize("identity", ["no-separator", "#subject", "https://idp#", "https://idp #sub", ""])
def test_an_external_identity_must_be_issuer_hash_subject(plane: ControlPlane, identity: str) -> None:
    with pytest.raises(InvalidRequest):
        directory.link_external_identity(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, plane.owner.user_id, identity
        )


def test_an_identity_linked_to_another_user_is_a_conflict(plane: ControlPlane) -> None:
    identity = "https://idp.example#alice"
    plane.add_user(Role.ANALYST, org=plane.add_org(), external_ids=(identity,))
    with pytest.raises(Conflict):
        directory.link_external_identity(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, plane.owner.user_id, identity
        )
    assert plane.events() == []


def test_an_admin_cannot_link_an_identity_to_an_owner_but_can_to_themselves(plane: ControlPlane) -> None:
    admin = plane.add_user(Role.ADMIN)
    ctx = plane.ctx(admin)
    with pytest.raises(Forbidden):
        directory.link_external_identity(
            plane.store, plane.trail, ctx, plane.org.org_id, plane.owner.user_id, "https://idp.example#mallory"
        )
    linked = directory.link_external_identity(
        plane.store, plane.trail, ctx, plane.org.org_id, admin.user_id, "https://idp.example#admin"
    )
    assert linked.external_ids == ("https://idp.example#admin",)


def test_unlinking_an_identity_the_user_does_not_have_is_not_found(plane: ControlPlane) -> None:
    with pytest.raises(NotFound):
        directory.unlink_external_identity(
            plane.store, plane.trail, plane.ctx(plane.owner), plane.org.org_id, plane.owner.user_id, "https://i#x"
        )


# --- changes made by the auth module ----------------------------------------------------------------


def test_record_user_change_records_an_mfa_enrolment_without_the_secret(plane: ControlPlane) -> None:
    before = plane.add_user(Role.ANALYST)
    after = replace(before, mfa_secret="JBSWY3DPEHPK3PXP", mfa_enabled=True)
    plane.store.put_user(after)
    ctx = plane.ctx(before)

    event = directory.record_user_change(plane.store, plane.trail, ctx, IamEventType.USER_MFA_ENROLLED, before, after)

    assert event == only_event(plane)
    assert (event.event_type, event.actor, event.target) == ("user.mfa_enrolled", before.user_id, before.user_id)
    assert (event.before["mfa_enabled"], event.after["mfa_enabled"]) == (False, True)  # type: ignore[index]
    assert "mfa_secret" not in event.after  # type: ignore[operator]


def test_record_user_change_takes_only_the_auth_modules_event_types(plane: ControlPlane) -> None:
    user = plane.add_user(Role.ANALYST)
    ctx = plane.ctx(plane.owner)
    with pytest.raises(InvalidRequest):
        directory.record_user_change(plane.store, plane.trail, ctx, IamEventType.USER_ROLE_CHANGED, user, user)
    with pytest.raises(InvalidRequest):
        directory.record_user_change(plane.store, plane.trail, ctx, IamEventType.USER_PASSWORD_SET, user, plane.owner)


def test_record_user_change_for_another_tenants_user_is_not_found(plane: ControlPlane) -> None:
    stranger = plane.add_user(Role.ANALYST, org=plane.add_org())
    with pytest.raises(NotFound):
        directory.record_user_change(
            plane.store, plane.trail, plane.ctx(plane.owner), IamEventType.USER_MFA_RESET, stranger, stranger
        )


def test_events_of_several_changes_form_one_verifiable_chain(plane: ControlPlane) -> None:
    ctx = plane.ctx(plane.owner)
    org_id = plane.org.org_id
    user = directory.invite_user(plane.store, plane.trail, ctx, org_id, "e@acme.example", Role.ANALYST)
    directory.change_role(plane.store, plane.trail, ctx, org_id, user.user_id, Role.DEVELOPER)
    directory.suspend_user(plane.store, plane.trail, ctx, org_id, user.user_id)
    directory.remove_user(plane.store, plane.trail, ctx, org_id, user.user_id)

    assert plane.event_types() == [
        IamEventType.USER_INVITED, IamEventType.USER_ROLE_CHANGED, IamEventType.USER_SUSPENDED,
        IamEventType.USER_REMOVED,
    ]
    assert {event.request_id for event in plane.events()} == {ctx.request_id}
    assert plane.trail.verify_chain(org_id).chain_valid
