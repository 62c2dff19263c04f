"""A shadow replay's end in `hd dev`: WriteReport deletes the replay's secrets and revokes its ServiceAccount key.

The replay runs through the one ASL definition in the local interpreter with the real task functions, on a
real control store, sealed local secrets and the state folder; neither database is listening, so every batch
fails its attempts and is reported as `error` (the run still completes and WriteReport runs). Afterwards no
secret file of the replay is left, the key it replayed as is refused by the API key authenticator, and its
revocation is an API_KEY_REVOKED IAM event of the replay. A report write that fails still deletes the secrets.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hd_core import directory
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import LocalFolderShadowArtefacts, LocalSealedShadowSecrets
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.errors import AuthenticationFailed
from hd_core.iam_events import IamEventType
from hd_core.models import KeyEnv
from hd_core.shadow import replay, state_machine
from hd_core.shadow.asl_local import LocalStateMachine
from hd_core.shadow.replay import EngineEndpoint, ReplayOptions, ReplayServices
from hd_core.shadow.state_machine import ExecutionInput
from tests.unit.core.test_directory import ControlPlane, make_control_plane

PASSWORD = "pw-deleted-when-the-replay-ends-5c1e"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Started:
    """`ReplayExecutions` that keeps the input: the test runs the definition itself, after reading the key."""

    def __init__(self) -> None:
        self.inputs: dict[str, ExecutionInput] = {}

    def start(self, replay_id: str, execution_input: ExecutionInput) -> str:
        self.inputs[replay_id] = execution_input
        return f"local:{replay_id}"

    def status(self, execution_id: str) -> replay.ExecutionStatus:
        return "RUNNING"


class _ReportWriteFails(LocalFolderShadowArtefacts):
    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        if key.endswith("/report.json"):
            raise OSError("no space left on device")
        super().put_json(key, document)


def _setup(tmp_path: Path, artefacts: LocalFolderShadowArtefacts) -> tuple[ControlPlane, ReplayServices,
                                                                           ApiKeyAuthenticator, _Started]:
    keys = LocalKeyFile(tmp_path / "keys.json")
    plane = make_control_plane(tmp_path, keys)
    authenticator = ApiKeyAuthenticator(plane.store, ensure_pepper(plane.store), hasher=plane.hasher)
    started = _Started()
    services = ReplayServices(artefacts, LocalSealedShadowSecrets(tmp_path / "shadow" / "secrets", keys),
                              EngineEndpoint("127.0.0.1", _closed_port(), sslmode="disable"), started,
                              revoke_key=replay.control_key_revoker(plane.store, plane.trail, authenticator))
    return plane, services, authenticator, started


def _run(services: ReplayServices, execution_input: ExecutionInput) -> Any:
    machine = LocalStateMachine(
        state_machine.definition({name: name for name in state_machine.FUNCTIONS}),
        replay.task_handlers(services),
        sleep=lambda seconds: None)
    return machine.run(dict(execution_input))


def _secret_files_of(folder: Path, replay_id: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and replay_id.encode() in path.read_bytes()]


def test_a_finished_replay_leaves_no_secret_and_its_key_is_refused(tmp_path: Path) -> None:
    plane, services, authenticator, started = _setup(tmp_path, LocalFolderShadowArtefacts(tmp_path))
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1;\nselect 2;\n", "sql")
    replay_id = replay.start_replay(
        services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
        comparison_dsn=f"host=127.0.0.1 port={_closed_port()} dbname=x user=reader password={PASSWORD}",
        comparison_secret_arn=None, options=ReplayOptions(timeout_seconds=5))
    record = services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
    assert record is not None and len(record["owned_secrets"]) == 2
    secrets_folder = tmp_path / "shadow" / "secrets"
    assert len(_secret_files_of(secrets_folder, replay_id)) == 2
    key = services.secrets.get_secret(record["engine_key_secret"])
    assert authenticator.authenticate(record["engine_user"], key).user_id == record["engine_user"]

    output = _run(services, started.inputs[replay_id])

    assert output["report"]["error"] == 2  # neither side listens: both statements are errors, the run completes
    assert _secret_files_of(secrets_folder, replay_id) == []
    assert not any(PASSWORD.encode() in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    for reference in record["owned_secrets"]:
        with pytest.raises(replay.NotFound):
            services.secrets.get_secret(reference)
    with pytest.raises(AuthenticationFailed):
        authenticator.authenticate(record["engine_user"], key)
    revoked = plane.store.get_api_key(record["engine_key_id"])
    assert revoked is not None and revoked.revoked_at is not None
    events = [e for e in plane.trail.events(plane.org.org_id, limit=1000)
              if e.event_type == IamEventType.API_KEY_REVOKED.value]
    assert [(e.target, e.request_id) for e in events] == [(record["engine_key_id"], f"shadow-replay-{replay_id}")]
    # A retried WriteReport finds everything done already: no error, no second event.
    replay.write_report({"replay_id": replay_id, "batch_results": []}, services)
    assert len([e for e in plane.trail.events(plane.org.org_id, limit=1000)
                if e.event_type == IamEventType.API_KEY_REVOKED.value]) == 1


def test_a_failed_report_write_still_deletes_the_secrets_and_revokes_the_key(tmp_path: Path) -> None:
    plane, services, authenticator, _ = _setup(tmp_path, _ReportWriteFails(tmp_path))
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1;\n", "sql")
    replay_id = replay.start_replay(
        services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
        comparison_dsn=f"host=127.0.0.1 port={_closed_port()} dbname=x user=reader password={PASSWORD}",
        comparison_secret_arn=None, options=ReplayOptions())
    record = services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
    assert record is not None
    key = services.secrets.get_secret(record["engine_key_secret"])
    replay.prepare({"replay_id": replay_id}, services)

    with pytest.raises(OSError, match="no space"):
        replay.write_report({"replay_id": replay_id, "batch_results": [{"batch": 0, "status": "error"}]}, services)

    assert _secret_files_of(tmp_path / "shadow" / "secrets", replay_id) == []
    with pytest.raises(AuthenticationFailed):
        authenticator.authenticate(record["engine_user"], key)
