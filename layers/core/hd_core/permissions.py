"""What each role may do, as data: the whitepaper's role matrix, the API scopes it implies, and scope bundles.

`ROLE_PERMISSIONS` is the security whitepaper's table (section 3.1) verbatim. `ROLE_SCOPES` is
derived from it: every capability a role has in the matrix contributes its scopes, and a few roles
add the build scopes their work needs (a Developer creates tables and merges branches, an Analyst
creates branches to explore). An API key carries a subset of its user's role scopes, and is
narrowed again to the user's *current* role at every login, so demoting a user takes effect on
keys issued before the demotion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hd_core.errors import ScopeNotAllowed, UnknownScope
from hd_core.models import ApiScope, Role
from hd_core.policies import Action


@dataclass(frozen=True)
class RolePermissions:
    """One row of the whitepaper's role matrix."""

    query: bool
    manage_policies: bool
    manage_users: bool
    billing: bool
    audit_logs: bool


ROLE_PERMISSIONS: dict[Role, RolePermissions] = {
    Role.OWNER: RolePermissions(query=True, manage_policies=True, manage_users=True, billing=True, audit_logs=True),
    Role.ADMIN: RolePermissions(query=True, manage_policies=True, manage_users=True, billing=False, audit_logs=True),
    Role.ANALYST: RolePermissions(
        query=True, manage_policies=False, manage_users=False, billing=False, audit_logs=False
    ),
    Role.AUDITOR: RolePermissions(
        query=False, manage_policies=False, manage_users=False, billing=False, audit_logs=True
    ),
    Role.DEVELOPER: RolePermissions(
        query=True, manage_policies=False, manage_users=False, billing=False, audit_logs=False
    ),
    Role.SERVICE_ACCOUNT: RolePermissions(
        query=True, manage_policies=False, manage_users=False, billing=False, audit_logs=False
    ),
}

# Reading the catalog is part of querying and of auditing: an auditor must know what a table is.
_CATALOG_READ = (ApiScope.TABLES_LIST, ApiScope.TABLES_DESCRIBE, ApiScope.SCHEMAS_READ)

# The scopes each matrix column grants.
_CAPABILITY_SCOPES: dict[str, tuple[ApiScope, ...]] = {
    "query": (
        ApiScope.QUERY_READ,
        ApiScope.QUERY_WRITE,
        *_CATALOG_READ,
        ApiScope.FUNCTIONS_EXECUTE,
        ApiScope.MEMORY_READ,
        ApiScope.MEMORY_WRITE,
        ApiScope.COT_WRITE,
        ApiScope.TRIGGERS_READ,
    ),
    "manage_policies": (ApiScope.POLICIES_MANAGE,),
    "manage_users": (ApiScope.USERS_MANAGE, ApiScope.KEYS_MANAGE),
    "billing": (ApiScope.BILLING_MANAGE,),
    "audit_logs": (ApiScope.AUDIT_READ, *_CATALOG_READ),
}

# Changing the schema, triggers and branches: work for builders, not for readers.
_BUILD_SCOPES = (
    ApiScope.TABLES_CREATE,
    ApiScope.TABLES_ALTER,
    ApiScope.TRIGGERS_MANAGE,
    ApiScope.BRANCHES_CREATE,
    ApiScope.BRANCHES_MERGE,
)
# Organisation-wide settings, held by those who manage the organisation's users and policies.
_ADMINISTRATION_SCOPES = (ApiScope.ORGS_MANAGE, ApiScope.WEBHOOKS_MANAGE, ApiScope.FORGET_MANAGE)

_ROLE_EXTRA_SCOPES: dict[Role, tuple[ApiScope, ...]] = {
    Role.OWNER: _BUILD_SCOPES + _ADMINISTRATION_SCOPES,
    Role.ADMIN: _BUILD_SCOPES + _ADMINISTRATION_SCOPES,
    Role.ANALYST: (ApiScope.BRANCHES_CREATE,),
    Role.AUDITOR: (),
    Role.DEVELOPER: _BUILD_SCOPES,
    Role.SERVICE_ACCOUNT: (),
}


def _ordered(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes in `ApiScope` declaration order, each once: equal sets always look the same."""
    wanted = set(scopes)
    return tuple(scope.value for scope in ApiScope if scope.value in wanted)


def _derive_role_scopes(role: Role) -> frozenset[str]:
    permissions = ROLE_PERMISSIONS[role]
    granted: set[ApiScope] = set(_ROLE_EXTRA_SCOPES[role])
    for capability, scopes in _CAPABILITY_SCOPES.items():
        if getattr(permissions, capability):
            granted.update(scopes)
    return frozenset(scope.value for scope in granted)


ROLE_SCOPES: dict[Role, frozenset[str]] = {role: _derive_role_scopes(role) for role in Role}

SCOPE_BUNDLES: dict[str, tuple[str, ...]] = {
    "read_only": _ordered((ApiScope.QUERY_READ, *_CATALOG_READ)),
    "developer": _ordered(ROLE_SCOPES[Role.DEVELOPER]),
    "admin": _ordered(ROLE_SCOPES[Role.ADMIN]),
    "agent": _ordered(
        (
            ApiScope.QUERY_READ,
            *_CATALOG_READ,
            ApiScope.FUNCTIONS_EXECUTE,
            ApiScope.MEMORY_READ,
            ApiScope.MEMORY_WRITE,
            ApiScope.COT_WRITE,
        )
    ),
}

# Privilege order for picking the stronger of two roles (JIT elevation). Not the `Role` declaration
# order: a Developer holds every Analyst scope and more, so a JIT grant to Developer must elevate
# an Analyst. Auditor ranks lowest because it cannot query at all.
_RANK: dict[Role, int] = {
    Role.OWNER: 6,
    Role.ADMIN: 5,
    Role.DEVELOPER: 4,
    Role.ANALYST: 3,
    Role.SERVICE_ACCOUNT: 2,
    Role.AUDITOR: 1,
}

_ACTION_SCOPES: dict[Action, str] = {
    Action.SELECT: ApiScope.QUERY_READ.value,
    Action.INSERT: ApiScope.QUERY_WRITE.value,
    Action.UPDATE: ApiScope.QUERY_WRITE.value,
    Action.DELETE: ApiScope.QUERY_WRITE.value,
    Action.CREATE: ApiScope.TABLES_CREATE.value,
    Action.ALTER: ApiScope.TABLES_ALTER.value,
    Action.DROP: ApiScope.TABLES_ALTER.value,
}


def expand_scopes(items: Iterable[str]) -> tuple[str, ...]:
    """Scope names and bundle names (`read_only`, `developer`, `admin`, `agent`) as scopes; raises `UnknownScope`."""
    known = {scope.value for scope in ApiScope}
    expanded: set[str] = set()
    for item in items:
        name = str(item)  # an ApiScope is a StrEnum: str() is its value
        if name in known:
            expanded.add(name)
        elif name in SCOPE_BUNDLES:
            expanded.update(SCOPE_BUNDLES[name])
        else:
            raise UnknownScope(
                f"unknown api scope {name!r}: use a scope such as 'query:read' or a bundle "
                f"({', '.join(sorted(SCOPE_BUNDLES))})"
            )
    return _ordered(expanded)


def narrow_scopes(role: Role, requested: Iterable[str]) -> tuple[str, ...]:
    """The requested scopes (bundles expanded) if `role` has all of them; else raises `ScopeNotAllowed`."""
    scopes = expand_scopes(requested)
    allowed = ROLE_SCOPES[Role(role)]
    missing = tuple(scope for scope in scopes if scope not in allowed)
    if missing:
        raise ScopeNotAllowed(Role(role).value, missing)
    return scopes


def effective_scopes(key_scopes: Iterable[str], role: Role) -> tuple[str, ...]:
    """What a key may do now: its scopes that its user's current role still has (unknown names dropped)."""
    allowed = ROLE_SCOPES[Role(role)]
    return _ordered(scope for scope in key_scopes if scope in allowed)


def scopes_for_action(action: Action) -> str:
    """The scope a statement needs to perform `action` on a table."""
    return _ACTION_SCOPES[Action(action)]


def role_rank(role: Role) -> int:
    """How privileged a role is; Owner is highest, and a role holding all of another's scopes ranks above it."""
    return _RANK[Role(role)]


def higher_role(a: Role, b: Role) -> Role:
    """The more privileged of two roles."""
    return Role(a) if role_rank(a) >= role_rank(b) else Role(b)
