"""Parquet tables as DuckDB views, under the same lockdown the engine applies, and the demo dataset on top."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine_host.data import parquet_tables as tables
from engine_host.data.parquet_tables import ParquetTable, register_parquet_tables
from engine_host.devmode.demo import DEMO_ORGS, luhn_check_digit, write_demo_dataset
from engine_host.engine.views import VIEW_MARKER

PERMISSION_DENIED = r"Permission Error|disabled by configuration"


def lock_down(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    """The engine's lockdown, in the engine's order (FIELD-NOTES)."""
    con.execute("SET allowed_directories = $1", [[str(data_dir.resolve())]])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def write_table(data_dir: Path, schema: str, table: str, rows: dict[str, list[object]], name: str = "part-0") -> Path:
    path = data_dir / schema / table / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)
    return path


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_table(root, "crm", "customers", {"id": [1, 2, 3], "org_id": ["a", "a", "b"]})
    write_table(root, "sales", "orders", {"order_id": [10, 11], "amount": [5.0, 7.5]})
    return root


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def test_registration_returns_one_ref_per_table_directory(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    refs = register_parquet_tables(con, data_dir)

    assert refs == [
        ParquetTable("crm", "customers", data_dir.resolve() / "crm" / "customers", 1),
        ParquetTable("sales", "orders", data_dir.resolve() / "sales" / "orders", 1),
    ]
    assert [r.qualified_name for r in refs] == ["crm.customers", "sales.orders"]


def test_views_registered_before_lockdown_are_queryable_from_a_new_cursor_after_it(
    con: duckdb.DuckDBPyConnection, data_dir: Path
) -> None:
    register_parquet_tables(con, data_dir)
    lock_down(con, data_dir)

    cursor = con.cursor()

    assert scalar(cursor, "SELECT count(*) FROM crm.customers") == 3
    assert scalar(cursor, "SELECT sum(amount) FROM sales.orders") == 12.5


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('{outside}/*.parquet')",
        "SELECT * FROM read_parquet('{data_dir}/../outside/*.parquet')",
    ],
)
def test_files_outside_the_data_directory_are_refused_after_lockdown(
    con: duckdb.DuckDBPyConnection, data_dir: Path, tmp_path: Path, query: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pq.write_table(pa.table({"secret": ["s3cr3t"]}), outside / "leak.parquet")
    register_parquet_tables(con, data_dir)
    lock_down(con, data_dir)

    with pytest.raises(duckdb.PermissionException, match=PERMISSION_DENIED):
        con.cursor().execute(query.format(outside=outside, data_dir=data_dir.resolve()))


def test_lockdown_cannot_be_undone(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    register_parquet_tables(con, data_dir)
    lock_down(con, data_dir)

    with pytest.raises(duckdb.Error, match="locked"):
        con.cursor().execute("SET allowed_directories = ['/']")


def test_a_view_over_an_outside_path_made_before_lockdown_fails_after_it(
    con: duckdb.DuckDBPyConnection, data_dir: Path, tmp_path: Path
) -> None:
    outside = write_table(tmp_path / "elsewhere", "x", "y", {"secret": ["s3cr3t"]})
    con.execute(f"CREATE VIEW leak AS SELECT * FROM read_parquet('{outside}')")
    assert scalar(con, "SELECT secret FROM leak") == "s3cr3t"  # readable while unlocked

    lock_down(con, data_dir)

    with pytest.raises(duckdb.PermissionException, match=PERMISSION_DENIED):
        con.cursor().execute("SELECT * FROM leak")


def test_a_rescan_after_lockdown_registers_new_tables(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    register_parquet_tables(con, data_dir)
    lock_down(con, data_dir)
    write_table(data_dir, "hr", "employees", {"employee_id": [1, 2]})

    refs = register_parquet_tables(con, data_dir)

    assert [r.qualified_name for r in refs] == ["crm.customers", "hr.employees", "sales.orders"]
    assert scalar(con.cursor(), "SELECT count(*) FROM hr.employees") == 2


def test_a_new_file_in_a_registered_table_is_visible_without_a_rescan(
    con: duckdb.DuckDBPyConnection, data_dir: Path
) -> None:
    register_parquet_tables(con, data_dir)
    lock_down(con, data_dir)

    write_table(data_dir, "crm", "customers", {"id": [4], "org_id": ["b"]}, name="part-1")

    assert scalar(con.cursor(), "SELECT count(*) FROM crm.customers") == 4


def test_a_rescan_drops_views_whose_files_are_gone(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    register_parquet_tables(con, data_dir)
    lock_down(con, data_dir)
    (data_dir / "sales" / "orders" / "part-0.parquet").unlink()

    refs = register_parquet_tables(con, data_dir)

    assert [r.qualified_name for r in refs] == ["crm.customers"]
    with pytest.raises(duckdb.CatalogException):
        con.cursor().execute("SELECT * FROM sales.orders")


def test_registering_twice_is_idempotent_and_marks_each_view(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    first = register_parquet_tables(con, data_dir)
    second = register_parquet_tables(con, data_dir)

    assert first == second
    views = con.execute(
        "SELECT schema_name, view_name, comment FROM duckdb_views() WHERE NOT internal ORDER BY ALL"
    ).fetchall()
    assert views == [("crm", "customers", VIEW_MARKER), ("sales", "orders", VIEW_MARKER)]


def test_a_registration_that_fails_midway_changes_nothing(
    con: duckdb.DuckDBPyConnection, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create_view = tables.create_marked_view

    def fail_on_sales(con: duckdb.DuckDBPyConnection, catalog: str, schema: str, *args: str) -> None:
        if schema == "sales":
            raise duckdb.IOException("disk on fire")
        real_create_view(con, catalog, schema, *args)

    monkeypatch.setattr(tables, "create_marked_view", fail_on_sales)

    with pytest.raises(duckdb.IOException, match="disk on fire"):
        register_parquet_tables(con, data_dir)

    assert con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall() == []


def test_objects_the_registry_did_not_create_are_left_alone(
    con: duckdb.DuckDBPyConnection, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    con.execute("CREATE SCHEMA crm")
    con.execute("CREATE TABLE crm.customers AS SELECT 42 AS answer")
    con.execute("CREATE VIEW main.handmade AS SELECT 1 AS one")

    with caplog.at_level(logging.WARNING, logger="engine_host.data.parquet_tables"):
        refs = register_parquet_tables(con, data_dir)

    assert [r.qualified_name for r in refs] == ["sales.orders"]
    assert "crm.customers already exists as a table" in caplog.text
    assert scalar(con, "SELECT answer FROM crm.customers") == 42
    assert scalar(con, "SELECT one FROM main.handmade") == 1


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("Sales/orders", "schema name must match"),
        ("sales/Orders", "table name must match"),
        ("1sales/orders", "schema name must match"),
        ("sales/order-lines", "table name must match"),
        ("pg_catalog/pg_class", "reserved schema name"),
        ("temp/scratch", "reserved schema name"),
    ],
)
def test_directories_with_invalid_names_are_skipped_with_a_warning_naming_the_path(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, caplog: pytest.LogCaptureFixture, relative: str, reason: str
) -> None:
    root = tmp_path / "data"
    schema, table = relative.split("/")
    write_table(root, schema, table, {"a": [1]})

    with caplog.at_level(logging.WARNING, logger="engine_host.data.parquet_tables"):
        refs = register_parquet_tables(con, root)

    assert refs == []
    bad = root.resolve() / (schema if "schema" in reason else relative)
    assert str(bad) in caplog.text
    assert reason in caplog.text


def test_stray_files_and_empty_tables_are_skipped_with_a_warning(
    con: duckdb.DuckDBPyConnection, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (data_dir / "crm" / "loose.parquet").write_bytes(b"")
    (data_dir / "crm" / "empty").mkdir()
    (data_dir / ".hidden").mkdir()

    with caplog.at_level(logging.WARNING, logger="engine_host.data.parquet_tables"):
        refs = register_parquet_tables(con, data_dir)

    assert [r.qualified_name for r in refs] == ["crm.customers", "sales.orders"]
    assert "loose.parquet: expected a table directory" in caplog.text
    assert "empty: no *.parquet files" in caplog.text
    assert ".hidden" not in caplog.text


def test_a_table_with_a_symlink_escaping_the_data_directory_is_skipped(
    con: duckdb.DuckDBPyConnection, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = write_table(tmp_path / "elsewhere", "x", "y", {"id": [99], "org_id": ["z"]})
    os.symlink(outside, data_dir / "crm" / "customers" / "part-9.parquet")

    with caplog.at_level(logging.WARNING, logger="engine_host.data.parquet_tables"):
        refs = register_parquet_tables(con, data_dir)

    assert [r.qualified_name for r in refs] == ["sales.orders"]
    assert "part-9.parquet resolves outside the data directory" in caplog.text


def test_duckdb_itself_refuses_a_symlink_escaping_the_allowlist(
    con: duckdb.DuckDBPyConnection, data_dir: Path, tmp_path: Path
) -> None:
    # Why the registry skips such tables: under lockdown the view could only ever fail.
    outside = write_table(tmp_path / "elsewhere", "x", "y", {"id": [99], "org_id": ["z"]})
    link = data_dir / "crm" / "customers" / "part-9.parquet"
    os.symlink(outside, link)
    lock_down(con, data_dir)

    with pytest.raises(duckdb.PermissionException, match=PERMISSION_DENIED):
        con.execute(f"SELECT * FROM read_parquet('{link}')")


def test_a_quote_in_the_data_directory_path_stays_inside_the_literal(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    root = tmp_path / "o'brien's data"
    write_table(root, "crm", "customers", {"id": [1, 2]})

    register_parquet_tables(con, root)
    lock_down(con, root)

    assert scalar(con.cursor(), "SELECT count(*) FROM crm.customers") == 2


def test_a_data_directory_with_glob_metacharacters_is_refused(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    root = tmp_path / "data[1]"
    write_table(root, "crm", "customers", {"id": [1]})

    with pytest.raises(ValueError, match="glob metacharacter"):
        register_parquet_tables(con, root)


def test_views_in_a_database_file_survive_a_restart_and_a_rescan_is_harmless(data_dir: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "engine.duckdb"
    first = duckdb.connect(str(db_path))
    refs = register_parquet_tables(first, data_dir)
    lock_down(first, data_dir)
    first.close()

    second = duckdb.connect(str(db_path))
    try:
        lock_down(second, data_dir)
        assert scalar(second.cursor(), "SELECT count(*) FROM crm.customers") == 3  # before any re-scan

        assert register_parquet_tables(second, data_dir) == refs
        assert scalar(second.cursor(), "SELECT count(*) FROM crm.customers") == 3
        marked = second.execute("SELECT count(*) FROM duckdb_views() WHERE comment = $1", [VIEW_MARKER]).fetchone()
        assert marked == (2,)
    finally:
        second.close()


def test_spilling_to_the_temp_directory_still_works_under_lockdown(data_dir: Path, tmp_path: Path) -> None:
    # DuckDB allowlists its own temp directory, so the engine need not list it in allowed_directories.
    db_path = tmp_path / "engine.duckdb"
    con = duckdb.connect(str(db_path), config={"memory_limit": "32MB", "threads": "1"})
    try:
        lock_down(con, data_dir)
        allowed = scalar(con, "SELECT value FROM duckdb_settings() WHERE name = 'allowed_directories'")
        assert f"{db_path}.tmp/" in str(allowed)

        rows = scalar(con, "SELECT count(*) FROM (SELECT md5(i::VARCHAR) AS h FROM range(1000000) t(i) ORDER BY h)")

        assert rows == 1_000_000
        assert Path(f"{db_path}.tmp").is_dir()  # created on the first spill only
    finally:
        con.close()


# The demo dataset, end to end.

ROWS_PER_ORG = 120
DEMO_TABLES = ["clinical.encounters", "crm.customers", "hr.employees", "sales.orders"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo_dataset(root, rows_per_org=ROWS_PER_ORG)
    return root


@pytest.fixture(scope="module")
def demo_con(demo_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    register_parquet_tables(connection, demo_dir)
    lock_down(connection, demo_dir)
    yield connection.cursor()
    connection.close()


def test_demo_dataset_returns_the_tables_it_wrote(tmp_path: Path) -> None:
    written = write_demo_dataset(tmp_path, rows_per_org=5)

    assert sorted(f"{s}.{t}" for s, t in written) == DEMO_TABLES
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        f"{name.replace('.', '/')}/part-0.parquet" for name in DEMO_TABLES
    ]


def test_every_demo_table_registers_as_a_view(demo_dir: Path) -> None:
    con = duckdb.connect()
    refs = register_parquet_tables(con, demo_dir)
    assert [r.qualified_name for r in refs] == DEMO_TABLES
    con.close()


@pytest.mark.parametrize("table", DEMO_TABLES)
def test_each_demo_table_has_rows_per_org_rows_for_each_org(demo_con: duckdb.DuckDBPyConnection, table: str) -> None:
    counts = demo_con.execute(f"SELECT org_id, count(*) FROM {table} GROUP BY org_id ORDER BY org_id").fetchall()

    assert counts == [("org_acme", ROWS_PER_ORG), ("org_globex", ROWS_PER_ORG)]


def test_demo_column_types_suit_the_policies_we_demo(demo_con: duckdb.DuckDBPyConnection) -> None:
    types = dict(demo_con.execute("SELECT column_name, column_type FROM (DESCRIBE crm.customers)").fetchall())

    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["lifetime_value"] == "DECIMAL(12,2)"
    assert types["ssn"] == types["card_number"] == "VARCHAR"


def test_demo_ids_are_unique_across_orgs(demo_con: duckdb.DuckDBPyConnection) -> None:
    for table, key in [("crm.customers", "customer_id"), ("hr.employees", "employee_id"), ("sales.orders", "order_id")]:
        assert scalar(demo_con, f"SELECT count(DISTINCT {key}) FROM {table}") == 2 * ROWS_PER_ORG


def test_demo_orders_belong_to_customers_of_the_same_org(demo_con: duckdb.DuckDBPyConnection) -> None:
    orphans = scalar(
        demo_con,
        """SELECT count(*) FROM sales.orders o
           LEFT JOIN crm.customers c ON c.customer_id = o.customer_id AND c.org_id = o.org_id
           WHERE c.customer_id IS NULL""",
    )

    assert orphans == 0


def test_demo_lifetime_value_is_what_the_customer_paid(demo_con: duckdb.DuckDBPyConnection) -> None:
    mismatches = scalar(
        demo_con,
        """SELECT count(*) FROM crm.customers c
           LEFT JOIN (SELECT customer_id, sum(amount) AS paid FROM sales.orders
                      WHERE status IN ('paid', 'shipped') GROUP BY customer_id) p USING (customer_id)
           WHERE c.lifetime_value <> coalesce(p.paid, 0)""",
    )

    assert mismatches == 0


def test_demo_employees_report_to_a_manager_in_the_same_org(demo_con: duckdb.DuckDBPyConnection) -> None:
    rows = demo_con.execute(
        """SELECT e.org_id, count(*) FILTER (WHERE e.manager_id IS NULL),
                  count(*) FILTER (WHERE e.manager_id IS NOT NULL AND m.employee_id IS NULL)
           FROM hr.employees e LEFT JOIN hr.employees m ON m.employee_id = e.manager_id AND m.org_id = e.org_id
           GROUP BY ALL ORDER BY ALL"""
    ).fetchall()

    assert rows == [("org_acme", 1, 0), ("org_globex", 1, 0)]


def test_demo_identifiers_are_fake_by_construction(demo_con: duckdb.DuckDBPyConnection) -> None:
    customers = demo_con.execute("SELECT ssn, card_number, phone, email FROM crm.customers").fetchall()
    employees = demo_con.execute("SELECT ssn, NULL, phone, email FROM hr.employees").fetchall()
    domains = {org.email_domain for org in DEMO_ORGS}

    for ssn, card, phone, email in customers + employees:
        assert re.fullmatch(r"9\d\d-(0[1-9]|[1-4]\d)-\d{4}", ssn), ssn  # area 9xx: never issued
        assert re.fullmatch(r"\+1-555-\d{3}-\d{4}", phone), phone
        assert email.split("@")[1] in domains
        assert email.split("@")[1].endswith((".example.com", ".example.org"))
        if card is not None:
            assert card.startswith(("411111", "555555", "424242")), card
            assert len(card) == 16
            assert luhn_check_digit(card[:-1]) == int(card[-1])


def test_luhn_check_digit_matches_known_test_cards() -> None:
    for card in ("4111111111111111", "5555555555554444", "4242424242424242", "378282246310005"):
        assert luhn_check_digit(card[:-1]) == int(card[-1])


def test_demo_amounts_are_exact_decimals(demo_con: duckdb.DuckDBPyConnection) -> None:
    amount = scalar(demo_con, "SELECT amount FROM sales.orders ORDER BY order_id LIMIT 1")

    assert isinstance(amount, Decimal)
    assert amount == amount.quantize(Decimal("0.01"))


def test_writing_the_demo_twice_gives_identical_untouched_files(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, rows_per_org=50)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*.parquet")}

    write_demo_dataset(tmp_path, rows_per_org=50)

    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*.parquet")} == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["part-0.parquet"] * 4


def test_the_same_seed_gives_byte_identical_files_in_another_directory(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "a", rows_per_org=50, seed=11)
    write_demo_dataset(tmp_path / "b", rows_per_org=50, seed=11)

    for file in (tmp_path / "a").rglob("*.parquet"):
        assert file.read_bytes() == (tmp_path / "b" / file.relative_to(tmp_path / "a")).read_bytes()


def test_a_different_seed_gives_different_people(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "a", rows_per_org=20, seed=1)
    write_demo_dataset(tmp_path / "b", rows_per_org=20, seed=2)

    names_a = pq.read_table(tmp_path / "a/crm/customers/part-0.parquet", columns=["full_name"]).column(0)
    names_b = pq.read_table(tmp_path / "b/crm/customers/part-0.parquet", columns=["full_name"]).column(0)
    assert names_a.to_pylist() != names_b.to_pylist()


def test_rewriting_the_demo_with_other_sizes_never_duplicates_rows(tmp_path: Path) -> None:
    write_demo_dataset(tmp_path, rows_per_org=30)
    write_demo_dataset(tmp_path, rows_per_org=10)
    con = duckdb.connect()
    register_parquet_tables(con, tmp_path)
    lock_down(con, tmp_path)

    assert scalar(con.cursor(), "SELECT count(*) FROM crm.customers") == 20
    con.close()
