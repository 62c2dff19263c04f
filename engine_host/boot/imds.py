"""This instance's identity from the EC2 instance metadata service, over IMDSv2 only.

IMDSv1 (a bare GET) is never tried, not even as a fallback: a host that can be made to fetch
metadata without a session token is the SSRF hole IMDSv2 exists to close, and the launch template
sets `HttpTokens=required` so a v1 answer would mean we are not talking to the instance we expect.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from hd_core.errors import HdError

DEFAULT_IMDS_URL = "http://169.254.169.254"
# Names of the token's path and headers, not secrets.
TOKEN_PATH = "/latest/api/token"  # noqa: S105
IDENTITY_DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
MACS_PATH = "/latest/meta-data/network/interfaces/macs/"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105
# Boot needs the token for seconds; a short life limits what a leaked one is worth.
_TOKEN_TTL_SECONDS = 300
_ATTEMPTS = 3
_FIRST_RETRY_DELAY_SECONDS = 0.2
_MAX_RESPONSE_BYTES = 64 * 1024


class ImdsUnavailable(HdError):
    """The instance metadata service could not be read over IMDSv2, or answered something unusable."""

    code = "HD_ERR_IMDS_UNAVAILABLE"


@dataclass(frozen=True)
class InstanceIdentity:
    """Who and where this instance is, as EC2 says; network facts cover every attached interface."""

    instance_id: str
    account_id: str
    region: str
    availability_zone: str
    instance_type: str
    launch_time: datetime  # aware: the identity document's pendingTime
    vpc_id: str
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]


class _RetryableStatus(Exception):
    """An HTTP answer worth asking again for (throttling, a server error)."""


class ImdsClient:
    """Reads `InstanceIdentity` over IMDSv2: a PUT for a session token, then GETs carrying it."""

    def __init__(
        self,
        base_url: str = DEFAULT_IMDS_URL,
        timeout: float = 2.0,
        *,
        attempts: int = _ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ImdsUnavailable(f"instance metadata URL must be http(s)://host[:port], got {base_url!r}")
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._sleep = sleep
        # No proxies: metadata must come from the link-local service, never through HTTP(S)_PROXY.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def identity(self) -> InstanceIdentity:
        """This instance's identity; raises `ImdsUnavailable`."""
        token = self._token()
        document = self._identity_document(token)
        macs = [line.strip().rstrip("/") for line in self._get(MACS_PATH, token).splitlines() if line.strip()]
        if not macs:
            raise ImdsUnavailable("instance metadata lists no network interfaces")
        vpc_ids: set[str] = set()
        subnet_ids: set[str] = set()
        security_group_ids: set[str] = set()
        for mac in macs:
            interface = f"{MACS_PATH}{mac}/"
            vpc_ids.add(self._get(f"{interface}vpc-id", token).strip())
            subnet_ids.add(self._get(f"{interface}subnet-id", token).strip())
            security_group_ids.update(self._get(f"{interface}security-group-ids", token).split())
        if len(vpc_ids) != 1:
            # Fail closed: the binding compares one VPC, and an interface elsewhere is a path out of it.
            raise ImdsUnavailable(f"instance network interfaces are in more than one VPC: {', '.join(sorted(vpc_ids))}")
        return InstanceIdentity(
            instance_id=_text(document, "instanceId"),
            account_id=_text(document, "accountId"),
            region=_text(document, "region"),
            availability_zone=_text(document, "availabilityZone"),
            instance_type=_text(document, "instanceType"),
            launch_time=_aware_time(_text(document, "pendingTime")),
            vpc_id=vpc_ids.pop(),
            subnet_ids=tuple(sorted(subnet_ids)),
            security_group_ids=tuple(sorted(security_group_ids)),
        )

    def read_optional(self, path: str) -> str | None:
        """The text at metadata `path` (e.g. `/latest/meta-data/spot/instance-action`), None if it is absent
        (404: no Spot interruption or lifecycle state to report); raises `ImdsUnavailable` otherwise."""
        token = self._token()
        try:
            return self._request("GET", path, {TOKEN_HEADER: token}).strip()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ImdsUnavailable(f"instance metadata GET {path} failed with HTTP {exc.code}") from None

    def _token(self) -> str:
        try:
            token = self._request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(_TOKEN_TTL_SECONDS)})
        except urllib.error.HTTPError as exc:
            raise ImdsUnavailable(
                f"instance metadata refused an IMDSv2 session token (HTTP {exc.code}); IMDSv1 is never used: "
                "enable IMDSv2 on the instance (HttpTokens=required, HttpEndpoint=enabled)"
            ) from None
        if not token.strip():
            raise ImdsUnavailable("instance metadata returned an empty IMDSv2 session token")
        return token.strip()

    def _identity_document(self, token: str) -> dict[str, Any]:
        text = self._get(IDENTITY_DOCUMENT_PATH, token)
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise ImdsUnavailable("the instance identity document is not a JSON object")
        return document

    def _get(self, path: str, token: str) -> str:
        try:
            return self._request("GET", path, {TOKEN_HEADER: token})
        except urllib.error.HTTPError as exc:
            raise ImdsUnavailable(f"instance metadata GET {path} failed with HTTP {exc.code}") from None

    def _request(self, method: str, path: str, headers: dict[str, str]) -> str:
        """The body of one request, retried on connection errors, timeouts, 429 and 5xx."""
        delay = _FIRST_RETRY_DELAY_SECONDS
        last_problem = ""
        for attempt in range(1, self._attempts + 1):
            request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
                f"{self._base_url}{path}", method=method, headers=headers, data=b"" if method == "PUT" else None
            )
            try:
                with self._opener.open(request, timeout=self._timeout) as response:
                    body: bytes = response.read(_MAX_RESPONSE_BYTES + 1)
                if len(body) > _MAX_RESPONSE_BYTES:
                    raise ImdsUnavailable(f"instance metadata answer to {path} exceeds {_MAX_RESPONSE_BYTES} bytes")
                return body.decode("utf-8")
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:
                    raise
                last_problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
                last_problem = str(getattr(exc, "reason", exc))
            except UnicodeDecodeError:
                raise ImdsUnavailable(f"instance metadata answer to {path} is not UTF-8") from None
            if attempt < self._attempts:
                self._sleep(delay)
                delay *= 2
        raise ImdsUnavailable(
            f"instance metadata {method} {path} failed {self._attempts} times ({last_problem}): is this an EC2 "
            "instance with the metadata endpoint enabled and a PUT response hop limit that reaches this process?"
        )


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise ImdsUnavailable(f"the instance identity document has no {name}")
    return value


def _aware_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ImdsUnavailable(f"the instance identity document's pendingTime is not a timestamp: {text!r}") from None
    if moment.tzinfo is None:
        raise ImdsUnavailable(f"the instance identity document's pendingTime has no time zone: {text!r}")
    return moment
