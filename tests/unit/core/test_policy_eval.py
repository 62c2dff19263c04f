"""Which policies apply to a session: JIT roles, masks, row filters, ABAC denials, PHI grants, tags, quotas."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hd_core.models import Role
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    Action,
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
from hd_core.policy_eval import (
    Subject,
    abac_denial,
    binding_for,
    column_tags_for,
    effective_role,
    masks_for,
    phi_access,
    quota_for,
    row_filters_for,
)

ORG = "org_acme"
OTHER = "org_other"
TABLE = "crm.customers"
# Wednesday 2026-03-04, 12:00 UTC.
NOON = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)

ANALYST = Subject(
    user_id="usr_ana",
    org_id=ORG,
    role=Role.ANALYST,
    scopes=("query:read",),
    key_id="hd_live_AbCdEfGh",
    env="live",
    department="finance",
    region="eu",
)
AGENT = replace(ANALYST, agent_id="agent-7", agent_framework="langchain")


def snap(*objects: PolicyObject) -> PolicySnapshot:
    return PolicySnapshot.of(1, objects)


def mask(rule_id: str, column: str = "ssn", function: MaskFunction = MaskFunction.PARTIAL, **changes: Any) -> MaskRule:
    rule = MaskRule(rule_id=rule_id, org_id=ORG, table=TABLE, column=column, function=function)
    return replace(rule, **changes)


def deny(*, actions: tuple[str, ...] = ("*",), resources: tuple[str, ...] = ("*",), **conditions: Any) -> AbacPolicy:
    return AbacPolicy(
        policy_id="abac_1",
        org_id=ORG,
        name="test deny",
        effect="deny",
        actions=actions,
        resources=resources,
        conditions=AbacConditions(**conditions),
        reason="because",
    )


def jit(role: Role, starts: datetime, hours: float, **changes: Any) -> JitGrant:
    grant = JitGrant(
        grant_id="jit_1",
        org_id=ORG,
        user_id=ANALYST.user_id,
        role=role,
        reason="incident",
        starts_at=starts,
        expires_at=starts + timedelta(hours=hours),
    )
    return replace(grant, **changes)


# --- effective role -----------------------------------------------------------------------------


def test_without_grants_the_base_role_applies() -> None:
    assert effective_role(snap(), ANALYST, NOON) is Role.ANALYST


def test_an_active_jit_grant_elevates_the_user() -> None:
    assert effective_role(snap(jit(Role.ADMIN, NOON - timedelta(hours=1), 2)), ANALYST, NOON) is Role.ADMIN


def test_expired_jit_no_longer_elevates() -> None:
    grant = jit(Role.ADMIN, NOON - timedelta(hours=3), 2)
    assert effective_role(snap(grant), ANALYST, NOON) is Role.ANALYST
    assert effective_role(snap(grant), ANALYST, grant.expires_at) is Role.ANALYST  # the end is exclusive
    assert effective_role(snap(grant), ANALYST, grant.expires_at - timedelta(seconds=1)) is Role.ADMIN


def test_a_jit_grant_does_not_apply_before_it_starts_or_after_revocation() -> None:
    future = jit(Role.ADMIN, NOON + timedelta(hours=1), 2)
    revoked = jit(Role.ADMIN, NOON - timedelta(hours=1), 2, revoked_at=NOON - timedelta(minutes=5))
    assert effective_role(snap(future), ANALYST, NOON) is Role.ANALYST
    assert effective_role(snap(revoked), ANALYST, NOON) is Role.ANALYST


def test_a_jit_grant_never_lowers_a_role() -> None:
    admin = replace(ANALYST, role=Role.ADMIN)
    assert effective_role(snap(jit(Role.ANALYST, NOON, 1)), admin, NOON) is Role.ADMIN


def test_the_highest_of_several_active_grants_wins() -> None:
    grants = [jit(Role.DEVELOPER, NOON, 1, grant_id="jit_a"), jit(Role.ADMIN, NOON, 1, grant_id="jit_b")]
    assert effective_role(snap(*grants), ANALYST, NOON) is Role.ADMIN


def test_a_jit_grant_applies_only_to_its_user_in_its_organisation() -> None:
    grant = jit(Role.ADMIN, NOON, 1)
    assert effective_role(snap(grant), replace(ANALYST, user_id="usr_other"), NOON) is Role.ANALYST
    assert effective_role(snap(grant), replace(ANALYST, org_id=OTHER), NOON) is Role.ANALYST


def test_a_stored_jit_grant_to_owner_is_ignored() -> None:
    assert effective_role(snap(jit(Role.OWNER, NOON, 1)), ANALYST, NOON) is Role.ANALYST


# --- masks -------------------------------------------------------------------------------------


def test_a_general_mask_applies_to_its_org_and_table() -> None:
    rule = mask("m1")
    assert masks_for(snap(rule), ANALYST, Role.ANALYST, TABLE) == {"ssn": rule}
    assert masks_for(snap(rule), ANALYST, Role.ANALYST, "crm.other") == {}
    assert masks_for(snap(rule), replace(ANALYST, org_id=OTHER), Role.ANALYST, TABLE) == {}


def test_table_names_are_matched_case_insensitively() -> None:
    rule = mask("m1")
    assert masks_for(snap(rule), ANALYST, Role.ANALYST, "CRM.Customers") == {"ssn": rule}


def test_an_exempt_role_sees_the_column_unmasked() -> None:
    rule = mask("m1", exempt_roles=(Role.ADMIN,))
    assert masks_for(snap(rule), ANALYST, Role.ADMIN, TABLE) == {}
    assert masks_for(snap(rule), ANALYST, Role.ANALYST, TABLE) == {"ssn": rule}


def test_an_agent_specific_mask_does_not_apply_to_a_human_session() -> None:
    rule = mask("m1", function=MaskFunction.NULL, agent_frameworks=("langchain",))
    assert masks_for(snap(rule), ANALYST, Role.ANALYST, TABLE) == {}
    assert masks_for(snap(rule), AGENT, Role.ANALYST, TABLE) == {"ssn": rule}


def test_agent_specific_mask_wins_over_general_rule_for_matching_agent() -> None:
    general = mask("m_general", function=MaskFunction.NULL)
    for_agent = mask("m_agent", function=MaskFunction.PARTIAL, agent_ids=("agent-7",))
    snapshot = snap(general, for_agent)
    assert masks_for(snapshot, AGENT, Role.ANALYST, TABLE) == {"ssn": for_agent}
    assert masks_for(snapshot, ANALYST, Role.ANALYST, TABLE) == {"ssn": general}
    assert masks_for(snapshot, replace(AGENT, agent_id="agent-8", agent_framework=None), Role.ANALYST, TABLE) == {
        "ssn": general
    }


def test_an_agent_id_match_beats_a_framework_match() -> None:
    by_framework = mask("m_fw", function=MaskFunction.NULL, agent_frameworks=("langchain",))
    by_id = mask("m_id", function=MaskFunction.PARTIAL, agent_ids=("agent-7",))
    assert masks_for(snap(by_framework, by_id), AGENT, Role.ANALYST, TABLE) == {"ssn": by_id}


def test_either_list_matching_is_enough_when_both_are_given() -> None:
    rule = mask("m1", agent_ids=("agent-1",), agent_frameworks=("langchain",))
    assert masks_for(snap(rule), AGENT, Role.ANALYST, TABLE) == {"ssn": rule}
    assert masks_for(snap(rule), replace(ANALYST, agent_id="agent-1"), Role.ANALYST, TABLE) == {"ssn": rule}
    other = replace(ANALYST, agent_id="agent-2", agent_framework="crewai")
    assert masks_for(snap(rule), other, Role.ANALYST, TABLE) == {}


@pytest.mark.parametrize(
    ("functions", "winner"),
    [
        ((MaskFunction.PARTIAL, MaskFunction.HASH), MaskFunction.HASH),
        ((MaskFunction.HASH, MaskFunction.FULL), MaskFunction.FULL),
        ((MaskFunction.PARTIAL, MaskFunction.NULL), MaskFunction.NULL),
    ],
)
def test_equally_specific_rules_tie_to_the_strictest_function(
    functions: tuple[MaskFunction, MaskFunction], winner: MaskFunction
) -> None:
    rules = [mask(f"m{index}", function=function) for index, function in enumerate(functions)]
    assert masks_for(snap(*rules), ANALYST, Role.ANALYST, TABLE)["ssn"].function is winner
    assert masks_for(snap(*reversed(rules)), ANALYST, Role.ANALYST, TABLE)["ssn"].function is winner


def test_of_two_partial_masks_the_one_showing_fewer_characters_wins() -> None:
    rules = [mask("m1", visible_chars=4), mask("m2", visible_chars=2)]
    assert masks_for(snap(*rules), ANALYST, Role.ANALYST, TABLE)["ssn"].rule_id == "m2"


def test_a_more_specific_rule_that_exempts_the_role_falls_back_to_the_general_rule() -> None:
    general = mask("m_general", function=MaskFunction.FULL)
    exempting = mask("m_agent", agent_ids=("agent-7",), exempt_roles=(Role.ANALYST,))
    assert masks_for(snap(general, exempting), AGENT, Role.ANALYST, TABLE) == {"ssn": general}


def test_masks_are_per_column() -> None:
    ssn, email = mask("m1"), mask("m2", column="email", function=MaskFunction.HASH)
    assert masks_for(snap(ssn, email), ANALYST, Role.ANALYST, TABLE) == {"ssn": ssn, "email": email}


# --- row filters -------------------------------------------------------------------------------


def test_row_filters_of_the_org_and_table_apply_unless_the_role_is_exempt() -> None:
    region = RowFilter("rf1", ORG, TABLE, "region = {region}")
    owner = RowFilter("rf2", ORG, TABLE, "owner = {user_id}", exempt_roles=(Role.ADMIN,))
    elsewhere = RowFilter("rf3", ORG, "crm.other", "true")
    other_org = RowFilter("rf4", OTHER, TABLE, "false")
    snapshot = snap(region, owner, elsewhere, other_org)
    assert row_filters_for(snapshot, ANALYST, Role.ANALYST, TABLE) == [region, owner]
    assert row_filters_for(snapshot, ANALYST, Role.ADMIN, TABLE) == [region]


# --- bindings, tags, quotas ----------------------------------------------------------------------


def test_binding_for_finds_the_table_binding_whatever_the_org() -> None:
    binding = TableBinding("tbl_1", TABLE, org_id=OTHER)
    assert binding_for(snap(binding), TABLE) == binding
    assert binding_for(snap(binding), "CRM.CUSTOMERS") == binding
    assert binding_for(snap(binding), "crm.other") is None


def test_column_tags_are_per_org_and_table_and_phi_wins_a_double_tag() -> None:
    tags = [
        ColumnTag("t1", ORG, TABLE, "ssn", PiiType.SSN),
        ColumnTag("t2", ORG, TABLE, "notes", PiiType.EMAIL),
        ColumnTag("t3", ORG, TABLE, "notes", PiiType.PHI),
        ColumnTag("t4", OTHER, TABLE, "ssn", PiiType.PHI),
    ]
    assert column_tags_for(snap(*tags), ORG, TABLE) == {"ssn": PiiType.SSN, "notes": PiiType.PHI}
    assert column_tags_for(snap(*tags), ORG, "crm.other") == {}


def test_quota_for_returns_the_orgs_quota_or_none() -> None:
    quota = QuotaLimit("q1", ORG, monthly_credits=100.0)
    assert quota_for(snap(quota), ORG) == quota
    assert quota_for(snap(quota), OTHER) is None


def test_several_quotas_of_one_org_combine_to_the_strictest_limits() -> None:
    first = QuotaLimit("q1", ORG, monthly_credits=100.0, max_rows_per_query=None, statements_per_second=5.0)
    second = QuotaLimit("q2", ORG, monthly_credits=50.0, max_rows_per_query=1000, statements_per_second=None)
    combined = quota_for(snap(first, second), ORG)
    assert combined is not None
    assert (combined.monthly_credits, combined.max_rows_per_query, combined.statements_per_second) == (50.0, 1000, 5.0)


# --- PHI ------------------------------------------------------------------------------------------


def test_phi_access_needs_an_active_grant_for_the_user_in_the_org() -> None:
    grant = PhiGrant("phi_1", ORG, ANALYST.user_id, expires_at=NOON + timedelta(hours=1))
    assert phi_access(snap(grant), ANALYST, NOON)
    assert not phi_access(snap(grant), ANALYST, NOON + timedelta(hours=1))
    assert not phi_access(snap(grant), replace(ANALYST, user_id="usr_other"), NOON)
    assert not phi_access(snap(grant), replace(ANALYST, org_id=OTHER), NOON)
    assert not phi_access(snap(), ANALYST, NOON)


def test_a_phi_grant_limited_to_an_agent_applies_only_to_that_agent() -> None:
    grant = PhiGrant("phi_1", ORG, ANALYST.user_id, agent_id="agent-7")
    assert phi_access(snap(grant), AGENT, NOON)
    assert not phi_access(snap(grant), ANALYST, NOON)
    assert not phi_access(snap(grant), replace(AGENT, agent_id="agent-8"), NOON)


def test_a_phi_grant_without_agent_covers_every_session_of_the_user() -> None:
    grant = PhiGrant("phi_1", ORG, ANALYST.user_id)
    assert phi_access(snap(grant), AGENT, NOON)
    assert phi_access(snap(grant), ANALYST, NOON)


# --- ABAC: actions and resources -------------------------------------------------------------------


def test_a_deny_without_conditions_matches_every_action_on_every_table() -> None:
    policy = deny()
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) == policy
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.DROP, None, NOON) == policy


def test_a_deny_applies_only_to_its_org() -> None:
    assert abac_denial(snap(deny()), replace(ANALYST, org_id=OTHER), Role.ANALYST, Action.SELECT, TABLE, NOON) is None


def test_a_policy_with_another_effect_never_denies() -> None:
    allow = replace(deny(), effect="allow")
    assert abac_denial(snap(allow), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) is None


def test_actions_restrict_what_is_denied() -> None:
    policy = deny(actions=("delete", "update"))
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.DELETE, TABLE, NOON) == policy
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) is None


@pytest.mark.parametrize(
    ("resource", "table", "matches"),
    [
        ("crm.customers", "crm.customers", True),
        ("crm.customers", "crm.orders", False),
        ("crm.*", "crm.orders", True),
        ("crm.*", "sales.orders", False),
        ("crm.*", "crmx.orders", False),
        ("*", "sales.orders", True),
        ("*", None, True),
        ("crm.*", None, False),
        ("crm.customers", None, False),
    ],
)
def test_resource_patterns(resource: str, table: str | None, matches: bool) -> None:
    policy = deny(resources=(resource,))
    denial = abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, table, NOON)
    assert (denial is not None) is matches


def test_the_first_matching_policy_is_reported() -> None:
    first = replace(deny(resources=("crm.*",)), policy_id="abac_a", name="first")
    second = replace(deny(), policy_id="abac_b", name="second")
    assert abac_denial(snap(first, second), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) == first
    assert abac_denial(snap(first, second), ANALYST, Role.ANALYST, Action.SELECT, "x.y", NOON) == second


# --- ABAC: time windows ------------------------------------------------------------------------------


BUSINESS_HOURS_BERLIN = TimeWindow(
    start="09:00", end="17:00", timezone="Europe/Berlin", weekdays=("mon", "tue", "wed", "thu", "fri"), outside=True
)


def _denied_at(window: TimeWindow, at: datetime) -> bool:
    policy = deny(time_window=window)
    return abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, at) is not None


def test_deny_outside_business_hours_matches_at_night_in_that_timezone() -> None:
    # 21:30 UTC on a Wednesday is 22:30 in Berlin (CET, UTC+1): outside business hours.
    assert _denied_at(BUSINESS_HOURS_BERLIN, datetime(2026, 3, 4, 21, 30, tzinfo=UTC))
    # 08:30 UTC is 09:30 in Berlin: inside, so not denied.
    assert not _denied_at(BUSINESS_HOURS_BERLIN, datetime(2026, 3, 4, 8, 30, tzinfo=UTC))


def test_the_window_end_is_exclusive_and_the_start_inclusive() -> None:
    window = TimeWindow(start="09:00", end="17:00", timezone="UTC")
    assert _denied_at(window, datetime(2026, 3, 4, 9, 0, tzinfo=UTC))
    assert _denied_at(window, datetime(2026, 3, 4, 16, 59, tzinfo=UTC))
    assert not _denied_at(window, datetime(2026, 3, 4, 17, 0, tzinfo=UTC))
    assert not _denied_at(window, datetime(2026, 3, 4, 8, 59, tzinfo=UTC))


def test_a_window_with_start_after_end_wraps_past_midnight() -> None:
    night = TimeWindow(start="22:00", end="06:00", timezone="UTC")
    assert _denied_at(night, datetime(2026, 3, 4, 23, 0, tzinfo=UTC))
    assert _denied_at(night, datetime(2026, 3, 5, 0, 0, tzinfo=UTC))
    assert _denied_at(night, datetime(2026, 3, 5, 5, 59, tzinfo=UTC))
    assert not _denied_at(night, datetime(2026, 3, 5, 6, 0, tzinfo=UTC))
    assert not _denied_at(night, datetime(2026, 3, 4, 12, 0, tzinfo=UTC))


def test_the_default_window_is_the_whole_day() -> None:
    assert _denied_at(TimeWindow(), datetime(2026, 3, 4, 23, 59, tzinfo=UTC))
    assert not _denied_at(TimeWindow(outside=True), datetime(2026, 3, 4, 0, 0, tzinfo=UTC))


def test_weekdays_are_evaluated_in_the_policys_timezone_not_utc() -> None:
    weekend = TimeWindow(timezone="Asia/Tokyo", weekdays=("sat", "sun"))
    # Friday 2026-03-06 20:00 UTC is Saturday 05:00 in Tokyo.
    assert _denied_at(weekend, datetime(2026, 3, 6, 20, 0, tzinfo=UTC))
    # Sunday 2026-03-08 16:00 UTC is already Monday 01:00 in Tokyo.
    assert not _denied_at(weekend, datetime(2026, 3, 8, 16, 0, tzinfo=UTC))


def test_outside_business_hours_includes_the_weekend_at_midday() -> None:
    saturday_noon_berlin = datetime(2026, 3, 7, 11, 0, tzinfo=UTC)
    assert _denied_at(BUSINESS_HOURS_BERLIN, saturday_noon_berlin)


def test_local_time_follows_daylight_saving() -> None:
    window = TimeWindow(start="09:00", end="17:00", timezone="Europe/Berlin")
    # 07:30 UTC: 08:30 in winter (CET), 09:30 in summer (CEST).
    assert not _denied_at(window, datetime(2026, 1, 14, 7, 30, tzinfo=UTC))
    assert _denied_at(window, datetime(2026, 7, 15, 7, 30, tzinfo=UTC))


def test_an_unknown_timezone_fails_closed() -> None:
    assert _denied_at(TimeWindow(start="09:00", end="10:00", timezone="Mars/Olympus"), NOON)


# --- ABAC: subject conditions ----------------------------------------------------------------------


def test_table_condition_limits_the_policy_to_those_tables() -> None:
    policy = deny(tables=("crm.customers",))
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) == policy
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, "crm.orders", NOON) is None
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, None, NOON) is None


def test_agent_conditions_match_only_those_agents() -> None:
    by_framework = deny(agent_frameworks=("langchain",))
    by_id = deny(agent_ids=("agent-9",))
    assert abac_denial(snap(by_framework), AGENT, Role.ANALYST, Action.SELECT, TABLE, NOON) == by_framework
    assert abac_denial(snap(by_framework), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) is None
    assert abac_denial(snap(by_id), AGENT, Role.ANALYST, Action.SELECT, TABLE, NOON) is None


def test_role_condition_is_checked_against_the_effective_role() -> None:
    policy = deny(roles=(Role.ANALYST,))
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) == policy
    # Elevated by JIT to Admin, the same user no longer matches a policy aimed at analysts.
    assert abac_denial(snap(policy), ANALYST, Role.ADMIN, Action.SELECT, TABLE, NOON) is None


def test_agents_only_matches_any_agent_session_but_no_human_one() -> None:
    policy = deny(agents_only=True)
    assert abac_denial(snap(policy), AGENT, Role.ANALYST, Action.SELECT, TABLE, NOON) == policy
    framework_only = replace(ANALYST, agent_framework="crewai")
    assert abac_denial(snap(policy), framework_only, Role.ANALYST, Action.SELECT, TABLE, NOON) == policy
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) is None


@pytest.mark.parametrize(
    ("source_ip", "matches"),
    [
        ("203.0.113.7", True),
        ("198.51.100.1", False),
        ("2001:db8::1", True),
        ("2001:db9::1", False),
        ("::ffff:203.0.113.7", True),  # IPv4 client on a dual-stack listener
        (None, False),
        ("not-an-ip", False),
    ],
)
def test_source_cidrs_match_ipv4_and_ipv6_and_never_an_unknown_address(source_ip: str | None, matches: bool) -> None:
    policy = deny(source_cidrs=("203.0.113.0/24", "2001:db8::/32"))
    subject = replace(ANALYST, source_ip=source_ip)
    assert (abac_denial(snap(policy), subject, Role.ANALYST, Action.SELECT, TABLE, NOON) is not None) is matches


@pytest.mark.parametrize(
    ("source_ip", "denied"),
    [
        ("10.1.2.3", False),
        ("fd00::5", False),
        ("192.0.2.10", True),
        ("2001:db8::1", True),
        (None, True),
        ("garbage", True),
    ],
)
def test_not_source_cidrs_deny_everything_outside_the_networks_and_unknown_addresses(
    source_ip: str | None, denied: bool
) -> None:
    policy = deny(not_source_cidrs=("10.0.0.0/8", "fd00::/8"))
    subject = replace(ANALYST, source_ip=source_ip)
    assert (abac_denial(snap(policy), subject, Role.ANALYST, Action.SELECT, TABLE, NOON) is not None) is denied


def test_every_given_condition_must_hold() -> None:
    policy = deny(agents_only=True, roles=(Role.ANALYST,), tables=(TABLE,))
    assert abac_denial(snap(policy), AGENT, Role.ANALYST, Action.SELECT, TABLE, NOON) == policy
    assert abac_denial(snap(policy), AGENT, Role.DEVELOPER, Action.SELECT, TABLE, NOON) is None
    assert abac_denial(snap(policy), ANALYST, Role.ANALYST, Action.SELECT, TABLE, NOON) is None
