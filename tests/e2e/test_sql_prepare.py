"""SQL-level PREPARE / EXECUTE / DEALLOCATE against the engine host, compared with a real PostgreSQL 15.

Values, result types and SQLSTATEs are PostgreSQL's; governance (masks, row filters, the guard,
audit) applies to an EXECUTE exactly as to the same statement sent with the extended protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest


def _run(dsn: str, statements: list[str]) -> list[object]:
    """Each statement's outcome in one session: (rows, result type OIDs), the command tag, or the SQLSTATE."""
    outcomes: list[object] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in statements:
            try:
                cur = conn.execute(sql)
            except psycopg.Error as exc:
                outcomes.append(("error", exc.sqlstate))
                continue
            if cur.description is None:
                outcomes.append(("tag", cur.statusmessage))
            else:
                outcomes.append((cur.fetchall(), [c.type_code for c in cur.description]))
    return outcomes


SCRIPTS = {
    "typed": ["PREPARE p (int) AS SELECT $1 + 1 AS v", "EXECUTE p(41)", "EXECUTE p('7')", "EXECUTE p(-3)",
              "EXECUTE p(NULL)", "EXECUTE p(1.5)", "EXECUTE p(-2.5)", "EXECUTE p (  41 )"],
    "untyped": ["PREPARE q AS SELECT $1::integer * 2 AS v", "EXECUTE q(21)", "EXECUTE q('21')", "EXECUTE q(21)"],
    "several_types": ["PREPARE r (text, int[], date, numeric, boolean, bigint) AS "
                      "SELECT $1 || '!' AS s, $2 AS a, $3 AS d, $4 AS n, $5 AS b, $6 AS i",
                      "EXECUTE r('it''s', ARRAY[1, -2, NULL], '2024-02-29'::date, 12.50, true, -9000000000)",
                      "EXECUTE r(NULL, '{4,5}', DATE '2024-01-01', '-0.5', false, -9000000001)"],
    "no_parameters": ["PREPARE z AS SELECT 'a' AS s", "EXECUTE z", "EXECUTE z"],
    "names_fold_to_lower_case": ['PREPARE MyPlan AS SELECT 1 AS one', "EXECUTE myplan", 'EXECUTE "MyPlan"',
                                 'PREPARE "Quoted" AS SELECT 2 AS two', 'EXECUTE "Quoted"', "EXECUTE quoted"],
    "errors": ["PREPARE p (int) AS SELECT $1 AS v", "PREPARE p AS SELECT 1", "EXECUTE p(1, 2)", "EXECUTE p",
               "EXECUTE nope(1)", "EXECUTE p((SELECT 1))", "EXECUTE p('x')", "PREPARE b (no_such_type) AS SELECT $1",
               "PREPARE e AS SELEC 1", "PREPARE c AS CREATE TABLE x (a int)", "EXECUTE p(2)"],
    "deallocate": ["PREPARE a AS SELECT 1 AS one", "PREPARE b AS SELECT 2 AS two", "DEALLOCATE a", "EXECUTE a",
                   "EXECUTE b", "DEALLOCATE PREPARE b", "EXECUTE b", "DEALLOCATE b", "PREPARE a AS SELECT 3 AS x",
                   "PREPARE c AS SELECT 4 AS y", "DEALLOCATE ALL", "EXECUTE a", "EXECUTE c", "DEALLOCATE ALL"],
}


@pytest.mark.parametrize("script", list(SCRIPTS), ids=list(SCRIPTS))
def test_prepare_and_execute_answer_as_postgres(engine_host, reference_pg, script):
    statements = SCRIPTS[script]
    assert _run(engine_host.dsn(), statements) == _run(reference_pg, statements)


def test_declared_type_names_are_postgres_s_spellings(engine_host, reference_pg):
    """Each name resolves to the type PostgreSQL's grammar gives it; values decode as that type.

    (Result types are compared in the scripts above. Here they would differ where a bare `$n` is
    selected: DuckDB types a parameter by its bound value, not by its declared type, as for Parse.)
    """
    statements = ["PREPARE s (character varying(3), double precision, timestamp with time zone, int4, "
                  "pg_catalog.int8, float(10), decimal(5, 2), time without time zone, bit varying, \"char\", "
                  "character(2), integer[], text ARRAY) AS SELECT $1 AS a, $2 AS b, $3 AS c, $4 AS d, $5 AS e, "
                  "$6 AS f, $7 AS g, $8 AS h, $9 AS i, $10 AS j, $11 AS k, $12 AS l, $13 AS m",
                  "EXECUTE s('abcd', 1.25, '2024-01-02 03:04:05+00', 1, 2, 0.5, 1.234, '01:02:03', '101', 'x', "
                  "'y', '{1,2}', ARRAY['a'])"]
    engine, pg = _run(engine_host.dsn(), statements), _run(reference_pg, statements)
    assert engine[0] == pg[0] == ("tag", "PREPARE")
    assert engine[1][0] == pg[1][0]  # type: ignore[index]


def test_execute_over_a_table_returns_what_the_statement_returns_with_the_value_bound(engine_host):
    query = "SELECT status, count(*) AS n FROM sales.orders WHERE status <> {} GROUP BY status ORDER BY status"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        direct = conn.execute(query.format("%s"), ["no such status"]).fetchall()
        conn.execute(f"PREPARE by_status (text) AS {query.format('$1')}")
        assert conn.execute("EXECUTE by_status('no such status')").fetchall() == direct
        assert direct and len(conn.execute(f"EXECUTE by_status('{direct[0][0]}')").fetchall()) == len(direct) - 1


def test_a_refused_statement_is_refused_at_prepare_with_its_own_sqlstate_and_audited(engine_host):
    marker = f"refused_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"PREPARE {marker} AS SELECT * FROM read_csv('/etc/passwd') AS {marker}")
        assert refused.value.sqlstate == "42501"
        assert refused.value.diag.message_detail == "HD_ERR_FUNCTION_NOT_ALLOWED"
        with pytest.raises(psycopg.Error) as missing:  # nothing was kept under its name
            conn.execute(f"EXECUTE {marker}")
        assert missing.value.sqlstate == "26000"
    records = [r for r in _audit_records(engine_host.state_dir) if marker in r["sql_redacted"]]
    assert [r["error"]["code"] for r in records] == ["HD_ERR_FUNCTION_NOT_ALLOWED", "HD_ERR_NO_SUCH_STATEMENT"]
    assert records[0]["sql_redacted"].startswith("SELECT")  # the statement's refusal, recorded once by the guard
    assert records[1]["statement_kind"] == "execute"


@pytest.mark.parametrize("argument", ["(SELECT 1)", "now()", "1 + 1", "ssn", "$1", "ARRAY[(SELECT 1)]",
                                      "CAST(random() AS int)", "-'1'"])
def test_an_argument_that_is_no_constant_is_refused(engine_host, argument):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute("PREPARE constant_only (int) AS SELECT $1 AS v")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(f"EXECUTE constant_only({argument})")
        assert (refused.value.sqlstate, refused.value.diag.message_detail) == ("0A000", "HD_ERR_EXECUTE_ARGUMENT")


def test_a_malformed_cast_argument_is_its_type_s_input_error(engine_host, reference_pg):
    for dsn in (engine_host.dsn(), reference_pg):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("PREPARE bad_date (date) AS SELECT $1 AS v")
            with pytest.raises(psycopg.Error) as bad:
                conn.execute("EXECUTE bad_date('2024-13-45'::date)")
            assert bad.value.sqlstate in ("22008", "22007", "22P02")  # PostgreSQL: 22008; the engine: 22P02


def _audit_records(state_dir: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl"))
            for line in path.read_text().splitlines() if line.strip()]


# --- governance ----------------------------------------------------------------------------------------


def test_execute_as_the_analyst_returns_the_masked_rows_of_the_statement(engine_host):
    analyst = engine_host.demo_dsn("acme-analyst")
    query = "SELECT customer_id, ssn, card_number, email, phone FROM crm.customers WHERE customer_id > {} " \
            "ORDER BY customer_id LIMIT 20"
    with psycopg.connect(analyst, autocommit=True) as conn:
        direct = conn.execute(query.format("%s"), [0]).fetchall()
        conn.execute(f"PREPARE masked (int) AS {query.format('$1')}")
        executed = conn.execute("EXECUTE masked(0)").fetchall()
    with psycopg.connect(engine_host.demo_dsn("acme-admin"), autocommit=True) as conn:
        unmasked = conn.execute(query.format("%s"), [0]).fetchall()
    assert executed == direct and executed
    assert {row[0] for row in executed} == {row[0] for row in unmasked}
    assert all(a[1] != u[1] for a, u in zip(executed, unmasked, strict=True))  # ssn fully masked
    assert all(a[2][-4:] == u[2][-4:] and a[2] != u[2] for a, u in zip(executed, unmasked, strict=True))


def test_execute_as_the_analyst_sees_the_filtered_rows_only(engine_host):
    with psycopg.connect(engine_host.demo_dsn("acme-analyst"), autocommit=True) as conn:
        conn.execute("PREPARE departments AS SELECT DISTINCT department, org_id FROM hr.employees")
        assert conn.execute("EXECUTE departments").fetchall() == [("Sales", "org_acme")]


def test_an_execute_leaves_one_record_with_the_statement_s_tables(engine_host):
    marker = f"audited_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine_host.demo_dsn("acme-analyst"), autocommit=True) as conn:
        conn.execute(f"PREPARE {marker} (int) AS SELECT customer_id, ssn AS {marker} FROM crm.customers "
                     "WHERE customer_id = $1")
        conn.execute(f"EXECUTE {marker}(1)").fetchall()
        conn.execute(f"EXECUTE {marker}(2)").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute(f"EXECUTE {marker}(1, 2)")
    records = [r for r in _audit_records(engine_host.state_dir) if marker in r["sql_redacted"]]
    kinds = [r["statement_kind"] for r in records]
    assert kinds == ["prepare", "select", "select", "execute"]
    for executed in records[1:3]:  # the statement's record, as an Execute of the protocol writes it
        assert executed["sql_redacted"].startswith("SELECT customer_id")
        assert executed["tables"] == ["crm.customers"] and "ssn" in " ".join(executed["masked_columns"])
        assert executed["error"] is None
    assert records[3]["error"]["code"] == "HD_ERR_SYNTAX" and records[3]["sql_redacted"].startswith("EXECUTE")


# --- one namespace with the protocol's prepared statements -------------------------------------------


def _one_namespace(dsn: str) -> list[object]:
    seen: list[object] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        pgconn = conn.pgconn
        pgconn.prepare(b"parsed", b"SELECT $1::int + 1 AS v")
        seen.append(conn.execute("EXECUTE parsed(41)").fetchall())
        conn.execute("PREPARE prepared (int) AS SELECT $1 * 2 AS v")
        result = pgconn.exec_prepared(b"prepared", [b"21"])
        seen.append((result.status, result.get_value(0, 0)))
        with pytest.raises(psycopg.Error) as duplicate:
            conn.execute("PREPARE parsed AS SELECT 1")
        seen.append(duplicate.value.sqlstate)
        conn.execute("DEALLOCATE parsed")
        seen.append(pgconn.exec_prepared(b"parsed", [b"1"]).error_field(psycopg.pq.DiagnosticField.SQLSTATE))
        conn.execute("DISCARD ALL")
        seen.append(pgconn.exec_prepared(b"prepared", [b"1"]).error_field(psycopg.pq.DiagnosticField.SQLSTATE))
    return seen


def test_parse_and_prepare_share_one_namespace(engine_host, reference_pg):
    engine = _one_namespace(engine_host.dsn())
    assert engine == _one_namespace(reference_pg)
    assert engine[0] == [(42,)] and engine[3] == b"26000" and engine[4] == b"26000"


def test_prepared_statements_outlive_a_rolled_back_transaction_and_fail_in_an_aborted_one(engine_host, reference_pg):
    statements = ["BEGIN", "PREPARE in_tx AS SELECT 1 AS one", "ROLLBACK", "EXECUTE in_tx",
                  "BEGIN", "SELECT * FROM no_such_table", "EXECUTE in_tx", "ROLLBACK", "EXECUTE in_tx"]
    assert _run(engine_host.dsn(), statements) == _run(reference_pg, statements)


# --- psql --------------------------------------------------------------------------------------------

PSQL_SCRIPT = """\
PREPARE p (int, text) AS SELECT $1 + 1 AS n, upper($2) AS s;
EXECUTE p(41, 'abc');
EXECUTE p(-1, NULL);
DEALLOCATE p;
EXECUTE p(1, 'x');
"""


def _psql(dsn_args: list[str], password: str | None) -> subprocess.CompletedProcess[str]:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client); .ci/run installs it")
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run(["psql", "-X", "-At", *dsn_args], input=PSQL_SCRIPT, capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_psql_prepares_executes_and_deallocates_as_with_postgres(engine_host, reference_pg):
    engine = _psql([engine_host.dsn()], None)
    pg = _psql([reference_pg], None)
    assert engine.stdout == pg.stdout == "PREPARE\n42|ABC\n0|\nDEALLOCATE\n"
    assert 'prepared statement "p" does not exist' in engine.stderr
    assert 'prepared statement "p" does not exist' in pg.stderr


# --- a policy change between PREPARE and EXECUTE ---------------------------------------------------


def _local_policy(engine_host, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "engine_host.cli", "local-policy", "--state-dir",
                           str(engine_host.state_dir), *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _eventually(check, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the policy change did not reach the engine host in time")
        time.sleep(0.2)


def test_an_execute_after_a_policy_change_runs_under_the_new_policy(engine_host):
    """The statement is re-planned at EXECUTE, as an Execute of a Parse'd statement is: a mask added since applies."""
    rule = f"msk_prepare_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(engine_host.demo_dsn("acme-analyst"), autocommit=True) as conn:
        conn.execute("PREPARE replanned AS SELECT DISTINCT status FROM sales.orders")
        assert ("***",) not in conn.execute("EXECUTE replanned").fetchall()
        _local_policy(engine_host, "add", "--json", json.dumps({
            "kind": "mask", "rule_id": rule, "org_id": "org_acme", "table": "sales.orders", "column": "status",
            "function": "full"}))
        try:
            _eventually(lambda: conn.execute("EXECUTE replanned").fetchall() == [("***",)])
        finally:
            _local_policy(engine_host, "remove", "mask", rule)
        _eventually(lambda: conn.execute("EXECUTE replanned").fetchall() != [("***",)])
