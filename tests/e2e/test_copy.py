"""COPY TO STDOUT / FROM STDIN against a real `hd dev`, compared byte for byte and row for row with PostgreSQL 15.

The same table (many types, NULLs, quotes, tabs, newlines, backslashes) is made on both servers with
the same statements; COPY's CopyData messages must be equal, message by message, in text, csv and
binary. Rows copied in through psycopg, asyncpg and psql must read back as PostgreSQL reads them.
Governance: the analyst's COPY sees the masked, filtered rows its SELECT sees; a row its row filter
forbids refuses the whole COPY FROM; every COPY leaves one audit record of kind `copy`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.harness import query_audit_records

COLUMNS = ("id integer, big bigint, amount numeric(12,3), ratio double precision, label text, flag boolean, "
           "day date, at timestamp, at_tz timestamptz, nums integer[], words text[], blob bytea")

ROWS = [
    (1, 9007199254740993, decimal.Decimal("1234.500"), 0.1, 'plain', True, dt.date(2024, 2, 29),
     dt.datetime(2024, 1, 2, 3, 4, 5, 500000), dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), [1, 2, None],
     ["a b", 'x"y', None, ""], b"\x00\x01AB\\"),
    (2, -1, decimal.Decimal("-0.001"), -1.5e300, 'tab\there, new\nline, back\\slash, "quoted", comma,semi;',
     False, dt.date(1999, 12, 31), dt.datetime(1999, 12, 31, 23, 59, 59), dt.datetime(2000, 6, 1, 12, tzinfo=dt.UTC),
     [], ["\\", "{}", ","], b""),
    (3, None, None, None, None, None, None, None, None, None, None, None),
    (4, 0, decimal.Decimal("0.000"), 0.0, "", True, dt.date(2024, 1, 1), dt.datetime(2024, 1, 1),
     dt.datetime(2024, 1, 1, tzinfo=dt.UTC), [7], ["\\N"], b"\xff"),
    (5, 5, decimal.Decimal("5"), 2.5, "\\.", False, None, None, None, None, None, None),
    (6, 6, decimal.Decimal("6"), 6.0, "\\N", True, None, None, None, None, None, None),
    (7, 7, decimal.Decimal("7"), 7.0, "carriage\rreturn\x01ctl", True, None, None, None, None, None, None),
]

COPY_OPTIONS = [
    "",
    "(FORMAT csv)",
    "(FORMAT csv, HEADER, DELIMITER ';', NULL 'NULL', QUOTE '''', ESCAPE '\\', FORCE_QUOTE (label, day))",
    "WITH CSV HEADER FORCE QUOTE *",
    "(FORMAT text, HEADER true, DELIMITER '|', NULL '')",
    "(FORMAT binary)",
    "BINARY",
]


def _pg(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, options="-c TimeZone=UTC")


@pytest.fixture(scope="module")
def typed_table(engine_host, reference_pg):
    """crm.copy_types on the engine (as the admin) and public.copy_types on PostgreSQL, the same rows in both."""
    name = f"copy_types_{uuid.uuid4().hex[:8]}"
    pairs = [(engine_host.demo_dsn("acme-admin"), f"crm.{name}"), (reference_pg, name)]
    for dsn, table in pairs:
        with _pg(dsn) as conn:
            conn.execute(f"CREATE TABLE {table} ({COLUMNS})")
            placeholders = ", ".join(["%s"] * len(ROWS[0]))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} VALUES ({placeholders})", ROWS)
    yield {"engine": pairs[0][1], "pg": pairs[1][1], "name": name}
    for dsn, table in pairs:  # the engine host is shared: other tests list crm's tables
        with _pg(dsn) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")


def _copy_out_messages(dsn: str, statement: str) -> list[bytes]:
    """The payload of each CopyData message, in order."""
    with _pg(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        return [bytes(chunk) for chunk in iter(copy.read, b"")]


@pytest.mark.parametrize("options", COPY_OPTIONS)
def test_copy_table_to_stdout_sends_the_bytes_postgres_sends(engine_host, reference_pg, typed_table, options):
    ours = _copy_out_messages(engine_host.demo_dsn("acme-admin"), f"COPY {typed_table['engine']} TO STDOUT {options}")
    theirs = _copy_out_messages(reference_pg, f"COPY {typed_table['pg']} TO STDOUT {options}")
    assert ours == theirs


@pytest.mark.parametrize("options", ["", "(FORMAT csv, HEADER)", "(FORMAT binary)"])
def test_copy_query_to_stdout_sends_the_bytes_postgres_sends(engine_host, reference_pg, typed_table, options):
    query = "SELECT id, label, nums, amount * 2 AS doubled FROM {} WHERE id <> 3 ORDER BY id DESC"
    ours = _copy_out_messages(engine_host.demo_dsn("acme-admin"),
                              f"COPY ({query.format(typed_table['engine'])}) TO STDOUT {options}")
    theirs = _copy_out_messages(reference_pg, f"COPY ({query.format(typed_table['pg'])}) TO STDOUT {options}")
    assert ours == theirs


def test_copy_of_no_rows_sends_what_postgres_sends(engine_host, reference_pg, typed_table):
    for fmt in ("text", "csv, HEADER", "binary"):
        query = "SELECT id, label FROM {} WHERE id < 0"
        ours = _copy_out_messages(engine_host.demo_dsn("acme-admin"),
                                  f"COPY ({query.format(typed_table['engine'])}) TO STDOUT (FORMAT {fmt})")
        theirs = _copy_out_messages(reference_pg, f"COPY ({query.format(typed_table['pg'])}) TO STDOUT (FORMAT {fmt})")
        assert ours == theirs, fmt


def test_copy_through_the_extended_protocol(engine_host, reference_pg, typed_table):
    """psycopg sends a COPY with parameters as Parse/Bind/Execute; the result is the same."""
    def run(dsn: str, table: str) -> list[bytes]:
        with _pg(dsn) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT id, label FROM {table} WHERE id <= %s ORDER BY id) TO STDOUT", [2]) as copy:
                out = [bytes(chunk) for chunk in iter(copy.read, b"")]
            assert cur.rowcount == 2
            return out
    assert run(engine_host.demo_dsn("acme-admin"), typed_table["engine"]) == run(reference_pg, typed_table["pg"])


# --- governance ------------------------------------------------------------------------------------


def _audit_records(state_dir: Path, marker: str | None = None, seconds: float = 10.0) -> list[dict]:
    """The host's complete audit records; with `marker`, those whose SQL holds it, waiting up to `seconds` for one
    (a cancelled statement's record is written as its execution finishes, which may follow the client's next read)."""
    deadline = time.monotonic() + seconds
    while True:
        records = query_audit_records(state_dir)
        if marker is None:
            return records
        found = [r for r in records if marker in r.get("sql_redacted", "")]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_copy_to_as_the_analyst_returns_the_masked_rows_of_its_select(engine_host):
    analyst = engine_host.demo_dsn("acme-analyst")
    query = "SELECT customer_id, ssn, email, region FROM crm.customers ORDER BY customer_id"
    with _pg(analyst) as conn:
        selected = conn.execute(query).fetchall()
        with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT") as copy:
            copied = list(copy.rows())
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        unmasked = conn.execute(query).fetchall()
    assert [(int(r[0]), r[1], r[2], r[3]) for r in copied] == selected
    by_id = {r[0]: r for r in unmasked}
    assert all(row[1] != by_id[row[0]][1] and row[2] != by_id[row[0]][2] for row in selected)  # masked


def test_copy_to_as_the_analyst_returns_only_the_rows_its_row_filter_allows(engine_host):
    query = "SELECT lead_id, region, company FROM sales.leads ORDER BY lead_id"
    with _pg(engine_host.demo_dsn("acme-analyst")) as conn:
        selected = conn.execute(query).fetchall()
        with conn.cursor() as cur, cur.copy("COPY sales.leads (lead_id, region, company) TO STDOUT") as copy:
            copied = sorted((int(r[0]), r[1], r[2]) for r in copy.rows())
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        everything = conn.execute(query).fetchall()
    assert copied == selected
    assert {r[1] for r in copied} == {"us-east"} and len(copied) < len(everything)


def test_copy_table_to_as_the_analyst_is_masked_too(engine_host):
    analyst = engine_host.demo_dsn("acme-analyst")
    with _pg(analyst) as conn:
        selected = conn.execute("SELECT ssn FROM crm.customers").fetchall()
        with conn.cursor() as cur, cur.copy("COPY crm.customers (ssn) TO STDOUT (FORMAT csv)") as copy:
            copied = [tuple(r) for r in copy.rows()]
    assert sorted(copied) == sorted(selected)


def test_each_copy_leaves_one_audit_record_of_kind_copy(engine_host):
    marker = uuid.uuid4().hex
    statement = f"COPY (SELECT lead_id AS m_{marker} FROM sales.leads) TO STDOUT"
    with _pg(engine_host.demo_dsn("acme-analyst")) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        rows = list(copy.rows())
    records = _audit_records(engine_host.state_dir, marker)
    assert len(records) == 1
    assert records[0]["statement_kind"] == "copy"
    assert records[0]["rows_returned"] == len(rows)
    assert records[0]["row_filters_applied"] == ["sales.leads"]


def test_copy_from_a_missing_table_is_refused_and_audited(engine_host):
    marker = uuid.uuid4().hex
    with _pg(engine_host.demo_dsn("acme-analyst")) as conn:
        with pytest.raises(psycopg.Error) as raised, conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT 1 AS m_{marker} FROM crm.no_such_table) TO STDOUT") as copy:
                list(copy.rows())
    assert raised.value.sqlstate == "42P01"
    records = _audit_records(engine_host.state_dir, marker)
    assert len(records) == 1 and records[0]["statement_kind"] == "copy"


def test_copy_from_stdin_outside_the_row_filter_stores_nothing(engine_host):
    analyst = engine_host.demo_dsn("acme-analyst")
    with _pg(analyst) as conn:
        before = conn.execute("SELECT count(*) FROM sales.leads").fetchone()
        with pytest.raises(psycopg.Error) as raised, conn.cursor() as cur:
            with cur.copy("COPY sales.leads FROM STDIN") as copy:
                copy.write_row((3900001, "org_acme", "us-east", "Fine Co", "new", decimal.Decimal("1.00")))
                copy.write_row((3900002, "org_acme", "eu-west", "Elsewhere Co", "new", decimal.Decimal("2.00")))
        assert raised.value.sqlstate == "42501"
        assert raised.value.diag.message_detail == "HD_ERR_ROW_FILTER_CHECK"
        assert conn.execute("SELECT count(*) FROM sales.leads").fetchone() == before


def test_copy_from_stdin_inside_the_row_filter_inserts_and_tags_the_count(engine_host):
    analyst = engine_host.demo_dsn("acme-analyst")
    with psycopg.connect(analyst) as conn:  # a transaction, rolled back: the shared demo data stays as it was
        with conn.cursor() as cur:
            with cur.copy("COPY sales.leads (lead_id, org_id, region, company, stage, value) FROM STDIN (FORMAT csv)"
                          ) as copy:
                copy.write(b'3900011,org_acme,us-east,"Quote ""Co""",new,10.50\n3900012,org_acme,us-east,B,won,1\n')
            assert cur.statusmessage == "COPY 2"
            copied = cur.execute("SELECT company, value FROM sales.leads WHERE lead_id >= 3900011 ORDER BY 1")
            assert copied.fetchall() == [("B", decimal.Decimal("1.00")), ('Quote "Co"', decimal.Decimal("10.50"))]
        conn.rollback()


def test_copy_fail_rolls_back(engine_host, reference_pg):
    """psycopg sends CopyFail when the block raises; the server rolls the COPY back (and answers 57014)."""
    for dsn, table in ((engine_host.demo_dsn("acme-admin"), "crm.copy_fail"), (reference_pg, "copy_fail")):
        with _pg(dsn) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (a integer)")
            with pytest.raises(RuntimeError), conn.cursor() as cur:
                with cur.copy(f"COPY {table} FROM STDIN") as copy:
                    copy.write_row((1,))
                    raise RuntimeError("client gave up")
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
            conn.execute(f"DROP TABLE {table}")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copy_from_stdin_reads_rows_as_postgres_does(engine_host, reference_pg, binary):
    name = f"copy_in_{uuid.uuid4().hex[:8]}"
    results = []
    for dsn, table in ((engine_host.demo_dsn("acme-admin"), f"crm.{name}"), (reference_pg, name)):
        with _pg(dsn) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} ({COLUMNS})")
            fmt = "(FORMAT binary)" if binary else ""
            with cur.copy(f"COPY {table} FROM STDIN {fmt}") as copy:
                if binary:
                    copy.set_types(["int4", "int8", "numeric", "float8", "text", "bool", "date", "timestamp",
                                    "timestamptz", "int4[]", "text[]", "bytea"])
                for row in ROWS:
                    copy.write_row(row)
            assert cur.statusmessage == f"COPY {len(ROWS)}"
            results.append(cur.execute(f"SELECT * FROM {table} ORDER BY id").fetchall())
            cur.execute(f"DROP TABLE {table}")
    assert results[0] == results[1]
    assert len(results[0]) == len(ROWS)


def test_copy_from_csv_with_header_and_options(engine_host, reference_pg):
    data = b'id;label\n1;"a;b"\n2;\n3;""\n4;NULL\n'
    results = []
    for dsn, table in ((engine_host.demo_dsn("acme-admin"), "crm.copy_csv_in"), (reference_pg, "copy_csv_in")):
        with _pg(dsn) as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} (id integer, label text)")
            with cur.copy(f"COPY {table} FROM STDIN (FORMAT csv, HEADER match, DELIMITER ';', "
                          "FORCE_NOT_NULL (label))") as copy:
                copy.write(data)
            results.append(cur.execute(f"SELECT * FROM {table} ORDER BY id").fetchall())
            cur.execute(f"DROP TABLE {table}")
    assert results[0] == results[1]


@pytest.mark.parametrize("statement, sqlstate", [
    ("COPY crm.customers TO '/tmp/hd_copy_refused.csv'", "42501"),
    ("COPY crm.customers FROM PROGRAM 'cat /etc/passwd'", "42501"),
    ("COPY crm.customers TO STDOUT (FORMAT parquet)", "22023"),
    ("COPY crm.customers TO STDOUT (COMPRESSION gzip)", "42601"),
    ("COPY crm.customers TO STDOUT (FORMAT binary, DELIMITER ',')", "42601"),
    ("COPY (DELETE FROM crm.customers RETURNING *) TO STDOUT", "0A000"),
])
def test_copy_refusals_come_before_any_copy_response(engine_host, statement, sqlstate):
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(statement)
        assert raised.value.sqlstate == sqlstate
        assert raised.value.diag.message_detail.startswith("HD_ERR_")
        assert not Path("/tmp/hd_copy_refused.csv").exists()


def test_statement_timeout_stops_a_copy_mid_stream(engine_host):
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        conn.execute("SET statement_timeout = 300")
        with pytest.raises(psycopg.Error) as raised, conn.cursor() as cur:
            with cur.copy("COPY (SELECT a.range * b.range AS v FROM range(100000) a, range(100000) b) TO STDOUT"
                          ) as copy:
                for _ in copy:
                    pass
        assert raised.value.sqlstate == "57014"
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --- psql ------------------------------------------------------------------------------------------


def _psql(dsn: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", "-c", command], capture_output=True,
                          text=True, timeout=60, env={"PGOPTIONS": "-c TimeZone=UTC", "PATH": "/usr/bin:/bin"})


def test_psql_backslash_copy_to_a_file_matches_postgres(engine_host, reference_pg, typed_table, tmp_path):
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    query = "select * from {} order by id"
    admin = engine_host.demo_dsn("acme-admin")
    done = _psql(admin, f"\\copy ({query.format(typed_table['engine'])}) to '{ours}' csv header")
    assert done.returncode == 0, done.stderr
    assert _psql(reference_pg, f"\\copy ({query.format(typed_table['pg'])}) to '{theirs}' csv header").returncode == 0
    assert ours.read_bytes() == theirs.read_bytes()


def test_psql_backslash_copy_from_a_file_matches_postgres(engine_host, reference_pg, typed_table, tmp_path):
    source = tmp_path / "rows.txt"
    assert _psql(reference_pg, f"\\copy {typed_table['pg']} to '{source}'").returncode == 0
    name = f"copy_psql_{uuid.uuid4().hex[:8]}"
    results = []
    for dsn, table in ((engine_host.demo_dsn("acme-admin"), f"crm.{name}"), (reference_pg, name)):
        with _pg(dsn) as conn:
            conn.execute(f"CREATE TABLE {table} ({COLUMNS})")
        done = _psql(dsn, f"\\copy {table} from '{source}'")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"COPY {len(ROWS)}"
        with _pg(dsn) as conn:
            results.append(conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall())
            conn.execute(f"DROP TABLE {table}")
    assert results[0] == results[1]


def test_psql_server_side_copy_prints_the_refusal_and_fails(engine_host, tmp_path):
    target = tmp_path / "server.csv"
    done = _psql(engine_host.demo_dsn("acme-admin"), f"COPY crm.customers TO '{target}' CSV HEADER")
    assert done.returncode != 0
    assert "HD_ERR_COPY_SERVER_FILE" in done.stderr and "\\copy" in done.stderr
    assert not target.exists()


# --- asyncpg -----------------------------------------------------------------------------------------


def _url(dsn: str) -> str:
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict
    parts = conninfo_to_dict(dsn)
    password = f":{quote(str(parts['password']), safe='')}" if parts.get("password") else ""
    return (f"postgresql://{parts['user']}{password}@{parts.get('host', '127.0.0.1')}:{parts.get('port', 5432)}/"
            f"{parts['dbname']}?sslmode={parts.get('sslmode', 'disable')}")


def test_asyncpg_copy_functions_match_postgres(engine_host, reference_pg, typed_table, tmp_path):
    async def run(dsn: str, table: str, schema: str) -> tuple[bytes, bytes, list, list]:
        conn = await asyncpg.connect(dsn=_url(dsn), server_settings={"TimeZone": "UTC"})
        try:
            out_query, out_table = tmp_path / f"{schema}_q.bin", tmp_path / f"{schema}_t.csv"
            await conn.copy_from_query(f"SELECT id, label, nums FROM {table} ORDER BY id", output=str(out_query),
                                       format="binary")
            bare = table.split(".")[-1]
            await conn.copy_from_table(bare, schema_name=schema, output=str(out_table), format="csv", header=True)
            target = f"copy_asyncpg_{uuid.uuid4().hex[:6]}"
            await conn.execute(f"CREATE TABLE {schema}.{target} (id integer, label text, nums integer[])")
            await conn.copy_records_to_table(target, schema_name=schema,
                                             records=[(1, "a\tb", [1, None]), (2, None, None)])
            await conn.copy_to_table(target, schema_name=schema, source=str(out_query), format="binary")
            rows = [tuple(r) for r in await conn.fetch(f"SELECT * FROM {schema}.{target} ORDER BY id, label")]
            await conn.execute(f"DROP TABLE {schema}.{target}")
            return out_query.read_bytes(), out_table.read_bytes(), rows, []
        finally:
            await conn.close()

    ours = asyncio.run(run(engine_host.demo_dsn("acme-admin"), typed_table["engine"], "crm"))
    theirs = asyncio.run(run(reference_pg, typed_table["pg"], "public"))
    assert ours == theirs


# --- the protocol, message by message ----------------------------------------------------------------


def test_copy_fail_is_answered_with_57014_and_rolled_back_over_the_raw_protocol(engine_host):
    """CopyFail mid-COPY: ErrorResponse 57014 'COPY from stdin failed: <reason>' (PostgreSQL's), then ReadyForQuery."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.e2e.rawpg import RawClient, cstr, message

    admin = conninfo_to_dict(engine_host.demo_dsn("acme-admin"))
    table = f"crm.copy_fail_raw_{uuid.uuid4().hex[:8]}"
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        conn.execute(f"CREATE TABLE {table} (a integer)")
    client = RawClient(engine_host.port)
    try:
        client.login(str(admin["user"]), str(admin["password"]))
        client.send(message(b"Q", cstr(f"COPY {table} FROM STDIN")))
        response = client.read()
        assert response is not None and response.kind == b"G"
        client.send(message(b"d", b"1\n2\n") + message(b"f", cstr("client gave up")))
        answer = client.read_until(b"Z")
        errors = [m.error_fields() for m in answer if m.kind == b"E"]
        assert [(e["C"], e["M"]) for e in errors] == [("57014", "COPY from stdin failed: client gave up")]
        assert answer[-1].body == b"I"  # not in a failed transaction: the COPY's own was rolled back
        counted = [m for m in client.query(f"SELECT count(*) FROM {table}") if m.kind == b"D"]
        assert counted and counted[0].body.endswith(b"0")
    finally:
        client.close()
        with _pg(engine_host.demo_dsn("acme-admin")) as conn:
            conn.execute(f"DROP TABLE {table}")


# --- cancel and statement_timeout while the server waits for the client's data ------------------------


def _raw_copy_in(engine_host, table: str):
    """A raw client logged in as the admin, in COPY FROM STDIN on `table` with two rows sent (no CopyDone)."""
    from psycopg.conninfo import conninfo_to_dict

    from tests.e2e.rawpg import RawClient, cstr, message

    admin = conninfo_to_dict(engine_host.demo_dsn("acme-admin"))
    client = RawClient(engine_host.port, timeout=5.0)
    client.login(str(admin["user"]), str(admin["password"]))
    return client, cstr, message


def _cancel(port: int, backend_key: tuple[int, int] | None) -> None:
    import socket
    import struct

    assert backend_key is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.sendall(struct.pack("!iiii", 16, 80877102, *backend_key))
        sock.recv(1)  # the server closes the cancel connection once it is served


@pytest.fixture()
def copy_target(engine_host):
    table = f"crm.copy_stop_{uuid.uuid4().hex[:8]}"
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        conn.execute(f"CREATE TABLE {table} (a integer)")
    yield table
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        conn.execute(f"DROP TABLE {table}")


def _copy_records(engine_host, table: str) -> list[dict]:
    return [r for r in _audit_records(engine_host.state_dir)
            if r.get("statement_kind") == "copy" and table in r.get("sql_redacted", "")]


def _count(engine_host, table: str) -> int:
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        row = conn.execute(f"SELECT count(*)::integer AS n FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("stop", ["cancel", "statement_timeout"])
def test_a_copy_from_waiting_for_data_ends_at_once_on_cancel_or_timeout(engine_host, copy_target, stop):
    """PostgreSQL ends a COPY FROM whose client stalls: 57014 at once, rolled back, one audit record, usable."""
    client, cstr, message = _raw_copy_in(engine_host, copy_target)
    try:
        if stop == "statement_timeout":
            client.query("SET statement_timeout = 300")
        client.send(message(b"Q", cstr(f"COPY {copy_target} FROM STDIN")))
        response = client.read()
        assert response is not None and response.kind == b"G"
        client.send(message(b"d", b"1\n2\n"))
        if stop == "cancel":
            _cancel(engine_host.port, client.backend_key)
        answer = client.read_until(b"Z")  # nothing more is sent: the old server waited here for CopyData
        errors = [m.error_fields() for m in answer if m.kind == b"E"]
        expected = {"cancel": "canceling statement due to user request",
                    "statement_timeout": "canceling statement due to statement timeout"}[stop]
        assert [(e["C"], e["M"]) for e in errors] == [("57014", expected)]
        assert answer[-1].body == b"I"
        client.send(message(b"c"))  # the client's late CopyDone is ignored, as PostgreSQL ignores it
        assert [m.kind for m in client.query("SELECT 1 AS one")][-1] == b"Z"
    finally:
        client.close()
    assert _count(engine_host, copy_target) == 0
    records = _copy_records(engine_host, copy_target)
    assert len(records) == 1 and records[0]["error"]["sqlstate"] == "57014"


def test_psycopg_cancel_during_copy_from_rolls_back_and_keeps_the_connection(engine_host, copy_target):
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled), conn.cursor() as cur:
            with cur.copy(f"COPY {copy_target} FROM STDIN") as copy:
                copy.write(b"1\n2\n")
                conn.cancel()
        assert conn.execute("SELECT 1 AS one").fetchone() == (1,)
    assert _count(engine_host, copy_target) == 0


def test_cancel_during_a_long_copy_to_ends_it_with_57014(engine_host):
    marker = uuid.uuid4().hex
    with _pg(engine_host.demo_dsn("acme-admin")) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled), conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT a.range * b.range AS m_{marker} FROM range(100000) a, range(100000) b) "
                          "TO STDOUT") as copy:
                first = copy.read()
                assert first
                conn.cancel()
                while copy.read():
                    pass
        assert conn.execute("SELECT 1 AS one").fetchone() == (1,)
    records = _audit_records(engine_host.state_dir, marker)
    assert records and all(r["statement_kind"] == "copy" for r in records)
    assert records[-1]["error"]["sqlstate"] == "57014"


def test_a_copy_from_records_its_rows_as_written_like_the_insert_update_and_delete(engine_host, copy_target):
    """rows_written is the command tag's count for INSERT, UPDATE, DELETE and COPY FROM; rows_returned stays 0."""
    with _pg(engine_host.demo_dsn("acme-admin")) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {copy_target} FROM STDIN") as copy:
            copy.write(b"1\n2\n3\n")
        assert cur.statusmessage == "COPY 3"
        cur.execute(f"INSERT INTO {copy_target} VALUES (4), (5)")
        cur.execute(f"UPDATE {copy_target} SET a = a + 10 WHERE a > 1")
        cur.execute(f"DELETE FROM {copy_target} WHERE a > 13")
        assert cur.statusmessage == "DELETE 2"
    records = [r for r in _audit_records(engine_host.state_dir) if copy_target in r.get("sql_redacted", "")
               and r.get("statement_kind") in ("copy", "insert", "update", "delete")]
    assert [(r["statement_kind"], r["rows_written"], r["rows_returned"]) for r in records] == [
        ("copy", 3, 0), ("insert", 2, 0), ("update", 4, 0), ("delete", 2, 0)]


# --- admission and quotas: a COPY stands for its SELECT or INSERT ------------------------------------


@pytest.fixture(scope="module")
def one_slot_host(tmp_path_factory):
    """A host that runs one statement at a time and queues none (its own: quotas are changed on it)."""
    from tests.harness import start_engine_host

    process = start_engine_host(tmp_path_factory.mktemp("hd-copy-admission"), "--demo", "--insecure-plaintext",
                                "--max-concurrent-statements", "1", "--max-queued-statements", "0")
    yield process
    process.stop()


def test_a_copy_waiting_for_data_holds_its_slot_and_a_second_copy_gets_53300(one_slot_host):
    admin = one_slot_host.demo_dsn("acme-admin")
    table = f"crm.copy_gate_{uuid.uuid4().hex[:8]}"
    with _pg(admin) as conn:
        conn.execute(f"CREATE TABLE {table} (a integer)")
    with _pg(admin) as loading, loading.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as copy:
        copy.write(b"1\n")
        with _pg(admin) as other:
            for statement in (f"COPY {table} TO STDOUT", f"COPY {table} FROM STDIN"):
                with pytest.raises(psycopg.Error) as raised, other.cursor() as cur2:
                    with cur2.copy(statement) as refused:
                        refused.write(b"2\n") if "FROM" in statement else list(refused)
                assert raised.value.sqlstate == "53300"
                assert raised.value.diag.message_detail.startswith("HD_ERR_")
    with _pg(admin) as conn:  # the load finished once its slot was free again; the refused COPYs stored nothing
        assert conn.execute(f"SELECT a FROM {table}").fetchall() == [(1,)]
    refused_records = [r for r in _audit_records(one_slot_host.state_dir) if r.get("statement_kind") == "copy"
                       and table in r.get("sql_redacted", "") and r.get("error")]
    assert [r["error"]["sqlstate"] for r in refused_records] == ["53300", "53300"]


def test_a_copy_is_refused_once_the_organisation_has_used_its_credit_quota(one_slot_host):
    import json as _json
    import subprocess as _subprocess
    import sys
    import time

    admin = one_slot_host.demo_dsn("acme-admin")
    table = f"crm.copy_quota_{uuid.uuid4().hex[:8]}"
    with _pg(admin) as conn:
        conn.execute(f"CREATE TABLE {table} (a integer)")
    quota = {"kind": "quota", "quota_id": "quota_org_acme_copy", "org_id": "org_acme", "monthly_credits": 0.0}
    done = _subprocess.run([sys.executable, "-m", "engine_host.cli", "local-policy", "--state-dir",
                            str(one_slot_host.state_dir), "add", "--json", _json.dumps(quota)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    with _pg(admin) as conn:
        deadline = time.monotonic() + 10
        while True:  # the policy reaches the host within about a second
            try:
                conn.execute(f"SELECT a FROM {table}")
            except psycopg.Error as exc:
                assert exc.diag.message_detail == "HD_ERR_QUOTA_EXCEEDED"
                break
            assert time.monotonic() < deadline, "the quota did not reach the engine host in time"
            time.sleep(0.2)
        for statement in (f"COPY {table} TO STDOUT", f"COPY {table} FROM STDIN"):
            with pytest.raises(psycopg.Error) as raised, conn.cursor() as cur, cur.copy(statement) as copy:
                copy.write(b"1\n") if "FROM" in statement else list(copy)
            assert (raised.value.sqlstate, raised.value.diag.message_detail) == ("53400", "HD_ERR_QUOTA_EXCEEDED")
    refused = [r for r in _audit_records(one_slot_host.state_dir) if r.get("statement_kind") == "copy"
               and table in r.get("sql_redacted", "")]
    assert [r["error"]["code"] for r in refused] == ["HD_ERR_QUOTA_EXCEEDED", "HD_ERR_QUOTA_EXCEEDED"]


# --- text input read by PostgreSQL's rules ---------------------------------------------------------------

INPUT_COLUMNS = ("i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision, n numeric(5,2), b boolean, "
                 "u uuid, d date, t time, ts timestamp")

INPUT_CASES = [
    ("i4", "1.5"), ("i4", " 1 "), ("i4", "abc"), ("i4", "2147483648"), ("i4", "-2147483648"), ("i4", "+7"),
    ("i4", ""), ("i2", "32768"), ("i2", "-32768"), ("i8", "9223372036854775808"), ("i8", "-9223372036854775808"),
    ("n", "1000"), ("n", "999.995"), ("n", "999.994"), ("n", "1e2"), ("n", " 12.5 "), ("n", "abc"),
    ("n", "-0.005"), ("n", "12.345"), ("f8", "1e400"), ("f8", "abc"), ("f8", " 1.5 "), ("f8", "Infinity"),
    ("f8", "-inf"), ("f8", "1e-5"), ("f4", "1e39"), ("f4", "3.5"),
    ("b", "yes"), ("b", "maybe"), ("b", " TRUE "), ("b", "o"), ("b", "of"), ("b", "1"), ("b", "t"),
    ("u", "abc"), ("u", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), ("u", "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}"),
    ("u", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"), ("d", "2024-02-30"), ("d", "2023-02-29"), ("d", "garbage"),
    ("d", "2024-02-29"), ("t", "24:00:01"), ("t", "24:00:00"), ("t", "12:30"), ("t", "25:00"),
    ("ts", "2024-01-01 24:00:00"), ("ts", "2024-01-01 25:00:00"), ("ts", "2024-13-01 00:00"),
    ("ts", "2024-01-01 10:00:00.5"),
]


@pytest.fixture(scope="module")
def input_tables(engine_host, reference_pg):
    name = f"copy_input_{uuid.uuid4().hex[:8]}"
    pairs = ((engine_host.demo_dsn("acme-admin"), f"crm.{name}"), (reference_pg, name))
    for dsn, table in pairs:
        with _pg(dsn) as conn:
            conn.execute(f"CREATE TABLE {table} ({INPUT_COLUMNS})")
    yield pairs
    for dsn, table in pairs:
        with _pg(dsn) as conn:
            conn.execute(f"DROP TABLE {table}")


def _load(dsn: str, table: str, column: str, data: bytes, options: str = "") -> tuple[str, ...] | list:
    """The rows stored by COPY (read back), or (sqlstate, message) when it is refused; nothing is left behind."""
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as conn:
        try:
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({column}) FROM STDIN {options}") as copy:
                copy.write(data)
        except psycopg.Error as exc:
            return (str(exc.sqlstate), exc.diag.message_primary or "")
        # time's 24:00:00 has no Python value: read as text (the engine's text of a time is PostgreSQL's)
        rows = conn.execute(f"SELECT {column}{'::text' if column == 't' else ''} FROM {table}").fetchall()
        conn.rollback()
        return rows


@pytest.mark.parametrize("column, value", INPUT_CASES, ids=[f"{c}-{v!r}" for c, v in INPUT_CASES])
def test_copy_from_text_reads_each_value_as_postgres_does(input_tables, column, value):
    (ours_dsn, ours_table), (pg_dsn, pg_table) = input_tables
    data = f"{value}\n".encode()
    ours, theirs = _load(ours_dsn, ours_table, column, data), _load(pg_dsn, pg_table, column, data)
    if isinstance(theirs, tuple):  # refused: the same SQLSTATE, PostgreSQL's message, its COPY context
        assert isinstance(ours, tuple), f"PostgreSQL refuses {value!r} ({theirs}); the engine stored {ours}"
        assert ours[0] == theirs[0]
        assert ours[1].startswith(theirs[1]), (ours, theirs)
        assert f'line 1, column {column}: "{value}"' in ours[1]
    else:
        assert ours == theirs


@pytest.mark.parametrize("options", ["", "(FORMAT csv, HEADER)"])
def test_a_refused_value_names_its_line_and_column_as_postgres_does(input_tables, options):
    (ours_dsn, ours_table), (pg_dsn, pg_table) = input_tables
    data = (b"i4\n" if options else b"") + b"1\n2\n1.5\n4\n"
    ours = _load(ours_dsn, ours_table, "i4", data, options)
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.Error) as raised, conn.cursor() as cur:
            with cur.copy(f"COPY {pg_table} (i4) FROM STDIN {options}") as copy:
                copy.write(data)
    line = 4 if options else 3
    assert raised.value.diag.context == f'COPY {pg_table}, line {line}, column i4: "1.5"'
    assert ours == ("22P02", f'invalid input syntax for type integer: "1.5" (COPY {ours_table.split(".")[1]}, '
                             f'line {line}, column i4: "1.5")')
