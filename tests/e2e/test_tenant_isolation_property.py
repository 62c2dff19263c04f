"""Property: whatever SELECT a tenant sends over the demo schema, every value it gets back is permitted.

Hypothesis generates SELECTs (random table, projection with masked columns and expressions, WHERE
predicates with literals taken from both tenants' real data, GROUP BY / ORDER BY / LIMIT, joins of
sales.orders and crm.customers, UNION ALL with another branch, CTE wrapping) and runs each as
acme-analyst, globex-analyst and acme-agent (agent_framework=langchain). Ground truth is read from
the demo Parquet files with pyarrow, never through the code under test. A result must hold no
value of the other tenant (ids, org_id, e-mail domain), no department but the analyst's own from
hr.employees, and no unmasked protected value of any tenant; a query touching PHI must be refused
with HD_ERR_PHI_ACCESS_REQUIRED; any other refusal must carry an HD_ERR code and never be XX000.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.test_adversarial import Secrets, Truth, cells, parquet_rows
from tests.harness import EngineHostProcess

ACME, GLOBEX = "org_acme", "org_globex"
ID_BLOCK = {ACME: range(1_000_001, 1_000_501), GLOBEX: range(2_000_001, 2_000_501)}
DOMAIN = {ACME: "acme.example.com", GLOBEX: "globex.example.org"}
PHI_REFERENCE = re.compile(r"\b(patient_name|diagnosis)\b")


@dataclass(frozen=True)
class Persona:
    person: str
    org: str
    department: str
    options: str = ""

    @property
    def other(self) -> str:
        return GLOBEX if self.org == ACME else ACME


PERSONAS = (
    Persona("acme-analyst", ACME, "Sales"),
    Persona("globex-analyst", GLOBEX, "Engineering"),
    Persona("acme-agent", ACME, "Support", "-c hd.agent_framework=langchain"),
)

# column -> kind ("int", "text", "num", "time"); masked or PHI columns are included on purpose.
TABLES: dict[str, dict[str, str]] = {
    "crm.customers": {"customer_id": "int", "org_id": "text", "full_name": "text", "email": "text", "ssn": "text",
                      "card_number": "text", "phone": "text", "department": "text", "region": "text",
                      "lifetime_value": "num"},
    "hr.employees": {"employee_id": "int", "org_id": "text", "full_name": "text", "email": "text", "ssn": "text",
                     "phone": "text", "department": "text", "region": "text", "salary": "num", "hired_on": "time",
                     "manager_id": "int"},
    "sales.orders": {"order_id": "int", "org_id": "text", "customer_id": "int", "amount": "num", "currency": "text",
                     "status": "text", "region": "text"},
    "clinical.encounters": {"encounter_id": "int", "org_id": "text", "mrn": "text", "patient_name": "text",
                            "diagnosis": "text", "diagnosis_code": "text", "encounter_type": "text",
                            "provider": "text", "region": "text"},
}
DEPARTMENTS = ("Executive", "Engineering", "Sales", "Marketing", "Finance", "People", "Support", "Legal", "Operations")


# --- ground truth and literals ------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    secrets: Secrets
    text_literals: tuple[str, ...]
    int_literals: tuple[int, ...]


def _world(engine_host: EngineHostProcess) -> World:
    d = engine_host.state_dir
    truth = Truth(parquet_rows(d, "crm.customers"), parquet_rows(d, "hr.employees"), parquet_rows(d, "sales.orders"),
                  parquet_rows(d, "clinical.encounters"))
    texts: set[str] = {ACME, GLOBEX, *DEPARTMENTS, "***", ""}
    for rows in (truth.customers[:5] + truth.customers[500:505], truth.employees[:5] + truth.employees[500:505]):
        for row in rows:
            texts.update(str(row[c]) for c in ("ssn", "email", "phone", "full_name") if c in row)
            texts.update(str(row[c]) for c in ("card_number",) if c in row)
    ints = (1_000_001, 1_000_250, 1_000_500, 2_000_001, 2_000_250, 2_000_500, 0)
    return World(truth.secrets, tuple(sorted(texts)), ints)


# --- query generation ---------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@st.composite
def expressions(draw: st.DrawFn, table: str, qualifier: str = "") -> str:
    column = draw(st.sampled_from(sorted(TABLES[table])))
    ref = f"{qualifier}{column}"
    kind = TABLES[table][column]
    if kind != "text":
        return ref
    return draw(st.sampled_from([
        ref, f"lower({ref})", f"upper({ref})", f"substr({ref}, 1, 5)", f"right({ref}, 6)", f"reverse({ref})",
        f"concat({ref}, '|', {qualifier}org_id)", f"{ref} || '#'", f"replace({ref}, '-', '')", f"length({ref})",
    ]))


@st.composite
def predicates(draw: st.DrawFn, world: World, table: str, qualifier: str = "") -> str:
    column = draw(st.sampled_from(sorted(TABLES[table])))
    ref = f"{qualifier}{column}"
    kind = TABLES[table][column]
    if kind == "int":
        value = str(draw(st.sampled_from(world.int_literals)))
        op = draw(st.sampled_from(["=", "<>", "<", ">", ">="]))
        return f"{ref} {op} {value}"
    if kind != "text":
        return f"{ref} IS {draw(st.sampled_from(['NULL', 'NOT NULL']))}"
    literal = draw(st.sampled_from(world.text_literals))
    form = draw(st.sampled_from(["eq", "ne", "like", "in", "gt", "org"]))
    if form == "eq":
        return f"{ref} = {_quote(literal)}"
    if form == "ne":
        return f"{ref} <> {_quote(literal)}"
    if form == "like":
        return f"{ref} LIKE {_quote(literal[:3] + '%')}"
    if form == "in":
        other = draw(st.sampled_from(world.text_literals))
        return f"{ref} IN ({_quote(literal)}, {_quote(other)})"
    if form == "gt":
        return f"{ref} > {_quote(literal)}"
    return f"{qualifier}org_id = {_quote(draw(st.sampled_from([ACME, GLOBEX])))}"


@st.composite
def where_clauses(draw: st.DrawFn, world: World, table: str, qualifier: str = "") -> str:
    parts = draw(st.lists(predicates(world, table, qualifier), min_size=0, max_size=3))
    if not parts:
        return ""
    joiners = [draw(st.sampled_from([" AND ", " OR ", " OR NOT "])) for _ in parts[1:]]
    text = parts[0] + "".join(j + p for j, p in zip(joiners, parts[1:], strict=True))
    return f" WHERE {text}"


@st.composite
def single_table(draw: st.DrawFn, world: World) -> str:
    table = draw(st.sampled_from(sorted(TABLES)))
    where = draw(where_clauses(world, table))
    if draw(st.booleans()):  # grouped
        key = draw(expressions(table))
        agg = draw(st.sampled_from(["count(*)", f"count(DISTINCT {key})", f"min({key})", f"max({key})"]))
        order = draw(st.sampled_from(["", " ORDER BY 1", " ORDER BY 2 DESC, 1"]))
        return f"SELECT {key} AS k, {agg} AS n FROM {table}{where} GROUP BY 1{order}"
    projection = draw(st.lists(expressions(table), min_size=1, max_size=4))
    limit = draw(st.sampled_from(["", " LIMIT 5", " LIMIT 50"]))
    order = draw(st.sampled_from(["", " ORDER BY 1", f" ORDER BY {draw(expressions(table))}"]))
    distinct = draw(st.sampled_from(["", "DISTINCT "]))
    if distinct and order and not order.endswith("1"):
        order = " ORDER BY 1"
    return f"SELECT {distinct}{', '.join(projection)} FROM {table}{where}{order}{limit}"


@st.composite
def joined(draw: st.DrawFn, world: World) -> str:
    projection = draw(st.lists(st.one_of(expressions("sales.orders", "o."), expressions("crm.customers", "c.")),
                               min_size=1, max_size=4))
    where = draw(st.one_of(where_clauses(world, "sales.orders", "o."), where_clauses(world, "crm.customers", "c.")))
    kind = draw(st.sampled_from(["JOIN", "LEFT JOIN"]))
    return (f"SELECT {', '.join(projection)} FROM sales.orders o {kind} crm.customers c "
            f"ON o.customer_id = c.customer_id{where} LIMIT 200")


@st.composite
def union_branch(draw: st.DrawFn, world: World) -> str:
    table = draw(st.sampled_from(sorted(TABLES)))
    return f"SELECT CAST({draw(expressions(table))} AS VARCHAR) AS v FROM {table}{draw(where_clauses(world, table))}"


@st.composite
def queries(draw: st.DrawFn, world: World) -> str:
    shape = draw(st.sampled_from(["single", "single", "join", "union"]))
    if shape == "single":
        query = draw(single_table(world))
    elif shape == "join":
        query = draw(joined(world))
    else:
        query = f"{draw(union_branch(world))} UNION ALL {draw(union_branch(world))}"
    if draw(st.booleans()):
        query = f"WITH w AS ({query}) SELECT * FROM w"
    return query


# --- the property -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(engine_host: EngineHostProcess) -> World:
    return _world(engine_host)


@pytest.fixture(scope="module")
def sessions(engine_host: EngineHostProcess) -> Iterator[dict[str, psycopg.Connection]]:
    conns = {}
    try:
        for p in PERSONAS:
            extra = {"options": p.options} if p.options else {}
            conns[p.person] = psycopg.connect(engine_host.demo_dsn(p.person, **extra), autocommit=True)
        yield conns
    finally:
        for conn in conns.values():
            conn.close()


_BOUNDED_ID = re.compile(r"(?<![\w.])(\d{7})(?![\w.])")


def check_result(persona: Persona, world: World, sql: str, found: list[tuple]) -> None:
    other_ids = ID_BLOCK[persona.other]
    texts = list(cells(found))
    for row in found:
        for value in row:
            assert not (isinstance(value, int) and value in other_ids), f"{persona.person}: other tenant id {value}"
    for text in texts:
        assert persona.other not in text and DOMAIN[persona.other] not in text, f"{persona.person}: {text!r}"
        assert not any(int(m) in other_ids for m in _BOUNDED_ID.findall(text)), f"{persona.person}: {text!r}"
        hits = world.secrets.found(text)
        assert not hits, f"{persona.person} got unmasked {hits[:3]} from {sql}"
    if "hr.employees" in sql and all(t not in sql for t in TABLES if t != "hr.employees"):
        departments = {t for t in texts if t in DEPARTMENTS}
        assert departments <= {persona.department}, f"{persona.person} saw departments {departments}"


def run_as(conn: psycopg.Connection, persona: Persona, world: World, sql: str) -> None:
    touches_phi = PHI_REFERENCE.search(sql) is not None
    try:
        found = conn.execute(sql).fetchall()
    except psycopg.Error as exc:
        detail = exc.diag.message_detail or ""
        assert exc.sqlstate != "XX000" and detail.startswith("HD_ERR_"), f"{persona.person}: {exc!r} for {sql}"
        assert "Traceback" not in str(exc)
        assert not world.secrets.found(str(exc))
        if touches_phi:
            assert detail == "HD_ERR_PHI_ACCESS_REQUIRED", f"{persona.person}: {detail} for {sql}"
        return
    assert not touches_phi, f"{persona.person} read PHI without a grant: {sql}"
    check_result(persona, world, sql, found)


@pytest.mark.slow  # a property run: CI runs it (`pytest -m slow`)
@settings(max_examples=120, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_returned_value_is_permitted(world: World, sessions: dict[str, psycopg.Connection],
                                           data: st.DataObject) -> None:
    sql = data.draw(queries(world), label="sql")
    for persona in PERSONAS:
        run_as(sessions[persona.person], persona, world, sql)
