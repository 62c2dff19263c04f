"""`ControlStore` on a local SQLite file: the embedded default for `hd dev` and single-machine installs.

One connection in WAL mode, shared by every thread behind a lock: control-state reads are
single-row lookups, so serialising them costs microseconds, and WAL lets another process (the
local control API) read while this one writes. Timestamps are ISO-8601 UTC strings with a fixed
width, so they sort as text; scopes are a JSON array; a policy object is its `policy_codec`
document, and every policy write bumps the single-row policy version in the same transaction.
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
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType

from hd_core.errors import Conflict, NotFound
from hd_core.models import (
    ApiKeyRecord,
    KeyEnv,
    Organization,
    OrgStatus,
    Role,
    UsageDelta,
    User,
    UserStatus,
    utc_now,
)
from hd_core.policies import PolicyKind, PolicyObject, PolicySnapshot
from hd_core.policy_codec import from_document, kind_of, object_id, to_document

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
)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database file was written by a newer Hardened Duck; opening it could corrupt it."""


class SqliteControlStore:
    """A `ControlStore` in one SQLite file (or `":memory:"`), created with its schema on first open."""

    def __init__(self, path: str | Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            _create_private_file(Path(self.path))
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each write's extent is explicit.
        self._connection = sqlite3.connect(
            self.path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
        )
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed key revocation or user suspension must survive a power cut.
            self._connection.execute("PRAGMA synchronous=FULL")
        self._migrate()

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
            db.execute(
                "INSERT OR REPLACE INTO orgs (org_id, name, status, created_at) VALUES (?, ?, ?, ?)",
                (org.org_id, org.name, OrgStatus(org.status).value, _encode_time(org.created_at)),
            )

    def get_org(self, org_id: str) -> Organization | None:
        """The organisation with this id, or None."""
        row = self._fetch_one("SELECT * FROM orgs WHERE org_id = ?", (org_id,))
        return None if row is None else _org_from_row(row)

    def list_orgs(self) -> list[Organization]:
        """Every organisation, oldest first."""
        return [_org_from_row(row) for row in self._fetch_all("SELECT * FROM orgs ORDER BY created_at, org_id", ())]

    # --- users ------------------------------------------------------------------------------

    def put_user(self, user: User) -> None:
        """Create or replace a user."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO users (user_id, org_id, email, role, status, department, region, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.user_id,
                    user.org_id,
                    user.email,
                    Role(user.role).value,
                    UserStatus(user.status).value,
                    user.department,
                    user.region,
                    _encode_time(user.created_at),
                ),
            )

    def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        row = self._fetch_one("SELECT * FROM users WHERE user_id = ?", (user_id,))
        return None if row is None else _user_from_row(row)

    def list_users(self, org_id: str) -> list[User]:
        """The users of one organisation, oldest first."""
        rows = self._fetch_all("SELECT * FROM users WHERE org_id = ? ORDER BY created_at, user_id", (org_id,))
        return [_user_from_row(row) for row in rows]

    # --- API keys ---------------------------------------------------------------------------

    def put_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new key record; raises `Conflict` if the key id exists, so a key is never overwritten."""
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO api_keys (key_id, org_id, user_id, env, key_hash, scopes, created_at, expires_at,"
                    " revoked_at, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.key_id,
                        record.org_id,
                        record.user_id,
                        KeyEnv(record.env).value,
                        record.key_hash,
                        json.dumps(list(record.scopes)),
                        _encode_time(record.created_at),
                        _encode_optional_time(record.expires_at),
                        _encode_optional_time(record.revoked_at),
                        record.name,
                    ),
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"api key {record.key_id} already exists") from None

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key record with this key id, or None."""
        row = self._fetch_one("SELECT * FROM api_keys WHERE key_id = ?", (key_id,))
        return None if row is None else _api_key_from_row(row)

    def list_api_keys(self, org_id: str) -> list[ApiKeyRecord]:
        """The key records of one organisation, revoked ones included, oldest first."""
        rows = self._fetch_all("SELECT * FROM api_keys WHERE org_id = ? ORDER BY created_at, key_id", (org_id,))
        return [_api_key_from_row(row) for row in rows]

    def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord:
        """Mark a key revoked at `at`, keeping an earlier revocation time; raises `NotFound`."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?",
                (_encode_time(at), key_id),
            )
            if updated.rowcount == 0:
                raise NotFound(f"api key {key_id} not found")
            row = db.execute("SELECT * FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return _api_key_from_row(row)

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

    def put_policy(self, obj: PolicyObject) -> int:
        """Create or replace a policy object (same kind and id); returns the new policy version."""
        document = json.dumps(to_document(obj), ensure_ascii=False)
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO policy_objects (kind, object_id, org_id, document, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind_of(obj).value, object_id(obj), getattr(obj, "org_id", None), document, _encode_time(utc_now())),
            )
            return _bump_policy_version(db)

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
                "INSERT INTO usage (org_id, day, user_id, agent_id, statements, credits, rows, bytes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (org_id, day, user_id, agent_id) DO UPDATE SET"
                " statements = statements + excluded.statements, credits = credits + excluded.credits,"
                " rows = rows + excluded.rows, bytes = bytes + excluded.bytes",
                [
                    (
                        delta.org_id,
                        delta.day.isoformat(),
                        delta.user_id,
                        delta.agent_id or "",
                        delta.statements,
                        delta.credits,
                        delta.rows,
                        delta.bytes,
                    )
                    for delta in deltas
                ],
            )

    def usage(self, org_id: str, start: date, end: date) -> list[UsageDelta]:
        """The usage buckets of one organisation for days in [start, end], ordered by day, user, agent."""
        rows = self._fetch_all(
            "SELECT * FROM usage WHERE org_id = ? AND day BETWEEN ? AND ? ORDER BY day, user_id, agent_id",
            (org_id, start.isoformat(), end.isoformat()),
        )
        return [_usage_from_row(row) for row in rows]

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

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has control schema version {version}; this build knows up to {SCHEMA_VERSION}"
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement)
            # PRAGMA takes no bound parameters; the value is our own integer constant.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only: it holds key hashes and the local pepper."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _encode_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _encode_optional_time(value: datetime | None) -> str | None:
    return None if value is None else _encode_time(value)


def _decode_optional_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _bump_policy_version(db: sqlite3.Connection) -> int:
    """Increment the policy version inside the caller's write transaction, so it never disagrees with content."""
    db.execute("UPDATE policy_version SET version = version + 1 WHERE singleton = 1")
    return int(db.execute("SELECT version FROM policy_version WHERE singleton = 1").fetchone()[0])


def _policy_from_row(row: sqlite3.Row) -> PolicyObject:
    return from_document(json.loads(row["document"]))


def _usage_from_row(row: sqlite3.Row) -> UsageDelta:
    return UsageDelta(
        org_id=row["org_id"],
        day=date.fromisoformat(row["day"]),
        user_id=row["user_id"],
        agent_id=row["agent_id"] or None,
        statements=int(row["statements"]),
        credits=float(row["credits"]),
        rows=int(row["rows"]),
        bytes=int(row["bytes"]),
    )


def _org_from_row(row: sqlite3.Row) -> Organization:
    return Organization(
        org_id=row["org_id"],
        name=row["name"],
        status=OrgStatus(row["status"]),
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _user_from_row(row: sqlite3.Row) -> User:
    return User(
        user_id=row["user_id"],
        org_id=row["org_id"],
        email=row["email"],
        role=Role(row["role"]),
        status=UserStatus(row["status"]),
        department=row["department"],
        region=row["region"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _api_key_from_row(row: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        org_id=row["org_id"],
        user_id=row["user_id"],
        env=KeyEnv(row["env"]),
        key_hash=row["key_hash"],
        scopes=tuple(json.loads(row["scopes"])),
        created_at=datetime.fromisoformat(row["created_at"]),
        expires_at=_decode_optional_time(row["expires_at"]),
        revoked_at=_decode_optional_time(row["revoked_at"]),
        name=row["name"],
    )
