"""`hd dev`'s shadow executions outlive the process: a stopped one stays RUNNING on disk and the next start resumes it.

Each "process" here is a fresh `local_replay_services` on the same state folder, with a real control store,
sealed secrets and the real task functions; neither database listens, so every batch ends as `error` and the
run completes (what is resumed is the execution, whatever its statements answer). A resumed execution still
counts the time it ran before against the definition's TimeoutSeconds, and a damaged execution record is
skipped without keeping the others from resuming.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from hd_core import directory
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import LocalInterpreterExecutions, local_replay_services
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.models import KeyEnv
from hd_core.shadow import replay, state_machine
from hd_core.shadow.replay import EngineEndpoint, ReplayOptions, ReplayServices
from tests.unit.core.test_directory import ControlPlane, make_control_plane


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process(state: Path, keys: LocalKeyFile, plane: ControlPlane) -> tuple[ReplayServices, LocalInterpreterExecutions]:
    """The shadow services one `hd dev` process builds on `state`."""
    authenticator = ApiKeyAuthenticator(plane.store, ensure_pepper(plane.store), hasher=plane.hasher)
    services = local_replay_services(state, keys, EngineEndpoint("127.0.0.1", _closed_port(), sslmode="disable"),
                                     revoke_key=replay.control_key_revoker(plane.store, plane.trail, authenticator))
    assert isinstance(services.executions, LocalInterpreterExecutions)
    return services, services.executions


def _start(services: ReplayServices, plane: ControlPlane) -> str:
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, f"env-{time.monotonic_ns()}",
                                       KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1;\nselect 2;\n", "sql")
    return replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                               comparison_dsn=f"host=127.0.0.1 port={_closed_port()} dbname=x user=r password=p",
                               comparison_secret_arn=None, options=ReplayOptions(timeout_seconds=5))


def _execution(state: Path, replay_id: str) -> dict[str, object]:
    document: dict[str, object] = json.loads((state / "shadow" / "replays" / replay_id / "execution.json").read_text())
    return document


def test_an_execution_left_running_by_a_stopped_process_resumes_in_the_next_and_completes(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "keys.json")
    plane = make_control_plane(tmp_path, keys)
    first, first_executions = _process(tmp_path, keys, plane)
    first_executions.stop(timeout=5)  # shutting down: what starts now waits for the next process
    replay_id = _start(first, plane)
    assert _execution(tmp_path, replay_id)["status"] == "RUNNING"
    assert first_executions.status(f"local:{replay_id}") == "FAILED"  # this process will never run it
    damaged = tmp_path / "shadow" / "replays" / f"rp_{'0' * 32}" / "execution.json"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{\"status\": \"RUNN")

    second, second_executions = _process(tmp_path, keys, plane)
    assert second_executions.resume() == [replay_id]
    second_executions.wait(replay_id, timeout=60)

    assert _execution(tmp_path, replay_id)["status"] == "SUCCEEDED"
    record = second.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
    report = second.artefacts.get_json(f"{replay.replay_prefix(replay_id)}report.json")
    assert record is not None and report is not None and report["error"] == report["query_count"] == 2
    key = plane.store.get_api_key(record["engine_key_id"])
    assert key is not None and key.revoked_at is not None  # the replay ended in the second process
    assert second_executions.resume() == []  # nothing left to resume


def test_a_resumed_execution_past_its_timeout_fails_as_step_functions_would_time_it_out(tmp_path: Path) -> None:
    keys = LocalKeyFile(tmp_path / "keys.json")
    plane = make_control_plane(tmp_path, keys)
    first, first_executions = _process(tmp_path, keys, plane)
    first_executions.stop()
    replay_id = _start(first, plane)
    path = tmp_path / "shadow" / "replays" / replay_id / "execution.json"
    started = json.loads(path.read_text())
    # Started more than the definition's TimeoutSeconds ago (the host was down for longer than that).
    path.write_text(json.dumps({**started, "started_at": time.time() - state_machine.EXECUTION_TIMEOUT_SECONDS - 60}))

    _, second_executions = _process(tmp_path, keys, plane)
    assert second_executions.resume() == [replay_id]
    second_executions.wait(replay_id, timeout=60)

    assert _execution(tmp_path, replay_id) == {**started, "started_at": _execution(tmp_path, replay_id)["started_at"],
                                               "status": "FAILED", "error": "States.Timeout"}
    assert not (tmp_path / "shadow" / "replays" / replay_id / "plan.json").exists()  # no state ran
