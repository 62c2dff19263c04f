"""Hash masks precomputed into native copies (engine_host/data/stored_masks.py), through the real pipeline.

An in-process local host over a folder with a Parquet table whose columns the analyst reads hashed
(and through a row filter). The first masked read computes the hashes in the query and asks for a
copy that stores them; once built, plans read the stored values through a mask view. Every check
compares with what the macro computes, NULLs included, and with HMAC-SHA256 computed in Python.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.data.native_tables import NativeTables
from engine_host.data.stored_masks import KeyMaterial, StoredMask, StoredMasks, read_key_material
from engine_host.engine.masking import install_mask_macros, macro_name, mask_hash
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.plan_check import check_bound_plan
from engine_host.pipeline.governor import HostLimits
from engine_host.pipeline.pipeline import StatementPipeline
from engine_host.pipeline.session import Session
from engine_host.runtime.local import LocalConfig, LocalEngineHost
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.models import Role
from hd_core.policies import MaskFunction, MaskRule, RowFilter
from tests.harness import BackgroundLoop

ROWS = 3000
HASHED = ("email", "ssn", "score", "born", "balance", "seen")  # `seen` is TIMESTAMPTZ: its text depends on TimeZone
PARTIAL = {"card": 4, "region": 1}  # `region` is also what the row filter reads (raw)
COLUMNS = ("id", "region", "email", "ssn", "score", "born", "balance", "seen", "card", "nickname")
SELECT_ALL = f"SELECT {', '.join(COLUMNS)} FROM pii.people ORDER BY id"


def people(ids: range, salt: str = "") -> pa.Table:
    return pa.table({
        "id": pa.array(list(ids), pa.int64()),
        "region": [("eu" if i % 3 == 0 else "us") for i in ids],
        "email": [None if i % 7 == 0 else f"user{i}{salt}@example.com" for i in ids],
        "ssn": [None if i % 11 == 0 else f"{900 + i % 100:03d}-{i % 97:02d}-{i:04d}" for i in ids],
        "score": pa.array([None if i % 13 == 0 else i * 0.25 for i in ids], pa.float64()),
        "born": [dt.date(1950, 1, 1) + dt.timedelta(days=i) for i in ids],
        "balance": pa.array([None if i % 17 == 0 else decimal.Decimal(i * 7) / 4 for i in ids], pa.decimal128(12, 2)),
        "seen": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in ids],
                         pa.timestamp("us", tz="UTC")),
        "card": [None if i % 9 == 0 else f"4111-{i:012d}" for i in ids],
        "nickname": [None if i % 5 == 0 else f"nick{i}" for i in ids],
    })


def write(data_dir: Path, schema: str, table: str, rows: pa.Table) -> None:
    path = data_dir / schema / table / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    pq.write_table(rows, partial)
    partial.replace(path)


@dataclass
class Host:
    local: LocalEngineHost
    loop: BackgroundLoop
    pipeline: StatementPipeline
    analyst: Session
    owner: Session
    native: NativeTables

    def rows(self, session: Session, sql: str) -> list[dict[str, Any]]:
        outcome = self.pipeline.execute(session, self.pipeline.prepare(session, sql))
        found: list[dict[str, Any]] = []
        while outcome.rows is not None and (batch := outcome.rows.read()) is not None:
            found.extend(batch.to_pylist())
        return found

    def run(self, session: Session, sql: str) -> None:
        self.rows(session, sql)

    def governed_sql(self, session: Session, sql: str) -> str:
        return self.pipeline.prepare(session, sql).engine_sql

    def macro_values(self, table: str, columns: tuple[str, ...], where: str = "true") -> list[dict[str, Any]]:
        """What the hash macro of the analyst's environment gives, computed straight on the raw table."""
        macro = macro_name(str(self.analyst.principal.env))
        items = ", ".join(f"hd_keys.main.{macro}(CAST({c} AS VARCHAR)) AS {c}" for c in columns)
        cursor = self.local.engine.database.connection.cursor()  # type: ignore[union-attr]
        with self.native.hold([table]):
            result = cursor.execute(f"SELECT id, {items} FROM hd_data.{table} WHERE {where} ORDER BY id")
            names = [d[0] for d in result.description]
            return [dict(zip(names, row, strict=True)) for row in result.fetchall()]

    def close(self) -> None:
        self.analyst.close()
        self.owner.close()
        self.loop.run(self.local.stop())
        self.loop.close()


def _open(local: LocalEngineHost, user_id: str, key_file: Path) -> Session:
    assert local.store is not None and local.server is not None
    principal = ApiKeyAuthenticator(local.store, ensure_pepper(local.store)).authenticate(
        user_id, key_file.read_text().strip())
    return local.server.pipeline.open_session(principal, "127.0.0.1", {}, 1)


def start_host(state: Path) -> Host:
    write(state / "data", "pii", "people", people(range(ROWS)))
    write(state / "data", "pii", "changing", people(range(300)))
    loop = BackgroundLoop()
    local = LocalEngineHost(LocalConfig(state_dir=state, port=0, demo=True, insecure_plaintext=True,
                                        limits=HostLimits(statements_per_second=1e9)))
    loop.run(local.start())
    assert local.server is not None and local.banner is not None and local.engine is not None
    analyst = _open(local, "usr_demo_acme_analyst", state / "demo-keys" / "acme-analyst.key")
    owner = _open(local, local.banner.user, local.banner.key_file)
    org = analyst.principal.org_id
    store, policies = local.engine.store, local.engine.policies
    assert policies is not None
    for table in ("pii.people", "pii.changing"):
        for column in HASHED:
            store.put_policy(MaskRule(f"msk_{table}_{column}", org, table, column, MaskFunction.HASH,
                                      exempt_roles=(Role.OWNER,)))
        for column, visible in PARTIAL.items():
            store.put_policy(MaskRule(f"msk_{table}_{column}", org, table, column, MaskFunction.PARTIAL, visible,
                                      exempt_roles=(Role.OWNER,)))
        store.put_policy(RowFilter(f"rls_{table}", org, table, "region = 'eu'", exempt_roles=(Role.OWNER,)))
    policies.load()
    native = local.engine.table_source.native  # type: ignore[attr-defined]
    assert isinstance(native, NativeTables) and native.wait_idle()
    return Host(local, loop, local.server.pipeline, analyst, owner, native)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    started = start_host(tmp_path_factory.mktemp("precomputed"))
    yield started
    started.close()


def stored_read(host: Host, session: Session, sql: str) -> str:
    """Plan `sql` (asking for the copy that stores its hashes), wait for that copy, and return the governed SQL."""
    host.governed_sql(session, sql)
    assert host.native.wait_idle()
    return host.governed_sql(session, sql)


def test_a_stored_hash_equals_the_macro_for_every_row_nulls_included(host: Host) -> None:
    computed = host.rows(host.analyst, SELECT_ALL)  # planned before any copy stores the hashes
    governed = stored_read(host, host.analyst, SELECT_ALL)
    assert re.search(r'FROM "hd_masks_\d+"\."pii"\."people" AS "__hd_src"', governed), governed
    env = host.analyst.principal.env
    for column in ("email", "ssn", "score", "born", "balance"):
        assert f'"__hd_src"."__hd_mask {env} {column}" AS "{column}"' in governed
    for column, visible in PARTIAL.items():
        assert f'"__hd_src"."__hd_mask partial {visible} {column}" AS "{column}"' in governed
    # TIMESTAMPTZ's text depends on the session's TimeZone: never stored, computed as before.
    assert 'hd_mask_hash_' in governed and '"__hd_mask ' + f'{env} seen"' not in governed
    assert "\"__hd_src\".region = 'eu'" in governed  # the row filter reads the raw column

    stored = host.rows(host.analyst, SELECT_ALL)
    assert stored == computed
    assert len(stored) == len([i for i in range(ROWS) if i % 3 == 0])  # the row filter still applies
    assert {r["region"] for r in stored} == {"***u"}
    expected = host.macro_values("pii.people", HASHED, "region = 'eu'")
    assert [{k: r[k] for k in ("id", *HASHED)} for r in stored] == expected
    assert any(r["email"] is None for r in stored) and any(r["score"] is None for r in stored)
    raw = {r["id"]: r for r in host.rows(host.owner, "SELECT id, ssn, card FROM pii.people")}
    assert [r["card"] for r in stored] == [None if raw[r["id"]]["card"] is None else "***" + raw[r["id"]]["card"][-4:]
                                           for r in stored]
    assert any(r["card"] is None for r in stored)
    assert all(r["ssn"] is None if raw[r["id"]]["ssn"] is None else len(r["ssn"]) == 64 for r in stored)
    # Unmasked columns and the Owner (exempt) read raw values, as before.
    assert host.rows(host.owner, "SELECT count(*) AS n FROM pii.people") == [{"n": ROWS}]
    assert "hd_masks_" not in host.governed_sql(host.owner, SELECT_ALL)


def test_clients_see_only_the_tables_own_columns(host: Host) -> None:
    stored_read(host, host.analyst, SELECT_ALL)
    own = list(COLUMNS)
    for session in (host.owner, host.analyst):
        assert list(host.rows(session, "SELECT * FROM pii.people LIMIT 1")[0]) == own
    env = host.analyst.principal.env
    catalog = host.native.stored_masks.views("pii.people")[-1]
    refused = [f'SELECT "__hd_mask {env} email" FROM pii.people', f"SELECT * FROM {catalog}.pii.people",
               f"SELECT * FROM {catalog}.main.people", "SELECT * FROM hd_keys.main.hd_mask_key_id_live()"]
    for sql in refused:
        for session in (host.owner, host.analyst):
            with pytest.raises(QueryError) as caught:
                host.rows(session, sql)
            assert caught.value.sqlstate in ("42703", "42P01", "42501"), (sql, caught.value)


def test_the_copy_holds_no_key_material(host: Host) -> None:
    stored_read(host, host.analyst, SELECT_ALL)
    catalog = host.native.served_from("pii.people")
    assert catalog is not None
    data = (host.native.native_dir / f"{catalog}.duckdb").read_bytes()
    keys = read_key_material(host.local.engine.database.connection.cursor())  # type: ignore[union-attr]
    constants = {h for body in keys.definitions.values() for h in re.findall(r"from_hex\('([0-9a-f]+)'\)", body)}
    assert len(constants) == 2 * len(keys.definitions)
    for constant in constants:
        assert constant.encode() not in data and bytes.fromhex(constant)[:32] not in data


def test_explain_still_redacts(host: Host) -> None:
    sql = "SELECT email, ssn FROM pii.people WHERE id < 30"
    stored_read(host, host.analyst, sql)
    explained = host.governed_sql(host.analyst, f"EXPLAIN {sql}")
    assert "hd_masks_" not in explained and "hd_mask_hash_redacted" in explained
    text = "\n".join(str(v) for row in host.rows(host.analyst, f"EXPLAIN {sql}") for v in row.values())
    keys = read_key_material(host.local.engine.database.connection.cursor())  # type: ignore[union-attr]
    for body in keys.definitions.values():
        for constant in re.findall(r"from_hex\('([0-9a-f]+)'\)", body):
            assert constant not in text
    assert "__hd_mask" not in text


def test_the_plan_check_accepts_the_copy_of_a_listed_table_only(host: Host) -> None:
    stored_read(host, host.analyst, SELECT_ALL)
    plan = host.pipeline.prepare(host.analyst, SELECT_ALL).plan
    assert plan is not None and "hd_masks_" in plan.bound_sql
    with host.native.hold(["pii.people"]):
        bound = host.analyst.engine.bound_plan(plan.bound_sql, [])
    check_bound_plan(bound, dict(plan.table_sources))
    for tables in ({}, {"pii.people": False}, {"pii.changing": True}):
        with pytest.raises(QueryError) as caught:
            check_bound_plan(bound, tables)
        assert caught.value.code == "HD_ERR_PLAN_REJECTED"


def test_a_plan_survives_swaps_and_reads_the_version_its_lease_pins(host: Host) -> None:
    sql = "SELECT id, email, ssn, score FROM pii.changing ORDER BY id"
    stored_read(host, host.analyst, sql)
    prepared = host.pipeline.prepare(host.analyst, sql)
    first_copy = host.native.served_from("pii.changing")
    assert first_copy is not None and "hd_masks_" in prepared.engine_sql

    def run_prepared() -> list[dict[str, Any]]:
        outcome = host.pipeline.execute(host.analyst, prepared)
        found: list[dict[str, Any]] = []
        while outcome.rows is not None and (batch := outcome.rows.read()) is not None:
            found.extend(batch.to_pylist())
        return found

    write(host.local.data_dir, "pii", "changing", people(range(100, 700), salt="-v2"))
    time.sleep(1.1)  # past the local host's staleness bound: the next statement looks at the files again
    before_rebuild = run_prepared()  # the copy was swapped out for the Parquet files; the plan still binds
    expected = host.macro_values("pii.changing", ("email", "ssn", "score"), "region = 'eu'")
    assert [{k: r[k] for k in ("id", "email", "ssn", "score")} for r in before_rebuild] == expected
    assert [r["id"] for r in before_rebuild] == [i for i in range(100, 700) if i % 3 == 0]
    assert host.native.wait_idle()
    second_copy = host.native.served_from("pii.changing")
    assert second_copy not in (None, first_copy) and first_copy not in host.native.attached()
    assert run_prepared() == before_rebuild  # from the new copy's stored values now
    assert host.governed_sql(host.analyst, sql) == prepared.engine_sql


def test_a_new_mask_computes_in_the_query_until_stored_even_inside_a_transaction(host: Host) -> None:
    stored_read(host, host.analyst, SELECT_ALL)
    views_before = host.native.stored_masks.views("pii.people")
    host.run(host.analyst, "BEGIN")
    try:
        assert host.rows(host.analyst, "SELECT count(*) AS n FROM pii.people") == [{"n": ROWS // 3}]
        host.rows(host.analyst, SELECT_ALL)  # the transaction has read the current mask view
        assert host.local.engine is not None and host.local.engine.policies is not None
        host.local.engine.store.put_policy(MaskRule("msk_people_nickname", host.analyst.principal.org_id,
                                                    "pii.people", "nickname", MaskFunction.HASH,
                                                    exempt_roles=(Role.OWNER,)))
        host.local.engine.policies.load()
        governed = host.governed_sql(host.analyst, SELECT_ALL)
        env = host.analyst.principal.env
        assert "hd_masks_" in governed and f'hd_mask_hash_{env}(CAST("__hd_src"."nickname"' in governed
        computed = host.rows(host.analyst, SELECT_ALL)
        assert host.native.wait_idle()
        assert len(host.native.stored_masks.views("pii.people")) == len(views_before) + 1
        governed = host.governed_sql(host.analyst, SELECT_ALL)
        assert f'"__hd_mask {env} nickname" AS "nickname"' in governed
        stored = host.rows(host.analyst, SELECT_ALL)  # a mask view made after the transaction began
        assert stored == computed
        expected = host.macro_values("pii.people", ("nickname",), "region = 'eu'")
        assert [{"id": r["id"], "nickname": r["nickname"]} for r in stored] == expected
    finally:
        host.run(host.analyst, "COMMIT")


def test_a_changed_key_is_computed_in_the_query_at_once(tmp_path: Path) -> None:
    own = start_host(tmp_path)
    try:
        sql = "SELECT id, email FROM pii.people ORDER BY id"
        governed = stored_read(own, own.analyst, sql)
        assert "hd_masks_" in governed
        raw = {r["id"]: r["email"] for r in own.rows(own.owner, "SELECT id, email FROM pii.people")}
        new_key = bytes(range(32))
        env = str(own.analyst.principal.env)
        connection = own.local.engine.database.connection  # type: ignore[union-attr]
        install_mask_macros(connection, {env: new_key})
        after = own.rows(own.analyst, sql)
        assert own.governed_sql(own.analyst, sql) == governed  # the same plan, reading the same mask view
        assert [r["email"] for r in after] == [None if raw[r["id"]] is None else mask_hash(new_key, raw[r["id"]])
                                               for r in after]
    finally:
        own.close()


def test_a_table_gone_from_its_source_answers_as_missing_through_a_plan_that_read_its_mask_view(
        tmp_path: Path) -> None:
    own = start_host(tmp_path)
    try:
        sql = "SELECT id, email, card FROM pii.changing ORDER BY id"
        stored_read(own, own.analyst, sql)
        prepared = own.pipeline.prepare(own.analyst, sql)
        assert "hd_masks_" in prepared.engine_sql
        own.native.forget("pii.changing")  # what an object listing does when the table's prefix is gone
        with pytest.raises(QueryError) as caught:
            outcome = own.pipeline.execute(own.analyst, prepared)
            while outcome.rows is not None and outcome.rows.read() is not None:
                pass
        assert caught.value.sqlstate == "42P01", caught.value
        assert "hd_native" not in caught.value.message and "hd_masks" not in caught.value.message
    finally:
        own.close()


def test_masks_are_stored_only_where_the_text_is_fixed_and_while_the_copy_fits() -> None:
    asked: list[str] = []
    masks = StoredMasks(on_wanted=asked.append)
    wanted = {StoredMask.hash("ssn", "live"), StoredMask.partial("card", 4), StoredMask.hash("seen", "live"),
              StoredMask.hash("email", "test")}
    assert masks.lookup("s.t", wanted) is None and asked == ["s.t"]
    assert masks.lookup("s.t", wanted) is None and asked == ["s.t"]  # asked once per new mask
    columns = [("ssn", "VARCHAR"), ("card", "VARCHAR"), ("seen", "TIMESTAMP WITH TIME ZONE"), ("email", "VARCHAR")]
    keys = KeyMaterial({"live": "body"}, {"live": "id-live"})  # no `test` key here: its hash is not stored
    roomy = masks.layout("s.t", columns, keys, rows=1000, room=10**9)
    assert set(roomy.stored) == {StoredMask.hash("ssn", "live"), StoredMask.partial("card", 4)}
    assert roomy.considered == wanted and roomy.key_ids == {"live": "id-live"}
    tight = masks.layout("s.t", columns, keys, rows=1000, room=1000 * 20)  # the partial fits, the hash does not
    assert set(tight.stored) == {StoredMask.partial("card", 4)} and tight.considered == wanted
    assert not masks.layout("s.t", columns, keys, rows=1000, room=0).stored
