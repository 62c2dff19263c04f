"""JWT signing-key rotation against a real `hd dev --demo` (issue 19): the JWKS, the API and the wire follow the ring.

The rotation pass runs in this process on the host's own state (its SQLite store and key files) with a
clock set 90 days ahead, so the host's key is due; the host, on the wall clock, re-reads the ring on
every verification (HD_JWT_KEY_RING_REFRESH_SECONDS=0). A token issued before the rotation keeps
working until its key is disabled; then it is refused on the API and on the wire although it has not
expired, which only the ring can decide.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import pytest

from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.control_settings import ControlApiSettings
from hd_core.services import ControlServices, assemble_services
from hd_core.signing_keys import rotate_jwt_signing_keys
from tests.clocks import HandWoundClock
from tests.harness import EngineHostProcess, start_engine_host

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tmp_path_factory.mktemp("hd"), "--demo", "--insecure-plaintext",
                                env={"HD_JWT_KEY_RING_REFRESH_SECONDS": "0"})
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def future() -> HandWoundClock:
    return HandWoundClock(datetime.now(UTC) + timedelta(days=90, minutes=5))


@pytest.fixture
def host_services(host: EngineHostProcess, future: HandWoundClock) -> Iterator[ControlServices]:
    store = SqliteControlStore(host.state_dir / "control.sqlite3")
    try:
        yield assemble_services(
            ControlApiSettings(), store=store,
            keys=LocalKeyFile(host.state_dir / "keys" / "local-keys.json", now=future),
            checkpoints=LocalFolderCheckpointStore(host.state_dir),
            query_audit=LocalFolderAuditArchive(host.state_dir),
        )
    finally:
        store.close()


def _call(host: EngineHostProcess, method: str, path: str, body: Any = None, *, key: str | None = None,
          bearer: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.api_url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("X-API-Key", key)
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _login(host: EngineHostProcess, email: str) -> str:
    status, tokens = _call(host, "POST", "/v1/auth/login", {"email": email, "password": PASSWORD})
    assert status == 200, tokens
    return str(tokens["access_token"])


def _jwks_kids(host: EngineHostProcess) -> list[str]:
    status, document = _call(host, "GET", "/.well-known/jwks.json")
    assert status == 200
    return [entry["kid"] for entry in document["keys"]]


def _wire_ok(host: EngineHostProcess, user_id: str, token: str) -> bool:
    try:
        with psycopg.connect(host.dsn(user=user_id, password=token, sslmode="disable"), autocommit=True) as conn:
            return conn.execute("SELECT current_user").fetchone() == (user_id,)
    except psycopg.OperationalError as error:
        assert "authentication failed" in str(error)
        return False


def test_a_rotated_key_verifies_until_disabled_then_its_tokens_are_refused_on_the_api_and_the_wire(
    host: EngineHostProcess, host_services: ControlServices, future: HandWoundClock,
) -> None:
    status, user = _call(host, "POST", "/v1/organizations/org_acme/users",
                         {"email": "rotation@example.com", "role": "Analyst", "password": PASSWORD}, key=host.password)
    assert status == 201, user
    user_id = user["user_id"]
    before = _login(host, "rotation@example.com")
    old_kid = jwt.get_unverified_header(before)["kid"]
    assert _jwks_kids(host) == [old_kid]
    assert _wire_ok(host, user_id, before)

    rotated = rotate_jwt_signing_keys(host_services.store, host_services.trail, host_services.keys, future(),
                                      policy=host_services.signing_key_policy)
    assert len(rotated.created) == 1
    new_kid = rotated.created[0]
    assert _jwks_kids(host) == [new_kid, old_kid]
    # Tokens of the previous key still work everywhere; new logins are signed by the new key.
    assert _wire_ok(host, user_id, before)
    assert _call(host, "GET", "/v1/auth/whoami", bearer=before)[0] == 200
    after = _login(host, "rotation@example.com")
    assert jwt.get_unverified_header(after)["kid"] == new_kid
    assert _wire_ok(host, user_id, after)

    future.advance(hours=2)  # past every token the old key could have signed before it was retired
    retired = rotate_jwt_signing_keys(host_services.store, host_services.trail, host_services.keys, future(),
                                      policy=host_services.signing_key_policy)
    assert retired.disabled == [old_kid]
    assert _jwks_kids(host) == [new_kid]
    # `before` has not expired on the wall clock: only the disabled key refuses it.
    assert jwt.decode(before, options={"verify_signature": False})["exp"] > datetime.now(UTC).timestamp()
    assert not _wire_ok(host, user_id, before)
    assert _call(host, "GET", "/v1/auth/whoami", bearer=before)[0] == 401
    assert _wire_ok(host, user_id, after)
    assert _call(host, "GET", "/v1/auth/whoami", bearer=after)[0] == 200
