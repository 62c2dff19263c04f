"""GDPR erasure on `hd dev`'s own data folder (issue 20): shared demo tables served from native copies.

The demo's tables are shared (a tenant column per row), so a forget request from org_acme must remove
its customer's rows from every declared table and nothing of org_globex, and a query right after the
request must not be answered from the native copy built before it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import duckdb
import psycopg
import pytest

from engine_host.cli import main
from tests.harness import EngineHostProcess, start_engine_host

DECLARED = {"crm.customers": "tbl_demo_crm_customers", "sales.orders": "tbl_demo_sales_orders"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tmp_path_factory.mktemp("hd"), "--demo", "--insecure-plaintext")
    try:
        yield process
    finally:
        process.stop()


def _api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(host.api_url + path, data=json.dumps(body).encode() if body is not None else None,
                                     method=method)
    request.add_header("X-API-Key", host.password)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _files(host: EngineHostProcess, table: str) -> str:
    schema, name = table.split(".")
    return str(host.state_dir / "data" / schema / name / "*.parquet")


def _count(sql: str) -> int:
    (value,) = duckdb.connect().execute(sql).fetchone()  # type: ignore[misc]
    return int(value)


def test_forget_rewrites_the_data_folder_for_one_tenant_and_no_native_copy_serves_the_old_rows(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    native = host.state_dir / "cache" / "native"
    deadline = time.monotonic() + 120  # every demo table is copied into DuckDB's format in the background
    while time.monotonic() < deadline and len(list(native.glob("hd_native_*.duckdb"))) < 4:
        time.sleep(0.2)
    with psycopg.connect(host.dsn(sslmode="disable"), autocommit=True) as conn:
        (subject,) = conn.execute("SELECT min(customer_id) FROM crm.customers").fetchone()  # type: ignore[misc]
        (customers,) = conn.execute("SELECT count(*) FROM crm.customers").fetchone()  # type: ignore[misc]
        (orders,) = conn.execute("SELECT count(*) FROM sales.orders WHERE customer_id = %s",  # type: ignore[misc]
                                 (subject,)).fetchone()
    globex = {table: _count(f"SELECT count(*) FROM read_parquet('{_files(host, table)}') WHERE org_id = 'org_globex'")
              for table in DECLARED}
    for table, binding in DECLARED.items():
        _api(host, "PUT", f"/v1/organizations/org_acme/policies/table_binding/{binding}",
             {"kind": "table_binding", "table": table, "org_id": None, "tenant_column": "org_id",
              "subject_column": "customer_id"})

    capsys.readouterr()
    status = main(["--log-level", "ERROR", "forget", "--subject", str(subject), "--json",
                   "--api-url", host.api_url, "--api-key", host.password])
    request = json.loads(capsys.readouterr().out)
    assert status == 0 and request["status"] == "completed", request
    assert request["table_results"]["crm.customers"]["rows_removed"] == 1
    assert request["table_results"]["sales.orders"]["rows_removed"] == orders
    assert request["rows_removed"] == 1 + orders

    with psycopg.connect(host.dsn(sslmode="disable"), autocommit=True) as conn:  # at once: no stale copy
        assert conn.execute("SELECT count(*) FROM crm.customers").fetchone() == (customers - 1,)
        assert conn.execute("SELECT count(*) FROM crm.customers WHERE customer_id = %s", (subject,)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM sales.orders WHERE customer_id = %s", (subject,)).fetchone() == (0,)
    for table in DECLARED:
        files = _files(host, table)
        assert _count(f"SELECT count(*) FROM read_parquet('{files}') WHERE customer_id = {int(subject)}") == 0
        assert _count(f"SELECT count(*) FROM read_parquet('{files}') WHERE org_id = 'org_globex'") == globex[table]
