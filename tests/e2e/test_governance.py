"""Each governance feature through a real Postgres client (psycopg) against `hd dev --demo`.

The demo policies (engine_host/devmode/demo_policies.py) are the ground truth: two tenants sharing the demo
tables by `org_id`, masks on crm.customers and hr.employees, a department row filter, PHI tags
on clinical.encounters, ABAC denies for agents, and quotas for org_globex.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.harness import EngineHostProcess


def connect(host: EngineHostProcess, person: str | None = None, **params: str) -> psycopg.Connection:
    dsn = host.demo_dsn(person, **params) if person else host.dsn(**params)
    return psycopg.connect(dsn, autocommit=True)


def rows(host: EngineHostProcess, person: str | None, sql: str, **params: str) -> list[tuple]:
    with connect(host, person, **params) as conn:
        return conn.execute(sql).fetchall()


def refused(host: EngineHostProcess, person: str | None, sql: str, **params: str) -> psycopg.Error:
    with connect(host, person, **params) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(sql).fetchall()
    return caught.value


def hd_code(error: psycopg.Error) -> str | None:
    return error.diag.message_detail


@pytest.fixture(scope="module")
def owner_customers(engine_host: EngineHostProcess) -> dict[int, tuple]:
    """Unmasked acme customers as the Owner (exempt from the demo masks) sees them."""
    found = rows(engine_host, None, "SELECT customer_id, ssn, card_number, email, phone FROM crm.customers")
    return {r[0]: r[1:] for r in found}


# --- tenancy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("person", "org"), [("acme-analyst", "org_acme"), ("globex-analyst", "org_globex")])
def test_each_tenant_sees_only_its_own_rows_of_a_shared_table(engine_host: EngineHostProcess, person: str,
                                                              org: str) -> None:
    assert rows(engine_host, person, "SELECT org_id, count(*) FROM sales.orders GROUP BY org_id") == [(org, 500)]


def test_owner_sees_only_own_org_rows_too(engine_host: EngineHostProcess) -> None:
    assert rows(engine_host, None, "SELECT DISTINCT org_id FROM crm.customers") == [("org_acme",)]


def test_predicate_on_other_tenant_id_finds_nothing(engine_host: EngineHostProcess) -> None:
    sql = "SELECT count(*) FROM crm.customers WHERE org_id = 'org_globex' OR 1 = 1"
    assert rows(engine_host, "acme-analyst", sql) == [(500,)]


# --- masking ----------------------------------------------------------------------------------------


def test_masks_apply_per_function(engine_host: EngineHostProcess, owner_customers: dict[int, tuple]) -> None:
    found = rows(engine_host, "acme-analyst",
                 "SELECT customer_id, ssn, card_number, email FROM crm.customers ORDER BY customer_id LIMIT 20")
    assert len(found) == 20
    for customer_id, ssn, card, email in found:
        real_ssn, real_card, real_email, _ = owner_customers[customer_id]
        assert ssn == "***" and real_ssn != "***"
        assert card == "***" + real_card[-4:]
        assert email == "***" + real_email[-4:]


def test_hash_mask_is_keyed_hmac_of_the_value(engine_host: EngineHostProcess,
                                              owner_customers: dict[int, tuple]) -> None:
    key = engine_host.mask_keys()["test"]
    found = rows(engine_host, "acme-analyst", "SELECT customer_id, phone FROM crm.customers LIMIT 10")
    for customer_id, phone in found:
        real_phone = owner_customers[customer_id][3]
        assert phone == hmac.new(key, real_phone.encode(), hashlib.sha256).hexdigest()
        assert phone != hashlib.sha256(real_phone.encode()).hexdigest()  # keyed, not a plain digest


def test_join_on_hashed_column_still_matches(engine_host: EngineHostProcess) -> None:
    sql = ("SELECT count(*) FROM crm.customers a "
           "JOIN crm.customers b ON a.phone = b.phone AND a.customer_id = b.customer_id")
    assert rows(engine_host, "acme-analyst", sql) == [(500,)]


@pytest.mark.parametrize("sql", [
    "SELECT ssn AS x FROM crm.customers",
    "SELECT substr(ssn, 1, 3) FROM crm.customers",
    "SELECT c.ssn FROM crm.customers AS c",
    "SELECT crm.customers.ssn FROM crm.customers",
    "WITH c AS (SELECT * FROM crm.customers) SELECT ssn FROM c",
    "SELECT (SELECT max(ssn) FROM crm.customers)",
])
def test_masked_column_stays_masked_through_aliases_and_expressions(engine_host: EngineHostProcess,
                                                                    sql: str) -> None:
    values = {r[0] for r in rows(engine_host, "acme-analyst", sql)}
    assert values <= {"***", "*"}, values


def test_predicate_on_masked_column_is_not_an_oracle(engine_host: EngineHostProcess) -> None:
    assert rows(engine_host, "acme-analyst", "SELECT count(*) FROM crm.customers WHERE ssn LIKE '9%'") == [(0,)]
    assert rows(engine_host, None, "SELECT count(*) FROM crm.customers WHERE ssn LIKE '9%'") == [(500,)]


def test_agents_get_their_own_mask(engine_host: EngineHostProcess) -> None:
    human = rows(engine_host, "acme-analyst", "SELECT email FROM crm.customers LIMIT 3")
    agent = rows(engine_host, "acme-agent", "SELECT email FROM crm.customers LIMIT 3",
                 options="-c hd.agent_framework=langchain")
    assert all(e[0].startswith("***") and len(e[0]) == 7 for e in human)
    assert agent == [("***",)] * 3


def test_null_mask_keeps_the_column_type(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, "acme-analyst") as conn:
        cur = conn.execute("SELECT salary FROM hr.employees LIMIT 1")
        assert cur.fetchall() == [(None,)]
        assert cur.description[0].type_code == 1700  # numeric, as unmasked


# --- row-level security -------------------------------------------------------------------------------


def test_row_filter_placeholder_resolves_to_session_attribute(engine_host: EngineHostProcess) -> None:
    assert rows(engine_host, "acme-analyst", "SELECT DISTINCT department FROM hr.employees") == [("Sales",)]
    everyone = rows(engine_host, None, "SELECT count(DISTINCT department) FROM hr.employees")[0][0]
    assert everyone > 1


# --- PHI, ABAC, roles, scopes -------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SELECT patient_name FROM clinical.encounters",
    "SELECT * FROM clinical.encounters",
    "SELECT count(*) FROM clinical.encounters WHERE diagnosis LIKE 'Type 2%'",
])
def test_unmasked_phi_needs_a_phi_access_grant(engine_host: EngineHostProcess, sql: str) -> None:
    error = refused(engine_host, "acme-analyst", sql)
    assert error.sqlstate == "42501" and hd_code(error) == "HD_ERR_PHI_ACCESS_REQUIRED"


def test_non_phi_columns_of_a_phi_table_are_readable(engine_host: EngineHostProcess) -> None:
    found = rows(engine_host, "acme-analyst", "SELECT encounter_id, mrn FROM clinical.encounters LIMIT 2")
    assert all(mrn.startswith("***") for _, mrn in found)


def test_abac_denies_untrusted_agent_framework_on_clinical_tables(engine_host: EngineHostProcess) -> None:
    error = refused(engine_host, "acme-agent", "SELECT encounter_id FROM clinical.encounters",
                    options="-c hd.agent_framework=untrusted")
    assert error.sqlstate == "42501" and hd_code(error) == "HD_ERR_ABAC_DENIED"
    assert rows(engine_host, "acme-agent", "SELECT count(*) FROM clinical.encounters",
                options="-c hd.agent_framework=langchain") == [(500,)]


def test_auditor_role_cannot_query(engine_host: EngineHostProcess) -> None:
    error = refused(engine_host, "acme-auditor", "SELECT count(*) FROM sales.orders")
    assert error.sqlstate == "42501" and hd_code(error) == "HD_ERR_ROLE_NOT_PERMITTED"


def test_agent_key_without_write_scope_cannot_write(engine_host: EngineHostProcess) -> None:
    error = refused(engine_host, "acme-agent", "CREATE TABLE agent_scratch (x INTEGER)")
    assert error.sqlstate == "42501" and hd_code(error) in ("HD_ERR_SCOPE_MISSING", "HD_ERR_ROLE_NOT_PERMITTED")


def test_max_rows_quota_refuses_before_any_row(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, "globex-analyst") as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.Error) as caught:
            cur.execute("SELECT * FROM range(20000)")
        assert hd_code(caught.value) == "HD_ERR_MAX_ROWS_EXCEEDED"
        assert conn.execute("SELECT count(*) FROM range(20000)").fetchone() == (20000,)


# --- guard, errors -------------------------------------------------------------------------------------


def test_multiple_statements_in_one_query_are_refused(engine_host: EngineHostProcess) -> None:
    error = refused(engine_host, "acme-analyst", "SELECT 1; SELECT ssn FROM crm.customers")
    assert error.sqlstate == "42601" and hd_code(error) == "HD_ERR_MULTIPLE_STATEMENTS"


def test_errors_that_could_carry_values_are_generic(engine_host: EngineHostProcess) -> None:
    error = refused(engine_host, "acme-analyst", "SELECT CAST(full_name AS INTEGER) FROM crm.customers")
    message = str(error)
    names = {r[0] for r in rows(engine_host, None, "SELECT full_name FROM crm.customers")}
    assert "reference q_" in message
    assert not any(name in message for name in names)


# --- agent identity, dialects, catalog -------------------------------------------------------------------


def test_agent_identity_cannot_change_after_connecting(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, "acme-agent", options="-c hd.agent_id=bot-1") as conn:
        assert conn.execute("SHOW hd.agent_id").fetchone() == ("bot-1",)
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SET hd.agent_id = 'someone-else'")
        assert caught.value.sqlstate == "42501"
        conn.execute("SET hd.request_id = 'req-42'")


def test_agent_identity_as_plain_startup_parameters(engine_host: EngineHostProcess) -> None:
    import asyncio

    import asyncpg

    key = (engine_host.state_dir / "demo-keys" / "acme-agent.key").read_text().strip()

    async def ask() -> list[str]:
        conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user="usr_demo_acme_agent",
                                     password=key, database="hd", ssl=False,
                                     server_settings={"agent_id": "bot-9", "framework": "langchain"})
        try:
            identity = [await conn.fetchval("SHOW hd.agent_id"), await conn.fetchval("SHOW hd.agent_framework")]
            identity.append(await conn.fetchval("SELECT email FROM crm.customers LIMIT 1"))
            return identity
        finally:
            await conn.close()

    assert asyncio.run(ask()) == ["bot-9", "langchain", "***"]


def test_snowflake_dialect_by_startup_parameter(engine_host: EngineHostProcess) -> None:
    found = rows(engine_host, "acme-analyst", "SELECT IFF(1 = 1, 'yes', 'no'), NVL(NULL, 3)",
                 options="-c hd.dialect=snowflake")
    assert found == [("yes", 3)]


def test_catalog_lists_only_visible_tables(engine_host: EngineHostProcess) -> None:
    sql = ("SELECT table_schema || '.' || table_name FROM information_schema.tables "
           "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
    listed = {r[0] for r in rows(engine_host, "acme-analyst", sql)}
    assert {"crm.customers", "hr.employees", "sales.orders", "clinical.encounters"} <= listed


# --- audit ------------------------------------------------------------------------------------------------


def audit_records(state_dir: Path) -> Iterator[dict]:
    for path in sorted((state_dir / "audit" / "queries").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            yield json.loads(line)


def test_every_statement_leaves_an_audit_record_without_literals(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, "acme-agent", options="-c hd.agent_id=bot-7 -c hd.agent_framework=langchain") as conn:
        conn.execute("SET hd.request_id = 'audit-check-1'")
        conn.execute("SELECT email, ssn FROM crm.customers WHERE email = 'ada.abara@acme.example.com'").fetchall()
    record = next(r for r in audit_records(engine_host.state_dir) if r.get("request_id") == "audit-check-1")
    assert record["agent_id"] == "bot-7" and record["agent_framework"] == "langchain"
    assert record["tables"] == ["crm.customers"]
    assert "crm.customers.email" in record["masked_columns"] and "crm.customers.ssn" in record["masked_columns"]
    assert "ada.abara" not in record["sql_redacted"] and "acme.example.com" not in record["sql_redacted"]
    assert record["rows_returned"] == 0
    assert record["user_id"] == "usr_demo_acme_agent"


def test_refused_statement_is_audited_with_its_verdict(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, "acme-analyst") as conn:
        conn.execute("SET hd.request_id = 'audit-check-2'")
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT * FROM read_csv('/etc/passwd')")
    record = next(r for r in audit_records(engine_host.state_dir) if r.get("request_id") == "audit-check-2")
    assert record["error"]["code"] == "HD_ERR_FUNCTION_NOT_ALLOWED"
    assert any(v["decision"] == "deny" for v in record["verdicts"])
    assert "/etc/passwd" not in record["sql_redacted"]
