"""One control store's worth of entities, written once into the frozen fixtures under `fixtures/`.

The fixtures hold these entities exactly as the SQLite rows and DynamoDB items of control schema 5
stored them (written by `fixtures/write_stored_state.py` with the adapters of that time). The
compatibility tests read the fixtures through today's adapters and expect these values back, so a
change to a store's record mapping that would misread existing files or tables fails there.
The fixtures are the evidence, not this module: they are never regenerated, and nothing here
changes without them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hd_core.models import (
    ApiKeyRecord,
    AuthFailures,
    Environment,
    IamEvent,
    JitRequest,
    JitStatus,
    KeyEnv,
    Organization,
    OrgStatus,
    RefreshToken,
    Role,
    UsageDelta,
    User,
    UserStatus,
)
from hd_core.policies import MaskFunction, MaskRule, PolicyObject, QuotaLimit, TableBinding

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

ORGS = (
    Organization("org_compatA", "Acme", OrgStatus.ACTIVE, T0, mfa_required=True),
    Organization("org_compatB", "Beta", OrgStatus.SUSPENDED, T0 + timedelta(hours=1)),
)
ENVIRONMENTS = (Environment("env_compat1", "org_compatA", "staging", KeyEnv.TEST, T0),)
USERS = (
    User(
        "usr_compatFull",
        "org_compatA",
        "Ada@Example.test",
        Role.ADMIN,
        UserStatus.ACTIVE,
        "finance",
        "eu",
        T0,
        name="Ada Lovelace",
        password_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        mfa_secret="JBSWY3DPEHPK3PXP",
        mfa_enabled=True,
        mfa_last_step=59_000_000,
        external_ids=("https://idp.test#ada", "https://other.test#a-1"),
        tokens_valid_after=T0 + timedelta(minutes=5),
        password_must_change=True,
    ),
    User("usr_compatBare", "org_compatA", "bare@example.test", Role.ANALYST, UserStatus.REMOVED, None, None, T0),
)
API_KEYS = (
    ApiKeyRecord(
        key_id="hd_live_CompatFull",
        org_id="org_compatA",
        user_id="usr_compatFull",
        env=KeyEnv.LIVE,
        key_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$a2V5",
        scopes=("query:read", "keys:manage"),
        created_at=T0,
        expires_at=T0 + timedelta(days=90),
        revoked_at=T0 + timedelta(days=1),
        name="ci",
        allowed_cidrs=("10.0.0.0/8",),
        rotated_to="hd_live_CompatBare",
        expiry_recorded_at=T0 + timedelta(days=2),
    ),
    ApiKeyRecord(
        key_id="hd_test_CompatBare",
        org_id="org_compatA",
        user_id="usr_compatBare",
        env=KeyEnv.TEST,
        key_hash="$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$YmFyZQ",
        scopes=(),
        created_at=T0 + timedelta(seconds=1),
        expires_at=None,
        revoked_at=None,
        name="",
    ),
)
REFRESH_TOKENS = (
    RefreshToken("rt_compatUsed", "fam_compat", "usr_compatFull", "org_compatA", "ab" * 32, T0, T0 + timedelta(days=30),
                 used_at=T0 + timedelta(hours=1), env=KeyEnv.TEST),
    RefreshToken("rt_compatFresh", "fam_compat", "usr_compatFull", "org_compatA", "cd" * 32, T0,
                 T0 + timedelta(days=30)),
)
REVOKED_FAMILY = ("fam_compatGone", T0 + timedelta(hours=2))
JIT_REQUESTS = (
    JitRequest("jitr_compatPending", "org_compatA", "usr_compatBare", Role.ADMIN, "incident 42", 3600,
               JitStatus.PENDING, T0),
    JitRequest("jitr_compatApproved", "org_compatA", "usr_compatBare", Role.OWNER, "migration", 600,
               JitStatus.APPROVED, T0 + timedelta(seconds=1), decided_by="usr_compatFull",
               decided_at=T0 + timedelta(minutes=3), decision_reason="on call", grant_id="jit_compat1"),
)
IAM_EVENTS = (
    IamEvent("org_compatA", 1, "evt_compat1", "org.created", "system", "org_compatA", None,
             {"name": "Acme", "limits": {"rows": 10, "credits": 2.5}, "tags": ["é", "b"]}, T0, "req_1",
             "0" * 64, "1" * 64),
    IamEvent("org_compatA", 2, "evt_compat2", "user.role_changed", "usr_compatFull", "usr_compatBare",
             {"role": "Analyst"}, {"role": "Admin"}, T0 + timedelta(seconds=2), "req_2", "1" * 64, "2" * 64),
)
SETTINGS = (("default_org_id", "org_compatA"), ("pepper", "c2VjcmV0"))
POLICIES: tuple[PolicyObject, ...] = (
    MaskRule("mask_compat", "org_compatA", "crm.customers", "ssn", MaskFunction.PARTIAL, 2, (Role.ADMIN,)),
    QuotaLimit("quota_compat", "org_compatA", 100.0, 5000, 2.5),
    TableBinding("tbl_compatShared", "shared.events", org_id=None, tenant_column="org_id"),
)
USAGE = (
    UsageDelta("org_compatA", date(2026, 3, 1), "usr_compatFull", None, 3, 0.1, 30, 3000),
    UsageDelta("org_compatA", date(2026, 3, 1), "usr_compatFull", "agent#1", 1, 2.5, 10, 100),
)
# record_auth_failure(subject, at, forget_before, expires_at) calls, twice for the first subject.
AUTH_FAILURE_WRITES = (
    ("login:ada", T0, T0 - timedelta(minutes=15), T0 + timedelta(minutes=15)),
    ("login:ada", T0 + timedelta(seconds=5), T0 - timedelta(minutes=15), T0 + timedelta(minutes=20)),
    ("api_key:hd_live_CompatFull", T0, T0 - timedelta(minutes=15), T0 + timedelta(minutes=15)),
)
AUTH_FAILURES = (
    AuthFailures("login:ada", 2, T0 + timedelta(seconds=5), T0, T0 + timedelta(minutes=20)),
    AuthFailures("api_key:hd_live_CompatFull", 1, T0, None, T0 + timedelta(minutes=15)),
)
