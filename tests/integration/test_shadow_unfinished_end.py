"""A replay that fails or times out in `hd dev` still ends: secrets deleted, key revoked, a report that says why.

Each replay runs through `hd dev`'s executions (the one ASL definition in the local interpreter, the real task
functions, a real control store, sealed local secrets). Neither database listens. One replay loses its query set
before Prepare reads it (Prepare fails after its retries: the definition's Catch runs EndReplay, then the
execution fails); another starts past its TimeoutSeconds (no Catch sees a timeout: the executions run EndReplay
when the run ends TIMED_OUT, as the AWS deployment's EventBridge rule does). Before this, both kept their
comparison-DSN secret and a key that authenticated for its 24 hours.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from hd_core import directory
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import LocalInterpreterExecutions, local_replay_services
from hd_core.api_keys import ApiKeyAuthenticator
from hd_core.bootstrap import ensure_pepper
from hd_core.errors import AuthenticationFailed, NotFound
from hd_core.iam_events import IamEventType
from hd_core.models import KeyEnv
from hd_core.shadow import replay, state_machine
from hd_core.shadow.replay import EngineEndpoint, ReplayOptions, ReplayServices
from tests.unit.core.test_directory import ControlPlane, make_control_plane

PASSWORD = "pw-of-a-replay-that-never-finished-9d2b"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path
        keys = LocalKeyFile(tmp_path / "keys.json")
        self.plane: ControlPlane = make_control_plane(tmp_path, keys)
        self.authenticator = ApiKeyAuthenticator(self.plane.store, ensure_pepper(self.plane.store),
                                                 hasher=self.plane.hasher)
        self.services: ReplayServices = local_replay_services(
            tmp_path, keys, EngineEndpoint("127.0.0.1", _closed_port(), sslmode="disable"),
            revoke_key=replay.control_key_revoker(self.plane.store, self.plane.trail, self.authenticator))
        assert isinstance(self.services.executions, LocalInterpreterExecutions)
        self.executions: LocalInterpreterExecutions = self.services.executions
        ctx = self.plane.ctx(self.plane.owner)
        self.env = directory.create_environment(self.plane.store, self.plane.trail, ctx, self.plane.org.org_id,
                                                "staging", KeyEnv.TEST)
        self.query_set = replay.upload_query_set(self.services, self.env, b"select 1;\nselect 2;\n", "sql")

    def start(self) -> str:
        return replay.start_replay(
            self.services, self.plane.store, self.plane.trail, self.plane.hasher, self.plane.ctx(self.plane.owner),
            self.env, self.query_set.id,
            comparison_dsn=f"host=127.0.0.1 port={_closed_port()} dbname=x user=reader password={PASSWORD}",
            comparison_secret_arn=None, options=ReplayOptions(timeout_seconds=5))

    def record(self, replay_id: str) -> dict[str, object]:
        record = self.services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
        assert record is not None
        return record

    def assert_ended(self, replay_id: str, record: dict[str, object], key: str) -> None:
        """No secret of the replay is left, its key is refused and revoked by the replay, no password anywhere."""
        for reference in record["owned_secrets"]:  # type: ignore[attr-defined]
            with pytest.raises(NotFound):
                self.services.secrets.get_secret(str(reference))
        assert not [p for p in (self.state / "shadow" / "secrets").rglob("*.json")]
        with pytest.raises(AuthenticationFailed):
            self.authenticator.authenticate(str(record["engine_user"]), key)
        events = [e for e in self.plane.trail.events(self.plane.org.org_id, limit=1000)
                  if e.event_type == IamEventType.API_KEY_REVOKED.value]
        assert [(e.target, e.request_id) for e in events] == [(record["engine_key_id"], f"shadow-replay-{replay_id}")]
        assert not any(PASSWORD.encode() in p.read_bytes() for p in self.state.rglob("*") if p.is_file())


def test_a_replay_whose_prepare_fails_is_ended_by_the_catch_and_its_report_says_why(tmp_path: Path) -> None:
    setup = _Setup(tmp_path)
    setup.executions.stop(timeout=5)  # hold the run: the query set goes before Prepare reads it
    replay_id = setup.start()
    record = setup.record(replay_id)
    key = setup.services.secrets.get_secret(str(record["engine_key_secret"]))
    assert setup.authenticator.authenticate(str(record["engine_user"]), key).user_id == record["engine_user"]
    (tmp_path / replay.query_set_key(setup.env.env_id, setup.query_set.id)).unlink()

    again = local_replay_services(tmp_path, LocalKeyFile(tmp_path / "keys.json"), setup.services.engine,
                                  revoke_key=setup.services.revoke_key)
    assert isinstance(again.executions, LocalInterpreterExecutions)
    assert again.executions.resume() == [replay_id]
    again.executions.wait(replay_id, timeout=60)

    execution = json.loads((tmp_path / replay.replay_prefix(replay_id) / "execution.json").read_text())
    assert execution["status"] == "FAILED" and execution["error"] == state_machine.REPLAY_FAILED_ERROR
    report = replay.read_report(again, setup.env, replay_id)
    assert report.ended is not None and (report.ended.status, report.ended.error) == ("FAILED", "ReplayBatchFailed")
    document = report.to_dict()
    assert document["ended"]["reason"].startswith("the replay ended FAILED (ReplayBatchFailed)")
    assert "Incomplete:" in report.to_markdown()
    assert replay.replay_progress(again, setup.env, replay_id).status == "FAILED"
    setup.assert_ended(replay_id, record, key)


def test_a_replay_that_times_out_is_ended_by_its_executions_and_reports_what_it_did_not_replay(
        tmp_path: Path) -> None:
    setup = _Setup(tmp_path)
    setup.executions.stop(timeout=5)
    replay_id = setup.start()
    record = setup.record(replay_id)
    key = setup.services.secrets.get_secret(str(record["engine_key_secret"]))
    # It had planned its batch before the host went down for longer than the definition's timeout.
    replay.prepare({"replay_id": replay_id}, setup.services)
    path = tmp_path / replay.replay_prefix(replay_id) / "execution.json"
    started = json.loads(path.read_text())
    path.write_text(json.dumps({**started, "started_at": time.time() - state_machine.EXECUTION_TIMEOUT_SECONDS - 60}))

    again = local_replay_services(tmp_path, LocalKeyFile(tmp_path / "keys.json"), setup.services.engine,
                                  revoke_key=setup.services.revoke_key)
    assert isinstance(again.executions, LocalInterpreterExecutions)
    assert again.executions.resume() == [replay_id]
    again.executions.wait(replay_id, timeout=60)

    assert json.loads(path.read_text())["error"] == "States.Timeout"
    report = replay.read_report(again, setup.env, replay_id).to_dict()
    assert report["ended"] == {"status": "TIMED_OUT", "error": "States.Timeout",
                               "reason": "the replay ended TIMED_OUT (States.Timeout) before its report was written"}
    assert [(s["verdict"], s["notes"]) for s in report["statements"]] == [
        ("error", [f"not replayed: {report['ended']['reason']}"])] * 2
    setup.assert_ended(replay_id, record, key)
    # Ending again (the rule and the Catch may both fire) changes nothing and records no second revocation.
    replay.end_replay({"replay_id": replay_id, "status": "FAILED", "error": "X"}, again)
    assert replay.read_report(again, setup.env, replay_id).to_dict() == report
    setup.assert_ended(replay_id, record, key)
