"""Shadow mode end to end through `hd dev`'s control API: upload, replay, status, report (issue 18).

TPC-H SF0.01 sits in the host's data folder (schema `tpch`) and in the real PostgreSQL (HD_TEST_PG_DSN,
default 127.0.0.1:5432; skipped, saying why, when none is reachable) under a schema of its own, read
by a login role made for the test with a password of its own. One replay of the 22 queries runs
through the ASL definition in the host's local interpreter, the engine side as the replay's
ServiceAccount key; every test shares it. A second execution of the same definition, in this
process with the same handlers, has one batch fail on every attempt: it is retried, reported as
`error`, and the run completes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import LocalFolderShadowArtefacts, LocalSealedShadowSecrets
from hd_core.shadow import replay, state_machine
from hd_core.shadow.asl_local import LocalStateMachine
from hd_core.shadow.replay import EngineEndpoint, ReplayServices
from tests.e2e.tpch_queries import QUERIES
from tests.harness import EngineHostProcess, start_engine_host
from tests.tpch_data import TPCH_TABLES, drop_schema, generate_tpch, load_tpch_into_postgres

WRITE_STATEMENT = "DELETE FROM lineitem WHERE l_orderkey = 1"
# The one statement the two sides answer differently: its rows reach the report, redacted.
DIFFERING_STATEMENT = "select version() as server_version"
REPLAY_SECONDS = 90.0


@pytest.fixture(scope="module")
def tpch_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host state folder whose data folder holds SF0.01 as tpch/<table>/<table>.parquet."""
    state = tmp_path_factory.mktemp("hd-shadow")
    for table, generated in generate_tpch(state / "generated", 0.01).items():
        folder = state / "data" / "tpch" / table
        folder.mkdir(parents=True)
        generated.rename(folder / f"{table}.parquet")
    return state


@dataclass(frozen=True)
class Comparison:
    dsn: str
    password: str


@pytest.fixture(scope="module")
def comparison(reference_pg: str, tpch_state: Path) -> Iterator[Comparison]:
    """The data in PostgreSQL, read by a role of the test's own (its password is what must never leak)."""
    suffix = uuid.uuid4().hex[:8]
    schema, role, password = f"shadow_{suffix}", f"shadow_reader_{suffix}", f"pw-{uuid.uuid4().hex}"
    load_tpch_into_postgres(reference_pg, schema, {
        table: tpch_state / "data" / "tpch" / table / f"{table}.parquet" for table in TPCH_TABLES})
    with psycopg.connect(reference_pg, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    dsn = psycopg.conninfo.make_conninfo(reference_pg, user=role, password=password,
                                         options=f"-c search_path={schema}")
    yield Comparison(dsn, password)
    drop_schema(reference_pg, schema)
    with psycopg.connect(reference_pg, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def host(tpch_state: Path) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tpch_state, "--insecure-plaintext")
    try:
        yield process
    finally:
        process.stop()


def api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.api_url + path, data=data, method=method)
    request.add_header("X-API-Key", host.password)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def api_json(host: EngineHostProcess, method: str, path: str, body: Any = None) -> Any:
    status, payload = api(host, method, path, body)
    assert status < 300, (status, payload)
    return json.loads(payload)


@dataclass(frozen=True)
class Replayed:
    env_id: str
    upload: dict[str, Any]
    replay_id: str
    progress: list[dict[str, Any]]
    final: dict[str, Any]


def _upload_text() -> tuple[str, int]:
    """The 22 queries as one SQL file, a write statement among them; returns the text and the write's line."""
    parts = []
    for number, sql in sorted(QUERIES.items()):
        parts.append(f"-- TPC-H Q{number}\n{sql.strip()};\n")
        if number == 7:
            parts.append(f"{WRITE_STATEMENT};\n")
    parts.append(f"{DIFFERING_STATEMENT};\n")
    text = "".join(parts)
    line = text[:text.index(WRITE_STATEMENT)].count("\n") + 1
    return text, line


@pytest.fixture(scope="module")
def replayed(host: EngineHostProcess, comparison: Comparison) -> Replayed:
    org_id = api_json(host, "GET", "/v1/auth/whoami")["org_id"]
    env_id = api_json(host, "GET", f"/v1/organizations/{org_id}/environments")[0]["env_id"]
    text, _ = _upload_text()
    upload = api_json(host, "POST", f"/v1/environments/{env_id}/shadow-mode/upload", {"text": text, "format": "sql"})
    started = api_json(host, "POST", f"/v1/environments/{env_id}/shadow-mode/replay", {
        "query_set_id": upload["query_set_id"], "comparison_dsn": comparison.dsn, "timeout_seconds": 60,
        "concurrency": 3, "search_path": "tpch"})
    replay_id = started["replay_id"]
    progress = []
    deadline = time.monotonic() + REPLAY_SECONDS
    while time.monotonic() < deadline:
        status = api_json(host, "GET", f"/v1/environments/{env_id}/shadow-mode/replays/{replay_id}")
        progress.append(status)
        if status["status"] != "RUNNING":
            break
        time.sleep(0.25)
    return Replayed(env_id, upload, replay_id, progress, progress[-1])


def test_the_22_tpch_queries_replay_exact_or_semantic_and_the_write_is_rejected_with_its_line(
        host: EngineHostProcess, replayed: Replayed, reference_pg: str) -> None:
    _, write_line = _upload_text()
    assert replayed.upload["statement_count"] == 23
    assert [r["line"] for r in replayed.upload["rejected"]] == [write_line]
    assert replayed.final["status"] == "SUCCEEDED", replayed.progress
    assert replayed.final["batches_done"] == replayed.final["batches_total"] >= 2
    assert replayed.final["statements_total"] == 23
    assert all(p["batches_done"] <= (p["batches_total"] or 0) for p in replayed.progress)
    report_path = f"/v1/environments/{replayed.env_id}/shadow-mode/reports/{replayed.replay_id}"
    report = api_json(host, "GET", report_path)
    tpch = [s for s in report["statements"] if s["index"] <= 22]
    problems = {s["index"]: s for s in tpch if s["verdict"] not in ("exact", "semantic")}
    assert not problems, problems
    assert report["query_count"] == 23 and report["exact"] + report["semantic"] == 22 and report["mismatch"] == 1
    assert all(s["reference_rows"] for s in tpch), "a query answered no rows: it proves nothing"
    assert report["engine"]["count"] == report["reference"]["count"] == 23 and report["speedup_p50"] is not None
    # The differing rows are shown redacted (NULL-ness and type), never as the values either side returned.
    (differing,) = [s for s in report["statements"] if s["verdict"] == "mismatch"]
    assert differing["reference_only"] == [{"server_version": "<str>"}]
    with psycopg.connect(reference_pg) as conn:
        (version,) = conn.execute("select version()").fetchone() or ("",)
    status, markdown = api(host, "GET", f"{report_path}?format=markdown")
    assert status == 200 and markdown.decode().startswith("# Shadow replay report")
    assert version and version not in json.dumps(report) and version not in markdown.decode()


def test_the_engine_side_ran_as_the_replays_service_account_and_was_audited(
        host: EngineHostProcess, replayed: Replayed) -> None:
    record = json.loads((host.state_dir / "shadow" / "replays" / replayed.replay_id
                         / "replay.json").read_text())
    user = record["engine_user"]
    audited = [json.loads(line) for path in sorted(host.state_dir.rglob("*.jsonl"))
               for line in path.read_text().splitlines() if user in line]
    statements = [r for r in audited if "lineitem" in json.dumps(r)]
    assert statements, "no audit record of the ServiceAccount's statements"


def test_the_comparison_password_is_in_no_stored_artefact(
        host: EngineHostProcess, replayed: Replayed, comparison: Comparison) -> None:
    secret = comparison.password.encode()
    leaking = [path for path in host.state_dir.rglob("*") if path.is_file() and secret in path.read_bytes()]
    assert not leaking
    execution = json.loads((host.state_dir / "shadow" / "replays" / replayed.replay_id
                            / "execution.json").read_text())
    assert execution["input"]["comparison_secret_id"].startswith("shsec_")
    assert comparison.password not in json.dumps(execution)
    for path in (f"reports/{replayed.replay_id}", f"reports/{replayed.replay_id}?format=markdown",
                 f"replays/{replayed.replay_id}"):
        status, body = api(host, "GET", f"/v1/environments/{replayed.env_id}/shadow-mode/{path}")
        assert status == 200 and secret not in body


def test_the_ended_replay_left_no_secret_and_its_key_was_revoked_as_an_iam_event(
        host: EngineHostProcess, replayed: Replayed) -> None:
    record = json.loads((host.state_dir / "shadow" / "replays" / replayed.replay_id
                         / "replay.json").read_text())
    assert len(record["owned_secrets"]) == 2
    secrets_folder = host.state_dir / "shadow" / "secrets"
    assert secrets_folder.is_dir()
    left = [path for path in secrets_folder.rglob("*") if path.is_file()
            and (replayed.replay_id.encode() in path.read_bytes()
                 or any(reference in path.name for reference in record["owned_secrets"]))]
    assert left == []
    org_id = api_json(host, "GET", "/v1/auth/whoami")["org_id"]
    keys = api_json(host, "GET", f"/v1/organizations/{org_id}/api-keys?user_id={record['engine_user']}")
    listed = keys["items"] if isinstance(keys, dict) else keys
    (key,) = [k for k in listed if k["key_id"] == record["engine_key_id"]]
    assert key["revoked_at"] is not None
    from hd_core.adapters.sqlite_store import SqliteControlStore

    store = SqliteControlStore(host.state_dir / "control.sqlite3")
    try:
        events = [e for e in store.list_iam_events(org_id) if e.event_type == "api_key.revoked"
                  and e.target == record["engine_key_id"]]
    finally:
        store.close()
    assert [e.request_id for e in events] == [f"shadow-replay-{replayed.replay_id}"]


def test_a_replay_naming_a_secret_outside_the_shadow_prefix_is_refused_with_what_to_do(
        host: EngineHostProcess, replayed: Replayed) -> None:
    status, body = api(host, "POST", f"/v1/environments/{replayed.env_id}/shadow-mode/replay", {
        "query_set_id": replayed.upload["query_set_id"],
        "comparison_secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/warehouse-AbCdEf"})
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["code"] == "HD_ERR_COMPARISON_SECRET_OUTSIDE_PREFIX" and "hd/shadow/" in error["message"]


def test_a_batch_failing_every_attempt_is_reported_as_error_and_the_run_completes(
        host: EngineHostProcess, replayed: Replayed, comparison: Comparison) -> None:
    """The same definition and handlers, run here on the host's state folder, with batch 1 always failing."""
    keys = LocalKeyFile(host.state_dir / "keys" / "local-keys.json")
    services = ReplayServices(LocalFolderShadowArtefacts(host.state_dir),
                              LocalSealedShadowSecrets(host.state_dir / "shadow" / "secrets", keys),
                              EngineEndpoint("127.0.0.1", host.port, sslmode="disable"))
    record = services.artefacts.get_json(f"{replay.replay_prefix(replayed.replay_id)}replay.json")
    assert record is not None
    replay_id = "rp_" + uuid.uuid4().hex
    # The first replay's secrets went when it ended: this one gets its own, a fresh key of the same account.
    org_id = api_json(host, "GET", "/v1/auth/whoami")["org_id"]
    issued = api_json(host, "POST", f"/v1/organizations/{org_id}/api-keys",
                      {"user_id": record["engine_user"], "scopes": ["read_only"], "env": "test"})
    owned = [services.secrets.put_secret(f"hd/shadow/{replay_id}/comparison", comparison.dsn),
             services.secrets.put_secret(f"hd/shadow/{replay_id}/engine-key", issued["api_key"])]
    services.artefacts.put_json(f"{replay.replay_prefix(replay_id)}replay.json", {
        **record, "replay_id": replay_id, "comparison_secret": owned[0], "engine_key_secret": owned[1],
        "engine_key_id": issued["key"]["key_id"], "owned_secrets": owned})
    attempts: list[int] = []

    def replay_batch(event: dict[str, Any]) -> dict[str, Any]:
        if event["batch"] == 1:
            attempts.append(1)
            raise replay.ReplayBatchFailed("the comparison database could not be reached")
        return replay.replay_batch(event, services)

    waits: list[float] = []
    machine = LocalStateMachine(
        state_machine.definition({name: name for name in state_machine.FUNCTIONS}),
        {**replay.task_handlers(services), state_machine.REPLAY_BATCH: replay_batch},
        sleep=waits.append)
    output = machine.run({"replay_id": replay_id, "concurrency": 2})
    assert len(attempts) == 1 + state_machine.RETRY_MAX_ATTEMPTS and waits == [1.0, 2.0]
    plan = services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}plan.json")
    assert plan is not None
    failed = set(plan["batches"][1])
    report = replay.read_report(services, _environment(host, replayed.env_id), replay_id).to_dict()
    assert output["report"]["error"] == report["error"] == len(failed) >= 1
    assert {s["index"] for s in report["statements"] if s["verdict"] == "error"} == failed
    first = api_json(host, "GET", f"/v1/environments/{replayed.env_id}/shadow-mode/reports/{replayed.replay_id}")
    assert {s["index"]: s["verdict"] for s in report["statements"] if s["index"] not in failed} == {
        s["index"]: s["verdict"] for s in first["statements"] if s["index"] not in failed}
    assert all("ReplayBatchFailed" in " ".join(s["notes"]) for s in report["statements"] if s["index"] in failed)
    for reference in owned:  # deleted when this run ended too
        with pytest.raises(replay.NotFound):
            services.secrets.get_secret(reference)
    api_json(host, "DELETE", f"/v1/organizations/{org_id}/api-keys/{issued['key']['key_id']}")


def _environment(host: EngineHostProcess, env_id: str) -> Any:
    from hd_core.adapters.sqlite_store import SqliteControlStore

    store = SqliteControlStore(host.state_dir / "control.sqlite3")
    try:
        return store.get_environment(env_id)
    finally:
        store.close()


def test_hd_shadow_uploads_replays_with_a_progress_bar_and_prints_the_report(
        host: EngineHostProcess, replayed: Replayed, comparison: Comparison, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from engine_host.cli import main

    def hd(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--log-level", "ERROR", *argv, "--api-url", host.api_url, "--api-key", host.password,
                       "--env", replayed.env_id])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    upload_file = tmp_path / "queries.sql"
    upload_file.write_text(f"{QUERIES[1]};\n{QUERIES[6]};\n{WRITE_STATEMENT};\n")
    status, out, _ = hd("shadow", "upload", str(upload_file))
    assert status == 0 and "2 statements accepted, 1 rejected" in out
    query_set_id = out.split()[2].rstrip(":")
    monkeypatch.setenv("HD_COMPARISON_DSN", comparison.dsn)
    status, out, err = hd("shadow", "replay", query_set_id, "--search-path", "tpch", "--wait")
    assert status == 0, err
    # stderr is no terminal here: one progress line per change, the last one the full bar.
    assert err.strip().splitlines()[-1] == "[" + "#" * 30 + "] 1/1 batches (2 statements) succeeded", err
    assert "speedup at p50" in out and "statements" in out
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split()[:3] == ["#", "LINE", "VERDICT"]
    assert len(table) == 3 and all(line.split()[2] in ("exact", "semantic") for line in table[1:]), out
    assert comparison.password not in out + err
    status, out, _ = hd("shadow", "report", replayed.replay_id, "--markdown")
    assert status == 0 and out.startswith("# Shadow replay report") and "## Statements" in out
    status, out, _ = hd("shadow", "status", replayed.replay_id, "--json")
    assert status == 0 and json.loads(out)["status"] == "SUCCEEDED"


def test_a_jsonl_history_with_parameters_replays_with_its_values_bound_on_both_sides(
        host: EngineHostProcess, replayed: Replayed, comparison: Comparison) -> None:
    history = "\n".join(json.dumps(line) for line in (
        {"sql": "select count(*) as n from lineitem where l_quantity > $1 and l_returnflag = $2", "params": [10, "R"]},
        {"query": "select n_name from nation where n_nationkey = $1", "params": [7]},
        {"sql": "select n_name from nation where n_name like $1 order by n_name", "params": ["%A%"]},
    ))
    base = f"/v1/environments/{replayed.env_id}/shadow-mode"
    upload = api_json(host, "POST", f"{base}/upload", {"text": history, "format": "jsonl"})
    assert upload["statement_count"] == 3 and upload["rejected"] == []
    replay_id = api_json(host, "POST", f"{base}/replay", {
        "query_set_id": upload["query_set_id"], "comparison_dsn": comparison.dsn, "search_path": "tpch"})["replay_id"]
    deadline = time.monotonic() + REPLAY_SECONDS
    while api_json(host, "GET", f"{base}/replays/{replay_id}")["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    report = api_json(host, "GET", f"{base}/reports/{replay_id}")
    # Text columns are text in PostgreSQL and varchar on the engine: equivalent types, so semantic.
    assert all(s["verdict"] in ("exact", "semantic") for s in report["statements"]), report["statements"]
    assert [s["reference_rows"] for s in report["statements"]] == [1, 1, report["statements"][2]["engine_rows"]]
    assert report["statements"][2]["reference_rows"] > 1


def test_shadow_mode_takes_keys_manage_which_an_analyst_lacks(host: EngineHostProcess, replayed: Replayed) -> None:
    org_id = api_json(host, "GET", "/v1/auth/whoami")["org_id"]
    analyst = api_json(host, "POST", f"/v1/organizations/{org_id}/users",
                       {"email": f"analyst-{uuid.uuid4().hex[:8]}@example.com", "role": "Analyst"})
    key = api_json(host, "POST", f"/v1/organizations/{org_id}/api-keys",
                   {"user_id": analyst["user_id"], "scopes": ["read_only"], "env": "test"})["api_key"]
    base = f"{host.api_url}/v1/environments/{replayed.env_id}/shadow-mode"
    for method, url, body in (("POST", f"{base}/upload", {"text": "select 1"}),
                              ("GET", f"{base}/reports/{replayed.replay_id}", None)):
        request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                         method=method, headers={"X-API-Key": key, "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 403
        assert json.loads(refused.value.read())["error"]["message"].startswith("this action needs the keys:manage")
