"""Pinned identity-provider keys: federation that works from the isolated VPC (issue 21, item 5).

The control API's Lambdas run in subnets with no internet route, and no VPC endpoint exists for an arbitrary
identity provider's discovery document or JWKS. So the keys are pinned in the control store and refreshed by a
scheduled job that runs where the internet is (outside the VPC, like webhook delivery), reaching only the
configured issuers:
- `refresh_pinned_keys` reads each issuer's OIDC discovery document, refuses it unless it names that very issuer
  and the configured `jwks_uri` (a configuration pins both; a changed document must not move trust elsewhere),
  fetches the JWKS, keeps only public asymmetric keys, and stores them under `federation-jwks#<issuer name>`.
  A failed fetch keeps the keys already pinned (tokens go on verifying; the job's error alarm speaks).
- `PinnedJwks` gives `OidcFederation` the signing key for a token from the pinned set only: nothing is fetched
  at sign-in, and a key the job no longer finds is no longer trusted after its next run.
AWS STS outbound identity tokens (`sts:GetWebIdentityToken`) are one such issuer: `FederatedIssuer.aws_sts_outbound`
points at the account's issuer URL and its `/.well-known/jwks.json`, the standard STS web identity keys.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jwt

from hd_core.errors import AuthenticationFailed, HdError
from hd_core.federation import FederatedIssuer
from hd_core.models import utc_now

SETTING_PREFIX = "federation-jwks#"
DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DOCUMENT_BYTES = 256 * 1024
FETCH_TIMEOUT_SECONDS = 10.0
# Public key types of asymmetric JWS algorithms; anything else (oct) or anything with a private part is dropped.
_PUBLIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k"})


class KeysUnavailable(HdError):
    """An issuer's discovery document or JWKS could not be fetched or is not acceptable."""

    code = "HD_ERR_FEDERATION_KEYS_UNAVAILABLE"


class SettingStore(Protocol):
    def get_setting(self, name: str) -> str | None: ...

    def put_setting(self, name: str, value: str) -> None: ...


Fetch = Callable[[str], Mapping[str, Any]]


def https_fetch(url: str) -> Mapping[str, Any]:
    """A JSON document over https (plain http only to loopback, for a local identity provider); size-capped."""
    from hd_core.federation import _require_safe_jwks_uri

    _require_safe_jwks_uri("fetch", url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - checked above
    try:
        with opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            body = response.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise KeysUnavailable(f"cannot fetch {url}: {error}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise KeysUnavailable(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise KeysUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(document, dict):
        raise KeysUnavailable(f"{url} did not answer a JSON object")
    return document


@dataclass(frozen=True)
class RefreshOutcome:
    issuer: str
    keys: int  # public keys pinned now (0 with an error: the previous set was kept)
    error: str | None = None


def public_keys(jwks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JWKS's public asymmetric signing keys that PyJWT can load; KeysUnavailable if none."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise KeysUnavailable("the JWKS has no 'keys' list")
    kept: list[dict[str, Any]] = []
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in _PUBLIC_KEY_TYPES or _PRIVATE_MEMBERS & set(key):
            continue
        if key.get("use", "sig") != "sig":
            continue
        try:
            jwt.PyJWK(key)
        except jwt.PyJWTError:
            continue
        kept.append(key)
    if not kept:
        raise KeysUnavailable("the JWKS holds no usable public signing key")
    return kept


def refresh_pinned_keys(store: SettingStore, issuers: Iterable[FederatedIssuer], *, fetch: Fetch = https_fetch,
                        now: Callable[[], datetime] = utc_now) -> list[RefreshOutcome]:
    """Fetch and pin each issuer's keys; an issuer that fails keeps its previous keys (reported, not raised)."""
    outcomes: list[RefreshOutcome] = []
    for issuer in issuers:
        try:
            discovery = fetch(issuer.issuer.rstrip("/") + DISCOVERY_PATH)
            if discovery.get("issuer") != issuer.issuer:
                raise KeysUnavailable(f"the discovery document names issuer {discovery.get('issuer')!r}, "
                                      f"not {issuer.issuer!r}")
            if discovery.get("jwks_uri") != issuer.jwks_uri:
                raise KeysUnavailable(f"the discovery document's jwks_uri {discovery.get('jwks_uri')!r} is not the "
                                      f"configured {issuer.jwks_uri!r}: update the configuration to move trust")
            keys = public_keys(fetch(issuer.jwks_uri))
        except KeysUnavailable as error:
            outcomes.append(RefreshOutcome(issuer.name, 0, str(error)))
            continue
        store.put_setting(SETTING_PREFIX + issuer.name, json.dumps(
            {"issuer": issuer.issuer, "jwks_uri": issuer.jwks_uri, "fetched_at": now().isoformat(),
             "keys": keys}, sort_keys=True))
        outcomes.append(RefreshOutcome(issuer.name, len(keys)))
    return outcomes


class PinnedJwks:
    """Signing keys of configured issuers from the pinned sets; re-read from the store at most every `ttl`."""

    def __init__(self, store: SettingStore, *, ttl_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, jwt.PyJWK]]] = {}
        self._lock = threading.Lock()

    def signing_key(self, issuer: FederatedIssuer, token: str) -> jwt.PyJWK:
        """The pinned key the token's `kid` names; AuthenticationFailed if there is none."""
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self._keys(issuer)
        if isinstance(kid, str) and kid in keys:
            return keys[kid]
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        raise AuthenticationFailed(f"federated token from {issuer.name} is signed by a key that is not pinned")

    def _keys(self, issuer: FederatedIssuer) -> dict[str, jwt.PyJWK]:
        with self._lock:
            cached = self._cache.get(issuer.name)
            if cached is not None and self._clock() - cached[0] < self._ttl:
                return cached[1]
        raw = self._store.get_setting(SETTING_PREFIX + issuer.name)
        if raw is None:
            raise AuthenticationFailed(f"no pinned keys for issuer {issuer.name}: the key refresh job has not run")
        document = json.loads(raw)
        if document.get("issuer") != issuer.issuer or document.get("jwks_uri") != issuer.jwks_uri:
            # Pinned for another configuration of the same name: never trust them for this one.
            raise AuthenticationFailed(f"the pinned keys of {issuer.name} were fetched for another issuer")
        keys = {str(key.get("kid", index)): jwt.PyJWK(key) for index, key in enumerate(document["keys"])}
        with self._lock:
            self._cache[issuer.name] = (self._clock(), keys)
        return keys
