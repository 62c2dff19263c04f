"""GDPR erasure end to end (issue 20): `hd forget` and the forget-request API against `hd dev` serving a bucket.

The host serves Parquet tables from a versioned bucket (moto's server) through its cache, plus a
writable table created over the wire. A forget request must leave no row of the subject readable
(through the cache, at once), no old object version holding them, and no raw subject id in any
artefact the erasure or its audit wrote: the trails hold only its HMAC.
"""

from __future__ import annotations

import io
import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from engine_host.cli import main
from tests.harness import EngineHostProcess, query_audit_records, start_engine_host

BUCKET = "hd-e2e-erasure"
PREFIX = "tables/"
SUBJECT = "subj-7Qx9-erase-me"
OTHER = "subj-keep-1"
PEOPLE_KEYS = ("crm/people/part-0.parquet", "crm/people/part-1.parquet")


def _parquet(rows: list[tuple[str, str, int]]) -> bytes:
    table = pa.table({"person_id": [r[0] for r in rows], "email": [r[1] for r in rows],
                      "visits": [r[2] for r in rows]})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.fixture(scope="module")
def bucket() -> Iterator[tuple[str, Any]]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    # The subject has rows in both files of crm.people (one object without them stays untouched: part-2).
    client.put_object(Bucket=BUCKET, Key=PREFIX + PEOPLE_KEYS[0], Body=_parquet(
        [(SUBJECT, "erase@example.test", 3), (OTHER, "keep@example.test", 5), ("subj-keep-2", "k2@example.test", 1)]))
    client.put_object(Bucket=BUCKET, Key=PREFIX + PEOPLE_KEYS[1], Body=_parquet(
        [("subj-keep-3", "k3@example.test", 2), (SUBJECT, "erase@example.test", 4)]))
    client.put_object(Bucket=BUCKET, Key=PREFIX + "crm/people/part-2.parquet", Body=_parquet(
        [("subj-keep-4", "k4@example.test", 9)]))
    client.put_object(Bucket=BUCKET, Key=PREFIX + "crm/visits/part-0.parquet", Body=_parquet(
        [(SUBJECT, "visit", 1)]))  # declares no subject column: never touched
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture(scope="module")
def host(bucket: tuple[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    endpoint, _ = bucket
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    process = start_engine_host(tmp_path_factory.mktemp("hd"), "--insecure-plaintext",
                                "--data-source", f"s3://{BUCKET}/{PREFIX}", "--cache-capacity", "64MiB", env=env)
    try:
        yield process
    finally:
        process.stop()


def _connect(host: EngineHostProcess) -> psycopg.Connection:
    return psycopg.connect(host.dsn(sslmode="disable"), autocommit=True)


def _api(host: EngineHostProcess, method: str, path: str, body: Any = None, *, key: str | None = None) -> Any:
    request = urllib.request.Request(host.api_url + path, data=json.dumps(body).encode() if body is not None else None,
                                     method=method)
    request.add_header("X-API-Key", key or host.password)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _org(host: EngineHostProcess) -> str:
    return str(_api(host, "GET", "/v1/auth/whoami")["org_id"])


def _declare_subject_column(host: EngineHostProcess, table: str, column: str) -> None:
    org = _org(host)
    bindings = _api(host, "GET", f"/v1/organizations/{org}/policies?kind=table_binding")
    binding = next(item for item in bindings if item["document"]["table"] == table)
    _api(host, "PUT", f"/v1/organizations/{org}/policies/table_binding/{binding['document']['binding_id']}",
         {"kind": "table_binding", "table": table, "subject_column": column})


def _hd(host: EngineHostProcess, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["--log-level", "ERROR", *argv, "--api-url", host.api_url, "--api-key", host.password])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _people(conn: psycopg.Connection) -> list[tuple[str, int]]:
    return [(str(a), int(b)) for a, b in conn.execute("SELECT person_id, visits FROM crm.people ORDER BY 1").fetchall()]


def test_forget_erases_the_subject_from_bucket_and_writable_tables_and_keeps_only_its_hmac(
        host: EngineHostProcess, bucket: tuple[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    _, client = bucket
    with _connect(host) as conn:
        conn.execute("CREATE TABLE crm.notes (person_id VARCHAR, note VARCHAR)")
        conn.execute("INSERT INTO crm.notes VALUES (%s, 'called'), (%s, 'kept'), (%s, 'emailed')",
                     (SUBJECT, OTHER, SUBJECT))
        before = _people(conn)  # served through the cache: every file fetched now
        assert sum(1 for person, _ in before if person == SUBJECT) == 2
    _declare_subject_column(host, "crm.people", "person_id")
    _declare_subject_column(host, "crm.notes", "person_id")

    status, out, err = _hd(host, capsys, "forget", "--subject", SUBJECT, "--reason", f"art. 17 request by {SUBJECT}",
                           "--json")
    assert status == 0, err
    request = json.loads(out)
    assert request["status"] == "completed", request
    assert request["reason"] == "art. 17 request by [subject]"
    assert request["rows_removed"] == 4
    # `hosts` names fleet hosts that erased a writable table themselves: none here, hd dev's own host did it.
    assert request["table_results"]["crm.people"] == {"storage": "parquet", "rows_removed": 2,
                                                      "objects_rewritten": 2, "hosts": {}}
    assert request["table_results"]["crm.notes"] == {"storage": "writable", "rows_removed": 2,
                                                     "objects_rewritten": 0, "hosts": {}}
    assert "crm.visits" not in request["tables"]  # no subject column declared
    assert request["old_versions_pending"] == 0  # retention 0: the replaced versions are gone already

    with _connect(host) as conn:  # at once, through the cache: no wait for the 60 s revalidation
        assert _people(conn) == [(person, visits) for person, visits in before if person != SUBJECT]
        assert conn.execute("SELECT count(*) FROM crm.people WHERE person_id = %s", (SUBJECT,)).fetchone() == (0,)
        assert conn.execute("SELECT person_id FROM crm.notes").fetchall() == [(OTHER,)]
        assert conn.execute("SELECT count(*) FROM crm.visits").fetchone() == (1,)

    for key in PEOPLE_KEYS:  # each rewritten object has one version left: the one without the subject
        versions = client.list_object_versions(Bucket=BUCKET, Prefix=PREFIX + key)
        assert len(versions.get("Versions", [])) == 1
        body = client.get_object(Bucket=BUCKET, Key=PREFIX + key)["Body"].read()
        assert SUBJECT.encode() not in body
    untouched = client.list_object_versions(Bucket=BUCKET, Prefix=PREFIX + "crm/people/part-2.parquet")
    assert len(untouched["Versions"]) == 1

    # The trails: the HMAC, never the id. Every stored artefact of the control plane and the audit is searched.
    records = [r for r in query_audit_records(host.state_dir) if r.get("forget_request_id") == request["request_id"]]
    assert len(records) == 1 and records[0]["rows_written"] == 2
    assert records[0]["subject_hmac"] == request["subject_hmac"]
    with sqlite3.connect(host.state_dir / "control.sqlite3") as db:
        events = [row for row in db.execute("SELECT event_type, after FROM iam_events WHERE event_type LIKE "
                                            "'forget.%' ORDER BY seq")]
    assert [event for event, _ in events] == ["forget.requested", "forget.completed"]
    assert all(request["subject_hmac"] in after for _, after in events)
    # crm.visits declares no subject column, so it keeps the subject's row: its cached file is left out.
    searched = [path for folder in ("audit", "cache/objects") for path in (host.state_dir / folder).rglob("*")
                if path.is_file() and "visits" not in path.parts]
    searched += sorted(host.state_dir.glob("control.sqlite3*"))
    assert searched
    holding = [str(path) for path in searched if SUBJECT.encode() in path.read_bytes()]
    assert holding == []
    assert SUBJECT not in "\n".join(host.output)


def test_forget_requests_are_listed_and_read_by_id_with_status_and_sla(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _hd(host, capsys, "forget", "--subject", "nobody-at-all", "--json")
    assert status == 0, err
    created = json.loads(out)
    assert created["status"] == "completed" and created["rows_removed"] == 0
    org = _org(host)
    listed = _api(host, "GET", f"/v1/organizations/{org}/forget-requests")
    assert created["request_id"] in [item["request_id"] for item in listed]
    one = _api(host, "GET", f"/v1/organizations/{org}/forget-requests/{created['request_id']}")
    assert one["subject_hmac"] == created["subject_hmac"] and "subject_id" not in one
    assert one["sla_deadline"] > one["requested_at"]
    status, out, _ = _hd(host, capsys, "forget", "--list")
    assert status == 0 and created["request_id"] in out
    status, out, _ = _hd(host, capsys, "forget", "--status", created["request_id"])
    assert status == 0 and "completed" in out


def test_bad_forget_requests_are_refused_with_a_code(
        host: EngineHostProcess, capsys: pytest.CaptureFixture[str]) -> None:
    org = _org(host)
    with pytest.raises(urllib.error.HTTPError) as refused:
        _api(host, "POST", f"/v1/organizations/{org}/forget-requests", {"subject_id": "abc\u0000123"})
    assert refused.value.code == 422
    assert json.loads(refused.value.read())["error"]["code"] == "HD_ERR_VALIDATION"
    with pytest.raises(urllib.error.HTTPError) as missing:
        _api(host, "GET", f"/v1/organizations/{org}/forget-requests/fgt_doesnotexist")
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as other_org:
        _api(host, "GET", "/v1/organizations/org_someoneelse/forget-requests")
    assert other_org.value.code == 404
    status, _, err = _hd(host, capsys, "forget", "--subject", "   ")
    assert status == 1 and "HD_ERR_VALIDATION" in err and "Traceback" not in err


def test_an_analyst_may_not_forget(host: EngineHostProcess) -> None:
    org = _org(host)
    user = _api(host, "POST", f"/v1/organizations/{org}/users", {"email": "analyst-erasure@example.test",
                                                                 "role": "Analyst"})
    key = _api(host, "POST", f"/v1/organizations/{org}/api-keys",
               {"user_id": user["user_id"], "scopes": ["read_only"], "env": "test", "name": "erasure-analyst"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        _api(host, "POST", f"/v1/organizations/{org}/forget-requests", {"subject_id": OTHER},
             key=str(key["api_key"]))
    assert refused.value.code == 403



def test_a_failed_request_is_retried_through_the_api_and_only_a_failed_one(host: EngineHostProcess,
                                                                           bucket: tuple[str, Any]) -> None:
    _, client = bucket
    org = _org(host)
    bad_key = PREFIX + "crm/visits/part-9.parquet"
    # A file of crm.visits without the declared subject column: the erasure fails (and keeps the sealed id).
    client.put_object(Bucket=BUCKET, Key=bad_key, Body=_parquet_without_subject())
    _declare_subject_column(host, "crm.visits", "person_id")
    try:
        failed = _api(host, "POST", f"/v1/organizations/{org}/forget-requests", {"subject_id": SUBJECT})
        assert failed["status"] == "failed" and "person_id" in failed["error"]
        client.delete_object(Bucket=BUCKET, Key=bad_key)
        retried = _api(host, "POST", f"/v1/organizations/{org}/forget-requests/{failed['request_id']}/retry")
        assert retried["status"] == "completed" and retried["error"] == ""
        # The failed attempt filtered every file before swapping any, so it changed nothing: the retry removes the row.
        assert retried["table_results"]["crm.visits"] == {"storage": "parquet", "rows_removed": 1,
                                                          "objects_rewritten": 1, "hosts": {}}
        with _connect(host) as conn:
            assert conn.execute("SELECT count(*) FROM crm.visits WHERE person_id = %s", (SUBJECT,)).fetchone() == (0,)
        for settled in (retried["request_id"], "fgt_doesnotexist"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                _api(host, "POST", f"/v1/organizations/{org}/forget-requests/{settled}/retry")
            body = json.loads(refused.value.read())
            assert (refused.value.code, body["error"]["code"]) == (
                (409, "HD_ERR_CONFLICT") if settled == retried["request_id"] else (404, "HD_ERR_NOT_FOUND"))
        with sqlite3.connect(host.state_dir / "control.sqlite3") as db:
            retries = db.execute("SELECT target FROM iam_events WHERE event_type = 'forget.retried'").fetchall()
        assert retries == [(f"forget_request/{failed['request_id']}",)]
    finally:
        client.delete_object(Bucket=BUCKET, Key=bad_key)


def _parquet_without_subject() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"email": ["x@example.test"], "visits": [1]}), sink)
    return sink.getvalue()
