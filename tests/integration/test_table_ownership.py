"""Tables have one owner from the moment they exist, and only the owner can change that.

A local engine host with its control API, two organisations: the deployment's own (its Owner
bootstrapped by `hd dev`) and Globex, whose Admin tries to take, squat and read the other's
tables over HTTP and over the wire, as the attack of issue 13 did.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.runtime.local import LocalConfig, LocalEngineHost
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher, issue_api_key
from hd_core.models import KeyEnv, Organization, OrgStatus, Role, User, UserStatus, utc_now
from hd_core.permissions import ROLE_SCOPES
from tests.harness import BackgroundLoop

GLOBEX = "org_globex_t"


@dataclass
class Tenants:
    host: LocalEngineHost
    owner_user: str
    owner_key: str
    owner_org: str
    globex_user: str
    globex_key: str

    def sql(self, user: str, key: str, statement: str) -> list[tuple[Any, ...]]:
        assert self.host.server is not None
        dsn = (f"host=127.0.0.1 port={self.host.server.port} dbname=hd user={user} password={key} "
               "sslmode=disable connect_timeout=10")
        with psycopg.connect(dsn, autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    def api(self, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.host.control_api is not None
        request = urllib.request.Request(f"http://127.0.0.1:{self.host.control_api.port}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("X-API-Key", key)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def binding_of(self, key: str, org: str, table: str) -> dict[str, Any]:
        status, listed = self.api(key, "GET", f"/v1/organizations/{org}/policies?kind=table_binding")
        assert status == 200, listed
        return next(p["document"] for p in listed if p["document"]["table"] == table)


def _globex_admin(store: SqliteControlStore) -> tuple[str, str]:
    now = utc_now()
    store.put_org(Organization(GLOBEX, "Globex", OrgStatus.ACTIVE, now))
    user = User("usr_globex_admin", GLOBEX, "admin@globex.example", Role.ADMIN, UserStatus.ACTIVE, None, None, now)
    store.put_user(user)
    key, _ = issue_api_key(store, ApiKeyHasher(), org_id=GLOBEX, user_id=user.user_id, env=KeyEnv.TEST,
                           scopes=tuple(sorted(ROLE_SCOPES[Role.ADMIN])), name="globex admin")
    return user.user_id, key


@pytest.fixture
def tenants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tenants]:
    # Serving the control API in-process turns Powertools' metrics and tracing off for the process
    # (as `hd dev` wants); set here, the test's end restores them for the tests that follow.
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    clicks = tmp_path / "data" / "events" / "clicks"
    clicks.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2, 3], "org_id": ["org_x", GLOBEX, GLOBEX]}), clicks / "part-0.parquet")
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    globex_user, globex_key = _globex_admin(store)
    store.close()
    host = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True, api_port=0))
    loop = BackgroundLoop()
    loop.run(host.start())
    try:
        assert host.banner is not None
        yield Tenants(host, host.banner.user, (tmp_path / "owner.key").read_text().strip(), host.banner.org_id,
                      globex_user, globex_key)
    finally:
        loop.run(host.stop())
        loop.close()


def _missing(tenants: Tenants, user: str, key: str, table: str) -> None:
    with pytest.raises(psycopg.errors.UndefinedTable):
        tenants.sql(user, key, f"SELECT * FROM {table}")


def test_another_organisation_can_neither_take_nor_squat_a_table(tenants: Tenants) -> None:
    t = tenants
    t.sql(t.owner_user, t.owner_key, "CREATE TABLE main.notes (id INTEGER, body VARCHAR)")
    t.sql(t.owner_user, t.owner_key, "INSERT INTO main.notes VALUES (1, 'acquisition plan')")
    take = {"kind": "table_binding", "org_id": GLOBEX, "table": "main.notes"}
    taken = t.api(t.globex_key, "POST", f"/v1/organizations/{GLOBEX}/policies", take)
    squatted = t.api(t.globex_key, "POST", f"/v1/organizations/{GLOBEX}/policies", {**take, "table": "main.later"})
    assert taken[0] == squatted[0] == 404
    assert taken[1]["error"]["code"] == squatted[1]["error"]["code"]
    # The owner still reads its table; Globex still sees no such table.
    assert t.sql(t.owner_user, t.owner_key, "SELECT body FROM main.notes") == [("acquisition plan",)]
    _missing(t, t.globex_user, t.globex_key, "main.notes")
    # The name Globex tried to squat is the creator's when it is created.
    t.sql(t.owner_user, t.owner_key, "CREATE TABLE main.later (id INTEGER)")
    assert t.binding_of(t.owner_key, t.owner_org, "main.later")["org_id"] == t.owner_org


def test_a_table_created_over_the_wire_is_its_creators_and_its_name_is_taken(tenants: Tenants) -> None:
    t = tenants
    t.sql(t.globex_user, t.globex_key, "CREATE TABLE main.pipeline (id INTEGER)")
    assert t.binding_of(t.globex_key, GLOBEX, "main.pipeline")["org_id"] == GLOBEX
    _missing(t, t.owner_user, t.owner_key, "main.pipeline")
    # Creating the same name again from the other organisation answers as if nothing were there to clash.
    with pytest.raises(psycopg.errors.UndefinedTable):
        t.sql(t.owner_user, t.owner_key, "CREATE TABLE main.pipeline (id INTEGER)")
    status, body = t.api(t.owner_key, "DELETE",
                         f"/v1/organizations/{t.owner_org}/policies/table_binding/"
                         f"{t.binding_of(t.globex_key, GLOBEX, 'main.pipeline')['binding_id']}")
    assert status == 404, body


def test_the_owner_hands_a_table_over_and_loses_it(tenants: Tenants) -> None:
    t = tenants
    t.sql(t.owner_user, t.owner_key, "CREATE TABLE main.handover AS SELECT 7 AS id")
    binding = t.binding_of(t.owner_key, t.owner_org, "main.handover")
    status, _ = t.api(t.owner_key, "PUT", f"/v1/organizations/{t.owner_org}/policies/table_binding/"
                      f"{binding['binding_id']}", {"kind": "table_binding", "org_id": GLOBEX, "table": "main.handover"})
    assert status == 200
    t.host.engine.policies.load()  # type: ignore[union-attr]  # as the next poll would
    assert t.sql(t.globex_user, t.globex_key, "SELECT id FROM main.handover") == [(7,)]
    _missing(t, t.owner_user, t.owner_key, "main.handover")


def test_registered_parquet_is_the_deployments_until_its_owner_shares_it(tenants: Tenants) -> None:
    t = tenants
    binding = t.binding_of(t.owner_key, t.owner_org, "events.clicks")
    assert binding["org_id"] == t.owner_org and binding["tenant_column"] is None
    _missing(t, t.globex_user, t.globex_key, "events.clicks")
    path = f"/v1/organizations/{GLOBEX}/policies/table_binding/{binding['binding_id']}"
    share = {"kind": "table_binding", "org_id": None, "tenant_column": "org_id", "table": "events.clicks"}
    assert t.api(t.globex_key, "PUT", path, share)[0] == 404  # not Globex's to share
    status, shared = t.api(t.owner_key, "PUT", path.replace(GLOBEX, t.owner_org), share)
    assert status == 200 and shared["document"]["tenant_column"] == "org_id", shared
    t.host.engine.policies.load()  # type: ignore[union-attr]
    assert t.sql(t.globex_user, t.globex_key, "SELECT id FROM events.clicks ORDER BY id") == [(2,), (3,)]
