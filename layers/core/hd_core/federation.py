"""OIDC federation: workloads sign in with a token from their own cloud instead of a stored secret.

An organisation links a user (typically a service account) to an external identity
`<issuer>#<subject>`. A JWT from a configured issuer, signed by a key from that issuer's JWKS and
meant for our audience, then signs in as that user. Only issuers we configured are ever
considered, and their keys come only from their configured `jwks_uri`, never from the token.

Presets for the three clouds we meet most (each takes the tenant and audience, nothing is
hard-coded to one customer):

- `aws_sts_outbound(issuer_url, audience)`: AWS IAM outbound identity federation. An account turns
  it on with `iam:EnableOutboundWebIdentityFederation`, which returns the account's unique issuer
  URL; `sts:GetWebIdentityToken` then yields RS256 or ES384 JWTs whose keys are published at
  `<issuer>/.well-known/jwks.json`.
- `gcp_workload_identity(audience)`: Google-signed ID tokens (`https://accounts.google.com`), as a
  service account or a GKE/Cloud Run workload obtains them for a chosen audience; `sub` is the
  service account's numeric unique id.
- `azure_ad(tenant_id, audience)`: Microsoft Entra ID v2.0 tokens
  (`https://login.microsoftonline.com/<tenant>/v2.0`), e.g. from a managed identity; `audience` is
  the application id URI or client id the token is requested for.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import jwt

from hd_core.auth import TokenPair, issue_token_pair
from hd_core.errors import AuthenticationFailed
from hd_core.models import KeyEnv, OrgStatus, UserStatus, utc_now
from hd_core.ports import ControlStore
from hd_core.tokens import KEY_LOCATION_HEADERS, REQUIRED_CLAIMS, JwtIssuer, check_token_times

# Asymmetric algorithms only: a symmetric one would make the published JWKS a shared secret.
SUPPORTED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
DEFAULT_LEEWAY_SECONDS = 30
_JWKS_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class FederatedIssuer:
    """One external OIDC issuer we accept tokens from, and what its tokens must look like."""

    name: str
    issuer: str
    audience: str
    jwks_uri: str
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    subject_claim: str = "sub"

    def __post_init__(self) -> None:
        # Settings arrive as JSON, where the algorithms are a list.
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        unsupported = [alg for alg in self.algorithms if alg not in SUPPORTED_ALGORITHMS]
        if not self.algorithms or unsupported:
            raise ValueError(f"issuer {self.name!r}: algorithms must be asymmetric JWS algorithms, got {unsupported}")
        if not self.issuer or not self.audience:
            raise ValueError(f"issuer {self.name!r}: issuer and audience are required")
        _require_safe_jwks_uri(self.name, self.jwks_uri)

    @classmethod
    def aws_sts_outbound(cls, issuer_url: str, audience: str, *, name: str = "aws") -> FederatedIssuer:
        """AWS STS `GetWebIdentityToken` tokens of the account whose outbound federation issuer is `issuer_url`."""
        issuer_url = issuer_url.rstrip("/")
        return cls(
            name=name,
            issuer=issuer_url,
            audience=audience,
            jwks_uri=f"{issuer_url}/.well-known/jwks.json",
            algorithms=("RS256", "ES384"),
        )

    @classmethod
    def gcp_workload_identity(cls, audience: str, *, name: str = "gcp") -> FederatedIssuer:
        """Google-signed ID tokens for `audience` (service accounts, GKE and Cloud Run workloads)."""
        return cls(
            name=name,
            issuer="https://accounts.google.com",
            audience=audience,
            jwks_uri="https://www.googleapis.com/oauth2/v3/certs",
            algorithms=("RS256",),
        )

    @classmethod
    def azure_ad(cls, tenant_id: str, audience: str, *, name: str = "azure") -> FederatedIssuer:
        """Microsoft Entra ID v2.0 tokens of tenant `tenant_id` for `audience`."""
        if not tenant_id or "/" in tenant_id:
            raise ValueError("tenant_id must be a tenant id or domain, without slashes")
        base = f"https://login.microsoftonline.com/{tenant_id}"
        return cls(
            name=name,
            issuer=f"{base}/v2.0",
            audience=audience,
            jwks_uri=f"{base}/discovery/v2.0/keys",
            algorithms=("RS256",),
        )


def _require_safe_jwks_uri(name: str, uri: str) -> None:
    """https only, except plain http to a loopback address (a local identity provider in tests or `hd dev`)."""
    parsed = urlparse(uri)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname and _is_loopback(parsed.hostname):
        return
    raise ValueError(f"issuer {name!r}: jwks_uri must be an https URL, got {uri!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OidcFederation:
    """Verifies tokens from the configured issuers; one JWKS client per issuer, kept for the process's life."""

    def __init__(
        self,
        issuers: Iterable[FederatedIssuer],
        *,
        jwks_cache_seconds: float = 300,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        now: Callable[[], datetime] = utc_now,
        key_source: Callable[[FederatedIssuer, str], jwt.PyJWK] | None = None,
    ) -> None:
        """`key_source` gives a token's signing key instead of fetching the issuer's JWKS (pinned keys, for hosts
        without an internet route: hd_core.federation_keys.PinnedJwks)."""
        self._issuers: dict[str, FederatedIssuer] = {}
        for issuer in issuers:
            if issuer.issuer in self._issuers:
                raise ValueError(f"issuer {issuer.issuer} is configured twice")
            self._issuers[issuer.issuer] = issuer
        self._cache_seconds = jwks_cache_seconds
        self._leeway = leeway_seconds
        self._now = now
        self._key_source = key_source
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self._lock = threading.Lock()

    @property
    def issuers(self) -> tuple[FederatedIssuer, ...]:
        """The configured issuers."""
        return tuple(self._issuers.values())

    def verify(self, token: str) -> tuple[FederatedIssuer, dict[str, Any]]:
        """The issuer and the verified claims of a federated token; raises `AuthenticationFailed`."""
        issuer = self._configured_issuer(token)
        header = _unverified_header(token)
        if header.get("alg") not in issuer.algorithms:
            raise AuthenticationFailed(f"algorithm {header.get('alg')!r} not accepted from {issuer.name}")
        try:
            signing_key = (self._key_source(issuer, token) if self._key_source is not None
                           else self._client(issuer).get_signing_key_from_jwt(token))
            # A PyJWK key is bound to its own algorithm: a token cannot make an RSA key verify as anything else.
            claims: dict[str, Any] = jwt.decode(
                token,
                signing_key,
                algorithms=list(issuer.algorithms),
                audience=issuer.audience,
                issuer=issuer.issuer,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "enforce_minimum_key_length": True,
                    # Checked below against the injected clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as error:
            raise AuthenticationFailed(
                f"federated token from {issuer.name} refused: {type(error).__name__}: {error}"
            ) from None
        check_token_times(claims, self._now(), self._leeway)
        subject = claims.get(issuer.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthenticationFailed(f"federated token has no {issuer.subject_claim} claim")
        return issuer, claims

    def _configured_issuer(self, token: str) -> FederatedIssuer:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as error:
            raise AuthenticationFailed(f"unreadable federated token: {error}") from None
        claimed = unverified.get("iss")
        issuer = self._issuers.get(claimed) if isinstance(claimed, str) else None
        if issuer is None:
            raise AuthenticationFailed("federated token from an issuer that is not configured")
        return issuer

    def _client(self, issuer: FederatedIssuer) -> jwt.PyJWKClient:
        with self._lock:
            client = self._clients.get(issuer.issuer)
            if client is None:
                # cache_keys stays off: PyJWT's per-key cache never expires, so a key the issuer
                # withdrew (compromised) would stay trusted. The JWK-set cache expires after
                # `jwks_cache_seconds` and still spares the issuer a fetch per token.
                client = jwt.PyJWKClient(
                    issuer.jwks_uri,
                    cache_keys=False,
                    cache_jwk_set=True,
                    lifespan=self._cache_seconds,
                    timeout=_JWKS_TIMEOUT_SECONDS,
                )
                self._clients[issuer.issuer] = client
            return client


def _unverified_header(token: str) -> Mapping[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise AuthenticationFailed(f"unreadable federated token header: {error}") from None
    named = KEY_LOCATION_HEADERS.intersection(header)
    if named:
        raise AuthenticationFailed(f"federated token header names a key location ({', '.join(sorted(named))})")
    return header


def external_id(issuer: FederatedIssuer, claims: Mapping[str, Any]) -> str:
    """The `<issuer>#<subject>` a user is linked to for a verified token."""
    return f"{issuer.issuer}#{claims[issuer.subject_claim]}"


def federated_login(
    store: ControlStore,
    federation: OidcFederation,
    issuer: JwtIssuer,
    token: str,
    *,
    env: KeyEnv | str = KeyEnv.LIVE,
    now: Callable[[], datetime] = utc_now,
) -> TokenPair:
    """Our tokens for the active user linked to a valid federated token's identity; raises `AuthenticationFailed`."""
    federated_issuer, claims = federation.verify(token)
    user = store.get_user_by_external_id(external_id(federated_issuer, claims))
    if user is None:
        raise AuthenticationFailed("federated identity not linked to any user")
    if user.status != UserStatus.ACTIVE:
        raise AuthenticationFailed("user not active")
    org = store.get_org(user.org_id)
    if org is None or org.status != OrgStatus.ACTIVE:
        raise AuthenticationFailed("organization missing or not active")
    return issue_token_pair(store, issuer, user, env=env, now=now)
