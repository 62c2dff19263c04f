"""Adversarial escape attempts against `hd dev --demo` through real clients (psycopg; asyncpg, psql where they differ).

Every attempt either is refused (SQLSTATE + HD_ERR code, and the error text holds no protected
value) or returns only permitted, masked data, checked against ground truth read straight from the
demo Parquet files with pyarrow (never through the code under test).

Groups: masking bypass, row-filter / tenancy bypass, DuckDB escape hatches, writes beyond the row
filter (a host of its own, since it adds policies), error-message and statistics leaks, identity tricks.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest

from tests.harness import EngineHostProcess, start_engine_host

ACME, GLOBEX = "org_acme", "org_globex"


# --- ground truth ---------------------------------------------------------------------------------


def parquet_rows(state_dir: Path, table: str) -> list[dict]:
    schema, name = table.split(".")
    return pq.read_table(state_dir / "data" / schema / name / "part-0.parquet").to_pylist()


@dataclass(frozen=True)
class Truth:
    """What the demo files hold, read with pyarrow (the code under test never sees these reads)."""

    customers: list[dict]
    employees: list[dict]
    orders: list[dict]
    encounters: list[dict]

    def ids(self, table: str, org: str, **where: str) -> set[int]:
        rows, key = {"crm.customers": (self.customers, "customer_id"), "hr.employees": (self.employees, "employee_id"),
                     "sales.orders": (self.orders, "order_id"),
                     "clinical.encounters": (self.encounters, "encounter_id")}[table]
        return {r[key] for r in rows if r["org_id"] == org and all(r[k] == v for k, v in where.items())}

    @property
    def ssns(self) -> set[str]:
        return {r["ssn"] for r in self.customers + self.employees}

    @property
    def secrets(self) -> Secrets:
        return Secrets(self)


class Secrets:
    """Finds any real ssn / card / phone / e-mail / salary (of any org) inside returned cells, fast."""

    def __init__(self, truth: Truth) -> None:
        # Masked for analysts: crm.customers ssn/card/phone/email, hr.employees ssn/salary. Employees' phones
        # and e-mails are readable, so they are taken out (a customer's phone may equal an employee's).
        self.ssn = {r["ssn"] for r in truth.customers + truth.employees}
        self.ssn_digits = {s.replace("-", "") for s in self.ssn}
        self.card = {r["card_number"] for r in truth.customers}
        self.phone = {r["phone"] for r in truth.customers} - {r["phone"] for r in truth.employees}
        self.phone_digits = {re.sub(r"\D", "", p) for p in self.phone}
        self.email = {r["email"] for r in truth.customers} - {r["email"] for r in truth.employees}
        money = {str(r["lifetime_value"]) for r in truth.customers} | {str(r["amount"]) for r in truth.orders}
        self.salary = {str(r["salary"]) for r in truth.employees} - money

    def found(self, text: str) -> list[str]:
        hits: list[str] = []
        for t in (text, text[::-1]):
            hits += [m for m in re.findall(r"\d{3}-\d{2}-\d{4}", t) if m in self.ssn]
            for run in re.findall(r"\d{9,}", t):
                hits += [s for s in self.ssn_digits | self.card | self.phone_digits if s in run]
            hits += [m for m in re.findall(r"\d{3}-\d{3}-\d{4}", t) if "+1-555-" + m[4:] in self.phone
                     or "+1-" + m in self.phone]
            for candidate in re.findall(r"[\w.%+-]*@[\w.-]+", t):
                hits += [e for e in self.email if e in candidate]
            hits += [m for m in re.findall(r"\d{5,6}\.\d\d", t) if m in self.salary]
        return hits


def cells(value: object) -> Iterator[str]:
    """Every scalar inside a returned value (rows, tuples, lists, dicts, JSON text) as text."""
    if isinstance(value, (list, tuple, set)):
        for item in value:
            yield from cells(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from cells(item)
    elif value is not None:
        yield str(value)


def assert_no_secret(secrets: Secrets, value: object) -> None:
    leaked = [hit for cell in cells(value) for hit in secrets.found(cell)]
    assert not leaked, f"protected values leaked: {leaked[:5]}"


@pytest.fixture(scope="module")
def truth(engine_host: EngineHostProcess) -> Truth:
    d = engine_host.state_dir
    return Truth(parquet_rows(d, "crm.customers"), parquet_rows(d, "hr.employees"), parquet_rows(d, "sales.orders"),
                 parquet_rows(d, "clinical.encounters"))


@pytest.fixture(scope="module")
def secrets(truth: Truth) -> Secrets:
    return truth.secrets


# --- clients --------------------------------------------------------------------------------------


def connect(host: EngineHostProcess, person: str | None = None, **params: str) -> psycopg.Connection:
    return psycopg.connect(host.demo_dsn(person, **params) if person else host.dsn(**params), autocommit=True)


def rows(host: EngineHostProcess, person: str | None, sql: str, params: tuple | None = None,
         **conn_params: str) -> list[tuple]:
    with connect(host, person, **conn_params) as conn:
        return conn.execute(sql, params).fetchall()


def refused(host: EngineHostProcess, person: str | None, sql: str, params: tuple | None = None,
            **conn_params: str) -> psycopg.Error:
    with connect(host, person, **conn_params) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(sql, params).fetchall()
    return caught.value


def assert_refused(error: psycopg.Error, sqlstate: str, code: str, secrets: Secrets | None = None) -> None:
    assert (error.sqlstate, error.diag.message_detail) == (sqlstate, code), str(error)
    if secrets is not None:
        assert_no_secret(secrets, [str(error), error.diag.message_hint or ""])


ANALYST, GLOBEX_ANALYST, AGENT = "acme-analyst", "globex-analyst", "acme-agent"
LANGCHAIN = {"options": "-c hd.agent_framework=langchain"}


# =================================================================================================
# 1. masking bypass
# =================================================================================================

MASK_BYPASS = [
    pytest.param("SELECT ssn AS not_ssn, card_number AS c, phone AS p, email AS e FROM crm.customers", id="aliases"),
    pytest.param("SELECT * FROM crm.customers", id="star"),
    pytest.param("SELECT substr(ssn, 1, 3), left(card_number, 12), right(email, 20), reverse(phone), lower(email), "
                 "upper(ssn) FROM crm.customers", id="string-functions"),
    pytest.param("SELECT concat(ssn, '|', card_number), ssn || email || phone, format('{}', ssn) FROM crm.customers",
                 id="concat-and-pipes"),
    pytest.param("SELECT regexp_extract(card_number, '\\d+'), regexp_replace(ssn, '-', ''), split_part(email, '@', 1), "
                 "replace(phone, '-', '') FROM crm.customers", id="regexp"),
    pytest.param("SELECT [ssn, card_number], {'a': ssn, 'b': email}, list_value(phone), struct_pack(x := ssn) "
                 "FROM crm.customers", id="list-struct-packing"),
    pytest.param("SELECT to_json(c), c, c::text, row_to_json(c) FROM crm.customers c", id="whole-row"),
    pytest.param("SELECT customers FROM crm.customers", id="whole-row-by-table-name"),
    pytest.param("SELECT string_agg(ssn, ','), list(card_number), array_agg(email), string_agg(phone, ';') "
                 "FROM crm.customers", id="aggregates"),
    pytest.param("SELECT ssn, lag(card_number) OVER (ORDER BY customer_id), first_value(email) OVER w, "
                 "last_value(phone) OVER w FROM crm.customers WINDOW w AS (ORDER BY ssn)", id="window-functions"),
    pytest.param("SELECT unnest([ssn, email, card_number, phone]) FROM crm.customers", id="unnest"),
    pytest.param("SELECT CASE WHEN ssn LIKE '9%' THEN ssn ELSE email END, coalesce(NULL, ssn), "
                 "nullif(card_number, '') FROM crm.customers", id="case-coalesce"),
    pytest.param("SELECT x.s FROM (SELECT ssn AS s FROM crm.customers) x UNION ALL SELECT email FROM crm.customers",
                 id="subquery-union"),
    pytest.param("WITH RECURSIVE r(s, n) AS (SELECT ssn, 1 FROM crm.customers UNION ALL SELECT s, n + 1 FROM r "
                 "WHERE n < 2) SELECT s FROM r", id="recursive-cte"),
    pytest.param("SELECT ssn, salary, phone, email FROM hr.employees", id="employees"),
    pytest.param("SELECT e::text, to_json(e) FROM hr.employees e", id="employees-whole-row"),
    pytest.param("SELECT mrn, to_json({'m': mrn}) FROM clinical.encounters", id="mrn-partial"),
    pytest.param("SELECT c.x, c.* FROM crm.customers AS c(customer_id, org_id, full_name, email, x)",
                 id="alias-columns"),
    pytest.param("SELECT ssn FROM crm.customers WHERE customer_id = %s", id="extended-protocol"),
]


@pytest.mark.parametrize("sql", MASK_BYPASS)
def test_masking_bypass_returns_masked_values_only(engine_host: EngineHostProcess, secrets: Secrets, sql: str) -> None:
    found = rows(engine_host, ANALYST, sql, (1000001,) if "%s" in sql else None)
    assert found, "the attack should return (masked) rows"
    assert_no_secret(secrets, found)


PHI = ("42501", "HD_ERR_PHI_ACCESS_REQUIRED")


@pytest.mark.parametrize(("sql", "dialect"), [
    # The first four returned patient_name / diagnosis without a grant before the fix in governance/columns.py.
    pytest.param("SELECT d FROM clinical.encounters AS e(a, b, c, d)", "postgres", id="alias-column-list"),
    pytest.param("SELECT * FROM clinical.encounters AS e(a, b, c, d)", "postgres", id="alias-column-list-star"),
    pytest.param("SELECT #4 FROM clinical.encounters", "duckdb", id="positional-column"),
    pytest.param("SELECT count(*) FROM clinical.encounters WHERE #7 LIKE 'Type 2%'", "duckdb",
                 id="positional-predicate"),
    pytest.param("SELECT e FROM clinical.encounters e", "postgres", id="whole-row"),
    pytest.param("SELECT struct_extract(e, 'patient_name') FROM clinical.encounters e", "postgres",
                 id="struct-extract"),
    pytest.param("SELECT COLUMNS('pat.*') FROM clinical.encounters", "duckdb", id="columns-regex"),
    pytest.param("SELECT count(*) FROM clinical.encounters JOIN (SELECT 'Emeka Park' AS patient_name) g "
                 "USING (patient_name)", "postgres", id="join-using"),
    pytest.param("SELECT x FROM (SELECT diagnosis AS x FROM clinical.encounters) s", "postgres", id="subquery-alias"),
])
def test_phi_cannot_be_read_under_another_name(engine_host: EngineHostProcess, truth: Truth, sql: str,
                                               dialect: str) -> None:
    error = refused(engine_host, ANALYST, sql, options=f"-c hd.dialect={dialect}")
    assert (error.sqlstate, error.diag.message_detail) == PHI
    assert not any(r["patient_name"] in str(error) for r in truth.encounters)


def test_renamed_non_phi_columns_stay_readable(engine_host: EngineHostProcess, truth: Truth) -> None:
    found = {r[0] for r in rows(engine_host, ANALYST, "SELECT a FROM clinical.encounters AS e(a, b, c)")}
    assert found == truth.ids("clinical.encounters", ACME)


def test_masked_columns_read_as_constants_or_suffixes(engine_host: EngineHostProcess, truth: Truth) -> None:
    found = rows(engine_host, ANALYST, "SELECT customer_id, ssn, card_number, email, length(ssn), md5(ssn), "
                 "hash(ssn) FROM crm.customers")
    real = {r["customer_id"]: r for r in truth.customers}
    assert {r[1] for r in found} == {"***"}
    assert all(r[2] == "***" + real[r[0]]["card_number"][-4:] and r[3] == "***" + real[r[0]]["email"][-4:]
               for r in found)
    assert {r[4] for r in found} == {3}  # no length oracle
    assert {r[5] for r in found} == {hashlib.md5(b"***").hexdigest()}
    assert len({r[6] for r in found}) == 1


def test_agents_mask_applies_inside_expressions(engine_host: EngineHostProcess, secrets: Secrets) -> None:
    found = rows(engine_host, AGENT, "SELECT email, right(email, 4), to_json(c) FROM crm.customers c", **LANGCHAIN)
    assert {r[0] for r in found} == {"***"} and {r[1] for r in found} == {"***"}
    assert all((r[2] if isinstance(r[2], dict) else json.loads(r[2]))["email"] == "***" for r in found)
    assert_no_secret(secrets, found)


def test_order_by_masked_column_is_no_oracle(engine_host: EngineHostProcess, truth: Truth) -> None:
    sql = "SELECT customer_id FROM crm.customers ORDER BY ssn, customer_id"
    found = [r[0] for r in rows(engine_host, ANALYST, sql)]
    by_real_ssn = [r["customer_id"] for r in sorted((r for r in truth.customers if r["org_id"] == ACME),
                                                     key=lambda r: (r["ssn"], r["customer_id"]))]
    assert found == sorted(found) and found != by_real_ssn


def test_group_by_and_distinct_counts_reveal_only_the_mask(engine_host: EngineHostProcess, truth: Truth) -> None:
    acme = [r for r in truth.customers if r["org_id"] == ACME]
    found = rows(engine_host, ANALYST, "SELECT count(DISTINCT ssn), count(DISTINCT card_number), "
                 "count(DISTINCT email), approx_count_distinct(ssn), "
                 "(SELECT count(*) FROM (SELECT ssn FROM crm.customers GROUP BY ssn)) FROM crm.customers")
    assert found == [(1, len({r["card_number"][-4:] for r in acme}), len({r["email"][-4:] for r in acme}), 1, 1)]
    assert len({r["ssn"] for r in acme}) > 1  # the real cardinality differs


@pytest.mark.parametrize("predicate", [
    pytest.param("ssn = '{ssn}'", id="equality"),
    pytest.param("ssn LIKE '9%'", id="like"),
    pytest.param("ssn BETWEEN '900-00-0000' AND '999-99-9999'", id="between"),
    pytest.param("ssn IN ('{ssn}', '{ssn2}')", id="in-list"),
    pytest.param("ssn >= '9'", id="binary-search"),
    pytest.param("card_number = '{card}'", id="card-equality"),
    pytest.param("email = '{email}'", id="email-equality"),
    pytest.param("CASE WHEN substr(ssn, 1, 1) = '9' THEN true ELSE false END", id="case-when"),
    pytest.param("salary > 0", id="salary-range"),
])
def test_predicates_on_masked_columns_are_no_oracle(engine_host: EngineHostProcess, truth: Truth,
                                                    predicate: str) -> None:
    acme = sorted((r for r in truth.customers if r["org_id"] == ACME), key=lambda r: r["customer_id"])
    where = predicate.format(ssn=acme[0]["ssn"], ssn2=acme[1]["ssn"], card=acme[0]["card_number"],
                             email=acme[0]["email"])
    table = "hr.employees" if "salary" in where else "crm.customers"
    assert rows(engine_host, ANALYST, f"SELECT count(*) FROM {table} WHERE {where}") == [(0,)]
    assert rows(engine_host, None, f"SELECT count(*) FROM {table} WHERE {where}")[0][0] > 0  # a real oracle for Owner


def test_join_on_masked_column_to_guessed_values_finds_nothing(engine_host: EngineHostProcess, truth: Truth) -> None:
    guesses = ", ".join(f"('{r['ssn']}')" for r in truth.customers[:200])
    sql = f"SELECT count(*) FROM crm.customers c JOIN (VALUES {guesses}) AS g(ssn) ON c.ssn = g.ssn"
    assert rows(engine_host, ANALYST, sql) == [(0,)]


def test_hash_mask_cannot_be_recomputed_by_the_attacker(engine_host: EngineHostProcess, secrets: Secrets) -> None:
    error = refused(engine_host, ANALYST, "SELECT hd_pg.hd_mask_hash('+1-555-200-0000')")
    assert_refused(error, "42501", "HD_ERR_FUNCTION_NOT_ALLOWED", secrets)
    plain = rows(engine_host, ANALYST, "SELECT count(*) FROM crm.customers WHERE phone = sha256(%s)",
                 (sorted(secrets.phone)[0],))
    assert plain == [(0,)]


# =================================================================================================
# 2. row-filter and tenancy bypass
# =================================================================================================

ACME_CUSTOMER_IDS = [
    pytest.param("SELECT customer_id FROM crm.customers WHERE org_id = 'org_globex' OR 1 = 1", id="or-1-eq-1"),
    pytest.param("SELECT customer_id FROM crm.customers UNION SELECT customer_id FROM crm.customers "
                 "WHERE org_id <> 'org_acme'", id="union"),
    pytest.param("SELECT customer_id FROM crm.customers EXCEPT SELECT customer_id FROM crm.customers "
                 "WHERE org_id = 'org_acme'", id="except"),
    pytest.param("SELECT customer_id FROM crm.customers INTERSECT SELECT customer_id FROM crm.customers "
                 "WHERE customer_id > 2000000", id="intersect"),
    pytest.param("SELECT o.customer_id FROM sales.orders o WHERE EXISTS (SELECT 1 FROM crm.customers c "
                 "WHERE c.org_id = 'org_globex')", id="exists"),
    pytest.param("SELECT customer_id FROM crm.customers WHERE customer_id IN "
                 "(SELECT customer_id FROM sales.orders WHERE org_id = 'org_globex') OR customer_id > 2000000",
                 id="in-subquery"),
    pytest.param("SELECT x.customer_id FROM crm.customers c, LATERAL (SELECT customer_id FROM crm.customers "
                 "WHERE customer_id = c.customer_id + 1000000) x", id="lateral"),
    pytest.param("WITH customers AS (SELECT * FROM crm.customers) SELECT customer_id FROM customers", id="cte-shadow"),
    pytest.param("WITH crm AS (SELECT 2000001 AS customer_id) SELECT customer_id FROM crm.customers", id="cte-crm"),
    pytest.param("WITH c AS (SELECT 2000001 AS customer_id) SELECT c.customer_id FROM crm.customers c",
                 id="alias-collides-with-cte"),
    pytest.param('SELECT customer_id FROM "CRM"."CUSTOMERS" WHERE "ORG_ID" <> \'org_acme\' OR true', id="quoted-upper"),
    pytest.param("SELECT customer_id FROM hd.crm.customers", id="catalog-qualified"),
    pytest.param("WITH RECURSIVE r(id) AS (SELECT min(customer_id) FROM crm.customers UNION ALL "
                 "SELECT id + 1 FROM r WHERE id < 2000010) SELECT c.customer_id FROM r JOIN crm.customers c "
                 "ON c.customer_id = r.id", id="recursive-walk"),
    pytest.param("SELECT customer_id FROM crm.customers TABLESAMPLE 100%", id="tablesample"),
    pytest.param("SELECT customer_id FROM ONLY crm.customers", id="only"),
    pytest.param("SELECT customer_id FROM crm.customers WHERE org_id = %s OR org_id = %s", id="parameters"),
]


@pytest.mark.parametrize("sql", ACME_CUSTOMER_IDS)
def test_tenant_filter_holds(engine_host: EngineHostProcess, truth: Truth, sql: str) -> None:
    params = (GLOBEX, "org_acme ") if "%s" in sql else None
    found = {r[0] for r in rows(engine_host, ANALYST, sql, params)}
    assert not found & truth.ids("crm.customers", GLOBEX)
    assert found <= truth.ids("crm.customers", ACME)


@pytest.mark.parametrize("sql", [
    pytest.param("SELECT customer_id FROM crm.customers WHERE customer_id < 2000000", id="acme-id-block"),
    pytest.param("SELECT order_id FROM sales.orders o JOIN crm.customers c USING (customer_id) "
                 "WHERE c.org_id = 'org_acme' OR o.org_id = 'org_acme' OR true", id="join"),
    pytest.param("SELECT customer_id FROM memory.crm.customers", id="memory-catalog"),
])
def test_globex_cannot_reach_acme_rows(engine_host: EngineHostProcess, truth: Truth, secrets: Secrets,
                                       sql: str) -> None:
    try:
        found = {r[0] for r in rows(engine_host, GLOBEX_ANALYST, sql)}
    except psycopg.Error as exc:
        assert_refused(exc, "42P01", "HD_ERR_UNKNOWN_TABLE", secrets)
        return
    assert not found & (truth.ids("crm.customers", ACME) | truth.ids("sales.orders", ACME))


@pytest.mark.parametrize("sql", [
    pytest.param("SELECT employee_id FROM hr.employees WHERE department <> 'Sales' OR true", id="or-true"),
    pytest.param("SELECT m.employee_id FROM hr.employees e JOIN hr.employees m ON m.employee_id = e.manager_id",
                 id="self-join-to-manager"),
    pytest.param("SELECT coalesce((SELECT max(x.employee_id) FROM hr.employees x WHERE x.department <> e.department), "
                 "e.employee_id) FROM hr.employees e", id="correlated-subquery"),
    pytest.param("WITH RECURSIVE up(id, boss) AS (SELECT employee_id, manager_id FROM hr.employees UNION "
                 "SELECT e.employee_id, e.manager_id FROM hr.employees e JOIN up ON e.employee_id = up.boss) "
                 "SELECT id FROM up", id="recursive-hierarchy"),
    pytest.param("WITH employees AS (SELECT * FROM hr.employees) SELECT employee_id FROM employees "
                 "WHERE department = 'Engineering' OR true", id="cte-shadow"),
    pytest.param("SELECT employee_id FROM hr.employees WHERE department IN "
                 "(SELECT department FROM crm.customers)", id="departments-from-another-table"),
])
def test_department_row_filter_holds(engine_host: EngineHostProcess, truth: Truth, sql: str) -> None:
    found = {r[0] for r in rows(engine_host, ANALYST, sql)}
    assert found and found <= truth.ids("hr.employees", ACME, department="Sales")


# =================================================================================================
# 3. DuckDB escape hatches, guard/engine disagreement
# =================================================================================================

FN = ("42501", "HD_ERR_FUNCTION_NOT_ALLOWED")
STMT = ("42501", "HD_ERR_STATEMENT_NOT_ALLOWED")
SYNTAX = ("42601", "HD_ERR_SYNTAX")
COPY_FILE = ("42501", "HD_ERR_COPY_SERVER_FILE")
MULTI = ("42601", "HD_ERR_MULTIPLE_STATEMENTS")

ESCAPES = [
    pytest.param("SELECT * FROM query('SELECT ssn FROM crm.customers')", FN, id="query"),
    pytest.param("SELECT * FROM query_table('crm.customers')", FN, id="query_table"),
    pytest.param("SELECT * FROM read_parquet('data/crm/customers/part-0.parquet')", FN, id="read_parquet"),
    pytest.param("SELECT * FROM read_csv('/etc/passwd')", FN, id="read_csv"),
    pytest.param("SELECT * FROM read_text('/etc/hostname')", FN, id="read_text"),
    pytest.param("SELECT * FROM read_blob('control.sqlite3')", FN, id="read_blob"),
    pytest.param("SELECT * FROM read_json_auto('x.json')", FN, id="read_json"),
    pytest.param("SELECT * FROM parquet_metadata('data/crm/customers/part-0.parquet')", FN, id="parquet_metadata"),
    pytest.param("SELECT * FROM 'data/crm/customers/part-0.parquet'", FN, id="file-as-table"),
    pytest.param("SELECT * FROM \"data/crm/customers/*.parquet\"", FN, id="quoted-glob-as-table"),
    pytest.param("SELECT * FROM glob('*')", SYNTAX, id="glob"),
    pytest.param("SELECT * FROM duckdb_settings()", FN, id="duckdb_settings"),
    pytest.param("SELECT * FROM duckdb_tables()", FN, id="duckdb_tables"),
    pytest.param("SELECT * FROM duckdb_variables()", FN, id="duckdb_variables"),
    pytest.param("SELECT getvariable('hd_mask_ipad')", FN, id="getvariable"),
    pytest.param("SELECT * FROM stats(1)", FN, id="stats"),
    pytest.param("SELECT hd_pg.hd_mask_hash('123-45-6789')", FN, id="hash-macro"),
    pytest.param("SELECT * FROM hd_pg.pg_class", STMT, id="hd_pg-relation"),
    pytest.param("SELECT * FROM system.main.duckdb_tables", STMT, id="system-catalog"),
    pytest.param("SELECT * FROM pragma_database_list()", FN, id="pragma-function"),
    pytest.param("SELECT getenv('HOME')", FN, id="getenv"),
    pytest.param("SELECT version(), max(ssn) FROM crm.customers", FN, id="catalog-function-in-user-query"),
    pytest.param("SELECT pg_catalog.current_setting('allowed_directories'), ssn FROM crm.customers", FN,
                 id="current_setting-in-user-query"),
    pytest.param("ATTACH 'control.sqlite3' AS ctl", SYNTAX, id="attach"),
    pytest.param("DETACH hd", STMT, id="detach"),
    pytest.param("COPY crm.customers TO '/tmp/hd-stolen.csv'", COPY_FILE, id="copy-to"),
    pytest.param("COPY crm.customers FROM '/etc/passwd'", COPY_FILE, id="copy-from-file"),
    pytest.param("COPY (SELECT 1) TO PROGRAM 'id'", COPY_FILE, id="copy-to-program"),
    pytest.param("EXPORT DATABASE '/tmp/hd-export'", SYNTAX, id="export-database"),
    pytest.param("INSTALL httpfs", STMT, id="install"),
    pytest.param("LOAD httpfs", STMT, id="load"),
    pytest.param("PRAGMA database_list", STMT, id="pragma"),
    pytest.param("CREATE MACRO steal(x) AS x", STMT, id="create-macro"),
    pytest.param("CREATE FUNCTION steal(x) AS x", STMT, id="create-function"),
    pytest.param("CREATE TEMP TABLE t AS SELECT * FROM crm.customers", STMT, id="create-temp-table"),
    pytest.param("CREATE VIEW v AS SELECT * FROM crm.customers", STMT, id="create-view"),
    pytest.param("SUMMARIZE crm.customers", SYNTAX, id="summarize"),
    pytest.param("EXPLAIN ANALYZE SELECT * FROM crm.customers", STMT, id="explain-analyze"),
    pytest.param("EXPLAIN (FORMAT JSON) SELECT 1", STMT, id="explain-options"),
    pytest.param("DESCRIBE crm.customers", STMT, id="describe"),
    pytest.param("CHECKPOINT", STMT, id="checkpoint"),
    pytest.param("CALL pragma_version()", STMT, id="call"),
    pytest.param("SELECT 1; SELECT ssn FROM crm.customers", MULTI, id="multi-statement-simple"),
    pytest.param("SELECT 1 /* ; */ ; SELECT ssn FROM crm.customers", MULTI, id="multi-after-comment"),
    pytest.param("SELECT 1 --\n; SELECT * FROM read_csv('/etc/passwd')", MULTI, id="multi-after-line-comment"),
    pytest.param("SELECT $$;$$; SELECT * FROM query_table('crm.customers')", MULTI, id="multi-after-dollar-quote"),
    pytest.param("/* /* */ SELECT * FROM read_csv('/etc/passwd') */ SELECT 1", ("", ""), id="nested-comment"),
]


@pytest.mark.parametrize(("sql", "expected"), ESCAPES)
def test_escape_hatches_are_refused(engine_host: EngineHostProcess, secrets: Secrets, sql: str,
                                    expected: tuple[str, str]) -> None:
    if expected == ("", ""):  # a construct whose only safe outcome is that DuckDB and the guard agree
        assert rows(engine_host, ANALYST, sql) == [(1,)]
        return
    assert_refused(refused(engine_host, ANALYST, sql), *expected, secrets)


@pytest.mark.parametrize("sql", [
    pytest.param("SELECT 1; SELECT ssn FROM crm.customers", id="two-selects"),
    pytest.param("SELECT %s::int; COPY crm.customers TO '/tmp/x'", id="select-then-copy"),
])
def test_multi_statement_in_extended_protocol(engine_host: EngineHostProcess, sql: str) -> None:
    error = refused(engine_host, ANALYST, sql, (1,) if "%s" in sql else None)
    assert error.sqlstate in ("42601",) and error.diag.message_detail in ("HD_ERR_MULTIPLE_STATEMENTS",)


@pytest.mark.parametrize("sql", [
    pytest.param("SELECT ssn /* ' */, '/* ' || card_number FROM crm.customers", id="quote-in-comment"),
    pytest.param("SELECT $$'$$ || ssn, $tag$ -- $tag$ || email FROM crm.customers", id="dollar-quotes"),
    pytest.param("SELECT E'\\'' || ssn, E'\\x27' || phone FROM crm.customers", id="escape-strings"),
    pytest.param("SELECT ssn -- ; SELECT * FROM read_csv('/etc/passwd')\nFROM crm.customers", id="line-comment"),
    pytest.param("SELECT U&'\\0027' || card_number FROM crm.customers", id="unicode-escape"),
    pytest.param("SELECT 'a''b' || ssn AS \"x\"\"y\" FROM crm.customers", id="doubled-quotes"),
])
def test_comment_and_quoting_tricks_still_mask(engine_host: EngineHostProcess, secrets: Secrets, sql: str) -> None:
    found = rows(engine_host, ANALYST, sql)
    assert len(found) == 500
    assert_no_secret(secrets, found)


def test_duckdb_settings_cannot_be_changed(engine_host: EngineHostProcess, secrets: Secrets) -> None:
    with connect(engine_host, ANALYST) as conn:
        for setting in ("SET enable_external_access = true", "SET allowed_directories = ['/']",
                        "SET lock_configuration = false", "RESET enable_external_access"):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(setting)
            assert caught.value.sqlstate == "42704" and caught.value.diag.message_detail == "HD_ERR_UNKNOWN_SETTING"
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT * FROM read_csv('/etc/passwd')")
        assert_refused(caught.value, *FN, secrets)


def test_current_setting_does_not_reveal_engine_configuration(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, ANALYST) as conn:
        for name in ("allowed_directories", "enable_external_access", "hd_mask_ipad"):
            try:
                found = conn.execute(f"SELECT current_setting('{name}')").fetchall()
            except psycopg.Error as exc:
                assert exc.sqlstate and exc.sqlstate != "XX000" and (exc.diag.message_detail or "").startswith("HD_ERR")
            else:
                assert found in ([(None,)], [("",)]), found


def test_psql_simple_protocol_multi_statement_and_governed_copy(engine_host: EngineHostProcess) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    key = (engine_host.state_dir / "demo-keys" / f"{ANALYST}.key").read_text().strip()
    env = {**os.environ, "PGPASSWORD": key, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}

    def psql(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(engine_host.port), "-U",
                               "usr_demo_acme_analyst", "-d", "hd", "-v", "ON_ERROR_STOP=1", *args],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    multi = psql("-c", "SELECT 1; SELECT ssn FROM crm.customers")
    assert multi.returncode != 0 and "one statement" in multi.stderr
    # \copy is COPY ... TO STDOUT, served as the governed SELECT: the analyst's masks hold in it.
    copy = psql("-c", "\\copy crm.customers (customer_id, ssn) TO STDOUT")
    assert copy.returncode == 0, copy.stderr
    rows = [line.split("\t") for line in copy.stdout.splitlines()]
    assert rows and {ssn for _, ssn in rows} == {"***"}
    assert not re.search(r"\d{3}-\d{2}-\d{4}", copy.stdout)
    ok = psql("-c", "SELECT DISTINCT ssn FROM crm.customers")
    assert ok.returncode == 0 and ok.stdout.split() == ["***"]


def test_asyncpg_prepared_statements_mask_and_filter(engine_host: EngineHostProcess, secrets: Secrets,
                                                     truth: Truth) -> None:
    import asyncpg

    key = (engine_host.state_dir / "demo-keys" / f"{ANALYST}.key").read_text().strip()

    async def attack() -> tuple[list, list, str]:
        conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user="usr_demo_acme_analyst",
                                     password=key, database="hd", ssl=False)
        try:
            masked = await conn.fetch("SELECT ssn, card_number, to_json(c)::text FROM crm.customers c "
                                      "WHERE org_id = $1 OR customer_id > $2", GLOBEX, 0)
            ids = await conn.fetch("SELECT customer_id FROM crm.customers WHERE org_id = $1", GLOBEX)
            try:
                await conn.execute("SELECT 1; SELECT * FROM read_csv('/etc/passwd')")
                multi = "ran"
            except asyncpg.PostgresError as exc:
                multi = exc.sqlstate
            return [tuple(r) for r in masked], [tuple(r) for r in ids], multi
        finally:
            await conn.close()

    masked, ids, multi = asyncio.run(attack())
    assert len(masked) == 500 and ids == [] and multi == "42601"
    assert_no_secret(secrets, masked)


# =================================================================================================
# 4. writes beyond the row filter (a host of its own: policies change here)
# =================================================================================================


def hd_policy(host: EngineHostProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine_host.cli", "local-policy", "--state-dir", str(host.state_dir),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def eventually(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("the policy change did not reach the engine host in time")
        time.sleep(0.2)


PEOPLE = [(1, "Sales", "901-01-0001", "s1"), (2, "Sales", "902-02-0002", "s2"), (3, "Legal", "903-03-0003", "l1"),
          (4, "Engineering", "904-04-0004", "e1")]


@pytest.fixture(scope="module")
def write_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    """`people` (row filter department = {department}, ssn masked for all but the Owner), `vault` (ssn masked for
    all but the Owner, no row filter), `sink` (no policies) and `acme_private` (org_acme's own table)."""
    host = start_engine_host(tmp_path_factory.mktemp("hd-adversarial"), "--demo", "--insecure-plaintext")
    try:
        with connect(host) as owner:
            owner.execute("CREATE TABLE people (id INTEGER, department VARCHAR, ssn VARCHAR, note VARCHAR)")
            owner.execute("CREATE TABLE sink (v VARCHAR)")
            owner.execute("CREATE TABLE acme_private (secret_note VARCHAR, ssn VARCHAR)")
            owner.execute("INSERT INTO acme_private VALUES ('acme only', '999-49-9999')")
            owner.execute("CREATE TABLE vault (id INTEGER, ssn VARCHAR)")
            owner.execute("INSERT INTO vault VALUES (1, '905-05-0005'), (2, '906-06-0006')")
        for document in (
            {"kind": "row_filter", "rule_id": "rls_people", "org_id": ACME, "table": "main.people",
             "filter": "department = {department}", "exempt_roles": ["Owner"]},
            {"kind": "mask", "rule_id": "msk_people_ssn", "org_id": ACME, "table": "main.people", "column": "ssn",
             "function": "full", "exempt_roles": ["Owner"]},
            {"kind": "mask", "rule_id": "msk_vault_ssn", "org_id": ACME, "table": "main.vault", "column": "ssn",
             "function": "full", "exempt_roles": ["Owner"]},
        ):
            done = hd_policy(host, "add", "--json", json.dumps(document))
            assert done.returncode == 0, done.stderr
        yield host
    finally:
        host.stop()


@pytest.fixture
def people(write_host: EngineHostProcess) -> EngineHostProcess:
    """Reset `people` to PEOPLE (as the Owner) and wait until the analyst sees the policies applied."""
    with connect(write_host) as owner:
        owner.execute("DELETE FROM people")
        owner.execute("DELETE FROM sink")
        owner.cursor().executemany("INSERT INTO people VALUES (%s, %s, %s, %s)", PEOPLE)
    with connect(write_host, ANALYST) as conn:
        eventually(lambda: conn.execute("SELECT id, ssn FROM people ORDER BY id").fetchall() == [(1, "***"),
                                                                                                 (2, "***")]
                   and conn.execute("SELECT DISTINCT ssn FROM vault").fetchall() == [("***",)])
    return write_host


def owner_people(host: EngineHostProcess) -> list[tuple]:
    with connect(host) as owner:
        return owner.execute("SELECT id, department, ssn, note FROM people ORDER BY id").fetchall()


ROW_FILTER_CHECK = ("42501", "HD_ERR_ROW_FILTER_CHECK")

ESCAPING_WRITES = [
    pytest.param("INSERT INTO people VALUES (10, 'Legal', '1', 'x')", id="insert-values"),
    pytest.param("INSERT INTO people (id, note, department) VALUES (10, 'x', 'Engineering')", id="insert-reordered"),
    pytest.param("INSERT INTO people (\"ID\", \"DEPARTMENT\") VALUES (10, 'Legal')", id="insert-quoted-upper"),
    pytest.param("INSERT INTO people (id) VALUES (10)", id="insert-omitting-filter-column"),
    pytest.param("INSERT INTO people (id, department) SELECT 10, 'Sales' UNION ALL SELECT 11, 'Legal'",
                 id="insert-union-one-bad-row"),
    pytest.param("WITH s AS (SELECT 10 AS id, 'Legal' AS d) INSERT INTO people (id, department) SELECT id, d FROM s",
                 id="insert-with-cte"),
    pytest.param("INSERT INTO people (id, department) SELECT customer_id, department FROM crm.customers",
                 id="insert-select-other-departments"),
    pytest.param("UPDATE people SET department = 'Legal' WHERE id = 1", id="update-out"),
    pytest.param("UPDATE people SET department = lower('LEGAL')", id="update-out-expression"),
    pytest.param("UPDATE people SET department = NULL WHERE id = 2", id="update-to-null"),
    pytest.param("UPDATE people SET (department, note) = ('Legal', 'moved') WHERE id = 1", id="update-tuple-set"),
    pytest.param("UPDATE people SET (department) = ('Legal') WHERE id = 2", id="update-parenthesised-set"),
    pytest.param("UPDATE people SET department = o.department FROM (SELECT 'Legal' AS department) o WHERE id = 1",
                 id="update-from"),
]


@pytest.mark.parametrize("sql", ESCAPING_WRITES)
def test_writes_that_would_leave_the_row_filter_abort(people: EngineHostProcess, sql: str) -> None:
    before = owner_people(people)
    error = refused(people, ANALYST, sql)
    assert (error.sqlstate, error.diag.message_detail) == ROW_FILTER_CHECK, str(error)
    assert owner_people(people) == before


@pytest.mark.parametrize("sql", [
    pytest.param("UPDATE people SET note = 'pwned' WHERE department = 'Legal' OR id >= 3", id="update-invisible"),
    pytest.param("DELETE FROM people WHERE id IN (3, 4) OR department <> 'Sales'", id="delete-invisible"),
    pytest.param("DELETE FROM people USING people other WHERE other.id = 3 AND people.id = 3", id="delete-using"),
    pytest.param("UPDATE people SET note = o.note FROM people o WHERE o.id = 3 AND people.id = 4", id="update-from"),
    pytest.param("DELETE FROM people WHERE ssn = '903-03-0003' OR ssn LIKE '9%'", id="delete-by-real-ssn"),
])
def test_updates_and_deletes_never_touch_invisible_rows(people: EngineHostProcess, sql: str) -> None:
    with connect(people, ANALYST) as conn:
        assert conn.execute(sql).rowcount == 0
    assert owner_people(people) == PEOPLE


def test_copying_masked_values_stores_the_mask(people: EngineHostProcess) -> None:
    with connect(people, ANALYST) as conn:
        assert conn.execute("UPDATE people SET note = ssn WHERE id = 1 RETURNING id, ssn, note").fetchall() == [
            (1, "***", "***")]
        assert conn.execute("INSERT INTO sink SELECT ssn FROM people").rowcount == 2
        conn.execute("INSERT INTO sink SELECT ssn || ':' || card_number FROM crm.customers LIMIT 3")
        inserted = conn.execute("INSERT INTO people (id, department, ssn, note) SELECT 5, 'Sales', ssn, email "
                                "FROM crm.customers ORDER BY customer_id LIMIT 1 RETURNING ssn, note").fetchall()
        assert inserted[0][0] == "***"
    stored = owner_people(people)
    assert stored[0] == (1, "Sales", "901-01-0001", "***")
    assert stored[-1][2] == "***" and stored[-1][3].startswith("***")
    with connect(people) as owner:
        sink = [r[0] for r in owner.execute("SELECT v FROM sink").fetchall()]
    assert sink[:2] == ["***", "***"] and all(v.startswith("***:***") for v in sink[2:])


def test_create_table_as_stores_masked_values(people: EngineHostProcess) -> None:
    # Analysts may not create tables at all; an Admin (masked on vault.ssn here) gets the mask into the copy.
    error = refused(people, ANALYST, "CREATE TABLE stolen AS SELECT ssn FROM crm.customers")
    assert (error.sqlstate, error.diag.message_detail) == ("42501", "HD_ERR_ROLE_NOT_PERMITTED")
    with connect(people, "acme-admin") as admin:
        admin.execute("DROP TABLE IF EXISTS admin_copy")
        admin.execute("CREATE TABLE admin_copy AS SELECT id, ssn, ssn || '' AS ssn2 FROM vault")
    with connect(people) as owner:
        assert owner.execute("SELECT id, ssn, ssn2 FROM admin_copy ORDER BY id").fetchall() == [
            (1, "***", "***"), (2, "***", "***")]


def test_merge_and_agent_writes_are_refused(people: EngineHostProcess) -> None:
    error = refused(people, ANALYST, "MERGE INTO people USING (SELECT 3 AS id) s ON people.id = s.id "
                    "WHEN MATCHED THEN DELETE")
    assert (error.sqlstate, error.diag.message_detail) == STMT
    error = refused(people, AGENT, "DELETE FROM people", **LANGCHAIN)
    assert error.sqlstate == "42501" and error.diag.message_detail in (
        "HD_ERR_SCOPE_MISSING", "HD_ERR_ROLE_NOT_PERMITTED", "HD_ERR_ABAC_DENIED")
    assert owner_people(people) == PEOPLE


# =================================================================================================
# 5. error-message and statistics leaks
# =================================================================================================


@pytest.mark.parametrize("sql", [
    pytest.param("SELECT CAST(ssn AS INTEGER) FROM crm.customers", id="cast-masked"),
    pytest.param("SELECT CAST(full_name AS INTEGER) FROM crm.customers", id="cast-name"),
    pytest.param("SELECT CAST(email AS DATE) FROM crm.customers", id="cast-email-date"),
    pytest.param("SELECT CAST(ssn || card_number || phone AS DOUBLE) FROM crm.customers", id="cast-concatenation"),
    pytest.param("SELECT CAST(c AS INTEGER) FROM crm.customers c", id="cast-whole-row"),
    pytest.param("SELECT CAST(full_name || ssn AS INTEGER) FROM hr.employees", id="cast-employee"),
    pytest.param("SELECT CAST(mrn AS INTEGER) FROM clinical.encounters", id="cast-mrn"),
])
def test_failing_expressions_leak_nothing(engine_host: EngineHostProcess, truth: Truth, secrets: Secrets,
                                          sql: str) -> None:
    error = refused(engine_host, ANALYST, sql)
    assert error.sqlstate.startswith("22") and (error.diag.message_detail or "").startswith("HD_ERR_")
    assert "reference q_" in str(error)
    text = f"{error} {error.diag.message_hint}"
    assert_no_secret(secrets, text)
    assert not any(r["full_name"] in text for r in truth.customers)
    assert not any(r["mrn"] in text for r in truth.encounters)


@pytest.mark.parametrize("sql", [
    "SELECT error(ssn || card_number || phone) FROM crm.customers",
    "SELECT count(*) FROM crm.customers WHERE customer_id = 2000001 AND error('boom') IS NULL",
])
def test_error_function_is_not_callable(engine_host: EngineHostProcess, sql: str) -> None:
    """error() would turn any row, filtered or not, into an error message: only the rewrite may call it."""
    assert_refused(refused(engine_host, ANALYST, sql), "42501", "HD_ERR_FUNCTION_NOT_ALLOWED")


@pytest.mark.parametrize(("sql", "expected"), [
    pytest.param("SELECT full_name::DATE FROM crm.customers WHERE customer_id > 2000000", [], id="cast-globex-rows"),
    pytest.param("SELECT count(*) FROM crm.customers WHERE CASE WHEN customer_id = 2000001 "
                 "THEN CAST('x' AS INTEGER) ELSE 1 END = 1", [(500,)], id="case-error-oracle"),
    pytest.param("SELECT count(*) FROM crm.customers WHERE ln(abs(customer_id - 2000001)) > 0", [(500,)],
                 id="log-of-zero-oracle"),
    pytest.param("SELECT count(*) FROM hr.employees WHERE CASE WHEN department = 'Engineering' "
                 "THEN CAST('x' AS INTEGER) ELSE 1 END = 1", "sales", id="department-error-oracle"),
    pytest.param("SELECT count(*) FROM crm.customers WHERE CASE WHEN ssn = '{ssn}' "
                 "THEN CAST('x' AS INTEGER) ELSE 1 END = 1", [(500,)], id="masked-error-oracle"),
])
def test_errors_are_no_oracle_for_filtered_rows(engine_host: EngineHostProcess, truth: Truth, sql: str,
                                                expected: object) -> None:
    if expected == "sales":
        expected = [(len(truth.ids("hr.employees", ACME, department="Sales")),)]
    real_ssn = min(r["ssn"] for r in truth.customers if r["org_id"] == ACME)
    assert rows(engine_host, ANALYST, sql.replace("{ssn}", real_ssn)) == expected


def test_min_max_and_statistics_of_masked_columns(engine_host: EngineHostProcess, truth: Truth) -> None:
    found = rows(engine_host, ANALYST, "SELECT min(ssn), max(ssn), min(salary), max(salary), avg(salary), "
                 "approx_count_distinct(phone), sum(length(email)) FROM crm.customers, "
                 "(SELECT salary FROM hr.employees LIMIT 1)")[0]
    assert found[:5] == ("***", "***", None, None, None)
    assert found[6] == 7 * 500  # every e-mail reads as *** plus 4 characters


def mask_key(host: EngineHostProcess) -> bytes:
    return host.mask_keys()["test"]


@pytest.mark.parametrize("sql", [
    pytest.param("EXPLAIN SELECT phone FROM crm.customers", id="hash-mask"),
    pytest.param("EXPLAIN SELECT count(*) FROM crm.customers a JOIN crm.customers b ON a.phone = b.phone", id="join"),
    pytest.param("EXPLAIN SELECT ssn, card_number FROM crm.customers WHERE phone = 'x'", id="predicate"),
])
def test_explain_shows_no_key_and_no_value(engine_host: EngineHostProcess, secrets: Secrets, sql: str) -> None:
    plan = "\n".join(str(c) for r in rows(engine_host, ANALYST, sql) for c in r)
    key = mask_key(engine_host)
    padded = key.ljust(64, b"\0")
    for secret in (key.hex(), bytes(b ^ 0x36 for b in padded).hex(), bytes(b ^ 0x5C for b in padded).hex(),
                   base64.b64encode(key).decode()):
        assert secret.lower() not in plan.lower()
    assert "hd_mask_ipad" not in plan and "getvariable" not in plan.lower()
    assert_no_secret(secrets, plan)


@pytest.mark.parametrize(("sql", "allowed"), [
    pytest.param("SELECT table_name FROM information_schema.tables WHERE table_name = 'acme_private'", [],
                 id="information_schema.tables"),
    pytest.param("SELECT column_name FROM information_schema.columns WHERE table_name = 'acme_private'", [],
                 id="information_schema.columns"),
    pytest.param("SELECT relname, reltuples FROM pg_catalog.pg_class WHERE relname = 'acme_private'", [],
                 id="pg_class.reltuples"),
    pytest.param("SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON a.attrelid = c.oid "
                 "WHERE c.relname = 'acme_private'", [], id="pg_attribute"),
    pytest.param("SELECT tablename FROM pg_catalog.pg_tables WHERE tablename = 'acme_private'", [], id="pg_tables"),
    pytest.param("SELECT to_regclass('acme_private')", [(None,)], id="to_regclass"),
    pytest.param("SELECT 'acme_private'::regclass::oid", [(None,)], id="regclass-cast"),
])
def test_catalog_hides_another_orgs_table(write_host: EngineHostProcess, sql: str, allowed: list) -> None:
    try:
        found = rows(write_host, GLOBEX_ANALYST, sql)
    except psycopg.Error as exc:  # refusing is fine too, as long as it is a clear refusal that names nothing
        assert exc.sqlstate != "XX000" and "secret_note" not in str(exc)
        return
    assert found == allowed


def test_catalog_lists_the_table_to_its_own_org(write_host: EngineHostProcess) -> None:
    sql = "SELECT table_name FROM information_schema.tables WHERE table_name = 'acme_private'"
    assert rows(write_host, ANALYST, sql) == [("acme_private",)]


def test_pg_stats_and_cross_tenant_reads_are_refused(write_host: EngineHostProcess) -> None:
    error = refused(write_host, GLOBEX_ANALYST, "SELECT * FROM pg_catalog.pg_stats WHERE tablename = 'acme_private'")
    assert error.sqlstate in ("42P01", "0A000", "42501", "22023") and "999-49-9999" not in str(error)
    assert (error.diag.message_detail or "").startswith("HD_ERR_")
    error = refused(write_host, GLOBEX_ANALYST, "SELECT secret_note, ssn FROM main.acme_private")
    missing = refused(write_host, GLOBEX_ANALYST, "SELECT secret_note, ssn FROM main.acme_nothing")
    assert (error.sqlstate, error.diag.message_detail) == (missing.sqlstate, missing.diag.message_detail) \
        == ("42P01", "HD_ERR_UNKNOWN_TABLE")
    assert str(error).replace("acme_private", "acme_nothing") == str(missing)
    assert "acme only" not in str(error) and "999-49-9999" not in str(error)


# =================================================================================================
# 6. identity tricks
# =================================================================================================


@pytest.mark.parametrize("statement", [
    pytest.param("SET hd.agent_framework = 'trusted'", id="set-framework"),
    pytest.param("SET hd.agent_id = 'someone-else'", id="set-agent-id"),
    pytest.param("SET HD.AGENT_FRAMEWORK TO 'x'", id="upper-case"),
    pytest.param("SET SESSION hd.agent_framework = 'x'", id="set-session"),
    pytest.param("SET LOCAL hd.agent_framework = 'x'", id="set-local"),
    pytest.param("SET hd.agent_framework TO DEFAULT", id="set-default"),
    pytest.param("RESET hd.agent_framework", id="reset"),
])
def test_agent_identity_is_fixed_for_the_connection(engine_host: EngineHostProcess, statement: str) -> None:
    with connect(engine_host, AGENT, **LANGCHAIN) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(statement)
        assert caught.value.sqlstate == "42501" and caught.value.diag.message_detail == "HD_ERR_IDENTITY_IMMUTABLE"
        assert conn.execute("SHOW hd.agent_framework").fetchone() == ("langchain",)
        assert {r[0] for r in conn.execute("SELECT email FROM crm.customers").fetchall()} == {"***"}


def test_reset_all_discard_and_set_config_keep_the_identity(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, AGENT, **LANGCHAIN) as conn:
        conn.execute("RESET ALL")
        conn.execute("DISCARD ALL")
        try:
            conn.execute("SELECT set_config('hd.agent_framework', 'untrusted', false)").fetchall()
        except psycopg.Error as exc:
            assert exc.sqlstate != "XX000"
        assert conn.execute("SHOW hd.agent_framework").fetchone() == ("langchain",)
        assert {r[0] for r in conn.execute("SELECT email FROM crm.customers").fetchall()} == {"***"}


@pytest.mark.parametrize("statement", [
    pytest.param("SET ROLE 'Owner'", id="set-role"),
    pytest.param("SET role = admin", id="set-role-equals"),
    pytest.param("SET SESSION AUTHORIZATION usr_owner", id="session-authorization"),
    pytest.param("SET hd.role = 'Owner'", id="hd-role"),
])
def test_role_cannot_be_switched_in_session(engine_host: EngineHostProcess, statement: str) -> None:
    with connect(engine_host, ANALYST) as conn:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            assert exc.sqlstate in ("42704", "55P02", "42501", "42601") and exc.diag.message_detail.startswith("HD_ERR")
        assert {r[0] for r in conn.execute("SELECT ssn FROM crm.customers").fetchall()} == {"***"}
        assert conn.execute("SELECT DISTINCT department FROM hr.employees").fetchall() == [("Sales",)]


def test_untrusted_framework_is_denied_clinical_data(engine_host: EngineHostProcess) -> None:
    error = refused(engine_host, AGENT, "SELECT count(*) FROM clinical.encounters",
                    options="-c hd.agent_framework=untrusted")
    assert (error.sqlstate, error.diag.message_detail) == ("42501", "HD_ERR_ABAC_DENIED")


@pytest.mark.parametrize("framework", ["Untrusted", "UNTRUSTED"])
def test_abac_framework_match_ignores_case(engine_host: EngineHostProcess, framework: str) -> None:
    error = refused(engine_host, AGENT, "SELECT count(*) FROM clinical.encounters",
                    options=f"-c hd.agent_framework={framework}")
    assert (error.sqlstate, error.diag.message_detail) == ("42501", "HD_ERR_ABAC_DENIED")


def test_agent_mask_framework_match_ignores_case(engine_host: EngineHostProcess) -> None:
    found = rows(engine_host, AGENT, "SELECT DISTINCT email FROM crm.customers",
                 options="-c hd.agent_framework=LangChain")
    assert found == [("***",)]


def test_asyncpg_startup_framework_cannot_be_changed_later(engine_host: EngineHostProcess) -> None:
    import asyncpg

    key = (engine_host.state_dir / "demo-keys" / f"{AGENT}.key").read_text().strip()

    async def attack() -> tuple[str | None, object]:
        conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user="usr_demo_acme_agent",
                                     password=key, database="hd", ssl=False,
                                     server_settings={"framework": "untrusted"})
        try:
            try:
                await conn.execute("SET hd.agent_framework = 'langchain'")
                state = None
            except asyncpg.PostgresError as exc:
                state = exc.sqlstate
            try:
                outcome: object = await conn.fetchval("SELECT count(*) FROM clinical.encounters")
            except asyncpg.PostgresError as exc:
                outcome = exc.sqlstate
            return state, outcome
        finally:
            await conn.close()

    assert asyncio.run(attack()) == ("42501", "42501")

