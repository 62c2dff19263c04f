"""psql's discovery commands list what the session may read, through its search_path (issue 16 item 6)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import psycopg
import pytest


def _psql(dsn_user: str, password: str, port: int, *commands: str, options: str = "") -> str:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client); .ci/run installs it")
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10",
           "PGOPTIONS": options}
    args = [a for c in commands for a in ("-c", c)]
    result = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", dsn_user, "-d", "hd", *args],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def _owner(engine_host, *commands: str, options: str = "") -> str:
    return _psql(engine_host.user, engine_host.password, engine_host.port, *commands, options=options)


def _person(engine_host, person: str, *commands: str, options: str = "") -> str:
    key = (engine_host.state_dir / "demo-keys" / f"{person}.key").read_text().strip()
    return _psql(f"usr_demo_{person.replace('-', '_')}", key, engine_host.port, *commands, options=options)


def _relations(output: str) -> set[tuple[str, str]]:
    """(schema, name) of each row of a psql \\d-style listing."""
    rows = set()
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 3 and cells[0] not in ("Schema", "") and not set(cells[0]) <= {"-", "+"}:
            rows.add((cells[0], cells[1]))
    return rows


@pytest.fixture(scope="module")
def owners_table(engine_host) -> str:
    """A table of the Owner's organisation in a schema of its own (no other organisation may see it)."""
    schema = f"disc_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.ledger AS SELECT 1 AS v")
    return schema


def test_dt_lists_the_tables_of_the_search_path(engine_host):
    listed = _relations(_owner(engine_host, "\\dt", options="-c search_path=crm,hr"))
    assert listed == {("crm", "customers"), ("hr", "employees")}


def test_dt_and_d_follow_a_set_search_path(engine_host, owners_table):
    out = _owner(engine_host, f"SET search_path = {owners_table}", "\\dt", "\\d")
    assert _relations(out) == {(owners_table, "ledger")}


def test_d_table_describes_a_table_found_through_the_path(engine_host):
    out = _owner(engine_host, "\\d customers", options="-c search_path=crm")
    assert 'Table "crm.customers"' in out
    assert "card_number" in out


def test_dt_of_a_schema_and_of_every_schema(engine_host):
    assert _relations(_owner(engine_host, "\\dt crm.*")) == {("crm", "customers")}
    every = _relations(_owner(engine_host, "\\dt *.*"))
    assert {("crm", "customers"), ("hr", "employees"), ("sales", "orders")} <= every


def test_another_organisation_sees_none_of_the_owners_tables(engine_host, owners_table):
    owner = _relations(_owner(engine_host, "\\dt *.*"))
    globex = _relations(_person(engine_host, "globex-analyst", "\\dt *.*"))
    assert (owners_table, "ledger") in owner
    assert (owners_table, "ledger") not in globex
    assert globex < owner
    path = f"-c search_path={owners_table}"
    assert _relations(_person(engine_host, "globex-analyst", "\\dt", options=path)) == set()


def test_dn_lists_schemas_and_df_dv_answer(engine_host):
    schemas = {line.split("|")[0].strip() for line in _owner(engine_host, "\\dn").splitlines()}
    assert {"crm", "hr", "sales", "main"} <= schemas
    assert "List of functions" in _owner(engine_host, "\\df")
    assert "Did not find any relations" in _owner(engine_host, "\\dv", options="-c search_path=crm")


def test_the_unknown_table_hint_names_a_command_that_lists_tables(engine_host):
    with psycopg.connect(engine_host.demo_dsn("acme-analyst"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as caught:
            conn.execute("SELECT * FROM customers")
    hint = caught.value.diag.message_hint or ""
    assert "\\dt *.*" in hint
    listed = _relations(_person(engine_host, "acme-analyst", "\\dt *.*"))
    assert ("crm", "customers") in listed
