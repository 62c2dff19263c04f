"""`ControlStore` on a local SQLite file: the embedded default for `hd dev` and single-machine installs.

One connection in WAL mode, shared by every thread behind a lock: control-state reads are
single-row lookups, so serialising them costs microseconds, and WAL lets another process (the
local control API) read while this one writes. An entity's row is its `hd_core.records` record,
one column per field (the same record the DynamoDB adapter stores): timestamps are fixed-width
ISO-8601 UTC text, so they sort and compare as text; list fields are JSON arrays. A policy object
is its `policy_codec` document, and every policy write bumps the single-row policy version in the
same transaction.
Uniqueness the port promises is enforced by the schema, so no check-then-write race exists: emails
through a UNIQUE index on their lower-cased form, external ids through a side table rewritten in the
user's transaction, IAM chain positions through the (chain_id, seq) primary key. Single-use state
changes (refresh token use, JIT decisions) are one conditional UPDATE each.
Like the DynamoDB adapter, this store does not enforce references between entities (a user's org
may be absent): the domain checks them.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from hd_core.erasure_models import (
    FLEET_HOSTS,
    FORGET_HOST_ACKS,
    FORGET_REQUESTS,
    AckStatus,
    FleetHost,
    ForgetHostAck,
    ForgetRequest,
    ForgetStatus,
)
from hd_core.errors import Conflict, HdError, NotFound
from hd_core.models import (
    ApiKeyRecord,
    AuthFailures,
    Environment,
    IamEvent,
    JitRequest,
    JitStatus,
    Organization,
    RefreshToken,
    UsageDelta,
    User,
    email_key,
    utc_now,
)
from hd_core.policies import PolicyKind, PolicyObject, PolicySnapshot
from hd_core.policy_codec import from_document, kind_of, object_id, to_document
from hd_core.policy_previews import CLAIMED as PREVIEW_CLAIMED
from hd_core.policy_previews import PENDING as PREVIEW_PENDING
from hd_core.policy_previews import PREVIEW_REQUESTS, PreviewRequest
from hd_core.records import (
    API_KEYS,
    AUTH_FAILURES,
    ENVIRONMENTS,
    IAM_EVENTS,
    JIT_REQUESTS,
    ORGANIZATIONS,
    REFRESH_TOKENS,
    USAGE,
    USERS,
    RecordCodec,
    encode_json_object,
    encode_time,
)
from hd_core.webhook_models import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_ENDPOINTS,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

# MIGRATIONS[n] takes a database from schema version n to n + 1; never edit one that has shipped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE orgs (
            org_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            email TEXT NOT NULL,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            department TEXT,
            region TEXT,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX users_by_org ON users (org_id, created_at)",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            env TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            revoked_at TEXT,
            name TEXT NOT NULL
        )""",
        "CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at)",
        """CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ),
    (
        # One row per policy object; `document` is its policy_codec JSON. org_id is NULL only for a
        # shared table's binding.
        """CREATE TABLE policy_objects (
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            org_id TEXT,
            document TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (kind, object_id)
        )""",
        "CREATE INDEX policy_objects_by_org ON policy_objects (org_id, kind)",
        """CREATE TABLE policy_version (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            version INTEGER NOT NULL
        )""",
        "INSERT INTO policy_version (singleton, version) VALUES (1, 0)",
        # agent_id is '' for usage without an agent: NULLs would never collide in the primary key.
        """CREATE TABLE usage (
            org_id TEXT NOT NULL,
            day TEXT NOT NULL,
            user_id TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            statements INTEGER NOT NULL,
            credits REAL NOT NULL,
            rows INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            PRIMARY KEY (org_id, day, user_id, agent_id)
        )""",
    ),
    (
        "ALTER TABLE orgs ADD COLUMN mfa_required INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE users ADD COLUMN password_hash TEXT",
        "ALTER TABLE users ADD COLUMN mfa_secret TEXT",
        "ALTER TABLE users ADD COLUMN mfa_enabled INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN mfa_last_step INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE users ADD COLUMN external_ids TEXT NOT NULL DEFAULT '[]'",
        # The lookup and uniqueness key of an email; hd_email_key is `email_key`, registered on the
        # connection, so old rows are normalised exactly as new ones (SQLite's lower() is ASCII-only).
        "ALTER TABLE users ADD COLUMN email_key TEXT",
        "UPDATE users SET email_key = hd_email_key(email)",
        "CREATE UNIQUE INDEX users_by_email_key ON users (email_key)",
        # The users.external_ids JSON keeps the user's order; this table makes each id unique and findable.
        """CREATE TABLE user_external_ids (
            external_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL
        )""",
        "CREATE INDEX user_external_ids_by_user ON user_external_ids (user_id)",
        "ALTER TABLE api_keys ADD COLUMN allowed_cidrs TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE api_keys ADD COLUMN rotated_to TEXT",
        "ALTER TABLE api_keys ADD COLUMN expiry_recorded_at TEXT",
        """CREATE TABLE environments (
            env_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            name TEXT NOT NULL,
            key_env TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX environments_by_org ON environments (org_id, created_at)",
        """CREATE TABLE refresh_tokens (
            token_id TEXT PRIMARY KEY,
            family_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            token_hash TEXT NOT NULL,
            issued_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at TEXT,
            env TEXT NOT NULL DEFAULT 'live'
        )""",
        """CREATE TABLE revoked_refresh_families (
            family_id TEXT PRIMARY KEY,
            revoked_at TEXT NOT NULL
        )""",
        """CREATE TABLE jit_requests (
            request_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            role TEXT NOT NULL,
            reason TEXT NOT NULL,
            duration_seconds INTEGER NOT NULL,
            status TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            decided_by TEXT,
            decided_at TEXT,
            decision_reason TEXT NOT NULL,
            grant_id TEXT
        )""",
        "CREATE INDEX jit_requests_by_org ON jit_requests (org_id, requested_at)",
        # The primary key is the chain's fork guard: a position can be written once.
        """CREATE TABLE iam_events (
            chain_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            actor TEXT NOT NULL,
            target TEXT NOT NULL,
            before TEXT,
            after TEXT,
            at TEXT NOT NULL,
            request_id TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (chain_id, seq)
        )""",
    ),
    (
        # Issue 13: sessions end when what ended them happened (password, MFA, suspension, revocation),
        # and an administrator's password reset must be replaced before it logs anyone in.
        "ALTER TABLE users ADD COLUMN tokens_valid_after TEXT",
        "ALTER TABLE users ADD COLUMN password_must_change INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Brute-force throttling: one row per subject (a hashed email, an API key id), deleted once
        # expired by the next failure written, through the expiry index.
        """CREATE TABLE auth_failures (
            subject TEXT PRIMARY KEY,
            count INTEGER NOT NULL,
            last_failure_at TEXT NOT NULL,
            previous_failure_at TEXT,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX auth_failures_by_expiry ON auth_failures (expires_at)",
    ),
    (
        # Issue 19: webhook endpoints and the outbox of their deliveries (one row per event and endpoint;
        # the primary key makes a re-emitted event id a no-op). Due deliveries are found by status and time.
        """CREATE TABLE webhook_endpoints (
            endpoint_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            url TEXT NOT NULL,
            events TEXT NOT NULL,
            secret_sealed TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            description TEXT NOT NULL,
            disabled INTEGER NOT NULL,
            disabled_at TEXT
        )""",
        "CREATE INDEX webhook_endpoints_by_org ON webhook_endpoints (org_id, created_at)",
        """CREATE TABLE webhook_deliveries (
            endpoint_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            next_attempt_at TEXT,
            last_attempt_at TEXT,
            status_code INTEGER,
            error TEXT NOT NULL,
            delivered_at TEXT,
            PRIMARY KEY (endpoint_id, event_id)
        )""",
        "CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at)",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at)",
    ),
    (
        # Issue 19: a key's rotation policy, where its successor is delivered, and which lifecycle
        # notices were sent; keys stored before read as before (no policy, no target, nothing sent).
        "ALTER TABLE api_keys ADD COLUMN rotate_every_days INTEGER",
        "ALTER TABLE api_keys ADD COLUMN delivery_secret TEXT",
        "ALTER TABLE api_keys ADD COLUMN lifecycle_notices TEXT NOT NULL DEFAULT '[]'",
    ),
    (
        # Issue 20: GDPR forget requests (hd_core/erasure_models.py); the subject id is only ever sealed.
        """CREATE TABLE forget_requests (
            request_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            subject_hmac TEXT NOT NULL,
            reason TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            status TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            sla_deadline TEXT NOT NULL,
            subject_sealed TEXT,
            started_at TEXT,
            finished_at TEXT,
            tables TEXT NOT NULL,
            table_results TEXT NOT NULL,
            rows_removed INTEGER NOT NULL,
            error TEXT NOT NULL,
            purge_after TEXT,
            purge_versions TEXT NOT NULL
        )""",
        "CREATE INDEX forget_requests_by_org ON forget_requests (org_id, requested_at)",
        "CREATE INDEX forget_requests_by_status ON forget_requests (status)",
    ),
    (
        # Issue 22: policy previews a fleet host answers (hd_core/policy_previews.py); counts and plans only.
        """CREATE TABLE preview_requests (
            request_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            question TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            status TEXT NOT NULL,
            host_id TEXT,
            answer TEXT NOT NULL
        )""",
        "CREATE INDEX preview_requests_by_status ON preview_requests (status, created_at)",
    ),
    (
        # Issue 20: erasure of the fleet hosts' writable tables (hd_core/erasure_fleet.py): the tables a request
        # leaves to the hosts, the registry of hosts whose heartbeats were accepted, and each host's ack.
        "ALTER TABLE forget_requests ADD COLUMN host_tables TEXT NOT NULL DEFAULT '{}'",
        """CREATE TABLE fleet_hosts (
            host_id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            last_seen TEXT NOT NULL,
            heartbeat_seconds INTEGER NOT NULL
        )""",
        "CREATE INDEX fleet_hosts_by_org ON fleet_hosts (org_id, host_id)",
        """CREATE TABLE forget_host_acks (
            request_id TEXT NOT NULL,
            host_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            status TEXT NOT NULL,
            acked_at TEXT NOT NULL,
            attempt_started_at TEXT,
            table_results TEXT NOT NULL,
            rows_removed INTEGER NOT NULL,
            error TEXT NOT NULL,
            PRIMARY KEY (request_id, host_id)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class ControlStoreUnusable(HdError, RuntimeError):
    """The control store file cannot be opened as it is; it is left exactly as found."""

    code = "HD_ERR_CONTROL_STORE_UNUSABLE"
    exit_code = 3


class ControlStoreDamaged(ControlStoreUnusable):
    """The file is not an SQLite database, or SQLite's `quick_check` found damage in it."""

    code = "HD_ERR_CONTROL_STORE_DAMAGED"


class SchemaTooNew(ControlStoreUnusable):
    """The database file was written by a newer Hardened Duck; opening it could corrupt it."""


class MigrationFailed(ControlStoreUnusable):
    """An upgrade step could not apply to the data in the file (for example two users sharing an email).

    The file is left at its previous schema version, untouched.
    """


class SqliteControlStore:
    """A `ControlStore` in one SQLite file (or `":memory:"`), created with its schema on first open."""

    def __init__(self, path: str | Path, *, busy_timeout_seconds: float = 30.0, create: bool = True) -> None:
        """Open (with `create`, first make) the store; raises `ControlStoreUnusable`, writing nothing, if it is damaged.

        SQLite's `quick_check` runs before anything is written, so a damaged file is refused as found
        instead of being half-migrated, or answering every later read with an error.
        """
        self.path = str(path)
        if self.path != ":memory:":
            if create:
                _create_private_file(Path(self.path))
            elif not Path(self.path).is_file():
                raise ControlStoreUnusable(f"control store {self.path} does not exist")
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each write's extent is explicit.
        self._connection = sqlite3.connect(
            self.path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        self._connection.row_factory = sqlite3.Row
        self._connection.create_function("hd_email_key", 1, email_key, deterministic=True)
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._check_integrity()
                self._connection.execute("PRAGMA journal_mode=WAL")
                # FULL: a committed key revocation or user suspension must survive a power cut.
                self._connection.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise ControlStoreDamaged(f"control store {self.path} is damaged ({error})") from None
        except BaseException:
            self._connection.close()
            raise

    def close(self) -> None:
        """Close the connection; the store must not be used afterwards."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> SqliteControlStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- organisations ----------------------------------------------------------------------

    def put_org(self, org: Organization) -> None:
        """Create or replace an organisation."""
        with self._transaction() as db:
            db.execute(_insert_sql("orgs", ORGANIZATIONS, replace=True), _row(ORGANIZATIONS, org))

    def get_org(self, org_id: str) -> Organization | None:
        """The organisation with this id, or None."""
        row = self._fetch_one("SELECT * FROM orgs WHERE org_id = ?", (org_id,))
        return None if row is None else _entity(ORGANIZATIONS, row)

    def list_orgs(self) -> list[Organization]:
        """Every organisation, oldest first."""
        rows = self._fetch_all("SELECT * FROM orgs ORDER BY created_at, org_id", ())
        return [_entity(ORGANIZATIONS, row) for row in rows]

    # --- environments -----------------------------------------------------------------------

    def put_environment(self, env: Environment) -> None:
        """Create or replace an environment."""
        with self._transaction() as db:
            db.execute(_insert_sql("environments", ENVIRONMENTS, replace=True), _row(ENVIRONMENTS, env))

    def get_environment(self, env_id: str) -> Environment | None:
        """The environment with this id, or None."""
        row = self._fetch_one("SELECT * FROM environments WHERE env_id = ?", (env_id,))
        return None if row is None else _entity(ENVIRONMENTS, row)

    def list_environments(self, org_id: str) -> list[Environment]:
        """The environments of one organisation, oldest first."""
        rows = self._fetch_all(
            "SELECT * FROM environments WHERE org_id = ? ORDER BY created_at, env_id", (org_id,)
        )
        return [_entity(ENVIRONMENTS, row) for row in rows]

    # --- users ------------------------------------------------------------------------------

    def put_user(self, user: User) -> None:
        """Create or replace a user.

        Raises `Conflict`, storing nothing, if another user holds its email (compared case-insensitively)
        or one of its external ids.
        """
        try:
            with self._transaction() as db:
                # An upsert, not INSERT OR REPLACE: REPLACE would silently delete *another* user holding the email.
                db.execute(_PUT_USER_SQL, _row(USERS, user) | {"email_key": email_key(user.email)})
                db.execute("DELETE FROM user_external_ids WHERE user_id = ?", (user.user_id,))
                db.executemany(
                    "INSERT INTO user_external_ids (external_id, user_id) VALUES (?, ?)",
                    [(external_id, user.user_id) for external_id in dict.fromkeys(user.external_ids)],
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"another user already holds the email or an external id of user {user.user_id}") from None

    def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        row = self._fetch_one("SELECT * FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else _entity(USERS, row)

    def get_user_by_email(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or None; an index lookup."""
        row = self._fetch_one("SELECT * FROM users WHERE email_key = ?", (email_key(email),))
        return None if row is None else _entity(USERS, row)

    def advance_mfa_step(self, user_id: str, step: int) -> bool:
        """Set the user's last accepted TOTP step to `step` only if it is lower, atomically."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE users SET mfa_last_step = ? WHERE user_id = ? AND mfa_last_step < ?", (step, user_id, step)
            )
            return cursor.rowcount == 1

    def end_user_sessions(self, user_id: str, at: datetime) -> None:
        """Move the user's `tokens_valid_after` forward to `at` (a later stored time is kept); raises `NotFound`."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE users SET tokens_valid_after = max(coalesce(tokens_valid_after, ''), ?) WHERE user_id = ?",
                (encode_time(at), user_id),
            )
            if cursor.rowcount != 1:
                raise NotFound(f"user {user_id} not found")

    def get_user_by_external_id(self, external_id: str) -> User | None:
        """The user linked to this federated identity (`<issuer>#<subject>`), or None."""
        row = self._fetch_one(
            "SELECT users.* FROM user_external_ids JOIN users USING (user_id) WHERE external_id = ?", (external_id,)
        )
        return None if row is None else _entity(USERS, row)

    def list_users(self, org_id: str) -> list[User]:
        """The users of one organisation, oldest first."""
        rows = self._fetch_all("SELECT * FROM users WHERE org_id = ? ORDER BY created_at, user_id", (org_id,))
        return [_entity(USERS, row) for row in rows]

    # --- API keys ---------------------------------------------------------------------------

    def put_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new key record; raises `Conflict` if the key id exists, so a key is never overwritten."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("api_keys", API_KEYS), _row(API_KEYS, record))
        except sqlite3.IntegrityError:
            raise Conflict(f"api key {record.key_id} already exists") from None

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key record with this key id, or None."""
        row = self._fetch_one("SELECT * FROM api_keys WHERE key_id = ?", (key_id,))
        return None if row is None else _entity(API_KEYS, row)

    def list_api_keys(self, org_id: str) -> list[ApiKeyRecord]:
        """The key records of one organisation, revoked ones included, oldest first."""
        rows = self._fetch_all("SELECT * FROM api_keys WHERE org_id = ? ORDER BY created_at, key_id", (org_id,))
        return [_entity(API_KEYS, row) for row in rows]

    def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord:
        """Mark a key revoked at `at`, keeping an earlier revocation time; raises `NotFound`."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                (encode_time(at), key_id),
            )
            if updated.rowcount == 0:
                raise NotFound(f"api key {key_id} not found")
            row = db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return _entity(API_KEYS, row)

    def update_api_key(self, record: ApiKeyRecord) -> None:
        """Replace an existing key record (rotation, expiry bookkeeping); raises `NotFound` if absent."""
        with self._transaction() as db:
            updated = db.execute(
                f"UPDATE api_keys SET {_assignments(API_KEYS, 'key_id')} WHERE key_id = :key_id", _row(API_KEYS, record)
            )
            if updated.rowcount == 0:
                raise NotFound(f"api key {record.key_id} not found")

    # --- refresh tokens ---------------------------------------------------------------------

    def put_refresh_token(self, token: RefreshToken) -> None:
        """Store a new refresh token; raises `Conflict` if its id exists."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("refresh_tokens", REFRESH_TOKENS), _row(REFRESH_TOKENS, token))
        except sqlite3.IntegrityError:
            raise Conflict(f"refresh token {token.token_id} already exists") from None

    def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """The refresh token with this id, or None."""
        row = self._fetch_one("SELECT * FROM refresh_tokens WHERE token_id = ?", (token_id,))
        return None if row is None else _entity(REFRESH_TOKENS, row)

    def use_refresh_token(self, token_id: str, at: datetime) -> RefreshToken:
        """Mark an unused token used, atomically; raises `Conflict` if it was already used, `NotFound` if absent."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE refresh_tokens SET used_at = ? WHERE token_id = ? AND used_at IS NULL",
                (encode_time(at), token_id),
            )
            row = db.execute("SELECT * FROM refresh_tokens WHERE token_id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFound(f"refresh token {token_id} not found")
        if updated.rowcount == 0:
            raise Conflict(f"refresh token {token_id} was already used")
        return _entity(REFRESH_TOKENS, row)

    def revoke_refresh_family(self, family_id: str, at: datetime) -> None:
        """Revoke every token of a family, present and future; the first revocation time is kept."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO revoked_refresh_families (family_id, revoked_at) VALUES (?, ?)",
                (family_id, encode_time(at)),
            )

    def refresh_family_revoked(self, family_id: str) -> bool:
        """Whether the family was revoked."""
        return self._fetch_one("SELECT 1 FROM revoked_refresh_families WHERE family_id = ?", (family_id,)) is not None

    # --- authentication throttling ----------------------------------------------------------

    def get_auth_failures(self, subject: str) -> AuthFailures | None:
        """The failure record of a throttled subject, or None; it may have expired."""
        row = self._fetch_one("SELECT * FROM auth_failures WHERE subject = ?", (subject,))
        return None if row is None else _entity(AUTH_FAILURES, row)

    def record_auth_failure(
        self, subject: str, at: datetime, *, forget_before: datetime, expires_at: datetime
    ) -> AuthFailures:
        """Count one failure in one transaction (count + 1, or 1 after `forget_before`); deletes expired records."""
        with self._transaction() as db:
            # Expired records of every subject go here, so names tried once cannot pile up.
            db.execute("DELETE FROM auth_failures WHERE expires_at <= ?", (encode_time(at),))
            # SET expressions read the row as it was before the update, so the previous failure is the old last one.
            db.execute(
                "INSERT INTO auth_failures (subject, count, last_failure_at, previous_failure_at, expires_at)"
                " VALUES (?, 1, ?, NULL, ?)"
                " ON CONFLICT (subject) DO UPDATE SET"
                " count = CASE WHEN last_failure_at >= ? THEN count + 1 ELSE 1 END,"
                " previous_failure_at = CASE WHEN last_failure_at >= ? THEN last_failure_at END,"
                " last_failure_at = excluded.last_failure_at, expires_at = excluded.expires_at",
                (subject, encode_time(at), encode_time(expires_at), encode_time(forget_before),
                 encode_time(forget_before)),
            )
            row = db.execute("SELECT * FROM auth_failures WHERE subject = ?", (subject,)).fetchone()
        return _entity(AUTH_FAILURES, row)

    def clear_auth_failures(self, subject: str) -> None:
        """Forget a subject's failures; nothing happens if it has none."""
        with self._transaction() as db:
            db.execute("DELETE FROM auth_failures WHERE subject = ?", (subject,))

    # --- just-in-time elevation -------------------------------------------------------------

    def put_jit_request(self, request: JitRequest) -> None:
        """Store a new JIT request; raises `Conflict` if its id exists."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("jit_requests", JIT_REQUESTS), _row(JIT_REQUESTS, request))
        except sqlite3.IntegrityError:
            raise Conflict(f"jit request {request.request_id} already exists") from None

    def get_jit_request(self, request_id: str) -> JitRequest | None:
        """The JIT request with this id, or None."""
        row = self._fetch_one("SELECT * FROM jit_requests WHERE request_id = ?", (request_id,))
        return None if row is None else _entity(JIT_REQUESTS, row)

    def list_jit_requests(self, org_id: str, status: JitStatus | None = None) -> list[JitRequest]:
        """The JIT requests of one organisation, optionally of one status, oldest first."""
        if status is None:
            rows = self._fetch_all(
                "SELECT * FROM jit_requests WHERE org_id = ? ORDER BY requested_at, request_id", (org_id,)
            )
        else:
            rows = self._fetch_all(
                "SELECT * FROM jit_requests WHERE org_id = ? AND status = ? ORDER BY requested_at, request_id",
                (org_id, JitStatus(status).value),
            )
        return [_entity(JIT_REQUESTS, row) for row in rows]

    def decide_jit_request(self, request: JitRequest, *, from_status: JitStatus = JitStatus.PENDING) -> None:
        """Replace a request still in `from_status` with `request`; `Conflict` if it moved on, `NotFound` if absent."""
        with self._transaction() as db:
            updated = db.execute(
                f"UPDATE jit_requests SET {_assignments(JIT_REQUESTS, 'request_id')}"
                " WHERE request_id = :request_id AND status = :from_status",
                _row(JIT_REQUESTS, request) | {"from_status": JitStatus(from_status).value},
            )
            if updated.rowcount == 0:
                exists = db.execute("SELECT 1 FROM jit_requests WHERE request_id = ?", (request.request_id,))
                if exists.fetchone() is None:
                    raise NotFound(f"jit request {request.request_id} not found")
                raise Conflict(f"jit request {request.request_id} is no longer {JitStatus(from_status).value}")

    # --- forget requests (GDPR erasure) -------------------------------------------------------

    def put_forget_request(self, request: ForgetRequest) -> None:
        """Store a new forget request; raises `Conflict` if its id exists."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("forget_requests", FORGET_REQUESTS), _row(FORGET_REQUESTS, request))
        except sqlite3.IntegrityError:
            raise Conflict(f"forget request {request.request_id} already exists") from None

    def get_forget_request(self, request_id: str) -> ForgetRequest | None:
        """The forget request with this id, or None."""
        row = self._fetch_one("SELECT * FROM forget_requests WHERE request_id = ?", (request_id,))
        return None if row is None else _entity(FORGET_REQUESTS, row)

    def list_forget_requests(self, org_id: str) -> list[ForgetRequest]:
        """The forget requests of one organisation, oldest first."""
        rows = self._fetch_all(
            "SELECT * FROM forget_requests WHERE org_id = ? ORDER BY requested_at, request_id", (org_id,))
        return [_entity(FORGET_REQUESTS, row) for row in rows]

    def list_unsettled_forget_requests(self) -> list[ForgetRequest]:
        """Requests not completed, or completed with object versions still to purge, oldest first."""
        rows = self._fetch_all(
            "SELECT * FROM forget_requests WHERE status != ? OR purge_versions != '[]' ORDER BY requested_at, "
            "request_id", (ForgetStatus.COMPLETED.value,))
        return [_entity(FORGET_REQUESTS, row) for row in rows]

    def update_forget_request(self, request: ForgetRequest, *, from_status: ForgetStatus) -> None:
        """Replace a request still in `from_status`; `Conflict` if it moved on, `NotFound` if absent."""
        with self._transaction() as db:
            updated = db.execute(
                f"UPDATE forget_requests SET {_assignments(FORGET_REQUESTS, 'request_id')}"
                " WHERE request_id = :request_id AND status = :from_status",
                _row(FORGET_REQUESTS, request) | {"from_status": ForgetStatus(from_status).value},
            )
            if updated.rowcount == 0:
                exists = db.execute("SELECT 1 FROM forget_requests WHERE request_id = ?", (request.request_id,))
                if exists.fetchone() is None:
                    raise NotFound(f"forget request {request.request_id} not found")
                raise Conflict(f"forget request {request.request_id} is no longer {ForgetStatus(from_status).value}")

    # --- fleet hosts and their forget acks (hd_core/erasure_fleet.py) -------------------------

    def record_fleet_host(self, host: FleetHost) -> None:
        """Create or replace the host's registry entry."""
        with self._transaction() as db:
            db.execute(_insert_sql("fleet_hosts", FLEET_HOSTS, replace=True), _row(FLEET_HOSTS, host))

    def list_fleet_hosts(self, org_id: str) -> list[FleetHost]:
        """Every registered host of the organisation, by host id."""
        rows = self._fetch_all("SELECT * FROM fleet_hosts WHERE org_id = ? ORDER BY host_id", (org_id,))
        return [_entity(FLEET_HOSTS, row) for row in rows]

    def forget_fleet_host(self, host_id: str) -> None:
        """Remove the host's registry entry (nothing happens when there is none)."""
        with self._transaction() as db:
            db.execute("DELETE FROM fleet_hosts WHERE host_id = ?", (host_id,))

    def put_forget_host_ack(self, ack: ForgetHostAck) -> bool:
        """Store the ack unless a done ack of this request and host exists (False: nothing written)."""
        with self._transaction() as db:
            written = db.execute(
                _insert_sql("forget_host_acks", FORGET_HOST_ACKS)
                + f" ON CONFLICT (request_id, host_id) DO UPDATE SET {_assignments(FORGET_HOST_ACKS, 'request_id')}"
                " WHERE forget_host_acks.status = :replaceable",
                _row(FORGET_HOST_ACKS, ack) | {"replaceable": AckStatus.FAILED.value},
            )
            return written.rowcount == 1

    def list_forget_host_acks(self, request_id: str) -> list[ForgetHostAck]:
        """Every host's ack of the request, by host id."""
        rows = self._fetch_all("SELECT * FROM forget_host_acks WHERE request_id = ? ORDER BY host_id", (request_id,))
        return [_entity(FORGET_HOST_ACKS, row) for row in rows]

    # --- policy previews (hd_core/policy_previews.py) ---------------------------------------

    def put_preview_request(self, request: PreviewRequest) -> None:
        """Store a new pending request (expired ones are deleted first, as DynamoDB's TTL would)."""
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM preview_requests WHERE expires_at <= ?", (encode_time(request.created_at),))
                db.execute(_insert_sql("preview_requests", PREVIEW_REQUESTS), _row(PREVIEW_REQUESTS, request))
        except sqlite3.IntegrityError:
            raise Conflict(f"preview request {request.request_id} already exists") from None

    def get_preview_request(self, request_id: str) -> PreviewRequest | None:
        """The request with this id, or None."""
        row = self._fetch_one("SELECT * FROM preview_requests WHERE request_id = ?", (request_id,))
        return None if row is None else _entity(PREVIEW_REQUESTS, row)

    def pending_preview_requests(self, at: datetime) -> list[PreviewRequest]:
        """Unclaimed requests not expired at `at`, oldest first."""
        rows = self._fetch_all(
            "SELECT * FROM preview_requests WHERE status = ? AND expires_at > ? ORDER BY created_at, request_id",
            (PREVIEW_PENDING, encode_time(at)))
        return [_entity(PREVIEW_REQUESTS, row) for row in rows]

    def claim_preview_request(self, request_id: str, host_id: str, at: datetime) -> PreviewRequest | None:
        """Make a pending, unexpired request `host_id`'s; None when another host claimed it first (or it expired)."""
        with self._transaction() as db:
            claimed = db.execute(
                "UPDATE preview_requests SET status = ?, host_id = ? WHERE request_id = ? AND status = ? "
                "AND expires_at > ?", (PREVIEW_CLAIMED, host_id, request_id, PREVIEW_PENDING, encode_time(at)))
            if claimed.rowcount == 0:
                return None
            row = db.execute("SELECT * FROM preview_requests WHERE request_id = ?", (request_id,)).fetchone()
        return _entity(PREVIEW_REQUESTS, row)

    def answer_preview_request(self, request_id: str, host_id: str, status: str, answer: dict[str, object]) -> bool:
        """Store the answer of the host that claimed the request; False if it is not that host's claim."""
        with self._transaction() as db:
            answered = db.execute(
                "UPDATE preview_requests SET status = ?, answer = ? WHERE request_id = ? AND status = ? "
                "AND host_id = ?", (status, encode_json_object(answer), request_id, PREVIEW_CLAIMED, host_id))
            return answered.rowcount == 1

    # --- webhooks ---------------------------------------------------------------------------

    def put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint; raises `Conflict` if its id exists."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("webhook_endpoints", WEBHOOK_ENDPOINTS), _row(WEBHOOK_ENDPOINTS, endpoint))
        except sqlite3.IntegrityError:
            raise Conflict(f"webhook endpoint {endpoint.endpoint_id} already exists") from None

    def update_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Replace a stored endpoint; raises `NotFound` if absent."""
        with self._transaction() as db:
            updated = db.execute(
                f"UPDATE webhook_endpoints SET {_assignments(WEBHOOK_ENDPOINTS, 'endpoint_id')}"
                " WHERE endpoint_id = :endpoint_id",
                _row(WEBHOOK_ENDPOINTS, endpoint),
            )
            if updated.rowcount == 0:
                raise NotFound(f"webhook endpoint {endpoint.endpoint_id} not found")

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint with this id, or None."""
        row = self._fetch_one("SELECT * FROM webhook_endpoints WHERE endpoint_id = ?", (endpoint_id,))
        return None if row is None else _entity(WEBHOOK_ENDPOINTS, row)

    def list_webhook_endpoints(self, org_id: str) -> list[WebhookEndpoint]:
        """Every endpoint of one organisation, oldest first."""
        rows = self._fetch_all(
            "SELECT * FROM webhook_endpoints WHERE org_id = ? ORDER BY created_at, endpoint_id", (org_id,)
        )
        return [_entity(WEBHOOK_ENDPOINTS, row) for row in rows]

    def put_webhook_delivery(self, delivery: WebhookDelivery) -> None:
        """Record a new delivery; raises `Conflict` if the endpoint already has this event id."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("webhook_deliveries", WEBHOOK_DELIVERIES), _row(WEBHOOK_DELIVERIES, delivery))
        except sqlite3.IntegrityError:
            raise Conflict(f"event {delivery.event_id} is already recorded for {delivery.endpoint_id}") from None

    def get_webhook_delivery(self, endpoint_id: str, event_id: str) -> WebhookDelivery | None:
        """The delivery of one event to one endpoint, or None."""
        row = self._fetch_one(
            "SELECT * FROM webhook_deliveries WHERE endpoint_id = ? AND event_id = ?", (endpoint_id, event_id)
        )
        return None if row is None else _entity(WEBHOOK_DELIVERIES, row)

    def update_webhook_delivery(self, delivery: WebhookDelivery, *, from_attempt: int) -> None:
        """Replace a delivery still at attempt `from_attempt`; `Conflict` if it moved on, `NotFound` if absent."""
        columns = ", ".join(
            f"{name} = :{name}" for name in WEBHOOK_DELIVERIES.names if name not in ("endpoint_id", "event_id")
        )
        with self._transaction() as db:
            updated = db.execute(
                f"UPDATE webhook_deliveries SET {columns}"
                " WHERE endpoint_id = :endpoint_id AND event_id = :event_id AND attempt = :from_attempt",
                _row(WEBHOOK_DELIVERIES, delivery) | {"from_attempt": from_attempt},
            )
            if updated.rowcount == 0:
                exists = db.execute(
                    "SELECT 1 FROM webhook_deliveries WHERE endpoint_id = ? AND event_id = ?",
                    (delivery.endpoint_id, delivery.event_id),
                )
                if exists.fetchone() is None:
                    raise NotFound(f"delivery of {delivery.event_id} to {delivery.endpoint_id} not found")
                raise Conflict(f"delivery of {delivery.event_id} is no longer at attempt {from_attempt}")

    def list_webhook_deliveries(self, endpoint_id: str, limit: int | None = None) -> list[WebhookDelivery]:
        """The deliveries of one endpoint, newest first, at most `limit`."""
        rows = self._fetch_all(
            "SELECT * FROM webhook_deliveries WHERE endpoint_id = ? ORDER BY created_at DESC, event_id DESC LIMIT ?",
            (endpoint_id, -1 if limit is None else limit),
        )
        return [_entity(WEBHOOK_DELIVERIES, row) for row in rows]

    def due_webhook_deliveries(self, at: datetime, limit: int = 100) -> list[WebhookDelivery]:
        """Pending deliveries due at or before `at`, earliest first, at most `limit`."""
        rows = self._fetch_all(
            "SELECT * FROM webhook_deliveries WHERE status = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, endpoint_id, event_id LIMIT ?",
            (DeliveryStatus.PENDING.value, encode_time(at), limit),
        )
        return [_entity(WEBHOOK_DELIVERIES, row) for row in rows]

    # --- IAM audit chain --------------------------------------------------------------------

    def append_iam_event(self, event: IamEvent) -> None:
        """Store `event` at its position only if that position is free; raises `Conflict` otherwise."""
        try:
            with self._transaction() as db:
                db.execute(_insert_sql("iam_events", IAM_EVENTS), _row(IAM_EVENTS, event))
        except sqlite3.IntegrityError:
            raise Conflict(f"position {event.seq} of chain {event.chain_id} is taken") from None

    def iam_chain_head(self, chain_id: str) -> IamEvent | None:
        """The event with the highest position in the chain, or None for an empty chain."""
        row = self._fetch_one("SELECT * FROM iam_events WHERE chain_id = ? ORDER BY seq DESC LIMIT 1", (chain_id,))
        return None if row is None else _entity(IAM_EVENTS, row)

    def list_iam_events(self, chain_id: str, after_seq: int = 0, limit: int | None = None) -> list[IamEvent]:
        """Events with position > `after_seq`, in position order, at most `limit`."""
        rows = self._fetch_all(
            "SELECT * FROM iam_events WHERE chain_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (chain_id, after_seq, -1 if limit is None else max(limit, 0)),  # SQLite reads LIMIT -1 as "no limit"
        )
        return [_entity(IAM_EVENTS, row) for row in rows]

    # --- settings ---------------------------------------------------------------------------

    def get_setting(self, name: str) -> str | None:
        """A bootstrap fact, or None if never set."""
        row = self._fetch_one("SELECT value FROM settings WHERE name = ?", (name,))
        return None if row is None else str(row["value"])

    def put_setting(self, name: str, value: str) -> None:
        """Set a bootstrap fact, replacing any previous value."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)", (name, value))

    def put_setting_if_absent(self, name: str, value: str) -> str:
        """Set a bootstrap fact only if unset; returns the value now stored (first writer wins)."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)", (name, value))
            row = db.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return str(row["value"])

    # --- governance policies ----------------------------------------------------------------

    def put_policy(self, obj: PolicyObject, *, if_version: int | None = None) -> int:
        """Create or replace a policy object (same kind and id); returns the new policy version.

        With `if_version`, only while the policy version is still that one (else `Conflict`).
        """
        with self._transaction() as db:
            if if_version is not None:
                current = int(db.execute("SELECT version FROM policy_version WHERE singleton = 1").fetchone()[0])
                if current != if_version:
                    raise Conflict(f"the policy version moved from {if_version} to {current}; decide again")
            db.execute(
                "INSERT OR REPLACE INTO policy_objects (kind, object_id, org_id, document, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                _policy_row(obj),
            )
            return _bump_policy_version(db)

    def create_policy(self, obj: PolicyObject) -> int:
        """Store a new policy object and bump the version in one transaction; `Conflict` if its kind and id exist."""
        try:
            with self._transaction() as db:
                # A plain INSERT: the (kind, object_id) primary key refuses a second object, atomically.
                db.execute(
                    "INSERT INTO policy_objects (kind, object_id, org_id, document, updated_at) VALUES (?, ?, ?, ?, ?)",
                    _policy_row(obj),
                )
                return _bump_policy_version(db)
        except sqlite3.IntegrityError:
            raise Conflict(f"{kind_of(obj).value} policy {object_id(obj)} already exists") from None

    def delete_policy(self, kind: PolicyKind, object_id: str) -> int:
        """Delete a policy object; raises `NotFound`; returns the new policy version."""
        with self._transaction() as db:
            deleted = db.execute(
                "DELETE FROM policy_objects WHERE kind = ? AND object_id = ?", (PolicyKind(kind).value, object_id)
            )
            if deleted.rowcount == 0:
                raise NotFound(f"{PolicyKind(kind).value} policy {object_id} not found")
            return _bump_policy_version(db)

    def get_policy(self, kind: PolicyKind, object_id: str) -> PolicyObject | None:
        """One policy object, or None."""
        row = self._fetch_one(
            "SELECT document FROM policy_objects WHERE kind = ? AND object_id = ?", (PolicyKind(kind).value, object_id)
        )
        return None if row is None else _policy_from_row(row)

    def list_policies(self, org_id: str | None = None, kind: PolicyKind | None = None) -> list[PolicyObject]:
        """Policy objects, optionally of one organisation and/or kind, ordered by kind then id."""
        conditions: list[str] = []
        params: list[str] = []
        if org_id is not None:
            conditions.append("org_id = ?")
            params.append(org_id)
        if kind is not None:
            conditions.append("kind = ?")
            params.append(PolicyKind(kind).value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._fetch_all(f"SELECT document FROM policy_objects{where} ORDER BY kind, object_id", tuple(params))
        return [_policy_from_row(row) for row in rows]

    def policy_version(self) -> int:
        """The store-wide policy version: 0 before any change, +1 on every put or delete."""
        row = self._fetch_one("SELECT version FROM policy_version WHERE singleton = 1", ())
        assert row is not None  # inserted by the migration that created the table
        return int(row["version"])

    def policy_snapshot(self) -> PolicySnapshot:
        """Every policy object and the version they make up, read in one transaction."""
        with self._read_transaction() as db:
            version = int(db.execute("SELECT version FROM policy_version WHERE singleton = 1").fetchone()[0])
            rows = db.execute("SELECT document FROM policy_objects ORDER BY kind, object_id").fetchall()
        return PolicySnapshot.of(version, (_policy_from_row(row) for row in rows))

    # --- metering ---------------------------------------------------------------------------

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add metered consumption into (org, day, user, agent) buckets, all deltas in one transaction."""
        with self._transaction() as db:
            db.executemany(
                _insert_sql("usage", USAGE) + " ON CONFLICT (org_id, day, user_id, agent_id) DO UPDATE SET"
                " statements = statements + excluded.statements, credits = credits + excluded.credits,"
                " rows = rows + excluded.rows, bytes = bytes + excluded.bytes",
                # agent_id is '' for no agent: NULL would never collide in the primary key.
                [_row(USAGE, delta) | {"agent_id": delta.agent_id or ""} for delta in deltas],
            )

    def usage(self, org_id: str, start: date, end: date) -> list[UsageDelta]:
        """The usage buckets of one organisation for days in [start, end], ordered by day, user, agent."""
        rows = self._fetch_all(
            "SELECT * FROM usage WHERE org_id = ? AND day BETWEEN ? AND ? ORDER BY day, user_id, agent_id",
            (org_id, start.isoformat(), end.isoformat()),
        )
        return [_entity(USAGE, row, agent_id=row["agent_id"] or None) for row in rows]

    # --- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and an IMMEDIATE transaction (the write lock up front, so no upgrade deadlock)."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                # Some errors (disk full, I/O) have already rolled the transaction back.
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a read transaction: every SELECT in it sees the same committed state."""
        with self._lock:
            self._connection.execute("BEGIN DEFERRED")
            try:
                yield self._connection
            finally:
                if self._connection.in_transaction:
                    self._connection.execute("COMMIT")

    def _fetch_one(self, sql: str, params: tuple[object, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._connection.execute(sql, params).fetchone()
            return row

    def _fetch_all(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._connection.execute(sql, params).fetchall())

    def _check_integrity(self) -> None:
        """Raise `ControlStoreDamaged` with SQLite's first findings unless `quick_check` says ok."""
        # quick_check reads every page (O(N), milliseconds for a control store) but skips index-content
        # cross-checks; it finds torn, overwritten and truncated pages, which is what start-up must catch.
        findings = [" ".join(str(row[0]).split()) for row in self._connection.execute("PRAGMA quick_check(3)")]
        if findings != ["ok"]:
            raise ControlStoreDamaged(f"control store {self.path} is damaged (quick_check: {'; '.join(findings)})")

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has control schema version {version}; this build knows up to {SCHEMA_VERSION}"
                )
            for number, step in enumerate(MIGRATIONS[version:], start=version):
                try:
                    for statement in step:
                        db.execute(statement)
                except sqlite3.IntegrityError as error:
                    # The whole upgrade rolls back with the transaction: the file stays at `version`.
                    raise MigrationFailed(
                        f"{self.path}: upgrading the control schema to version {number + 1} failed: {error}"
                    ) from error
            if version == SCHEMA_VERSION:
                return  # nothing written: opening a current store leaves its file byte for byte as it was
            # PRAGMA takes no bound parameters; the value is our own integer constant.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only: it holds key hashes and the local pepper."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _bump_policy_version(db: sqlite3.Connection) -> int:
    """Increment the policy version inside the caller's write transaction, so it never disagrees with content."""
    db.execute("UPDATE policy_version SET version = version + 1 WHERE singleton = 1")
    return int(db.execute("SELECT version FROM policy_version WHERE singleton = 1").fetchone()[0])


def _policy_row(obj: PolicyObject) -> tuple[object, ...]:
    """(kind, object_id, org_id, document, updated_at) of a policy object's row; org_id is None for a shared binding."""
    document = json.dumps(to_document(obj), ensure_ascii=False)
    return (kind_of(obj).value, object_id(obj), getattr(obj, "org_id", None), document, encode_time(utc_now()))


def _policy_from_row(row: sqlite3.Row) -> PolicyObject:
    return from_document(json.loads(row["document"]))


_Entity = TypeVar("_Entity")


def _row(codec: RecordCodec[Any], entity: object) -> dict[str, object]:
    """An entity's record as column values by name: lists as JSON arrays (SQLite stores bools as 0/1 itself)."""
    record: dict[str, object] = dict(codec.encode(entity))
    for name in codec.list_names:
        record[name] = json.dumps(record[name])
    return record


def _entity(codec: RecordCodec[_Entity], row: sqlite3.Row, **overrides: object) -> _Entity:
    """The entity a row holds (extra columns such as `email_key` are ignored)."""
    record: dict[str, object] = dict(zip(row.keys(), row, strict=True))
    for name in codec.list_names:
        if isinstance(record.get(name), str):
            record[name] = json.loads(str(record[name]))
    record.update(overrides)
    return codec.decode(record)


def _insert_sql(table: str, codec: RecordCodec[Any], *, replace: bool = False) -> str:
    """INSERT (OR REPLACE) of one row with every field of the codec's entity, as named parameters."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    return f"{verb} INTO {table} ({', '.join(codec.names)}) VALUES ({', '.join(':' + name for name in codec.names)})"


def _assignments(codec: RecordCodec[Any], key: str) -> str:
    """`column = :column` for every field but the key: an UPDATE that replaces the whole entity."""
    return ", ".join(f"{name} = :{name}" for name in codec.names if name != key)


# A user's row and its email_key, upserted on the user id (see `put_user` for why not INSERT OR REPLACE).
_USER_COLUMNS = (*USERS.names, "email_key")
_PUT_USER_SQL = (
    f"INSERT INTO users ({', '.join(_USER_COLUMNS)}) VALUES ({', '.join(':' + name for name in _USER_COLUMNS)})"
    " ON CONFLICT (user_id) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}" for name in _USER_COLUMNS if name not in ("user_id", "tokens_valid_after")
    )
    # Never back: fixed-width ISO text compares as time, and NULL (never ended) is earliest.
    + ", tokens_valid_after = nullif(max(coalesce(users.tokens_valid_after, ''),"
    " coalesce(excluded.tokens_valid_after, '')), '')"
)
