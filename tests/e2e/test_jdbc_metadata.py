"""The PostgreSQL JDBC driver's DatabaseMetaData against the engine host, compared with PostgreSQL 15.

tests/e2e/jdbc/MetadataProbe.java calls every DatabaseMetaData method a JDBC tool (DBeaver, DataGrip,
Metabase, Tableau's JDBC connector) uses on connect and while browsing, plus a few prepared statements
and ResultSet getters, and prints each answer as a JSON line. It runs once against the engine and once
against the reference PostgreSQL, over the same tables (`jdbc_probe.parent` and `jdbc_probe.child`,
created in both), and each answer is compared column label by column label, java.sql.Types code by
code and value by value.

Compared as they are, except what must differ between two servers:
- the database's name (`hd` here, `test` there) in catalog columns (TABLE_CAT, FUNCTION_CAT...);
- statistics of physical storage (getIndexInfo's PAGES: PostgreSQL counts a b-tree's 8 kB pages);
- the server's minor version (getDatabaseProductVersion, getDatabaseMinorVersion);
- objects that exist in one server only (PostgreSQL's `public` schema and other tests' schemas, the
  demo schemas here): schema listings are compared on the schemas both have;
- getTypeInfo lists PostgreSQL's composite types' array types (`_pg_class`, `_parent`...) and
  information_schema's domains, which the engine has not: compared on the types both list, and every
  other PostgreSQL type must be one of those.
Known differences, checked for shape only (labels and types) and named in KNOWN_DIFFERENCES: the
engine's pg_proc has no builtin functions, its pg_type no row types of tables, and its keyword list
is DuckDB's (what must be quoted in SQL it runs).
No OIDs, owners or remarks differ here: none of the compared answers carries one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.side_by_side import create_schema_tables

PROBE_SOURCE = Path(__file__).parent / "jdbc" / "MetadataProbe.java"
DRIVER_JAR = Path("/usr/share/java/postgresql.jar")
SCHEMA = "jdbc_probe"

TABLES_DDL = (
    f"CREATE TABLE {SCHEMA}.parent (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, score NUMERIC(12,2), "
    "born DATE, seen TIMESTAMP, active BOOLEAN, ratio DOUBLE PRECISION, big BIGINT, UNIQUE (name))",
    f"CREATE TABLE {SCHEMA}.child (id INTEGER PRIMARY KEY, "
    f"parent_id INTEGER NOT NULL REFERENCES {SCHEMA}.parent (id), qty SMALLINT, note VARCHAR)",
    f"INSERT INTO {SCHEMA}.parent VALUES (1, 'alpha', 1.5, DATE '2000-01-01', TIMESTAMP '2020-01-01 00:00:00', "
    "true, 0.5, 10), (2, 'beta', NULL, NULL, NULL, false, NULL, NULL), (3, 'gamma', 3.25, NULL, NULL, NULL, "
    "NULL, 30)",
)

# Calls whose rows truly differ between the engine and PostgreSQL: compared for shape only, and why.
KNOWN_DIFFERENCES = {
    "getFunctions(null,pg_catalog,upper)": "the engine's pg_proc lists user macros, not PostgreSQL's builtins",
    "getUDTs(null,schema,%,null)": "the engine's pg_type has no row type per table",
}
# Schemas both servers have; schema listings are compared on these.
COMMON_SCHEMAS = {SCHEMA, "pg_catalog", "information_schema"}
# Columns of physical storage statistics, which no two servers share.
STORAGE_COLUMNS = {"PAGES"}
SCALAR_DIFFERENCES = {"getDatabaseProductVersion", "getDatabaseMinorVersion", "getSQLKeywords"}


@pytest.fixture(scope="module")
def probe_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MetadataProbe compiled into a temporary folder; skips (saying why) without a JDK or the driver."""
    for tool in ("java", "javac"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (.ci/run installs default-jdk-headless)")
    if not DRIVER_JAR.exists():
        pytest.skip(f"{DRIVER_JAR} missing (.ci/run installs libpostgresql-jdbc-java)")
    out = tmp_path_factory.mktemp("jdbc-probe")
    subprocess.run(["javac", "-d", str(out), str(PROBE_SOURCE)], check=True, capture_output=True, timeout=120)
    return out


def _run_probe(classes: Path, url: str, user: str, password: str, *extra: str) -> dict[str, dict]:
    done = subprocess.run(
        ["java", "-cp", f"{DRIVER_JAR}:{classes}", "MetadataProbe", url, user, password, SCHEMA, "parent",
         "child", *extra],
        check=True, capture_output=True, text=True, timeout=120)
    answers = {}
    for line in done.stdout.splitlines():
        answer = json.loads(line)
        answers[answer["call"]] = answer
    return answers


def _engine_url(engine_host) -> str:
    return f"jdbc:postgresql://127.0.0.1:{engine_host.port}/hd?sslmode=require"


def _create_tables(dsn: str, *, fresh_schema: bool) -> None:
    create_schema_tables(dsn, SCHEMA, TABLES_DDL, ("child", "parent"), fresh_schema=fresh_schema)


@pytest.fixture(scope="module")
def answers(engine_host, reference_pg, probe_classes) -> Iterator[tuple[dict[str, dict], dict[str, dict]]]:
    """(engine, PostgreSQL) answers of every probe call, over the same tables."""
    _create_tables(engine_host.dsn(), fresh_schema=False)
    _create_tables(reference_pg, fresh_schema=True)
    pg = psycopg.conninfo.conninfo_to_dict(reference_pg)
    pg_url = f"jdbc:postgresql://{pg.get('host', '127.0.0.1')}:{pg.get('port', 5432)}/{pg['dbname']}"
    try:
        yield (_run_probe(probe_classes, _engine_url(engine_host), engine_host.user, engine_host.password),
               _run_probe(probe_classes, pg_url, str(pg.get("user", "postgres")), str(pg.get("password", ""))))
    finally:
        with psycopg.connect(reference_pg, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def _normalised_rows(answer: dict, database: str) -> list[list]:
    """Rows with the database's name replaced and storage statistics dropped (see the module docstring)."""
    keep = [i for i, label in enumerate(answer["columns"]) if label.upper() not in STORAGE_COLUMNS]
    catalog = {i for i, label in enumerate(answer["columns"])
               if label.upper().endswith("_CAT") or label.upper() == "TABLE_CATALOG"}
    rows = []
    for row in answer["rows"]:
        rows.append([("<db>" if i in catalog and value == database else value) for i, value in enumerate(row)
                     if i in keep])
    return rows


def _schema_rows(answer: dict) -> dict:
    """A schema listing restricted to the schemas both servers have."""
    column = [label.upper() for label in answer["columns"]].index("TABLE_SCHEM")
    return {**answer, "rows": [row for row in answer["rows"] if row[column] in COMMON_SCHEMAS]}


RESULT_SET_CALLS = [
    "getCatalogs", "getSchemas()", "getSchemas(null,schema)", "getTableTypes",
    "getTables(null,null,%,[TABLE])", "getTables(null,schema,%,null)", "getTables(null,schema,%,[TABLE])",
    "getTables(null,schema,%,[VIEW])", "getTables(null,schema-pattern,parent,null)",
    "getTables(catalog,schema,%,[TABLE,VIEW])",
    *[f"{call}(null,schema,{table}{suffix})" for table in ("parent", "child") for call, suffix in (
        ("getColumns", ",%"), ("getPrimaryKeys", ""), ("getIndexInfo", ",false,false"),
        ("getIndexInfo", ",true,false"), ("getImportedKeys", ""), ("getExportedKeys", ""))],
    "getColumns(null,schema,%,name)", "getCrossReference(parent,child)", "getFunctions(null,schema,%)",
    "getProcedures(null,schema,%)", "prepared setInt/setString", "prepared setArray(int4)",
    "prepared setArray(text)", "getters",
]


@pytest.mark.parametrize("call", RESULT_SET_CALLS)
def test_metadata_result_set_matches_postgres(answers, call):
    engine, pg = answers
    mine, theirs = engine[call], pg[call]
    assert "error" not in mine, mine
    if call.startswith(("getSchemas", "getTables(null,null")):
        mine, theirs = _schema_rows(mine), _schema_rows(theirs)
    assert mine.get("columns") == theirs.get("columns")
    assert mine["types"] == theirs["types"]
    if "columns" in mine:
        assert _normalised_rows(mine, "hd") == _normalised_rows(theirs, "test")
    else:  # the getters row: values as the driver's typed getters read them
        assert mine["rows"] == theirs["rows"]


def test_metadata_answers_rows_for_the_probe_tables(answers):
    """The comparisons above are not between two empty answers."""
    engine, _ = answers
    assert [r[3] for r in engine["getPrimaryKeys(null,schema,parent)"]["rows"]] == ["id"]
    assert [r[5] for r in engine["getIndexInfo(null,schema,parent,false,false)"]["rows"]] == [
        "parent_name_key", "parent_pkey"]
    imported = engine["getImportedKeys(null,schema,child)"]["rows"]
    assert [(r[2], r[3], r[6], r[7], r[11], r[12]) for r in imported] == [
        ("parent", "id", "child", "parent_id", "child_parent_id_fkey", "parent_pkey")]
    assert len(engine["getColumns(null,schema,parent,%)"]["rows"]) == 8


@pytest.mark.parametrize("call", sorted(KNOWN_DIFFERENCES))
def test_metadata_known_differences_keep_postgres_shape(answers, call):
    engine, pg = answers
    assert "error" not in engine[call], engine[call]
    assert engine[call]["columns"] == pg[call]["columns"]
    assert engine[call]["types"] == pg[call]["types"]


def test_connection_probes_match_postgres(answers):
    engine, pg = answers
    scalars = [call for call, answer in pg.items() if "value" in answer]
    assert len(scalars) >= 25
    for call in scalars:
        assert "error" not in engine[call], engine[call]
        if call not in SCALAR_DIFFERENCES:
            assert engine[call]["value"] == pg[call]["value"], call
    assert engine["getDatabaseProductVersion"]["value"].split(".")[0] == "15"
    keywords = engine["getSQLKeywords"]["value"].split(",")
    # The driver's query drops the SQL:2003 keywords from pg_get_keywords(): what is left is non-standard.
    assert "select" not in keywords and "abort" in keywords


def test_type_info_matches_postgres_for_every_type_the_engine_lists(answers):
    engine, pg = answers
    mine = {row[0]: row for row in engine["getTypeInfo"]["rows"]}
    theirs = {row[0]: row for row in pg["getTypeInfo"]["rows"]}
    assert engine["getTypeInfo"]["columns"] == pg["getTypeInfo"]["columns"]
    assert engine["getTypeInfo"]["types"] == pg["getTypeInfo"]["types"]
    assert set(mine) <= set(theirs)
    assert {name: mine[name] for name in mine} == {name: theirs[name] for name in mine}
    domains = {"cardinal_number", "character_data", "sql_identifier", "time_stamp", "yes_or_no"}
    missing = set(theirs) - set(mine)
    # Only composite types' arrays (one per relation, `_` + its name) and information_schema domains.
    assert all(name in domains or (name.startswith("_") and name.lstrip("_") not in mine) for name in missing)
    for base in ("int2", "int4", "int8", "numeric", "float8", "bool", "text", "varchar", "bpchar", "date", "time",
                 "timestamp", "timestamptz", "interval", "uuid", "bytea", "json", "jsonb", "_int4", "_text"):
        assert base in mine


def test_jdbc_get_tables_shows_an_analyst_only_tables_it_may_read(engine_host, probe_classes, answers):
    """getTables goes through the catalog's visibility filter: acme's table is listed to acme's analyst,
    never to globex's, whose getColumns and getPrimaryKeys for it answer nothing."""
    def tables_of(person: str, *extra: str) -> dict[str, dict]:
        key = (engine_host.state_dir / "demo-keys" / f"{person}.key").read_text().strip()
        return _run_probe(probe_classes, _engine_url(engine_host), f"usr_demo_{person.replace('-', '_')}", key,
                          *extra)

    def listed(answer: dict) -> set[tuple[str, str]]:
        return {(row[1], row[2]) for row in answer["rows"]}

    acme = listed(tables_of("acme-analyst", "visibility")["getTables(null,null,%,[TABLE])"])
    globex_answers = tables_of("globex-analyst", "visibility")
    globex = listed(globex_answers["getTables(null,null,%,[TABLE])"])
    assert (SCHEMA, "parent") in acme
    assert not {t for t in globex if t[0] == SCHEMA}
    assert ("crm", "customers") in globex  # the demo's shared tables stay listed
    assert globex_answers["getColumns(null,schema,parent,%)"]["rows"] == []
    assert globex_answers["getPrimaryKeys(null,schema,parent)"]["rows"] == []
    assert globex_answers["getImportedKeys(null,schema,child)"]["rows"] == []
