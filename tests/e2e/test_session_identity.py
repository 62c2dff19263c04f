"""Session identity is immutable: who a session is comes from its credential, never from a setting.

`SET`/`RESET` of an `hd.*` identity setting is refused (42501 HD_ERR_IDENTITY_IMMUTABLE) over both
protocols, an unknown `hd.*` name is 42704 instead of a silently stored variable, a startup packet
that claims an identity is refused, and none of it changes what the session may read.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from tests.e2e.protocols import PROTOCOLS, refused, run
from tests.harness import EngineHostProcess

ANALYST, AGENT = "acme-analyst", "acme-agent"
LANGCHAIN = "-c hd.agent_framework=langchain"

IDENTITY_STATEMENTS = [
    "SET hd.org_id = 'org_globex'",
    "SET hd.org = 'org_globex'",
    "SET hd.role = 'Owner'",
    "SET hd.user_id = 'usr_owner'",
    "SET hd.user = 'usr_owner'",
    "SET hd.key_id = 'key_1'",
    "SET hd.env = 'live'",
    "SET hd.department = 'HR'",
    "SET hd.region = 'EU'",
    "SET hd.scopes = 'tables:read,tables:write'",
    "SET hd.agent_id = 'someone-else'",
    "SET hd.agent_framework = 'trusted'",
    "SET SESSION hd.role TO 'Owner'",
    "SET LOCAL hd.org_id = 'org_globex'",
    "SET HD.ROLE = 'Owner'",
    "SET hd.role TO DEFAULT",
    "RESET hd.role",
    "RESET hd.org_id",
    "RESET hd.agent_framework",
]


def connect(host: EngineHostProcess, person: str, **params: str) -> psycopg.Connection:
    return psycopg.connect(host.demo_dsn(person, **params), autocommit=True)


def assert_still_an_acme_analyst(conn: psycopg.Connection) -> None:
    assert {r[0] for r in conn.execute("SELECT ssn FROM crm.customers").fetchall()} == {"***"}
    assert {r[0] for r in conn.execute("SELECT DISTINCT org_id FROM crm.customers").fetchall()} == {"org_acme"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("statement", IDENTITY_STATEMENTS)
def test_identity_settings_are_refused(engine_host: EngineHostProcess, statement: str, protocol: str) -> None:
    with connect(engine_host, ANALYST) as conn:
        error = refused(conn, statement, protocol)
        assert (error.sqlstate, error.diag.message_detail) == ("42501", "HD_ERR_IDENTITY_IMMUTABLE")
        assert "identity comes from its credential" in (error.diag.message_primary or "")
        assert error.diag.message_hint
        assert_still_an_acme_analyst(conn)


def test_the_hint_says_how_to_act_as_someone_else(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, ANALYST) as conn:
        assert "API key" in (refused(conn, "SET hd.role = 'Owner'", "simple").diag.message_hint or "")
        assert "-c hd.agent_id=" in (refused(conn, "SET hd.agent_id = 'x'", "simple").diag.message_hint or "")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_agent_identity_stays_what_the_connection_declared(engine_host: EngineHostProcess, protocol: str) -> None:
    with connect(engine_host, AGENT, options=f"-c hd.agent_id=bot-1 {LANGCHAIN}") as conn:
        refused(conn, "SET hd.agent_framework = 'trusted'", protocol)
        run(conn, "RESET ALL", protocol)
        run(conn, "DISCARD ALL", "simple")
        assert conn.execute("SHOW hd.agent_framework").fetchone() == ("langchain",)
        assert conn.execute("SHOW hd.agent_id").fetchone() == ("bot-1",)
        assert {r[0] for r in conn.execute("SELECT email FROM crm.customers").fetchall()} == {"***"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_set_config_cannot_change_identity(engine_host: EngineHostProcess, protocol: str) -> None:
    with connect(engine_host, AGENT, options=LANGCHAIN) as conn:
        for name, value in (("hd.agent_framework", "untrusted"), ("hd.org_id", "org_globex"), ("hd.role", "Owner")):
            error = refused(conn, "SELECT set_config(%s, %s, false)", protocol, (name, value))
            assert error.sqlstate != "XX000"
            error = refused(conn, f"SELECT set_config('{name}', '{value}', false)", protocol)
            assert error.sqlstate != "XX000"
        assert conn.execute("SHOW hd.agent_framework").fetchone() == ("langchain",)
        assert {r[0] for r in conn.execute("SELECT email FROM crm.customers").fetchall()} == {"***"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("statement", ["SET hd.orgid = 'x'", "SET hd.tenant_override = 'x'", "RESET hd.nothing",
                                       "SHOW hd.org_id"])
def test_unknown_hd_settings_are_refused(engine_host: EngineHostProcess, statement: str, protocol: str) -> None:
    with connect(engine_host, ANALYST) as conn:
        error = refused(conn, statement, protocol)
        assert (error.sqlstate, error.diag.message_detail) == ("42704", "HD_ERR_UNKNOWN_SETTING")
        assert_still_an_acme_analyst(conn)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_settings_the_engine_reads_and_other_custom_settings_still_work(engine_host: EngineHostProcess,
                                                                       protocol: str) -> None:
    with connect(engine_host, ANALYST) as conn:
        run(conn, "SET hd.request_id = 'req-identity-1'", protocol)
        run(conn, "SET hd.priority = 'low'", protocol)
        run(conn, "SET hd.dialect = 'duckdb'", protocol)
        run(conn, "RESET hd.dialect", protocol)
        run(conn, "SET myapp.tenant = 'anything'", protocol)
        assert conn.execute("SHOW hd.request_id").fetchone() == ("req-identity-1",)
        assert conn.execute("SHOW myapp.tenant").fetchone() == ("anything",)


@pytest.mark.parametrize("option", ["-c hd.role=Owner", "-c hd.org_id=org_globex", "--hd.user_id=usr_x"])
def test_a_startup_option_claiming_an_identity_is_refused(engine_host: EngineHostProcess, option: str) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        connect(engine_host, ANALYST, options=option)
    assert "identity comes from its credential" in str(caught.value)


def test_a_startup_parameter_claiming_an_identity_is_refused_with_its_code(engine_host: EngineHostProcess) -> None:
    import asyncpg

    key = (engine_host.state_dir / "demo-keys" / f"{ANALYST}.key").read_text().strip()

    async def attempt() -> tuple[str, str]:
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=engine_host.port, user="usr_demo_acme_analyst",
                                         password=key, database="hd", ssl=False,
                                         server_settings={"hd.role": "Owner"})
        except asyncpg.PostgresError as exc:
            return exc.sqlstate, exc.detail
        await conn.close()
        return "", ""

    assert asyncio.run(attempt()) == ("42501", "HD_ERR_IDENTITY_IMMUTABLE")


def test_agent_identity_is_still_declared_at_startup(engine_host: EngineHostProcess) -> None:
    with connect(engine_host, AGENT, options=f"-c hd.agent_id=bot-3 {LANGCHAIN} -c hd.unknown=1") as conn:
        assert conn.execute("SHOW hd.agent_id").fetchone() == ("bot-3",)
        assert conn.execute("SHOW hd.agent_framework").fetchone() == ("langchain",)
