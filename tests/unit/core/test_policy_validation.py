"""Policy validation: every refusal names what to fix; a valid object of each kind passes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hd_core.errors import PolicyInvalid
from hd_core.models import Role
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    ColumnTag,
    JitGrant,
    MaskFunction,
    MaskRule,
    PhiGrant,
    PiiType,
    PolicyObject,
    PolicySnapshot,
    QuotaLimit,
    RowFilter,
    TableBinding,
    TimeWindow,
)
from hd_core.policy_validation import validate_policy, validate_snapshot

ORG = "org_acme"
NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
EMPTY = PolicySnapshot(version=0)

MASK = MaskRule("mask_1", ORG, "crm.customers", "ssn", MaskFunction.PARTIAL, visible_chars=4)
ROW_FILTER = RowFilter("rowf_1", ORG, "crm.customers", "region = {region}", exempt_roles=(Role.ADMIN,))
ABAC = AbacPolicy(
    "abac_1",
    ORG,
    "office hours",
    "deny",
    ("select", "update"),
    ("crm.*", "sales.orders", "*"),
    AbacConditions(
        time_window=TimeWindow("09:00", "17:00", "Europe/Berlin", ("mon", "fri"), outside=True),
        tables=("crm.customers",),
        roles=(Role.ANALYST,),
        source_cidrs=("10.0.0.0/8", "2001:db8::/32"),
        not_source_cidrs=("192.168.0.0/16",),
    ),
)
JIT = JitGrant("jit_1", ORG, "usr_1", Role.ADMIN, "incident 42", NOW, NOW + timedelta(hours=4))
TAG = ColumnTag("tag_1", ORG, "crm.customers", "email", PiiType.EMAIL)
PHI = PhiGrant("phi_1", ORG, "usr_1", agent_id="agent-7", expires_at=NOW + timedelta(days=1))
BINDING = TableBinding("tbl_1", "crm.customers", org_id=ORG)
SHARED = TableBinding("tbl_2", "shared.events", tenant_column="org_id")
QUOTA = QuotaLimit("quota_1", ORG, monthly_credits=100.0, max_rows_per_query=10_000, statements_per_second=5.0)
VALID: list[PolicyObject] = [MASK, ROW_FILTER, ABAC, JIT, TAG, PHI, BINDING, SHARED, QUOTA]


def _refused(obj: PolicyObject, match: str, snapshot: PolicySnapshot = EMPTY) -> PolicyInvalid:
    with pytest.raises(PolicyInvalid, match=match) as caught:
        validate_policy(obj, snapshot, now=NOW)
    assert caught.value.code == "HD_ERR_POLICY_INVALID"
    return caught.value


@pytest.mark.parametrize("obj", VALID, ids=lambda obj: type(obj).__name__)
def test_a_valid_object_of_each_kind_passes(obj: PolicyObject) -> None:
    validate_policy(obj, EMPTY, now=NOW)


def test_a_valid_set_has_no_problems() -> None:
    assert validate_snapshot(PolicySnapshot.of(1, VALID), now=NOW) == []


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", ["customers", "crm.customers.x", "CRM.Customers", "crm.1customers", "crm.cust-omers", ""]
)
def test_tables_must_be_lower_case_schema_dot_table(table: str) -> None:
    error = _refused(replace(MASK, table=table), "schema.table")
    assert error.field == "table"


def test_an_upper_case_table_is_told_to_use_lower_case() -> None:
    _refused(replace(MASK, table="CRM.Customers"), "lower case")


@pytest.mark.parametrize("column", ["", "Ssn", "1ssn", "s sn", "ssn;drop"])
def test_columns_must_be_identifiers(column: str) -> None:
    assert _refused(replace(MASK, column=column), "column").field == "column"


def test_unknown_roles_are_refused() -> None:
    _refused(replace(MASK, exempt_roles=("Superuser",)), "Superuser")  # type: ignore[arg-type]
    _refused(replace(ROW_FILTER, exempt_roles=("root",)), "root")  # type: ignore[arg-type]
    _refused(replace(ABAC, conditions=AbacConditions(roles=("God",))), "God")  # type: ignore[arg-type]


def test_every_org_scoped_object_needs_an_org() -> None:
    for obj in (MASK, ROW_FILTER, ABAC, JIT, TAG, PHI, QUOTA):
        _refused(replace(obj, org_id=""), "org_id")


# --- masks and tags -------------------------------------------------------------------------------


@pytest.mark.parametrize("visible", [-1, 65])
def test_visible_chars_must_be_between_0_and_64(visible: int) -> None:
    _refused(replace(MASK, visible_chars=visible), "0 to 64")


@pytest.mark.parametrize("visible", [0, 64])
def test_visible_chars_bounds_are_allowed(visible: int) -> None:
    validate_policy(replace(MASK, visible_chars=visible), EMPTY)


@pytest.mark.parametrize("pii", [PiiType.SSN, PiiType.PHONE, PiiType.EMAIL, PiiType.MRN])
def test_a_hash_mask_on_a_column_tagged_as_guessable_pii_is_refused(pii: PiiType) -> None:
    tagged = PolicySnapshot.of(1, [ColumnTag("tag_1", ORG, "crm.customers", "ssn", pii)])
    error = _refused(replace(MASK, function=MaskFunction.HASH), "partial, full or null", tagged)
    assert pii.value in str(error)
    assert error.field == "function"


@pytest.mark.parametrize("function", [MaskFunction.PARTIAL, MaskFunction.FULL, MaskFunction.NULL])
def test_other_masks_on_a_tagged_column_are_fine(function: MaskFunction) -> None:
    tagged = PolicySnapshot.of(1, [ColumnTag("tag_1", ORG, "crm.customers", "ssn", PiiType.SSN)])
    validate_policy(replace(MASK, function=function), tagged)


def test_a_hash_mask_is_fine_on_card_or_phi_columns_and_in_other_orgs() -> None:
    tags = [
        ColumnTag("tag_1", ORG, "crm.customers", "ssn", PiiType.CARD),
        ColumnTag("tag_2", "org_other", "crm.customers", "ssn", PiiType.SSN),
    ]
    validate_policy(replace(MASK, function=MaskFunction.HASH), PolicySnapshot.of(1, tags))


def test_tagging_a_column_that_has_a_hash_mask_as_ssn_is_refused() -> None:
    hashed = PolicySnapshot.of(1, [replace(MASK, function=MaskFunction.HASH)])
    error = _refused(ColumnTag("tag_1", ORG, "crm.customers", "ssn", PiiType.SSN), "mask_1", hashed)
    assert "partial, full or null" in str(error)


def test_tagging_a_hash_masked_column_as_phi_is_allowed() -> None:
    hashed = PolicySnapshot.of(1, [replace(MASK, function=MaskFunction.HASH)])
    validate_policy(ColumnTag("tag_1", ORG, "crm.customers", "ssn", PiiType.PHI), hashed)


# --- row filters -----------------------------------------------------------------------------------


def test_a_row_filter_that_does_not_parse_is_refused_with_the_parsers_reason() -> None:
    error = _refused(replace(ROW_FILTER, filter="org_id = '{org_id}'"), "write it bare")
    assert error.field == "filter"
    assert type(error) is PolicyInvalid
    _refused(replace(ROW_FILTER, filter="owner IN (SELECT 1)"), "subqueries")


@pytest.mark.parametrize(
    ("text", "function"),
    [("read_csv('x') IS NOT NULL", "read_csv"), ("json_serialize_plan('select 1') IS NOT NULL", "json_serialize_plan")],
)
def test_a_row_filter_calling_a_function_outside_the_allow_list_is_not_stored(text: str, function: str) -> None:
    error = _refused(replace(ROW_FILTER, filter=text), rf"row filter on crm\.customers: function {function}\(\)")
    assert error.field == "filter"


# --- ABAC ---------------------------------------------------------------------------------------------


def test_abac_can_only_deny() -> None:
    error = _refused(replace(ABAC, effect="allow"), "roles and scopes grant")
    assert error.field == "effect"


@pytest.mark.parametrize("actions", [(), ("read",), ("SELECT",)])
def test_abac_actions_must_be_known(actions: tuple[str, ...]) -> None:
    _refused(replace(ABAC, actions=actions), "action")


@pytest.mark.parametrize("resource", ["crm", "crm.", "*.customers", "crm.*.x", "CRM.*", "crm.cust*"])
def test_abac_resources_must_be_table_schema_star_or_star(resource: str) -> None:
    _refused(replace(ABAC, resources=(resource,)), "resource")


def test_abac_needs_a_resource() -> None:
    _refused(replace(ABAC, resources=()), "resources is empty")


def _with_window(**window: Any) -> AbacPolicy:
    return replace(ABAC, conditions=AbacConditions(time_window=TimeWindow(**window)))


@pytest.mark.parametrize(
    ("window", "match"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"timezone": "../etc/passwd"}, "unknown timezone"),
        ({"start": "9:00"}, "HH:MM"),
        ({"start": "09:60"}, "HH:MM"),
        ({"end": "25:00"}, "HH:MM"),
        ({"start": "24:00", "end": "06:00"}, "00:00"),
        ({"start": "09:00", "end": "09:00"}, "empty window"),
        ({"weekdays": ("monday",)}, "weekday"),
        ({"weekdays": ("Mon",)}, "weekday"),
    ],
)
def test_time_windows_need_a_real_timezone_hh_mm_times_and_short_weekdays(window: dict[str, Any], match: str) -> None:
    _refused(_with_window(**window), match)


def test_a_window_wrapping_midnight_and_the_whole_day_are_valid() -> None:
    validate_policy(_with_window(start="22:00", end="06:00"), EMPTY)
    validate_policy(_with_window(start="00:00", end="24:00"), EMPTY)


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "10.0.0", "fe80::/129", "office", "10.1.2.3/8"])
def test_cidrs_must_be_networks(cidr: str) -> None:
    _refused(replace(ABAC, conditions=AbacConditions(source_cidrs=(cidr,))), "10.0.0.0/8|host bits")
    _refused(replace(ABAC, conditions=AbacConditions(not_source_cidrs=(cidr,))), "10.0.0.0/8|host bits")


def test_a_cidr_with_host_bits_suggests_the_network() -> None:
    _refused(replace(ABAC, conditions=AbacConditions(source_cidrs=("10.1.2.3/8",))), "did you mean 10.0.0.0/8")


def test_a_single_address_is_a_valid_network() -> None:
    validate_policy(replace(ABAC, conditions=AbacConditions(source_cidrs=("203.0.113.7", "2001:db8::1"))), EMPTY)


def test_abac_condition_tables_must_be_valid_names() -> None:
    _refused(replace(ABAC, conditions=AbacConditions(tables=("customers",))), "schema.table")


# --- JIT, PHI, bindings, quotas ---------------------------------------------------------------------


def test_jit_must_end_after_it_starts() -> None:
    _refused(replace(JIT, expires_at=JIT.starts_at), "after starts_at")
    _refused(replace(JIT, expires_at=JIT.starts_at - timedelta(minutes=1)), "after starts_at")


def test_jit_lasts_at_most_seven_days() -> None:
    validate_policy(replace(JIT, expires_at=JIT.starts_at + timedelta(days=7)), EMPTY)
    _refused(replace(JIT, expires_at=JIT.starts_at + timedelta(days=7, seconds=1)), "7 days")


def test_no_jit_to_owner() -> None:
    _refused(replace(JIT, role=Role.OWNER), "Owner")


def test_jit_needs_a_user() -> None:
    _refused(replace(JIT, user_id=""), "user_id")


def test_a_phi_grant_expiring_in_the_past_is_refused() -> None:
    _refused(replace(PHI, expires_at=NOW - timedelta(seconds=1)), "in the past")
    validate_policy(replace(PHI, expires_at=None), EMPTY, now=NOW)


def test_a_binding_needs_an_org_or_a_tenant_column() -> None:
    _refused(TableBinding("tbl_1", "crm.customers"), "org_id .* or a tenant_column")


@pytest.mark.parametrize("column", ["Org Id", "1org", "org-id", ""])
def test_a_tenant_column_must_be_an_identifier(column: str) -> None:
    _refused(replace(SHARED, tenant_column=column), "tenant_column")


@pytest.mark.parametrize("field", ["monthly_credits", "max_rows_per_query", "statements_per_second"])
def test_quota_limits_cannot_be_negative(field: str) -> None:
    _refused(replace(QUOTA, **{field: -1}), "negative")


def test_quota_limits_must_be_finite_numbers() -> None:
    _refused(replace(QUOTA, monthly_credits=float("nan")), "number")
    validate_policy(QuotaLimit("quota_1", ORG), EMPTY)  # all unlimited
    validate_policy(replace(QUOTA, monthly_credits=0.0), EMPTY)  # zero is a real limit


# --- whole sets -------------------------------------------------------------------------------------


def test_validate_snapshot_lists_every_problem_with_kind_and_id() -> None:
    snapshot = PolicySnapshot.of(
        1,
        [
            replace(MASK, function=MaskFunction.HASH, column="email"),  # email is tagged in TAG
            replace(ABAC, effect="allow"),
            TAG,
            replace(QUOTA, quota_id="quota_2"),
            QUOTA,
            BINDING,
            replace(BINDING, binding_id="tbl_9"),
            replace(JIT, grant_id="jit_1"),
            JIT,
        ],
    )
    problems = validate_snapshot(snapshot, now=NOW)
    assert any(p.startswith("mask mask_1:") and "partial, full or null" in p for p in problems)
    assert any(p.startswith("column_tag tag_1:") and "mask_1" in p for p in problems)
    assert any(p.startswith("abac abac_1:") and "deny" in p for p in problems)
    assert "jit_grant id jit_1 is used 2 times" in problems
    assert any("crm.customers has 2 table bindings" in p for p in problems)
    assert any(f"{ORG} has 2 quotas" in p for p in problems)
    assert len(problems) == 6
