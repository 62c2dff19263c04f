"""asyncpg, pg8000, SQLAlchemy 2 and the psql binary against the engine host over TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import os
import shutil
import ssl
import subprocess
import uuid

import pg8000.dbapi
import pg8000.native
import pytest
import sqlalchemy as sa


def _client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the local self-signed certificate; verification is tested in test_tls
    return ctx


# --- asyncpg -----------------------------------------------------------------------------


async def _asyncpg_session(engine_host):
    import asyncpg

    return await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user=engine_host.user,
                                 password=engine_host.password, database="hd", ssl=_client_tls())


ASYNCPG_VALUES = [
    ("$1::int2", 12), ("$1::int4", -5), ("$1::int8", 2**50), ("$1::float4", 0.5), ("$1::float8", 1e300),
    ("$1::numeric(10,5)", decimal.Decimal("3.14159")), ("$1::bool", False), ("$1::text", "ok"), ("$1::varchar", "v"),
    ("$1::bytea", b"\x00\xff"), ("$1::date", dt.date(2020, 2, 29)), ("$1::time", dt.time(1, 2, 3, 4)),
    ("$1::timestamp", dt.datetime(2021, 1, 1, 0, 0, 1)),
    ("$1::timestamptz", dt.datetime(2021, 1, 1, 12, tzinfo=dt.UTC)),
    ("$1::interval", dt.timedelta(days=1, hours=2)),
    ("$1::uuid", uuid.UUID(int=12345)), ("$1::int4[]", [1, None, 3]), ("$1::text[]", ["a", "b"]),
]


@pytest.mark.parametrize(("expression", "value"), ASYNCPG_VALUES, ids=[e for e, _ in ASYNCPG_VALUES])
def test_asyncpg_binary_parameters_round_trip(engine_host, expression, value):
    async def run():
        conn = await _asyncpg_session(engine_host)
        try:
            return await conn.fetchval(f"SELECT {expression}", value)
        finally:
            await conn.close()

    assert asyncio.run(run()) == value


def test_asyncpg_transactions_prepared_statements_and_cursors(engine_host):
    async def run():
        conn = await _asyncpg_session(engine_host)
        try:
            stmt = await conn.prepare("SELECT count(*) FROM hr.employees WHERE org_id = $1")
            acme = await stmt.fetchval("org_acme")
            await conn.execute("CREATE TABLE IF NOT EXISTS main.apg_probe (id INTEGER, note VARCHAR)")
            async with conn.transaction():
                await conn.executemany("INSERT INTO main.apg_probe VALUES ($1, $2)", [(1, "a"), (2, "b")])
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO main.apg_probe VALUES (3, 'c')")
                    raise RuntimeError("abort")
            except RuntimeError:
                pass
            count = await conn.fetchval("SELECT count(*) FROM main.apg_probe")
            async with conn.transaction():
                streamed = [r["i"] async for r in conn.cursor("SELECT range AS i FROM range(5000)", prefetch=500)]
            return acme, count, streamed
        finally:
            await conn.close()

    acme, count, streamed = asyncio.run(run())
    assert acme > 0
    assert count == 2
    assert streamed == list(range(5000))


def test_asyncpg_reports_sqlstate(engine_host):
    import asyncpg

    async def run():
        conn = await _asyncpg_session(engine_host)
        try:
            with pytest.raises(asyncpg.exceptions.UndefinedTableError):
                await conn.fetch("SELECT * FROM nope.nothing")
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    assert asyncio.run(run()) == 1


# --- pg8000 ------------------------------------------------------------------------------


def test_pg8000_native_and_dbapi(engine_host):
    conn = pg8000.native.Connection(engine_host.user, password=engine_host.password, host="127.0.0.1",
                                    port=engine_host.port, database="hd", ssl_context=_client_tls())
    try:
        rows = conn.run("SELECT :a::INTEGER + 1 AS x, :b::TEXT AS y, :c::DATE AS z",
                        a=41, b="hi", c=dt.date(2024, 1, 1))
        assert rows == [[42, "hi", dt.date(2024, 1, 1)]]
        assert conn.run("SELECT CAST(1.25 AS NUMERIC(5,2)), TRUE, ARRAY[1,2]") == [[decimal.Decimal("1.25"), True,
                                                                                 [1, 2]]]
    finally:
        conn.close()
    db = pg8000.dbapi.connect(engine_host.user, password=engine_host.password, host="127.0.0.1",
                              port=engine_host.port, database="hd", ssl_context=_client_tls())
    try:
        cur = db.cursor()
        cur.execute("SELECT org_id, count(*) FROM sales.orders GROUP BY org_id ORDER BY org_id")
        assert [r[0] for r in cur.fetchall()] == ["org_acme"]  # the Owner's organisation only
        with pytest.raises(pg8000.dbapi.DatabaseError):
            cur.execute("SELECT * FROM missing_table")
        db.rollback()
        cur.execute("SELECT %s::TEXT", ("after error",))
        assert cur.fetchone() == ["after error"]
    finally:
        db.close()


# --- SQLAlchemy 2 ---------------------------------------------------------------------------


@pytest.fixture()
def sa_engine(engine_host):
    engine = sa.create_engine(engine_host.url(), connect_args={"sslmode": "require"})
    yield engine
    engine.dispose()


def test_sqlalchemy_core_query_and_transactions(sa_engine):
    with sa_engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM crm.customers WHERE org_id = :o"),
                             {"o": "org_acme"}).scalar_one()
        assert total > 0
    meta = sa.MetaData()
    # autoincrement=False: SQLAlchemy would emit SERIAL, a Postgres-only type DuckDB does not have.
    probe = sa.Table("sa_probe", meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("name", sa.String(50)), schema="main")
    meta.create_all(sa_engine)
    with sa_engine.begin() as conn:
        conn.execute(probe.insert(), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    with sa_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(probe)).scalar_one() == 2


def test_sqlalchemy_reflection_sees_demo_tables(sa_engine):
    inspector = sa.inspect(sa_engine)
    assert "crm" in inspector.get_schema_names()
    assert "customers" in inspector.get_table_names(schema="crm")
    assert inspector.has_table("customers", schema="crm")
    assert not inspector.has_table("no_such_table", schema="crm")
    columns = {c["name"]: c for c in inspector.get_columns("customers", schema="crm")}
    assert {"email", "ssn", "card_number", "phone", "department", "region"} <= set(columns)
    assert isinstance(columns["email"]["type"], sa.String)


# --- psql --------------------------------------------------------------------------------------


def _psql(engine_host, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client); .ci/run installs it")
    env = {**os.environ, "PGPASSWORD": engine_host.password, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(engine_host.port), "-U", engine_host.user, "-d", "hd",
         "-v", "ON_ERROR_STOP=1", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )


def test_psql_runs_queries_and_reports_errors(engine_host):
    ok = _psql(engine_host, "-At", "-c", "SELECT org_id, count(*) FROM hr.employees GROUP BY 1 ORDER BY 1")
    assert ok.returncode == 0, ok.stderr
    assert [line.split("|")[0] for line in ok.stdout.split()] == ["org_acme"]  # the Owner's organisation only
    bad = _psql(engine_host, "-c", "SELECT * FROM nowhere")
    assert bad.returncode != 0
    assert "nowhere" in bad.stderr


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ("\\dt crm.*", "customers"),
        ("\\dn", "sales"),
        ("\\d crm.customers", "card_number"),
        ("\\l", "hd"),
        ("\\dt *.*", "customers"),
    ],
)
def test_psql_meta_commands(engine_host, meta, expected):
    result = _psql(engine_host, "-c", meta)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_psql_connection_uses_tls13(engine_host):
    result = _psql(engine_host, "-c", "\\conninfo")
    assert result.returncode == 0, result.stderr
    assert "TLSv1.3" in result.stdout
