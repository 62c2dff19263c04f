"""One credential refusal, one log line: `hd dev` with its own logging configuration (level INFO).

Every kind of refusal the control API gives is sent once, one after another, and the host's
output (stdout and stderr, merged) must then hold exactly one line per refusal, carrying the
refusal's request id. The refusal that starts a brute-force lockout used to print a second line
(the throttle's own warning, without a request id); its lockout now rides on the refusal's line.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import hd_core.api_keys as api_keys_module
from tests.harness import EngineHostProcess, start_engine_host

LOCKOUT_AFTER = 3
LIMITS = {"HD_AUTH_FREE_FAILURES": "2", "HD_AUTH_LOCKOUT_AFTER": str(LOCKOUT_AFTER),
          "HD_AUTH_LOCKOUT_SECONDS": "600", "HD_AUTH_BACKOFF_BASE_SECONDS": "0.01",
          "HD_AUTH_BACKOFF_MAX_SECONDS": "0.01"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    started = start_engine_host(tmp_path_factory.mktemp("hd-refusal-log"), env=LIMITS, log_level="INFO")
    yield started
    started.stop()


def _call(host: EngineHostProcess, method: str, path: str, headers: dict[str, str],
          body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(host.api_url + path, method=method, data=data,
                                     headers={**headers, **({"Content-Type": "application/json"} if data else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _other_secret(key: str) -> str:
    """A well-formed key (valid checksum) with `key`'s key id and another secret."""
    body = key[:-6]
    body = body[:-1] + ("A" if body[-1] != "A" else "B")
    return body + api_keys_module._checksum(body)


def _foreign_jwt(user_id: str) -> str:
    """A well-formed RS256 token signed by a key this deployment never issued."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"sub": user_id, "iss": "https://hardened-duck.local", "aud": "hardened-duck", "iat": now,
              "exp": now + 600}
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "not-ours"})


def _lines_since(host: EngineHostProcess, start: int, settle_seconds: float = 1.0) -> list[str]:
    """The host's output lines after position `start`, once it stopped growing for a moment."""
    seen = -1
    while seen != len(host.output):
        seen = len(host.output)
        time.sleep(settle_seconds)
    return [line for line in host.output[start:] if line.strip()]


def test_every_kind_of_refusal_prints_exactly_one_line(host: EngineHostProcess) -> None:
    owner = {"X-API-Key": host.password}
    status, whoami = _call(host, "GET", "/v1/auth/whoami", owner)
    assert status == 200
    org, user = whoami["org_id"], whoami["user_id"]
    users = f"/v1/organizations/{org}/users"
    status, created = _call(host, "POST", f"/v1/organizations/{org}/api-keys", owner, {"scopes": ["read_only"]})
    assert status == 201
    revoked_key, revoked_id = created["api_key"], created["key"]["key_id"]
    status, _ = _call(host, "DELETE", f"/v1/organizations/{org}/api-keys/{revoked_id}", owner)
    assert status == 200
    status, created = _call(host, "POST", f"/v1/organizations/{org}/api-keys", owner, {"scopes": ["read_only"]})
    assert status == 201
    target = created["api_key"]
    start = len(_lines_since(host, 0, settle_seconds=0.5))

    refusals: list[tuple[str, str, str, dict[str, str], Any]] = [
        ("unreadable bearer", "GET", users, {"Authorization": "Bearer abc.def.ghi"}, None),
        ("foreign jwt", "GET", users, {"Authorization": f"Bearer {_foreign_jwt(user)}"}, None),
        ("malformed key", "GET", users, {"X-API-Key": "hd_live_" + "x" * 32}, None),
        ("both headers", "GET", users, {"X-API-Key": host.password, "Authorization": "Bearer abc"}, None),
        ("no credentials", "GET", users, {}, None),
        ("revoked key", "GET", users, {"X-API-Key": revoked_key}, None),
        ("wrong password", "POST", "/v1/auth/login", {}, {"email": "nobody@example.com", "password": "x" * 12}),
        *[(f"wrong secret {n}", "GET", users, {"X-API-Key": _other_secret(target)}, None)
          for n in range(1, LOCKOUT_AFTER + 1)],
        ("locked out", "GET", users, {"X-API-Key": target}, None),
    ]
    request_ids = {}
    for name, method, path, headers, body in refusals:
        status, answer = _call(host, method, path, headers, body)
        assert status == 401, (name, answer)
        request_ids[name] = answer["error"]["request_id"]
        time.sleep(0.05)  # past the throttle's backoff, so each wrong secret is checked and counted

    lines = _lines_since(host, start)
    assert len(lines) == len(refusals), "\n".join(lines)
    for name, request_id in request_ids.items():
        carrying = [line for line in lines if request_id in line]
        assert len(carrying) == 1, (name, lines)
    lockout_line = next(line for line in lines if request_ids[f"wrong secret {LOCKOUT_AFTER}"] in line)
    record = json.loads(lockout_line)
    assert record["message"] == "authentication refused" and record["reason"] == "wrong secret"
    assert "locked after 3 failures" in record["lockout"]
    assert "throttled" in json.loads(next(line for line in lines if request_ids["locked out"] in line))["reason"]
