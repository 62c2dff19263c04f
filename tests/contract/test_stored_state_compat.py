"""Stores written by earlier releases read back identically, and today's adapters still write the same shape.

The fixtures are the rows and items control schema 5 stored for `stored_state` (see
`fixtures/write_stored_state.py`). Each adapter must read them back as the same entities, and
must write those same entities as the same rows and items, so a file or table can move between
releases in either direction.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.sqlite_store import MIGRATIONS, SqliteControlStore
from hd_core.models import JitStatus, email_key
from hd_core.policy_codec import kind_of, object_id
from hd_core.ports import ControlStore
from tests.contract import stored_state
from tests.contract.fixtures.write_stored_state import dynamodb_items, sqlite_rows, write_everything

FIXTURES = Path(__file__).parent / "fixtures"
SQLITE_ROWS: dict[str, Any] = json.loads((FIXTURES / "schema5_sqlite_rows.json").read_text(encoding="utf-8"))
DYNAMODB_ITEMS: list[dict[str, Any]] = json.loads(
    (FIXTURES / "schema5_dynamodb_items.json").read_text(encoding="utf-8")
)
SCHEMA = 5
# Tables added after schema 5 for entities schema 5 did not have (issue 19: webhooks; issue 20: forget requests;
# issue 22: policy preview requests).
TABLES_ADDED_SINCE_SCHEMA_5 = ("webhook_endpoints", "webhook_deliveries", "forget_requests", "preview_requests")
# Fields added after schema 5, with the value an entity without them is written with (SQLite column, DynamoDB
# attribute; None: the attribute is left out). Today's writers add exactly these to schema 5's rows and items.
ADDED_SINCE_SCHEMA_5: dict[str, dict[str, Any]] = {
    # Issue 19: an API key's rotation policy, delivery target and sent lifecycle notices.
    "api_keys": {"rotate_every_days": None, "delivery_secret": None, "lifecycle_notices": "[]"},
}
_ADDED_DYNAMODB_ITEMS: dict[str, dict[str, Any]] = {
    "APIKEY#": {"lifecycle_notices": {"L": []}},
}


def assert_reads_everything(store: ControlStore) -> None:
    """Every entity of `stored_state` comes back from `store` as it was written, by id and in its listings."""
    assert store.list_orgs() == list(stored_state.ORGS)
    assert store.list_environments("org_compatA") == list(stored_state.ENVIRONMENTS)
    full, bare = stored_state.USERS
    assert store.get_user(full.user_id) == full
    assert store.get_user_by_email("ada@example.test") == full
    assert store.get_user_by_external_id("https://other.test#a-1") == full
    assert store.list_users("org_compatA") == [bare, full]  # created together: by id
    assert store.list_api_keys("org_compatA") == list(stored_state.API_KEYS)
    for token in stored_state.REFRESH_TOKENS:
        assert store.get_refresh_token(token.token_id) == token
    assert store.refresh_family_revoked(stored_state.REVOKED_FAMILY[0])
    assert not store.refresh_family_revoked("fam_compat")
    assert store.list_jit_requests("org_compatA") == list(stored_state.JIT_REQUESTS)
    assert store.list_jit_requests("org_compatA", JitStatus.APPROVED) == [stored_state.JIT_REQUESTS[1]]
    assert store.list_iam_events("org_compatA") == list(stored_state.IAM_EVENTS)
    assert store.iam_chain_head("org_compatA") == stored_state.IAM_EVENTS[-1]
    for name, value in stored_state.SETTINGS:
        assert store.get_setting(name) == value
    snapshot = store.policy_snapshot()
    assert snapshot.version == len(stored_state.POLICIES)
    for obj in stored_state.POLICIES:
        assert store.get_policy(kind_of(obj), object_id(obj)) == obj
    start = stored_state.USAGE[0].day
    assert store.usage("org_compatA", start, start) == list(stored_state.USAGE)
    for failures in stored_state.AUTH_FAILURES:
        assert store.get_auth_failures(failures.subject) == failures


# --- SQLite ----------------------------------------------------------------------------------------


def _schema5_file(path: Path, rows: dict[str, list[dict[str, Any]]]) -> None:
    """A file as a schema 5 release left it: that schema, made by hand, holding `rows`."""
    with sqlite3.connect(path) as raw:
        raw.create_function("hd_email_key", 1, email_key, deterministic=True)
        for step in MIGRATIONS[:SCHEMA]:
            for statement in step:
                raw.execute(statement)
        raw.execute("DELETE FROM policy_version")  # the fixture holds the version row as it was
        for table, table_rows in rows.items():
            for row in table_rows:
                columns = ", ".join(row)
                placeholders = ", ".join(f":{column}" for column in row)
                raw.execute(f"INSERT INTO {table} ({columns}) VALUES ({placeholders})", row)
        raw.execute(f"PRAGMA user_version = {SCHEMA:d}")


# A time stored with another offset (by a hand edit, a restore tool, an older writer): the same instant.
ELSEWHERE = "2026-03-01T13:00:00.123456+01:00"
_FULL_USER = stored_state.USERS[0]


def _assert_read_at_utc(store: ControlStore) -> None:
    org, user = store.get_org("org_compatA"), store.get_user(_FULL_USER.user_id)
    assert org is not None and user is not None
    for stamp in (org.created_at, user.created_at):
        assert stamp == stored_state.T0 and stamp.tzinfo is UTC, stamp


def test_the_fixture_is_schema_5_sqlite() -> None:
    assert SQLITE_ROWS["user_version"] == SCHEMA


def test_a_schema_5_sqlite_file_reads_back_every_entity(tmp_path: Path) -> None:
    _schema5_file(tmp_path / "control.sqlite3", SQLITE_ROWS["tables"])
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        assert_reads_everything(store)


def test_sqlite_writes_every_entity_as_schema_5_rows(tmp_path: Path) -> None:
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        write_everything(store)
    written = sqlite_rows(tmp_path / "control.sqlite3")
    written["tables"] = _without_added_tables(written["tables"])
    assert _without_write_times(_without_added_columns(written["tables"])) == _without_write_times(
        SQLITE_ROWS["tables"]
    )


def test_sqlite_reads_a_time_stored_at_another_offset_as_the_same_instant_at_utc(tmp_path: Path) -> None:
    tables = SQLITE_ROWS["tables"]
    shifted = {
        "orgs": [row | {"created_at": ELSEWHERE} if row["org_id"] == "org_compatA" else row for row in tables["orgs"]],
        "users": [row | {"created_at": ELSEWHERE} if row["user_id"] == _FULL_USER.user_id else row
                  for row in tables["users"]],
    }
    _schema5_file(tmp_path / "control.sqlite3", tables | shifted)
    with SqliteControlStore(tmp_path / "control.sqlite3") as store:
        _assert_read_at_utc(store)


def _without_added_columns(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Schema 5's rows again: each column added since, checked to hold the value of an entity without it, dropped;
    so are tables added since (schema 5's entities put nothing in them)."""
    kept: dict[str, list[dict[str, Any]]] = {}
    for table, rows in tables.items():
        if table not in SQLITE_ROWS["tables"]:
            assert rows == [], table
            continue
        added = ADDED_SINCE_SCHEMA_5.get(table, {})
        for row in rows:
            assert {name: row[name] for name in added} == added, (table, row)
        kept[table] = [{name: value for name, value in row.items() if name not in added} for row in rows]
    return kept


def _without_added_tables(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Schema 5's tables again: each table added since (empty, as schema 5's state has nothing for it) dropped."""
    for table in TABLES_ADDED_SINCE_SCHEMA_5:
        assert tables.pop(table) == [], table
    return tables


def _without_write_times(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    # A policy row's updated_at is the wall-clock time of its write, not part of the entity.
    return {
        table: [{name: value for name, value in row.items() if name != "updated_at"} for row in rows]
        for table, rows in tables.items()
    }


# --- DynamoDB --------------------------------------------------------------------------------------


@pytest.fixture
def table(dynamodb_client: Any) -> Iterator[str]:
    name = f"hd-control-{uuid.uuid4().hex}"
    dynamodb_client.create_table(**create_table_kwargs(name))
    yield name
    dynamodb_client.delete_table(TableName=name)


def test_a_schema_5_dynamodb_table_reads_back_every_entity(dynamodb_client: Any, table: str) -> None:
    for item in DYNAMODB_ITEMS:
        dynamodb_client.put_item(TableName=table, Item=item)
    assert_reads_everything(DynamoDbControlStore(table, client=dynamodb_client))


def test_dynamodb_writes_every_entity_as_schema_5_items(dynamodb_client: Any, table: str) -> None:
    write_everything(DynamoDbControlStore(table, client=dynamodb_client))
    written = dynamodb_items(dynamodb_client, table)
    assert [_without_write_time(_without_added_attributes(item)) for item in written] == [
        _without_write_time(item) for item in DYNAMODB_ITEMS
    ]


def test_dynamodb_reads_a_time_stored_at_another_offset_as_the_same_instant_at_utc(
    dynamodb_client: Any, table: str
) -> None:
    for item in DYNAMODB_ITEMS:
        if item["PK"]["S"] in ("ORG#org_compatA", "USER#" + _FULL_USER.user_id):
            item = item | {"created_at": {"S": ELSEWHERE}}
        dynamodb_client.put_item(TableName=table, Item=item)
    _assert_read_at_utc(DynamoDbControlStore(table, client=dynamodb_client))


def _without_write_time(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in item.items() if name != "updated_at"}


def _without_added_attributes(item: dict[str, Any]) -> dict[str, Any]:
    """Schema 5's item again: each attribute added since, checked to hold the value of an entity without it, dropped."""
    for prefix, added in _ADDED_DYNAMODB_ITEMS.items():
        if item["PK"]["S"].startswith(prefix):
            assert {name: item.get(name) for name in added} == added, item
            return {name: value for name, value in item.items() if name not in added}
    return item
