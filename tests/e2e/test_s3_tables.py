"""`hd dev --data-source s3://...`: tables in a bucket (moto's server) served through the cache, governed as usual.

The engine host runs as a real process and reaches S3 at moto's endpoint; clients connect with psycopg.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import duckdb
import psycopg
import pytest
from moto.server import ThreadedMotoServer

from engine_host.devmode.demo import write_demo_dataset
from tests.harness import EngineHostProcess, start_engine_host

BUCKET = "hd-e2e-tables"
PREFIX = "warehouse/"
ANALYST = "usr_demo_acme_analyst"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    staging = tmp_path_factory.mktemp("staging")
    write_demo_dataset(staging)
    for path in sorted(staging.rglob("*.parquet")):
        client.upload_file(str(path), BUCKET, PREFIX + path.relative_to(staging).as_posix())
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def host(bucket: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    endpoint, _ = bucket
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    process = start_engine_host(tmp_path_factory.mktemp("hd"), "--demo", "--insecure-plaintext",
                                "--data-source", f"s3://{BUCKET}/{PREFIX}", "--cache-capacity", "64MiB",
                                "--metrics-port", "0", env=env)
    try:
        yield process
    finally:
        process.stop()


def _connect(host: EngineHostProcess, **overrides: str) -> psycopg.Connection:
    return psycopg.connect(host.dsn(sslmode="disable", **overrides), autocommit=True)


def test_bucket_tables_answer_queries_from_the_cache(host: EngineHostProcess) -> None:
    with _connect(host) as conn:
        (count,) = conn.execute("SELECT count(*) FROM sales.orders").fetchone()  # type: ignore[misc]
        tables = {row[0] for row in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables").fetchall()}
    assert count > 0
    assert {"sales.orders", "crm.customers"} <= tables
    cached = list((host.state_dir / "cache" / "objects" / "sales" / "orders").glob("*.parquet"))
    assert cached, "the table's file was read from the cache directory"


def test_policies_apply_to_bucket_tables(host: EngineHostProcess) -> None:
    created = _api(host, "POST", "/v1/organizations/org_acme/api-keys",
                   {"user_id": ANALYST, "scopes": ["read_only"], "env": "test", "name": "s3-e2e"})
    _api(host, "POST", "/v1/organizations/org_acme/policies",
         {"kind": "mask", "rule_id": "s3_mask_status", "table": "sales.orders", "column": "status",
          "function": "full"})
    try:
        with _connect(host, user=ANALYST, password=str(created["api_key"])) as conn:
            deadline = time.monotonic() + 10  # policy changes reach the host within about a second
            while time.monotonic() < deadline:
                statuses = {row[0] for row in conn.execute("SELECT status FROM sales.orders LIMIT 20").fetchall()}
                if statuses == {"***"}:
                    break
                time.sleep(0.2)
        assert statuses == {"***"}
    finally:
        _api(host, "DELETE", "/v1/organizations/org_acme/policies/mask/s3_mask_status")


def test_a_file_deleted_under_the_cache_is_fetched_again(host: EngineHostProcess) -> None:
    with _connect(host) as conn:
        (before,) = conn.execute("SELECT count(*) FROM crm.customers").fetchone()  # type: ignore[misc]
        for path in (host.state_dir / "cache" / "objects" / "crm" / "customers").glob("*.parquet"):
            path.unlink()
        (after,) = conn.execute("SELECT count(*) FROM crm.customers").fetchone()  # type: ignore[misc]
    assert after == before


def test_bucket_tables_are_served_from_native_copies_with_the_same_governed_rows(
        host: EngineHostProcess, bucket: tuple[str, Any], tmp_path: Path) -> None:
    _, client = bucket
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]]
    tables = {tuple(key[len(PREFIX):].split("/")[:2]) for key in keys}
    native_dir = host.state_dir / "cache" / "native"
    deadline = time.monotonic() + 120  # each table is copied in the background after the host starts
    while time.monotonic() < deadline and len(list(native_dir.glob("hd_native_*.duckdb"))) < len(tables):
        time.sleep(0.2)
    assert len(list(native_dir.glob("hd_native_*.duckdb"))) >= len(tables)

    for key in keys:  # what the Parquet view reads: the bucket's objects
        if key.startswith((PREFIX + "sales/orders/", PREFIX + "crm/customers/")):
            target = tmp_path / key
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, key, str(target))
    direct = duckdb.connect()
    orders = str(tmp_path / PREFIX / "sales" / "orders" / "*.parquet")
    customers = str(tmp_path / PREFIX / "crm" / "customers" / "*.parquet")
    aggregate = "SELECT count(*), sum(amount)::text, min(order_id), max(order_id) FROM {} WHERE org_id = 'org_acme'"
    with _connect(host) as conn:  # the Owner: org_acme's rows only, unmasked
        assert conn.execute(aggregate.format("sales.orders")).fetchone() == direct.execute(
            aggregate.format(f"read_parquet('{orders}')")).fetchone()
    ssns = {row[0] for row in direct.execute(f"SELECT ssn FROM read_parquet('{customers}')").fetchall()}
    created = _api(host, "POST", "/v1/organizations/org_acme/api-keys",
                   {"user_id": ANALYST, "scopes": ["read_only"], "env": "test", "name": "s3-native-e2e"})
    with _connect(host, user=ANALYST, password=str(created["api_key"])) as conn:
        rows = conn.execute("SELECT ssn, org_id FROM crm.customers").fetchall()
    assert rows and not {ssn for ssn, _ in rows} & ssns  # masked on the copy as on Parquet
    assert {org for _, org in rows} == {"org_acme"}


def _api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(host.api_url + path, data=json.dumps(body).encode() if body else None,
                                     method=method)
    request.add_header("X-API-Key", host.password)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()) if response.status != 204 else None


def test_the_local_data_folder_is_not_readable_when_serving_a_bucket(host: EngineHostProcess) -> None:
    data_file = next((host.state_dir / "data").glob("*/*/*.parquet"), None)
    if data_file is None:
        pytest.skip("the demo wrote no local files")
    with _connect(host) as conn, pytest.raises(psycopg.Error):
        conn.execute(f"SELECT * FROM read_parquet('{Path(data_file)}')")


def test_cache_metrics_are_scraped_without_table_names(host: EngineHostProcess) -> None:
    with _connect(host) as conn:
        conn.execute("SELECT count(*) FROM sales.orders").fetchone()
    port = next(int(m.group(1)) for line in host.output
                if (m := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    hits = re.search(r"^hd_cache_hits(?:_total)? (\S+)$", text, re.MULTILINE)
    assert hits is not None and float(hits.group(1)) >= 1
    assert "orders" not in text and "sales" not in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
        assert response.status == 200
