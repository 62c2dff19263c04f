"""Policy administration: creating, replacing and deleting governance policies of one's own organisation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hd_core import policy_admin
from hd_core.bootstrap import DEFAULT_ORG_SETTING
from hd_core.catalog_schemas import CatalogRecorder
from hd_core.errors import Conflict, Forbidden, InvalidRequest, NotFound, PolicyInvalid
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, Role
from hd_core.policies import ColumnTag, MaskFunction, MaskRule, PiiType, PolicyKind, TableBinding
from hd_core.policy_codec import to_document
from hd_core.table_owners import record_owner
from tests.unit.core.test_directory import ControlPlane, control_plane, only_event

CUSTOMERS = {"crm.customers": [("customer_id", "BIGINT"), ("name", "VARCHAR"), ("ssn", "VARCHAR"),
                                 ("email", "VARCHAR"), ("phone", "VARCHAR"), ("region", "VARCHAR")]}


@pytest.fixture
def plane(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane whose engine serves crm.customers, the organisation's own table."""
    for plane in control_plane(tmp_path, tmp_path_factory):
        CatalogRecorder(plane.store).record(CUSTOMERS)
        plane.store.put_setting_if_absent(DEFAULT_ORG_SETTING, plane.org.org_id)
        yield plane


def mask_document(org_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "mask", "rule_id": "mask_ssn", "org_id": org_id, "table": "crm.customers", "column": "ssn",
        "function": "partial", "visible_chars": 4, **fields,
    }


def create(plane: ControlPlane, document: dict[str, Any]) -> Any:
    return policy_admin.create_policy(plane.store, plane.trail, plane.ctx(plane.owner), document, now=plane.clock)


# --- creating ---------------------------------------------------------------------------------------


def test_create_policy_stores_it_bumps_the_policy_version_and_records_the_document(plane: ControlPlane) -> None:
    version = plane.store.policy_version()

    rule = create(plane, mask_document(plane.org.org_id, table="CRM.Customers"))

    assert isinstance(rule, MaskRule) and rule.table == "crm.customers"
    assert plane.store.get_policy(PolicyKind.MASK, "mask_ssn") == rule
    assert plane.store.policy_version() == version + 1
    event = only_event(plane)
    assert (event.event_type, event.target, event.before) == (IamEventType.POLICY_CREATED, "mask/mask_ssn", None)
    assert event.after == to_document(rule)


def test_a_policy_without_an_id_gets_one(plane: ControlPlane) -> None:
    document = mask_document(plane.org.org_id)
    del document["rule_id"]
    rule = create(plane, document)
    assert rule.rule_id.startswith("mask_") and len(rule.rule_id) > len("mask_")


def test_a_document_naming_another_organisation_is_forbidden(plane: ControlPlane) -> None:
    other = plane.add_org()
    with pytest.raises(Forbidden):
        create(plane, mask_document(other.org_id))
    assert plane.store.list_policies() == []


def test_an_unsafe_policy_is_refused_with_the_field_to_fix(plane: ControlPlane) -> None:
    create(plane, {"kind": "column_tag", "org_id": plane.org.org_id, "table": "crm.customers", "column": "ssn",
                   "pii_type": "ssn"})
    with pytest.raises(PolicyInvalid) as refused:
        create(plane, mask_document(plane.org.org_id, function="hash"))
    assert refused.value.field == "function"
    assert plane.event_types() == [IamEventType.POLICY_CREATED]


def test_a_malformed_document_is_refused(plane: ControlPlane) -> None:
    with pytest.raises(PolicyInvalid):
        create(plane, mask_document(plane.org.org_id, colour="blue"))


def test_creating_an_existing_kind_and_id_is_a_conflict(plane: ControlPlane) -> None:
    create(plane, mask_document(plane.org.org_id))
    with pytest.raises(Conflict):
        create(plane, mask_document(plane.org.org_id, function="full"))
    assert plane.store.get_policy(PolicyKind.MASK, "mask_ssn").function == MaskFunction.PARTIAL  # type: ignore[union-attr]


def test_an_id_taken_in_another_organisation_is_never_overwritten(plane: ControlPlane) -> None:
    other = plane.add_org()
    theirs = MaskRule("mask_ssn", other.org_id, "crm.customers", "ssn", MaskFunction.FULL)
    plane.store.put_policy(theirs)
    with pytest.raises(Conflict):
        create(plane, mask_document(plane.org.org_id))
    assert plane.store.get_policy(PolicyKind.MASK, "mask_ssn") == theirs


def test_of_concurrent_creators_of_one_id_exactly_one_creates_it_and_the_others_get_a_conflict(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every creator finishes each read before any goes on, so all of them read the id as free.
    gate, outcomes = threading.Barrier(8), list[str]()
    for read in ("policy_snapshot", "get_policy"):
        monkeypatch.setattr(plane.store, read, _then_wait(getattr(plane.store, read), gate))

    def create_racing(worker: int) -> None:
        try:
            create(plane, mask_document(plane.org.org_id, visible_chars=worker))
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create_racing, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["created"]
    monkeypatch.undo()
    created = only_event(plane)
    assert created.after == to_document(plane.store.get_policy(PolicyKind.MASK, "mask_ssn"))  # type: ignore[arg-type]


def _then_wait(read: Callable[..., Any], gate: threading.Barrier) -> Callable[..., Any]:
    def read_then_wait(*args: Any, **kwargs: Any) -> Any:
        result = read(*args, **kwargs)
        gate.wait(timeout=10)
        return result

    return read_then_wait


@pytest.mark.parametrize(
    ("document", "route"),
    [
        ({"kind": "jit_grant", "user_id": "usr_x", "role": "Admin", "reason": "r",
          "starts_at": "2026-03-02T09:00:00Z", "expires_at": "2026-03-02T10:00:00Z"}, "JIT"),
        ({"kind": "quota", "monthly_credits": 5}, "quota"),
    ],
)
def test_jit_grants_and_quotas_are_refused_with_a_pointer_to_their_routes(
    plane: ControlPlane, document: dict[str, Any], route: str
) -> None:
    with pytest.raises(InvalidRequest, match=route):
        create(plane, {**document, "org_id": plane.org.org_id})
    assert plane.store.list_policies() == []


# --- table bindings: who owns a table ------------------------------------------------------------


def _deployment(plane: ControlPlane) -> None:
    """Make `plane.org` the deployment's own organisation (as bootstrap does)."""
    plane.store.put_setting(DEFAULT_ORG_SETTING, plane.org.org_id)


def _rebind(plane: ControlPlane, ctx: ChangeContext, binding_id: str, **fields: Any) -> Any:
    return policy_admin.replace_policy(plane.store, plane.trail, ctx, "table_binding", binding_id,
                                       {"kind": "table_binding", **fields}, now=plane.clock)


def test_no_binding_is_created_through_the_api_whether_or_not_the_table_exists(plane: ControlPlane) -> None:
    other = plane.add_org()
    record_owner(plane.store, "sales.orders", other.org_id)
    record_owner(plane.store, "sales.leads", plane.org.org_id)
    squat = {"kind": "table_binding", "org_id": plane.org.org_id}
    with pytest.raises(NotFound) as theirs:
        create(plane, {**squat, "table": "sales.orders"})  # another organisation's table
    with pytest.raises(NotFound) as missing:
        create(plane, {**squat, "table": "sales.unknown"})  # a name nobody created (squatting)
    assert str(theirs.value).replace("orders", "X") == str(missing.value).replace("unknown", "X")
    with pytest.raises(Conflict, match="already has its binding"):
        create(plane, {**squat, "table": "sales.leads"})  # our own: already bound, since it was created
    assert sorted(b.table for b in plane.store.policy_snapshot().table_bindings) == ["sales.leads", "sales.orders"]


def test_another_organisations_binding_answers_like_a_made_up_id(plane: ControlPlane) -> None:
    other = plane.add_org()
    theirs = record_owner(plane.store, "sales.orders", other.org_id)
    ctx = plane.ctx(plane.owner)
    answers = []
    for binding_id in (theirs.binding_id, "tbl_made_up"):
        with pytest.raises(NotFound) as rebound:
            _rebind(plane, ctx, binding_id, org_id=plane.org.org_id, table="sales.orders")
        with pytest.raises(NotFound) as deleted:
            policy_admin.delete_policy(plane.store, plane.trail, ctx, "table_binding", binding_id)
        with pytest.raises(NotFound) as read:
            policy_admin.get_policy(plane.store, ctx, plane.org.org_id, "table_binding", binding_id)
        answers += [str(rebound.value), str(deleted.value), str(read.value)]
    assert answers[:3] == answers[3:]
    assert plane.store.get_policy(PolicyKind.TABLE_BINDING, theirs.binding_id) == theirs


def test_the_owners_admin_may_hand_a_table_to_another_organisation(plane: ControlPlane) -> None:
    other = plane.add_org()
    ours = record_owner(plane.store, "sales.leads", plane.org.org_id)
    analyst = plane.ctx(plane.add_user(Role.ANALYST))
    with pytest.raises(Forbidden):
        _rebind(plane, analyst, ours.binding_id, org_id=other.org_id, table="sales.leads")
    admin = plane.ctx(plane.add_user(Role.ADMIN))
    with pytest.raises(PolicyInvalid, match="table"):
        _rebind(plane, admin, ours.binding_id, org_id=other.org_id, table="sales.orders")
    with pytest.raises(PolicyInvalid, match="no active organisation"):
        _rebind(plane, admin, ours.binding_id, org_id="org_nobody", table="sales.leads")
    moved = _rebind(plane, admin, ours.binding_id, org_id=other.org_id, table="sales.leads")
    assert moved == TableBinding(ours.binding_id, "sales.leads", other.org_id)
    assert plane.event_types()[-1] == plane.event_types(other.org_id)[-1] == IamEventType.POLICY_UPDATED.value
    with pytest.raises(NotFound):  # now it is theirs: we cannot take it back
        _rebind(plane, admin, ours.binding_id, org_id=plane.org.org_id, table="sales.leads")


def test_only_the_deployments_owner_shares_a_table_or_stops_sharing_it(plane: ControlPlane) -> None:
    _deployment(plane)
    other = plane.add_org()
    registered = record_owner(plane.store, "shared.events", plane.org.org_id)
    theirs = record_owner(plane.store, "sales.orders", other.org_id)
    shared = {"org_id": None, "tenant_column": "org_id", "table": "shared.events"}
    admin = plane.ctx(plane.add_user(Role.ADMIN))
    with pytest.raises(Forbidden, match="deployment"):
        _rebind(plane, admin, registered.binding_id, **shared)
    with pytest.raises(Forbidden, match="deployment"):  # a tenant column shares the table, whatever org_id says
        _rebind(plane, admin, registered.binding_id, **{**shared, "org_id": plane.org.org_id})
    other_owner = plane.ctx(plane.add_user(Role.OWNER, org=other))
    with pytest.raises(Forbidden, match="deployment"):
        _rebind(plane, other_owner, theirs.binding_id, org_id=None, tenant_column="org_id", table="sales.orders")
    owner = plane.ctx(plane.owner)
    now_shared = _rebind(plane, owner, registered.binding_id, **shared)
    assert now_shared == TableBinding(registered.binding_id, "shared.events", None, "org_id")
    listed = policy_admin.list_policies(plane.store, owner, plane.org.org_id, "table_binding")
    assert now_shared in listed
    assert now_shared not in policy_admin.list_policies(plane.store, other_owner, other.org_id, "table_binding")
    with pytest.raises(Conflict, match="exactly one owner"):
        policy_admin.delete_policy(plane.store, plane.trail, owner, "table_binding", registered.binding_id)
    back = _rebind(plane, owner, registered.binding_id, org_id=plane.org.org_id, table="shared.events")
    assert back.org_id == plane.org.org_id and back.tenant_column is None


def test_a_rebind_decided_on_a_stale_snapshot_is_refused(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    other = plane.add_org()
    ours = record_owner(plane.store, "sales.leads", plane.org.org_id)
    stale = plane.store.policy_snapshot()
    plane.store.put_policy(MaskRule("mask_x", plane.org.org_id, "sales.leads", "email", MaskFunction.FULL))
    monkeypatch.setattr(plane.store, "policy_snapshot", lambda: stale)
    with pytest.raises(Conflict):
        _rebind(plane, plane.ctx(plane.owner), ours.binding_id, org_id=other.org_id, table="sales.leads")


# --- replacing and deleting --------------------------------------------------------------------------


def test_replace_policy_records_policy_updated_with_before_and_after(plane: ControlPlane) -> None:
    old = create(plane, mask_document(plane.org.org_id))
    version = plane.store.policy_version()
    document = mask_document(plane.org.org_id, function="full", exempt_roles=["Auditor"])
    del document["rule_id"]  # an omitted id means the id addressed

    new = policy_admin.replace_policy(
        plane.store, plane.trail, plane.ctx(plane.owner), "mask", "mask_ssn", document, now=plane.clock
    )

    assert new.function == MaskFunction.FULL and new.exempt_roles == (Role.AUDITOR,)  # type: ignore[union-attr]
    assert plane.store.get_policy(PolicyKind.MASK, "mask_ssn") == new
    assert plane.store.policy_version() == version + 1
    _, event = plane.events()
    assert (event.event_type, event.target) == (IamEventType.POLICY_UPDATED, "mask/mask_ssn")
    assert (event.before, event.after) == (to_document(old), to_document(new))


@pytest.mark.parametrize("fields", [{"rule_id": "mask_other"}, {"kind": "row_filter"}])
def test_replace_policy_refuses_a_document_for_another_kind_or_id(plane: ControlPlane, fields: dict[str, Any]) -> None:
    create(plane, mask_document(plane.org.org_id))
    with pytest.raises(InvalidRequest):
        policy_admin.replace_policy(
            plane.store, plane.trail, plane.ctx(plane.owner), "mask", "mask_ssn",
            mask_document(plane.org.org_id, **fields),
        )
    assert plane.event_types() == [IamEventType.POLICY_CREATED]


def test_replacing_an_absent_policy_is_not_found(plane: ControlPlane) -> None:
    with pytest.raises(NotFound):
        policy_admin.replace_policy(
            plane.store, plane.trail, plane.ctx(plane.owner), "mask", "mask_ssn", mask_document(plane.org.org_id)
        )


def test_a_replacement_is_validated_against_the_policy_set(plane: ControlPlane) -> None:
    create(plane, mask_document(plane.org.org_id))
    create(plane, {"kind": "column_tag", "tag_id": "tag_ssn", "org_id": plane.org.org_id, "table": "crm.customers",
                   "column": "ssn", "pii_type": "ssn"})
    with pytest.raises(PolicyInvalid):
        policy_admin.replace_policy(
            plane.store, plane.trail, plane.ctx(plane.owner), "mask", "mask_ssn",
            mask_document(plane.org.org_id, function="hash"),
        )


def test_delete_policy_records_policy_deleted_with_what_was_deleted(plane: ControlPlane) -> None:
    tag = create(plane, {"kind": "column_tag", "tag_id": "tag_email", "org_id": plane.org.org_id,
                         "table": "crm.customers", "column": "email", "pii_type": "email"})

    deleted = policy_admin.delete_policy(plane.store, plane.trail, plane.ctx(plane.owner), "column_tag", "tag_email")

    assert deleted == tag == ColumnTag("tag_email", plane.org.org_id, "crm.customers", "email", PiiType.EMAIL)
    assert plane.store.get_policy(PolicyKind.COLUMN_TAG, "tag_email") is None
    _, event = plane.events()
    assert (event.event_type, event.target) == (IamEventType.POLICY_DELETED, "column_tag/tag_email")
    assert (event.before, event.after) == (to_document(tag), None)
    with pytest.raises(NotFound):
        policy_admin.delete_policy(plane.store, plane.trail, plane.ctx(plane.owner), "column_tag", "tag_email")


def test_jit_grants_and_quotas_are_not_deleted_here(plane: ControlPlane) -> None:
    with pytest.raises(InvalidRequest):
        policy_admin.delete_policy(plane.store, plane.trail, plane.ctx(plane.owner), PolicyKind.QUOTA, "quota_x")
    with pytest.raises(InvalidRequest):
        policy_admin.delete_policy(plane.store, plane.trail, plane.ctx(plane.owner), "policy", "x")


# --- tenant isolation and reading ----------------------------------------------------------------------


def test_another_tenants_policies_are_not_found(plane: ControlPlane) -> None:
    other = plane.add_org()
    theirs = MaskRule("mask_theirs", other.org_id, "crm.customers", "ssn", MaskFunction.FULL)
    plane.store.put_policy(theirs)
    ctx = plane.ctx(plane.owner)
    with pytest.raises(NotFound):
        policy_admin.get_policy(plane.store, ctx, plane.org.org_id, "mask", "mask_theirs")
    with pytest.raises(NotFound):
        policy_admin.delete_policy(plane.store, plane.trail, ctx, "mask", "mask_theirs")
    with pytest.raises(NotFound):
        policy_admin.replace_policy(
            plane.store, plane.trail, ctx, "mask", "mask_theirs",
            mask_document(plane.org.org_id, rule_id="mask_theirs"),
        )
    with pytest.raises(NotFound):
        policy_admin.list_policies(plane.store, ctx, other.org_id)
    assert plane.store.get_policy(PolicyKind.MASK, "mask_theirs") == theirs
    assert plane.events(other.org_id) == []


def test_list_and_get_policies_of_ones_own_organisation(plane: ControlPlane) -> None:
    rule = create(plane, mask_document(plane.org.org_id))
    tag = create(plane, {"kind": "column_tag", "tag_id": "tag_email", "org_id": plane.org.org_id,
                         "table": "crm.customers", "column": "email", "pii_type": "email"})
    plane.store.put_policy(MaskRule("mask_theirs", plane.add_org().org_id, "crm.customers", "ssn", MaskFunction.FULL))
    ctx = plane.ctx(plane.add_user(Role.AUDITOR))

    assert policy_admin.list_policies(plane.store, ctx, plane.org.org_id) == [tag, rule]
    assert policy_admin.list_policies(plane.store, ctx, plane.org.org_id, kind="mask") == [rule]
    assert policy_admin.get_policy(plane.store, ctx, plane.org.org_id, PolicyKind.MASK, "mask_ssn") == rule
    with pytest.raises(InvalidRequest):
        policy_admin.list_policies(plane.store, ctx, plane.org.org_id, kind="firewall")
