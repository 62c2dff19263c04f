"""Shadow replay's ports in `hd dev`: JSON documents under the state folder, secrets sealed with the local key
file, executions run by the local ASL interpreter.

Documents live in `<state>/shadow/` (mode 0700; their keys all start with `shadow/`), written to a
temporary file and renamed into place so a reader never sees half a document and a re-run batch
replaces its own result. Secrets are sealed with the
deployment's `KeyProvider` (`SecretSealer`, purpose `shadow-secret`, owner = the secret id), so the state
folder holds no DSN password in the clear; a secret id (`shsec_...`) is all the replay's record holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from hd_core.errors import NotFound
from hd_core.object_source import safe_relative_path
from hd_core.ports import KeyProvider
from hd_core.sealed_secrets import SecretSealer
from hd_core.shadow import state_machine
from hd_core.shadow.asl_local import ExecutionFailed, ExecutionStopped, LocalStateMachine
from hd_core.shadow.replay import (
    EngineEndpoint,
    ExecutionStatus,
    ReplayKeyRevoker,
    ReplayServices,
    end_replay,
    replay_prefix,
    task_handlers,
)
from hd_core.shadow.sample_masks import MaskingSource
from hd_core.shadow.state_machine import ExecutionInput

log = logging.getLogger(__name__)

_SECRET_ID_RE = re.compile(r"^shsec_[0-9a-f]{32}$")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class LocalFolderShadowArtefacts:
    """`ShadowArtefacts` as JSON files under `root`; a key is a relative path with `/` separators."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        _write_atomically(self._path(key), json.dumps(document, default=str))

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            loaded = json.loads(self._path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return loaded if isinstance(loaded, dict) else None

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._root / safe_relative_path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self._root
        if not folder.is_dir():
            return []
        keys = (p.relative_to(self._root).as_posix() for p in folder.rglob("*")
                if p.is_file() and not p.name.startswith(".tmp-"))
        return sorted(key for key in keys if key.startswith(prefix))

    def _path(self, key: str) -> Path:
        return self._root / safe_relative_path(key)


class LocalSealedShadowSecrets:
    """`ShadowSecrets` as sealed files under `root`; the reference is a random id, not the name given."""

    def __init__(self, root: Path, keys: KeyProvider) -> None:
        self._root = Path(root)
        self._sealer = SecretSealer(keys, purpose="shadow-secret")

    def put_secret(self, name: str, value: str) -> str:
        secret_id = "shsec_" + secrets.token_hex(16)
        sealed = self._sealer.seal(secret_id, value)
        _write_atomically(self._root / f"{secret_id}.json", json.dumps({"name": name, "sealed": sealed}))
        return secret_id

    def get_secret(self, reference: str) -> str:
        if not _SECRET_ID_RE.match(reference):
            raise NotFound("secret not found")
        try:
            stored = json.loads((self._root / f"{reference}.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound("secret not found") from None
        return self._sealer.unseal(reference, stored["sealed"])

    def delete_secret(self, reference: str) -> None:
        if not _SECRET_ID_RE.match(reference):
            raise NotFound("secret not found")
        (self._root / f"{reference}.json").unlink(missing_ok=True)


class LocalInterpreterExecutions:
    """`ReplayExecutions` in `hd dev`: the state machine's one definition run by `asl_local` on a background thread.

    The execution input, its start and its outcome are kept in `shadow/replays/<id>/execution.json`, where
    Step Functions would keep its history, so an execution outlives the process that started it: `stop`
    (the host shutting down) interrupts each run before its next state and leaves it RUNNING on disk, and
    `resume` (the next start on the same state folder) runs every RUNNING one again from its input. The
    tasks are idempotent (`prepare` keeps its plan, a stored batch is not replayed again), so a resumed run
    replays only the batches that had not stored their results, and a process killed outright resumes the
    same way. An execution RUNNING on disk that this process is not running (it was never resumed) reads
    FAILED.
    """

    def __init__(self, services: ReplayServices, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._stopping = threading.Event()
        self._wall_clock = wall_clock
        handlers = task_handlers(services)
        self._definition = state_machine.definition({name: name for name in state_machine.FUNCTIONS})
        self._handlers = handlers
        LocalStateMachine(self._definition, handlers)  # refuses an uninterpretable definition at start

    def start(self, replay_id: str, execution_input: ExecutionInput) -> str:
        key = _execution_key(replay_id)
        with self._lock:
            if replay_id in self._running or self._services.artefacts.get_json(key) is not None:
                return f"local:{replay_id}"
            self._services.artefacts.put_json(key, {"status": "RUNNING", "input": dict(execution_input),
                                                    "started_at": self._wall_clock()})
            self._launch(replay_id, dict(execution_input), elapsed=0.0)
        return f"local:{replay_id}"

    def resume(self) -> list[str]:
        """Run again every execution the state folder holds as RUNNING that this process is not running (an
        earlier process stopped or died during it); returns their replay ids."""
        resumed = []
        for key in self._services.artefacts.list_keys("shadow/replays/"):
            if not key.endswith("/execution.json"):
                continue
            try:
                document = self._services.artefacts.get_json(key) or {}
            except (OSError, ValueError):  # a damaged record must not keep hd dev from starting
                log.warning("shadow execution record %s is unreadable; that replay is not resumed", key)
                continue
            replay_id = key.split("/")[2]
            running = document.get("status") == "RUNNING" and isinstance(document.get("input"), dict)
            if not running or not _is_replay_id(replay_id):
                continue
            started = document.get("started_at")
            elapsed = self._wall_clock() - float(started) if isinstance(started, (int, float)) else 0.0
            with self._lock:
                if replay_id in self._running or self._stopping.is_set():
                    continue
                self._launch(replay_id, dict(document["input"]), elapsed=elapsed)
            log.info("shadow replay %s resumed", replay_id)
            resumed.append(replay_id)
        return resumed

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt every run before its next state (a task under way finishes) and wait up to `timeout` for
        them; they stay RUNNING on disk for `resume`. No execution starts or resumes afterwards."""
        with self._lock:
            self._stopping.set()
            threads = list(self._running.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def status(self, execution_id: str) -> ExecutionStatus:
        replay_id = execution_id.removeprefix("local:")
        document = self._services.artefacts.get_json(_execution_key(replay_id)) or {}
        status = document.get("status")
        with self._lock:
            running = replay_id in self._running
        if status == "RUNNING" and not running:
            return "FAILED"
        return cast(ExecutionStatus, status if status in ("RUNNING", "SUCCEEDED", "FAILED") else "FAILED")

    def wait(self, replay_id: str, timeout: float | None = None) -> None:
        """Block until the replay's execution ends (tests, and `hd dev` shutting down)."""
        with self._lock:
            thread = self._running.get(replay_id)
        if thread is not None:
            thread.join(timeout)

    def _launch(self, replay_id: str, execution_input: dict[str, Any], *, elapsed: float) -> None:
        """Start the run's thread; the caller holds the lock."""
        if self._stopping.is_set():
            return  # shutting down: the execution stays RUNNING on disk and the next start resumes it
        thread = threading.Thread(target=self._run, args=(replay_id, execution_input, elapsed),
                                  name=f"hd-shadow-{replay_id}", daemon=True)
        self._running[replay_id] = thread
        thread.start()

    def _run(self, replay_id: str, execution_input: dict[str, Any], elapsed: float) -> None:
        key = _execution_key(replay_id)
        outcome: dict[str, Any] | None = None
        try:
            machine = LocalStateMachine(self._definition, self._handlers, should_stop=self._stopping.is_set)
            machine.run(execution_input, elapsed_seconds=elapsed)
            outcome = {"status": "SUCCEEDED"}
        except ExecutionStopped:
            log.info("shadow replay %s interrupted; it resumes when hd dev starts again", replay_id)
        except ExecutionFailed as failure:
            log.warning("shadow replay %s failed: %s", replay_id, failure.error)
            outcome = {"status": "FAILED", "error": failure.error}
        except Exception:
            log.exception("shadow replay %s failed", replay_id)
            outcome = {"status": "FAILED", "error": "States.Runtime"}
        if outcome is not None and outcome["status"] == "FAILED":
            self._end(replay_id, outcome["error"])
        if outcome is not None:
            document = self._services.artefacts.get_json(key) or {"input": execution_input}
            self._services.artefacts.put_json(key, {**document, **outcome})
        with self._lock:
            self._running.pop(replay_id, None)


    def _end(self, replay_id: str, error: str) -> None:
        """What the AWS deployment's EventBridge rule does for a run that ended without WriteReport: `end_replay`
        (its report says why, its secrets are deleted, its key revoked); a run its own Catch already ended finds
        that done. Timing out is its own status in Step Functions (TIMED_OUT), as here."""
        status = "TIMED_OUT" if error == "States.Timeout" else "FAILED"
        try:
            end_replay({"replay_id": replay_id, "status": status, "error": error}, self._services)
        except Exception:
            # Logged, never raised: the run is over either way; a key left unrevoked still expires in 24 h.
            log.exception("ending shadow replay %s after its %s run failed", replay_id, status)


def _is_replay_id(value: str) -> bool:
    try:
        replay_prefix(value)
    except NotFound:
        return False
    return True


def _execution_key(replay_id: str) -> str:
    return f"{replay_prefix(replay_id)}execution.json"


def local_replay_services(state_dir: Path, keys: KeyProvider, engine: EngineEndpoint,
                          revoke_key: ReplayKeyRevoker | None = None,
                          sample_masks: MaskingSource | None = None) -> ReplayServices:
    """`hd dev`'s replay services: documents (keys `shadow/...`) and sealed secrets (`shadow/secrets/`) in the
    state folder, executions by the local interpreter. `revoke_key` (`control_key_revoker` over the host's
    control store) lets WriteReport revoke the replay's key when it ends; `sample_masks`
    (`sample_masks.control_masking`) masks a mismatch's rows with the engine's rules."""
    (Path(state_dir) / "shadow").mkdir(mode=0o700, parents=True, exist_ok=True)
    tasks = ReplayServices(artefacts=LocalFolderShadowArtefacts(state_dir),
                           secrets=LocalSealedShadowSecrets(Path(state_dir) / "shadow" / "secrets", keys),
                           engine=engine, revoke_key=revoke_key, sample_masks=sample_masks)
    return ReplayServices(artefacts=tasks.artefacts, secrets=tasks.secrets, engine=engine,
                          executions=LocalInterpreterExecutions(tasks), revoke_key=revoke_key,
                          sample_masks=sample_masks)
