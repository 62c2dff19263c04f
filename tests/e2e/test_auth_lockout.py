"""Brute-force limits on the wire: wrong API key secrets lock the key id, and then the right key gets the same 28P01.

A host of its own (locking the shared demo host's keys would break other tests), started with small limits
through the HD_AUTH_* variables the engine host reads: 2 free failures, locked for 10 minutes at the 3rd.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import hd_core.api_keys as api_keys_module
from tests.e2e.rawpg import RawClient, cstr, message, startup_packet
from tests.harness import EngineHostProcess, start_engine_host

LOCKOUT_AFTER = 3
LIMITS = {"HD_AUTH_FREE_FAILURES": "2", "HD_AUTH_LOCKOUT_AFTER": str(LOCKOUT_AFTER), "HD_AUTH_LOCKOUT_SECONDS": "600"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    started = start_engine_host(tmp_path_factory.mktemp("hd-lockout"), env=LIMITS)
    yield started
    started.stop()


def _api(host: EngineHostProcess, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        host.api_url + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"X-API-Key": host.password, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def _with_other_secret(key: str) -> str:
    """A well-formed key (valid checksum) with the same key id as `key` but a different secret."""
    body = key[:-6]
    body = body[:-1] + ("A" if body[-1] != "A" else "B")
    return body + api_keys_module._checksum(body)


def _refusal(host: EngineHostProcess, user: str, password: str) -> dict[str, str]:
    """The ErrorResponse fields a login with `password` gets (it must be refused)."""
    client = RawClient(host.port)
    try:
        client.send(startup_packet({"user": user, "database": "hd"}))
        challenge = client.read()
        assert challenge is not None and challenge.kind == b"R"
        client.send(message(b"p", cstr(password)))
        reply = client.read()
        assert reply is not None and reply.kind == b"E"
        return reply.error_fields()
    finally:
        client.close()


def _psycopg_refusal(host: EngineHostProcess, user: str, password: str) -> str:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host.dsn(user=user, password=password))
    return str(refused.value)


def test_wrong_secrets_lock_the_key_id_and_the_right_key_then_gets_the_same_28P01(host: EngineHostProcess) -> None:
    whoami = _api(host, "GET", "/v1/auth/whoami")
    created = _api(host, "POST", f"/v1/organizations/{whoami['org_id']}/api-keys", {"scopes": ["read_only"]})
    key, key_id, user = created["api_key"], created["key"]["key_id"], whoami["user_id"]
    with psycopg.connect(host.dsn(user=user, password=key)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wrong = _with_other_secret(key)
    failures = [_refusal(host, user, wrong) for _ in range(LOCKOUT_AFTER)]
    locked = _refusal(host, user, key)
    unknown_key = _refusal(host, user, "hd_live_" + "Q" * 26 + api_keys_module._checksum("hd_live_" + "Q" * 26))
    expected = {"C": "28P01", "M": f'password authentication failed for user "{user}"', "D": "HD_ERR_AUTH_FAILED"}
    for fields in [*failures, locked, unknown_key]:
        assert {name: fields.get(name) for name in expected} == expected
    # What a real driver shows its user: the same text for the locked right key as for a wrong one.
    assert _psycopg_refusal(host, user, key) == _psycopg_refusal(host, user, wrong)
    # Only this key id is locked: the Owner's own key still connects.
    with psycopg.connect(host.dsn()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    events = _api(host, "GET", f"/v1/environments/{_live_env(host, whoami['org_id'])}/audit/admin?limit=1000")
    lockouts = [event for event in events if event["event_type"] == "auth.lockout"]
    assert [(event["target"], event["after"]["failures"]) for event in lockouts] == [(key_id, LOCKOUT_AFTER)]


def _live_env(host: EngineHostProcess, org_id: str) -> str:
    environments = _api(host, "GET", f"/v1/organizations/{org_id}/environments")
    return str(environments[0]["env_id"])
