"""Policy documents and policy files: round trips, normalisation, and clear errors for bad input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
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
    PolicyKind,
    PolicyObject,
    QuotaLimit,
    RowFilter,
    TableBinding,
    TimeWindow,
)
from hd_core.policy_codec import (
    dump_policy_file,
    from_document,
    kind_of,
    load_policy_file,
    object_id,
    to_document,
)

ORG = "org_acme"
T0 = datetime(2026, 3, 4, 12, 0, 0, 123456, tzinfo=UTC)

ONE_OF_EACH: list[PolicyObject] = [
    MaskRule(
        "mask_1",
        ORG,
        "crm.customers",
        "ssn",
        MaskFunction.PARTIAL,
        visible_chars=2,
        exempt_roles=(Role.OWNER, Role.AUDITOR),
        agent_ids=("agent-7",),
        agent_frameworks=("langchain",),
    ),
    RowFilter("rowf_1", ORG, "crm.customers", "region = {region}", exempt_roles=(Role.ADMIN,)),
    AbacPolicy(
        "abac_1",
        ORG,
        "office hours",
        "deny",
        ("*",),
        ("crm.*",),
        AbacConditions(
            time_window=TimeWindow("09:00", "17:00", "Europe/Berlin", ("mon", "fri"), outside=True),
            tables=("crm.customers",),
            agent_frameworks=("crewai",),
            agent_ids=("agent-1",),
            roles=(Role.ANALYST, Role.DEVELOPER),
            source_cidrs=("10.0.0.0/8",),
            not_source_cidrs=("2001:db8::/32",),
            agents_only=True,
        ),
        reason="CRM is read in office hours",
    ),
    JitGrant("jit_1", ORG, "usr_1", Role.ADMIN, "incident", T0, T0 + timedelta(hours=2), "usr_boss", None),
    ColumnTag("tag_1", ORG, "crm.customers", "email", PiiType.EMAIL),
    PhiGrant("phi_1", ORG, "usr_1", agent_id=None, expires_at=T0, reason="care team"),
    TableBinding("tbl_1", "shared.events", org_id=None, tenant_column="org_id"),
    QuotaLimit("quota_1", ORG, monthly_credits=12.5, max_rows_per_query=1000, statements_per_second=None),
]


@pytest.mark.parametrize("obj", ONE_OF_EACH, ids=lambda obj: type(obj).__name__)
def test_every_kind_round_trips_through_json(obj: PolicyObject) -> None:
    document = to_document(obj)
    assert document["kind"] == kind_of(obj).value
    assert from_document(json.loads(json.dumps(document))) == obj


def test_documents_use_plain_json_values() -> None:
    abac = to_document(ONE_OF_EACH[2])
    assert abac["conditions"]["roles"] == ["Analyst", "Developer"]
    assert abac["conditions"]["time_window"]["weekdays"] == ["mon", "fri"]
    jit = to_document(ONE_OF_EACH[3])
    assert jit["role"] == "Admin"
    assert jit["starts_at"] == "2026-03-04T12:00:00.123456Z"
    assert jit["revoked_at"] is None
    assert to_document(ONE_OF_EACH[0])["function"] == "partial"


def test_datetimes_are_written_in_utc_whatever_zone_they_carry() -> None:
    tokyo = timezone(timedelta(hours=9))
    grant = PhiGrant("phi_1", ORG, "usr_1", expires_at=datetime(2026, 3, 4, 21, 0, tzinfo=tokyo))
    assert to_document(grant)["expires_at"] == "2026-03-04T12:00:00Z"


def test_kind_of_and_object_id() -> None:
    assert [kind_of(obj) for obj in ONE_OF_EACH] == list(PolicyKind)
    assert object_id(ONE_OF_EACH[2]) == "abac_1"


def test_a_missing_id_is_generated_with_a_kind_prefix() -> None:
    first = from_document({"kind": "column_tag", "org_id": ORG, "table": "a.b", "column": "c", "pii_type": "ssn"})
    second = from_document({"kind": "column_tag", "org_id": ORG, "table": "a.b", "column": "c", "pii_type": "ssn"})
    assert isinstance(first, ColumnTag) and isinstance(second, ColumnTag)
    assert first.tag_id.startswith("tag_")
    assert first.tag_id != second.tag_id


def test_names_are_lower_cased_and_enums_read_case_insensitively() -> None:
    rule = from_document(
        {
            "kind": "mask",
            "org_id": ORG,
            "table": "CRM.Customers",
            "column": "SSN",
            "function": "FULL",
            "exempt_roles": ["owner", "ServiceAccount"],
        }
    )
    assert isinstance(rule, MaskRule)
    assert rule == MaskRule(
        rule.rule_id,
        ORG,
        "crm.customers",
        "ssn",
        MaskFunction.FULL,
        exempt_roles=(Role.OWNER, Role.SERVICE_ACCOUNT),
    )


def test_abac_names_actions_and_weekdays_are_lower_cased_but_not_the_timezone() -> None:
    policy = from_document(
        {
            "kind": "abac",
            "org_id": ORG,
            "name": "Night Shift",
            "effect": "deny",
            "actions": ["SELECT"],
            "resources": ["CRM.*"],
            "conditions": {"time_window": {"timezone": "America/New_York", "weekdays": ["SAT"]}, "tables": ["A.B"]},
        }
    )
    assert isinstance(policy, AbacPolicy)
    assert policy.name == "Night Shift"
    assert (policy.actions, policy.resources, policy.conditions.tables) == (("select",), ("crm.*",), ("a.b",))
    assert policy.conditions.time_window == TimeWindow(timezone="America/New_York", weekdays=("sat",))


def test_a_row_filter_text_is_kept_as_written() -> None:
    rule = from_document({"kind": "row_filter", "org_id": ORG, "table": "a.b", "filter": "Region = {region}"})
    assert isinstance(rule, RowFilter) and rule.filter == "Region = {region}"


def test_integers_are_accepted_for_number_fields() -> None:
    quota = from_document({"kind": "quota", "org_id": ORG, "monthly_credits": 100})
    assert isinstance(quota, QuotaLimit)
    assert quota.monthly_credits == 100.0 and isinstance(quota.monthly_credits, float)


# --- bad documents ---------------------------------------------------------------------------------

MASK_DOC = {"kind": "mask", "org_id": ORG, "table": "a.b", "column": "c", "function": "hash"}


@pytest.mark.parametrize(
    ("document", "message", "field"),
    [
        ([], "must be a JSON object", None),
        ({}, "unknown or missing policy kind", "kind"),
        ({**MASK_DOC, "kind": "firewall"}, "unknown or missing policy kind 'firewall'", "kind"),
        ({k: v for k, v in MASK_DOC.items() if k != "column"}, "missing the required field 'column'", "column"),
        ({k: v for k, v in MASK_DOC.items() if k != "org_id"}, "missing the required field 'org_id'", "org_id"),
        ({**MASK_DOC, "org_id": ""}, "non-empty 'org_id'", "org_id"),
        ({**MASK_DOC, "colour": "red"}, "unknown field.*'colour'", "colour"),
        ({**MASK_DOC, "function": "sha256"}, "use one of full, partial, hash, null", "function"),
        ({**MASK_DOC, "visible_chars": "4"}, "must be an integer", "visible_chars"),
        ({**MASK_DOC, "visible_chars": True}, "must be an integer", "visible_chars"),
        ({**MASK_DOC, "visible_chars": 2.5}, "must be an integer", "visible_chars"),
        ({**MASK_DOC, "exempt_roles": "Admin"}, "must be a list", "exempt_roles"),
        ({**MASK_DOC, "exempt_roles": ["Admin", "Wizard"]}, "exempt_roles\\[1\\].*Wizard", "exempt_roles"),
        ({**MASK_DOC, "table": None}, "must not be null", "table"),
        ({**MASK_DOC, "table": 7}, "must be a string", "table"),
        ({**MASK_DOC, "rule_id": ""}, "must not be empty", "rule_id"),
        (
            {
                "kind": "abac",
                "org_id": ORG,
                "name": "n",
                "effect": "deny",
                "actions": ["*"],
                "resources": ["*"],
                "conditions": {"time_window": {"start": 9}},
            },
            "abac.conditions.time_window.start must be a string",
            "conditions.time_window.start",
        ),
        (
            {
                "kind": "abac",
                "org_id": ORG,
                "name": "n",
                "effect": "deny",
                "actions": ["*"],
                "resources": ["*"],
                "conditions": ["agents_only"],
            },
            "conditions must be an object",
            "conditions",
        ),
        (
            {
                "kind": "abac",
                "org_id": ORG,
                "name": "n",
                "effect": "deny",
                "actions": ["*"],
                "resources": ["*"],
                "conditions": {"agents": True},
            },
            "unknown field.*'agents'",
            "conditions.agents",
        ),
        (
            {
                "kind": "jit_grant",
                "org_id": ORG,
                "user_id": "u",
                "role": "Admin",
                "reason": "r",
                "starts_at": "2026-03-04T12:00:00",
                "expires_at": "2026-03-04T14:00:00Z",
            },
            "needs a UTC offset",
            "starts_at",
        ),
        (
            {
                "kind": "jit_grant",
                "org_id": ORG,
                "user_id": "u",
                "role": "Admin",
                "reason": "r",
                "starts_at": "yesterday",
                "expires_at": "2026-03-04T14:00:00Z",
            },
            "not an ISO-8601 timestamp",
            "starts_at",
        ),
        ({"kind": "quota", "org_id": ORG, "monthly_credits": "lots"}, "must be a number", "monthly_credits"),
        ({"kind": "phi_grant", "org_id": ORG, "user_id": None}, "must not be null", "user_id"),
    ],
)
def test_bad_documents_raise_policy_invalid_naming_the_field(document: Any, message: str, field: str | None) -> None:
    with pytest.raises(PolicyInvalid, match=message) as caught:
        from_document(document)
    assert caught.value.field == field


def test_a_binding_needs_no_org() -> None:
    binding = from_document({"kind": "table_binding", "table": "Shared.Events", "tenant_column": "Org_Id"})
    assert isinstance(binding, TableBinding)
    assert binding == TableBinding(binding.binding_id, "shared.events", None, "org_id")


# --- policy files ------------------------------------------------------------------------------------


def test_policy_files_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "policies.json"
    dump_policy_file(ONE_OF_EACH, path)
    content = json.loads(path.read_text())
    assert content["version"] == 1
    assert [doc["kind"] for doc in content["policies"]] == [kind.value for kind in PolicyKind]
    assert load_policy_file(path) == ONE_OF_EACH
    assert [p.name for p in tmp_path.iterdir()] == ["policies.json"]  # no temporary file left behind


def test_the_documented_example_loads(tmp_path: Path) -> None:
    import hd_core.policy_codec as codec

    docstring = codec.__doc__ or ""
    example = docstring[docstring.index("    {\n") : docstring.index("    }\n") + 6]
    path = tmp_path / "example.json"
    path.write_text(example)
    objects = load_policy_file(path)
    assert [kind_of(obj) for obj in objects] == [
        PolicyKind.MASK,
        PolicyKind.ROW_FILTER,
        PolicyKind.ABAC,
        PolicyKind.COLUMN_TAG,
    ]
    abac = objects[2]
    assert isinstance(abac, AbacPolicy) and abac.conditions.time_window is not None
    assert abac.conditions.time_window.outside


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON \\(line 1"),
        ("[]", "expected"),
        ('{"version": 2, "policies": []}', "unsupported policy file version 2"),
        ('{"policies": []}', "unsupported policy file version None"),
        ('{"version": 1, "policies": {}}', "'policies' must be a list"),
        ('{"version": 1, "policies": [], "extra": 1}', "unknown top-level field"),
        ('{"version": 1, "policies": [{"kind": "quota", "org_id": "o"}, {"kind": "quota"}]}', "policies\\[1\\]"),
    ],
)
def test_bad_policy_files_say_where_the_problem_is(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "policies.json"
    path.write_text(content)
    with pytest.raises(PolicyInvalid, match=message):
        load_policy_file(path)


def test_a_missing_policy_file_is_policy_invalid(tmp_path: Path) -> None:
    with pytest.raises(PolicyInvalid, match="cannot be read"):
        load_policy_file(tmp_path / "absent.json")
