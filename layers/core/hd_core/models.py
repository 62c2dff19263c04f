"""Control-plane entities: organisations, users, API key records and the authenticated principal.

All timestamps are timezone-aware UTC datetimes. Entities are frozen: a change is a new value
written through the `ControlStore`, which keeps the audit trail of administrative changes honest.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# 20 base62 characters carry ~119 bits: ids never collide in practice and cannot be guessed.
_ID_RANDOM_CHARS = 20


class Role(StrEnum):
    """The six roles of the security whitepaper, most to least privileged."""

    OWNER = "Owner"
    ADMIN = "Admin"
    ANALYST = "Analyst"
    AUDITOR = "Auditor"
    DEVELOPER = "Developer"
    SERVICE_ACCOUNT = "ServiceAccount"


class OrgStatus(StrEnum):
    """Whether an organisation may use the warehouse at all."""

    ACTIVE = "active"
    SUSPENDED = "suspended"


class UserStatus(StrEnum):
    """Whether a user may authenticate; `removed` users are kept for the audit trail."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    REMOVED = "removed"


class KeyEnv(StrEnum):
    """The environment an API key belongs to: `hd_live_` (production) or `hd_test_` (staging)."""

    LIVE = "live"
    TEST = "test"


class ApiScope(StrEnum):
    """What an API key may be used for; a key carries a subset chosen when it is issued."""

    # The 22 scopes of the security whitepaper, spelled as the product brief names them.
    QUERY_READ = "query:read"
    QUERY_WRITE = "query:write"
    TABLES_LIST = "tables:list"
    TABLES_DESCRIBE = "tables:describe"
    TABLES_CREATE = "tables:create"
    TABLES_ALTER = "tables:alter"
    SCHEMAS_READ = "schemas:read"
    FUNCTIONS_EXECUTE = "functions:execute"
    MEMORY_READ = "memory:read"
    MEMORY_WRITE = "memory:write"
    COT_WRITE = "cot:write"
    TRIGGERS_READ = "triggers:read"
    TRIGGERS_MANAGE = "triggers:manage"
    BRANCHES_CREATE = "branches:create"
    BRANCHES_MERGE = "branches:merge"
    AUDIT_READ = "audit:read"
    USERS_MANAGE = "users:manage"
    KEYS_MANAGE = "keys:manage"
    POLICIES_MANAGE = "policies:manage"
    ORGS_MANAGE = "orgs:manage"
    BILLING_MANAGE = "billing:manage"
    WEBHOOKS_MANAGE = "webhooks:manage"
    FORGET_MANAGE = "forget:manage"  # GDPR erasure requests (issue 20)


ALL_SCOPES: tuple[str, ...] = tuple(scope.value for scope in ApiScope)


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def random_base62(length: int) -> str:
    """`length` characters drawn uniformly from [0-9A-Za-z] by the `secrets` CSPRNG."""
    return "".join(secrets.choice(BASE62_ALPHABET) for _ in range(length))


def email_key(email: str) -> str:
    """The form under which emails are compared and looked up: lower case, so `A@x.io` and `a@x.io` clash."""
    return email.lower()


def new_id(prefix: str) -> str:
    """A fresh random identifier such as `new_id("org") -> "org_3kT9..."`."""
    if not prefix or not prefix.isalnum():
        raise ValueError(f"id prefix must be alphanumeric, got {prefix!r}")
    return f"{prefix}_{random_base62(_ID_RANDOM_CHARS)}"


@dataclass(frozen=True)
class Organization:
    """A tenant: every user, key, policy and table belongs to exactly one."""

    org_id: str
    name: str
    status: OrgStatus
    created_at: datetime
    mfa_required: bool = False  # every user of the organisation must present a TOTP code to log in


@dataclass(frozen=True)
class User:
    """A person or service identity inside an organisation; department and region feed ABAC policies."""

    user_id: str
    org_id: str
    email: str
    role: Role
    status: UserStatus
    department: str | None
    region: str | None
    created_at: datetime
    name: str = ""
    # Credentials stay out of repr (and so out of logs); the API never returns them.
    password_hash: str | None = field(default=None, repr=False)  # Argon2id; None: cannot log in with a password
    mfa_secret: str | None = field(default=None, repr=False)  # base32 TOTP secret, once enrolled
    mfa_enabled: bool = False  # True once a first TOTP code confirmed the enrolment
    # The last accepted TOTP time step (epoch seconds // 30) of `mfa_secret`: a code is accepted only for a
    # later step, so one code cannot be used twice (RFC 6238 section 5.2). 0 until a code is accepted.
    mfa_last_step: int = 0
    # Federated identities as "<issuer>#<subject>": an OIDC token from that issuer about that subject
    # signs in as this user.
    external_ids: tuple[str, ...] = ()
    # Access and refresh tokens issued before this time are refused: a password or MFA change, a
    # suspension or a revoked session family moves it forward (never back), ending every session at once.
    tokens_valid_after: datetime | None = None
    # Set by an administrator's password reset: the password only serves to choose a new one, never to log in.
    password_must_change: bool = False


@dataclass(frozen=True)
class Environment:
    """A deployment environment of an organisation; its key environment decides `hd_live_` or `hd_test_` keys."""

    env_id: str
    org_id: str
    name: str
    key_env: KeyEnv
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    """What is stored about an API key: its Argon2id hash, never the plaintext."""

    key_id: str
    org_id: str
    user_id: str
    env: KeyEnv
    key_hash: str = field(repr=False)  # kept out of logs: a leaked hash invites offline guessing
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    name: str
    allowed_cidrs: tuple[str, ...] = ()  # empty: any source address; else the caller's address must be inside one
    rotated_to: str | None = None  # the key id that replaced this one; this key stops at `expires_at` (grace)
    expiry_recorded_at: datetime | None = None  # when the `api_key.expired` IAM event was written
    # Rotation policy (issue 19): the daily key lifecycle job gives the key a successor this many days
    # after its creation; None: no scheduled rotation.
    rotate_every_days: int | None = None
    # A Secrets Manager secret (name or ARN, under hd/keys/<org_id>/) the successor's plaintext is written
    # to; None: the owner is told the key is due and rotates it themself.
    delivery_secret: str | None = None
    # What the lifecycle job already announced about this key (warnings per threshold and expiry,
    # the rotation due notice), so a rerun sends nothing twice.
    lifecycle_notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class RefreshToken:
    """A single-use refresh token; every refresh issues the next token of the same family.

    Presenting a token that was already used means it leaked: the whole family is revoked.
    """

    token_id: str
    family_id: str
    user_id: str
    org_id: str
    token_hash: str = field(repr=False)  # SHA-256 of the secret part; the secret itself is never stored
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    env: KeyEnv = KeyEnv.LIVE  # the environment the family's access tokens are for, kept across refreshes


class JitStatus(StrEnum):
    """Where a just-in-time elevation request stands."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    REVOKED = "revoked"  # approved, then ended before its expiry; the grant no longer applies


@dataclass(frozen=True)
class JitRequest:
    """A user's request to act with a higher role for a bounded time; approval creates a `JitGrant`."""

    request_id: str
    org_id: str
    user_id: str
    role: Role
    reason: str
    duration_seconds: int
    status: JitStatus
    requested_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str = ""
    grant_id: str | None = None


@dataclass(frozen=True)
class IamEvent:
    """One administrative change in an organisation's hash-chained IAM audit trail.

    `seq` is the 1-based position in the chain; `hash` is SHA-256 over the canonical JSON of every
    other field except `seq` (order is carried by `prev_hash`), so an edit, a deletion or a swap
    shows up as a broken link.
    """

    chain_id: str
    seq: int
    event_id: str
    event_type: str
    actor: str
    target: str
    before: dict[str, object] | None
    after: dict[str, object] | None
    at: datetime
    request_id: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainCheckpoint:
    """A signed statement that a chain had `size` events ending in `head_hash` at `time`."""

    chain_id: str
    size: int
    head_hash: str
    time: datetime
    key_id: str
    signature: str  # base64 DER ECDSA P-256 / SHA-256 over `checkpoint_message(...)`
    # Who signed, when not the chain's own writer (a query chain head the control plane signed for a host that
    # stopped without signing it); covered by the signature of the query chain's checkpoint message.
    signed_by: str | None = None


@dataclass(frozen=True)
class Principal:
    """The authenticated identity a connection acts as, handed to the engine session."""

    user_id: str
    org_id: str
    role: Role
    key_id: str
    env: KeyEnv
    scopes: tuple[str, ...]
    department: str | None
    region: str | None
    auth_method: str = "api_key"  # "api_key", "jwt" or "federated"

    def has_scope(self, scope: str) -> bool:
        """Whether the credential this principal authenticated with grants `scope`."""
        return scope in self.scopes


@dataclass(frozen=True)
class ChangeContext:
    """Who makes an administrative change and under which API request: the actor of its IAM audit event."""

    actor: Principal
    request_id: str
    source_ip: str | None = None


@dataclass(frozen=True)
class UsageDelta:
    """Metered consumption to add to one (organisation, day, user, agent) bucket."""

    org_id: str
    day: date
    user_id: str
    agent_id: str | None
    statements: int
    credits: float
    rows: int
    bytes: int


@dataclass(frozen=True)
class AuthFailures:
    """The recent failed credential checks of one throttled subject (see `hd_core.auth_throttle`)."""

    subject: str
    count: int
    last_failure_at: datetime
    # The failure before the last one; None when the count (re)started at 1. It tells which failure
    # began a lockout, so that a lockout is recorded once however many hosts race.
    previous_failure_at: datetime | None
    # After this the record means nothing: stores may delete it (DynamoDB TTL, SQLite on write).
    expires_at: datetime
