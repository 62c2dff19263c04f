"""Role matrix, role scopes, scope bundles and how a key's scopes are narrowed by its user's role."""

from __future__ import annotations

import itertools

import pytest

from hd_core.errors import HdError, ScopeNotAllowed, UnknownScope
from hd_core.models import ALL_SCOPES, ApiScope, Role
from hd_core.permissions import (
    ROLE_PERMISSIONS,
    ROLE_SCOPES,
    SCOPE_BUNDLES,
    effective_scopes,
    expand_scopes,
    higher_role,
    narrow_scopes,
    role_rank,
    scopes_for_action,
)
from hd_core.policies import Action

QUERY_SCOPES = {
    "query:read",
    "query:write",
    "tables:list",
    "tables:describe",
    "schemas:read",
    "functions:execute",
    "memory:read",
    "memory:write",
    "cot:write",
    "triggers:read",
}

# --- the whitepaper matrix ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "row"),
    [
        (Role.OWNER, (True, True, True, True, True)),
        (Role.ADMIN, (True, True, True, False, True)),
        (Role.ANALYST, (True, False, False, False, False)),
        (Role.AUDITOR, (False, False, False, False, True)),
        (Role.DEVELOPER, (True, False, False, False, False)),
        (Role.SERVICE_ACCOUNT, (True, False, False, False, False)),
    ],
)
def test_role_matrix_matches_the_whitepaper(role: Role, row: tuple[bool, ...]) -> None:
    permissions = ROLE_PERMISSIONS[role]
    assert (
        permissions.query,
        permissions.manage_policies,
        permissions.manage_users,
        permissions.billing,
        permissions.audit_logs,
    ) == row


@pytest.mark.parametrize("role", list(Role))
def test_role_scopes_agree_with_the_matrix(role: Role) -> None:
    permissions = ROLE_PERMISSIONS[role]
    scopes = ROLE_SCOPES[role]
    assert ("query:read" in scopes) == permissions.query
    assert ("query:write" in scopes) == permissions.query
    assert ("policies:manage" in scopes) == permissions.manage_policies
    assert ("users:manage" in scopes) == permissions.manage_users
    assert ("keys:manage" in scopes) == permissions.manage_users
    assert ("billing:manage" in scopes) == permissions.billing
    assert ("audit:read" in scopes) == permissions.audit_logs
    assert scopes <= set(ALL_SCOPES)
    assert all(type(scope) is str for scope in scopes)


def test_owner_holds_all_23_scopes() -> None:
    assert ROLE_SCOPES[Role.OWNER] == set(ALL_SCOPES)
    assert len(ALL_SCOPES) == 23  # issue 20 added forget:manage


def test_admin_holds_everything_but_billing() -> None:
    assert ROLE_SCOPES[Role.ADMIN] == set(ALL_SCOPES) - {"billing:manage"}


def test_analyst_queries_and_creates_branches_only() -> None:
    assert ROLE_SCOPES[Role.ANALYST] == QUERY_SCOPES | {"branches:create"}


def test_auditor_reads_audit_logs_and_the_catalog_but_cannot_query() -> None:
    assert ROLE_SCOPES[Role.AUDITOR] == {"audit:read", "tables:list", "tables:describe", "schemas:read"}


def test_developer_may_change_schema_triggers_and_branches_but_not_administer() -> None:
    assert ROLE_SCOPES[Role.DEVELOPER] == QUERY_SCOPES | {
        "tables:create",
        "tables:alter",
        "triggers:manage",
        "branches:create",
        "branches:merge",
    }


def test_service_account_holds_exactly_the_query_scopes() -> None:
    assert ROLE_SCOPES[Role.SERVICE_ACCOUNT] == QUERY_SCOPES


# --- bundles and expansion ----------------------------------------------------------------------


def test_bundles_are_named_and_hold_the_documented_scopes() -> None:
    assert set(SCOPE_BUNDLES) == {"read_only", "developer", "admin", "agent"}
    assert SCOPE_BUNDLES["read_only"] == ("query:read", "tables:list", "tables:describe", "schemas:read")
    assert set(SCOPE_BUNDLES["agent"]) == {
        "query:read",
        "tables:list",
        "tables:describe",
        "schemas:read",
        "functions:execute",
        "memory:read",
        "memory:write",
        "cot:write",
    }
    assert set(SCOPE_BUNDLES["developer"]) == ROLE_SCOPES[Role.DEVELOPER]
    assert set(SCOPE_BUNDLES["admin"]) == ROLE_SCOPES[Role.ADMIN]


def test_expand_scopes_mixes_bundles_and_scopes_in_declaration_order_without_duplicates() -> None:
    expanded = expand_scopes(["query:write", "read_only", ApiScope.QUERY_READ])
    assert expanded == ("query:read", "query:write", "tables:list", "tables:describe", "schemas:read")


def test_expand_scopes_refuses_unknown_names_listing_the_bundles() -> None:
    with pytest.raises(UnknownScope, match="unknown api scope 'root'") as caught:
        expand_scopes(["query:read", "root"])
    assert "read_only" in str(caught.value)
    assert caught.value.code == "HD_ERR_UNKNOWN_SCOPE"
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, HdError)


def test_expand_scopes_of_nothing_is_empty() -> None:
    assert expand_scopes([]) == ()


# --- narrowing -----------------------------------------------------------------------------------


def test_narrow_scopes_accepts_a_subset_of_the_role() -> None:
    assert narrow_scopes(Role.ANALYST, ["agent"]) == SCOPE_BUNDLES["agent"]


def test_narrow_scopes_names_every_scope_the_role_lacks() -> None:
    with pytest.raises(ScopeNotAllowed) as caught:
        narrow_scopes(Role.ANALYST, ["query:read", "policies:manage", "billing:manage"])
    error = caught.value
    assert error.code == "HD_ERR_SCOPE_NOT_ALLOWED"
    assert error.missing == ("policies:manage", "billing:manage")
    assert error.role == "Analyst"
    assert "policies:manage" in str(error) and "billing:manage" in str(error) and "Analyst" in str(error)


def test_auditor_cannot_hold_query_scopes_even_through_a_bundle() -> None:
    with pytest.raises(ScopeNotAllowed, match="query:read"):
        narrow_scopes(Role.AUDITOR, ["read_only"])


def test_admin_bundle_is_too_much_for_a_developer() -> None:
    with pytest.raises(ScopeNotAllowed):
        narrow_scopes(Role.DEVELOPER, ["admin"])


@pytest.mark.parametrize("role", list(Role))
def test_every_role_may_hold_all_of_its_own_scopes(role: Role) -> None:
    assert set(narrow_scopes(role, ROLE_SCOPES[role])) == ROLE_SCOPES[role]


def test_effective_scopes_is_the_intersection_with_the_current_role() -> None:
    key_scopes = ("query:read", "query:write", "audit:read", "policies:manage")
    assert effective_scopes(key_scopes, Role.ADMIN) == key_scopes
    assert effective_scopes(key_scopes, Role.ANALYST) == ("query:read", "query:write")
    assert effective_scopes(key_scopes, Role.AUDITOR) == ("audit:read",)


def test_effective_scopes_drops_names_that_are_not_scopes() -> None:
    assert effective_scopes(("query:read", "policies:read"), Role.OWNER) == ("query:read",)


# --- actions and ranks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "scope"),
    [
        (Action.SELECT, "query:read"),
        (Action.INSERT, "query:write"),
        (Action.UPDATE, "query:write"),
        (Action.DELETE, "query:write"),
        (Action.CREATE, "tables:create"),
        (Action.ALTER, "tables:alter"),
        (Action.DROP, "tables:alter"),
    ],
)
def test_each_action_needs_one_scope(action: Action, scope: str) -> None:
    assert scopes_for_action(action) == scope


def test_owner_ranks_highest_and_admin_second() -> None:
    ranks = sorted(Role, key=role_rank, reverse=True)
    assert ranks[:2] == [Role.OWNER, Role.ADMIN]


@pytest.mark.parametrize(("a", "b"), list(itertools.permutations(Role, 2)))
def test_a_role_holding_all_of_anothers_scopes_ranks_above_it(a: Role, b: Role) -> None:
    if ROLE_SCOPES[a] > ROLE_SCOPES[b]:
        assert role_rank(a) > role_rank(b)
        assert higher_role(a, b) is a
        assert higher_role(b, a) is a


def test_higher_role_of_a_role_and_itself_is_that_role() -> None:
    assert higher_role(Role.ANALYST, Role.ANALYST) is Role.ANALYST


def test_a_developer_outranks_an_analyst_so_jit_to_developer_elevates() -> None:
    assert higher_role(Role.ANALYST, Role.DEVELOPER) is Role.DEVELOPER
