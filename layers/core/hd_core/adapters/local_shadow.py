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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from hd_core.errors import NotFound
from hd_core.object_source import safe_relative_path
from hd_core.ports import KeyProvider
from hd_core.sealed_secrets import SecretSealer
from hd_core.shadow import state_machine
from hd_core.shadow.asl_local import ExecutionFailed, LocalStateMachine
from hd_core.shadow.replay import (
    EngineEndpoint,
    ExecutionStatus,
    ReplayKeyRevoker,
    ReplayServices,
    prepare,
    replay_batch,
    replay_prefix,
    write_report,
)
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

    The execution input and the outcome are kept in `shadow/replays/<id>/execution.json`, where Step
    Functions would keep its history. An execution does not outlive the process: one found RUNNING
    on disk but unknown to this process was cut short by a restart and reads FAILED.
    """

    def __init__(self, services: ReplayServices) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        handlers: dict[str, Callable[[Any], Any]] = {
            state_machine.PREPARE: lambda event: prepare(event, services),
            state_machine.REPLAY_BATCH: lambda event: replay_batch(event, services),
            state_machine.WRITE_REPORT: lambda event: write_report(event, services),
        }
        self._definition = state_machine.definition({name: name for name in state_machine.FUNCTIONS})
        self._handlers = handlers
        LocalStateMachine(self._definition, handlers)  # refuses an uninterpretable definition at start

    def start(self, replay_id: str, execution_input: ExecutionInput) -> str:
        key = f"{replay_prefix(replay_id)}execution.json"
        with self._lock:
            if replay_id in self._running or self._services.artefacts.get_json(key) is not None:
                return f"local:{replay_id}"
            self._services.artefacts.put_json(key, {"status": "RUNNING", "input": dict(execution_input)})
            thread = threading.Thread(target=self._run, args=(replay_id, dict(execution_input)),
                                      name=f"hd-shadow-{replay_id}", daemon=True)
            self._running[replay_id] = thread
        thread.start()
        return f"local:{replay_id}"

    def status(self, execution_id: str) -> ExecutionStatus:
        replay_id = execution_id.removeprefix("local:")
        document = self._services.artefacts.get_json(f"{replay_prefix(replay_id)}execution.json") or {}
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

    def _run(self, replay_id: str, execution_input: dict[str, Any]) -> None:
        key = f"{replay_prefix(replay_id)}execution.json"
        outcome: dict[str, Any] = {"status": "SUCCEEDED", "input": execution_input}
        try:
            LocalStateMachine(self._definition, self._handlers).run(execution_input)
        except ExecutionFailed as failure:
            log.warning("shadow replay %s failed: %s", replay_id, failure.error)
            outcome = {**outcome, "status": "FAILED", "error": failure.error}
        except Exception:
            log.exception("shadow replay %s failed", replay_id)
            outcome = {**outcome, "status": "FAILED", "error": "States.Runtime"}
        self._services.artefacts.put_json(key, outcome)
        with self._lock:
            self._running.pop(replay_id, None)


def local_replay_services(state_dir: Path, keys: KeyProvider, engine: EngineEndpoint,
                          revoke_key: ReplayKeyRevoker | None = None) -> ReplayServices:
    """`hd dev`'s replay services: documents (keys `shadow/...`) and sealed secrets (`shadow/secrets/`) in the
    state folder, executions by the local interpreter. `revoke_key` (`control_key_revoker` over the host's
    control store) lets WriteReport revoke the replay's key when it ends."""
    (Path(state_dir) / "shadow").mkdir(mode=0o700, parents=True, exist_ok=True)
    tasks = ReplayServices(artefacts=LocalFolderShadowArtefacts(state_dir),
                           secrets=LocalSealedShadowSecrets(Path(state_dir) / "shadow" / "secrets", keys),
                           engine=engine, revoke_key=revoke_key)
    return ReplayServices(artefacts=tasks.artefacts, secrets=tasks.secrets, engine=engine,
                          executions=LocalInterpreterExecutions(tasks), revoke_key=revoke_key)
