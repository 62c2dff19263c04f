"""The control API of `hd dev` over real HTTP, and the engine host honouring what it changes.

A key revoked through the API is refused by the engine; a masking rule created through the API
applies to the next statement; a user suspended through the API loses an open engine session.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.harness import EngineHostProcess, start_engine_host

ANALYST = "usr_demo_acme_analyst"
POLL_SECONDS = 10.0


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    process = start_engine_host(tmp_path_factory.mktemp("hd"), "--demo", "--insecure-plaintext")
    try:
        yield process
    finally:
        process.stop()


def api(host: EngineHostProcess, method: str, path: str, body: Any = None, *, key: str | None = None) -> Any:
    """One JSON request to the control API as the Owner (or `key`); raises for a non-2xx status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.api_url + path, data=data, method=method)
    request.add_header("X-API-Key", key or host.password)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _connect(host: EngineHostProcess, user: str, key: str) -> psycopg.Connection:
    return psycopg.connect(host.dsn(user=user, password=key, sslmode="disable"), autocommit=True)


def _eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + POLL_SECONDS
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _analyst_key(host: EngineHostProcess) -> str:
    created = api(host, "POST", "/v1/organizations/org_acme/api-keys",
                  {"user_id": ANALYST, "scopes": ["read_only"], "env": "test", "name": "e2e"})
    return str(created["api_key"])


def test_the_api_serves_its_openapi_document_and_knows_the_owner(host: EngineHostProcess) -> None:
    document = api(host, "GET", "/v1/openapi.json")
    assert "/v1/environments/{env_id}/audit/admin/verify-chain" in document["paths"]
    me = api(host, "GET", "/v1/auth/whoami")
    assert me["org_id"] == "org_acme" and me["role"] == "Owner"


def test_errors_over_http_have_the_error_shape(host: EngineHostProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(host, "GET", "/v1/organizations/org_acme/users", key="hd_live_" + "A" * 32)
    assert refused.value.code == 401
    error = json.loads(refused.value.read())["error"]
    # A key whose checksum is wrong is refused before any lookup; the code says so (the checksum is public).
    assert error["code"] == "HD_ERR_INVALID_API_KEY_FORMAT" and error["message"] == "authentication failed"
    assert error["request_id"]


def test_a_key_revoked_through_the_api_is_refused_by_the_engine(host: EngineHostProcess) -> None:
    key = _analyst_key(host)
    with _connect(host, ANALYST, key) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    key_id = api(host, "GET", "/v1/auth/whoami", key=key)["key_id"]
    api(host, "DELETE", f"/v1/organizations/org_acme/api-keys/{key_id}")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        _connect(host, ANALYST, key)


def test_a_masking_rule_created_through_the_api_applies_to_the_next_statement(host: EngineHostProcess) -> None:
    key = _analyst_key(host)
    with _connect(host, ANALYST, key) as conn:
        (status,) = conn.execute("SELECT status FROM sales.orders ORDER BY order_id LIMIT 1").fetchone()
        assert status != "***"
        api(host, "POST", "/v1/organizations/org_acme/policies",
            {"kind": "mask", "rule_id": "e2e_mask_status", "table": "sales.orders", "column": "status",
             "function": "full"})

        def masked() -> bool:
            row = conn.execute("SELECT status FROM sales.orders ORDER BY order_id LIMIT 1").fetchone()
            return row == ("***",)

        assert _eventually(masked)
        api(host, "DELETE", "/v1/organizations/org_acme/policies/mask/e2e_mask_status")
        assert _eventually(lambda: not masked())


def test_a_user_suspended_through_the_api_loses_an_open_engine_session(host: EngineHostProcess) -> None:
    key = _analyst_key(host)
    conn = _connect(host, ANALYST, key)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        api(host, "POST", f"/v1/organizations/org_acme/users/{ANALYST}/suspend")

        def refused() -> bool:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                return True
            return False

        assert _eventually(refused)
    finally:
        conn.close()
        api(host, "POST", f"/v1/organizations/org_acme/users/{ANALYST}/reactivate")

    def works_again() -> bool:
        # Hosts re-read a credential's standing at most once a second, so reactivation takes up to ~1 s.
        with _connect(host, ANALYST, key) as again:
            try:
                return again.execute("SELECT 1").fetchone() == (1,)
            except psycopg.Error:
                return False

    assert _eventually(works_again)


def test_the_iam_chain_of_these_changes_verifies(host: EngineHostProcess) -> None:
    envs = api(host, "GET", "/v1/organizations/org_acme/environments")
    report = api(host, "GET", f"/v1/environments/{envs[0]['env_id']}/audit/admin/verify-chain")
    assert report["chain_valid"] is True


def test_the_local_key_file_is_private_to_its_owner(host: EngineHostProcess) -> None:
    key_file = Path(host.state_dir) / "keys" / "local-keys.json"
    assert key_file.exists() and key_file.stat().st_mode & 0o077 == 0


def test_a_jwt_from_the_control_api_is_an_engine_password(host: EngineHostProcess) -> None:
    user = api(host, "POST", "/v1/organizations/org_acme/users",
               {"email": "jwt-user@example.com", "role": "Analyst", "password": "a long enough password"})
    request = urllib.request.Request(
        host.api_url + "/v1/auth/login", method="POST",
        data=json.dumps({"email": "jwt-user@example.com", "password": "a long enough password"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.loads(response.read())["access_token"]
    with _connect(host, user["user_id"], token) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user["user_id"],)
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        _connect(host, ANALYST, token)


def test_concurrent_http_requests_are_each_answered_as_their_sender(host: EngineHostProcess) -> None:
    """The threaded HTTP server in front of the dispatcher (which alone is tested with 20,000 requests in
    tests/integration/functions/test_concurrent_identity.py) keeps each connection's caller its own."""
    assert host.api_port is not None
    callers: list[tuple[str | None, str | None]] = [(host.password, host.user), (None, None)]
    for person in ("acme-analyst", "acme-admin", "globex-analyst"):
        key = (host.state_dir / "demo-keys" / f"{person}.key").read_text().strip()
        callers.append((key, f"usr_demo_{person.replace('-', '_')}"))
    wrong: list[str] = []

    def drive(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", host.api_port, timeout=60)
        for n in range(worker, 2000, 16):
            key, user_id = callers[n % len(callers)]
            connection.request("GET", "/v1/auth/whoami", headers={"X-API-Key": key} if key else {})
            response = connection.getresponse()
            body = response.read()
            expected = 401 if key is None else 200
            if response.status != expected or (key and json.loads(body)["user_id"] != user_id):
                wrong.append(f"{user_id}: {response.status} {body[:80]!r}")
        connection.close()

    threads = [threading.Thread(target=drive, args=(worker,)) for worker in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def _auth_call(host: EngineHostProcess, method: str, path: str, body: Any, *, bearer: str | None = None) -> Any:
    """One JSON request to the control API with a bearer token or no credential at all."""
    request = urllib.request.Request(host.api_url + path, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _engine_refuses(host: EngineHostProcess, user_id: str, token: str) -> bool:
    try:
        _connect(host, user_id, token).close()
    except psycopg.OperationalError as error:
        return "authentication failed" in str(error)
    return False


def test_a_jwt_ends_on_the_engine_with_what_ended_its_session(host: EngineHostProcess) -> None:
    """Issue 13 item 5: a password change, a suspension (then reactivation) and a revoked refresh family
    each refuse, as a Postgres password, every access token issued before them."""
    first_password, second_password = "a long enough password", "another long passphrase"
    user = api(host, "POST", "/v1/organizations/org_acme/users",
               {"email": "ended@example.com", "role": "Analyst", "password": first_password})
    user_id = user["user_id"]

    def login(password: str) -> dict[str, Any]:
        tokens: dict[str, Any] = _auth_call(host, "POST", "/v1/auth/login",
                                            {"email": "ended@example.com", "password": password})
        with _connect(host, user_id, tokens["access_token"]) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (user_id,)
        return tokens

    before_change = login(first_password)
    _auth_call(host, "PUT", "/v1/auth/password",
               {"current_password": first_password, "new_password": second_password},
               bearer=before_change["access_token"])
    assert _engine_refuses(host, user_id, before_change["access_token"])

    before_suspension = login(second_password)
    api(host, "POST", f"/v1/organizations/org_acme/users/{user_id}/suspend")
    api(host, "POST", f"/v1/organizations/org_acme/users/{user_id}/reactivate")
    assert _engine_refuses(host, user_id, before_suspension["access_token"])

    family = login(second_password)
    _auth_call(host, "POST", "/v1/auth/refresh", {"refresh_token": family["refresh_token"]})
    with pytest.raises(urllib.error.HTTPError) as reused:
        _auth_call(host, "POST", "/v1/auth/refresh", {"refresh_token": family["refresh_token"]})
    assert reused.value.code == 401
    assert _engine_refuses(host, user_id, family["access_token"])
    login(second_password)  # a session opened after all of it works
