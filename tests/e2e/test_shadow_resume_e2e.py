"""A shadow replay outlives the `hd dev` process running it: killed mid-run, the next start resumes it.

A real `hd dev` replays a query set against the real PostgreSQL (HD_TEST_PG_DSN, default 127.0.0.1:5432;
skipped, saying why, when none is reachable), one statement per batch and one batch at a time, each
statement taking PostgreSQL a few hundred milliseconds. Once some batches are stored, the process is
killed (SIGKILL: no shutdown runs, as in a crash) and a new `hd dev` starts on the same state folder.
The replay then completes from where it was: every batch stored before the kill is kept as it was (not
replayed again), the report holds every statement, and the replay's end (secrets deleted, key revoked
as one IAM event) happens once. A second run stops the host with SIGTERM instead: the execution is
left RUNNING on disk, never FAILED, and resumes as well.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EngineHostProcess, start_engine_host

STATEMENTS = 6
# PostgreSQL counts 3M generated rows in ~0.35 s here; the engine far faster. Both answer one row, the same.
SLOW_STATEMENT = "select count(*) as n from generate_series(1, {n})"
FINISH_SECONDS = 120.0


def _api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.api_url + path, data=data, method=method,
                                     headers={"X-API-Key": host.password, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "state"
    folder.mkdir()
    yield folder


def _start_replay(host: EngineHostProcess, reference_pg: str) -> tuple[str, str]:
    org_id = _api(host, "GET", "/v1/auth/whoami")["org_id"]
    env_id = _api(host, "GET", f"/v1/organizations/{org_id}/environments")[0]["env_id"]
    # Distinct statements (a different row count each), so each batch's stored result is its own.
    text = "".join(f"{SLOW_STATEMENT.format(n=3_000_000 + i)};\n" for i in range(STATEMENTS))
    upload = _api(host, "POST", f"/v1/environments/{env_id}/shadow-mode/upload", {"text": text, "format": "sql"})
    assert upload["statement_count"] == STATEMENTS
    # timeout_seconds 300: a batch's budget fits one statement, so every statement is a batch of its own.
    started = _api(host, "POST", f"/v1/environments/{env_id}/shadow-mode/replay", {
        "query_set_id": upload["query_set_id"], "comparison_dsn": reference_pg, "timeout_seconds": 300,
        "concurrency": 1})
    return env_id, started["replay_id"]


def _stored_batches(state: Path, replay_id: str) -> dict[str, int]:
    folder = state / "shadow" / "replays" / replay_id / "batches"
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.json")} if folder.is_dir() else {}


def _wait_for_batches(state: Path, replay_id: str, count: int) -> None:
    deadline = time.monotonic() + FINISH_SECONDS
    while len(_stored_batches(state, replay_id)) < count:
        assert time.monotonic() < deadline, "the replay stored no batches"
        time.sleep(0.05)


def _finish(host: EngineHostProcess, env_id: str, replay_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + FINISH_SECONDS
    while True:
        status: dict[str, Any] = _api(host, "GET", f"/v1/environments/{env_id}/shadow-mode/replays/{replay_id}")
        if status["status"] != "RUNNING" or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def _execution_status(state: Path, replay_id: str) -> str:
    return str(json.loads((state / "shadow" / "replays" / replay_id / "execution.json").read_text())["status"])


def _revocations(state: Path, key_id: str) -> list[str]:
    from hd_core.adapters.sqlite_store import SqliteControlStore

    store = SqliteControlStore(state / "control.sqlite3")
    try:
        return [e.request_id for org in store.list_orgs() for e in store.list_iam_events(org.org_id)
                if e.event_type == "api_key.revoked" and e.target == key_id]
    finally:
        store.close()


@pytest.mark.slow  # stops and restarts a host mid-replay, twice: CI runs it (`pytest -m slow`)
@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
def test_a_replay_interrupted_by_the_host_stopping_resumes_on_the_next_start_and_replays_no_batch_twice(
        state: Path, reference_pg: str, stop_signal: int) -> None:
    host = start_engine_host(state, "--insecure-plaintext")
    try:
        env_id, replay_id = _start_replay(host, reference_pg)
        _wait_for_batches(state, replay_id, 2)
    finally:
        host.stop(stop_signal)
    before = _stored_batches(state, replay_id)
    assert 2 <= len(before) < STATEMENTS, "the replay was not interrupted mid-run"
    assert _execution_status(state, replay_id) == "RUNNING"  # interrupted, not failed
    assert not (state / "shadow" / "replays" / replay_id / "report.json").exists()

    again = start_engine_host(state, "--insecure-plaintext")
    try:
        final = _finish(again, env_id, replay_id)
        assert final["status"] == "SUCCEEDED", final
        assert final["batches_done"] == final["batches_total"] == final["statements_total"] == STATEMENTS
        after = _stored_batches(state, replay_id)
        assert {name: after[name] for name in before} == before  # the batches stored before were not replayed
        report = _api(again, "GET", f"/v1/environments/{env_id}/shadow-mode/reports/{replay_id}")
        # The report is written by the last task; the execution's own record follows as its thread ends.
        deadline = time.monotonic() + 10
        while _execution_status(state, replay_id) == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _execution_status(state, replay_id) == "SUCCEEDED"
    finally:
        again.stop()
    assert report["query_count"] == STATEMENTS
    assert report["exact"] + report["semantic"] == STATEMENTS, report["statements"]
    assert [s["index"] for s in report["statements"]] == list(range(1, STATEMENTS + 1))
    record = json.loads((state / "shadow" / "replays" / replay_id / "replay.json").read_text())
    assert _revocations(state, record["engine_key_id"]) == [f"shadow-replay-{replay_id}"]
    assert not [path for path in (state / "shadow" / "secrets").glob("*.json")
                if any(reference in path.name for reference in record["owned_secrets"])]
