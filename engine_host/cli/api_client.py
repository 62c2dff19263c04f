"""JSON over HTTP to the control API: the client `hd keys|users|policies|audit` speaks through.

Also where the CLI's connection comes from: the base URL (`--api-url`, $HD_API_URL, the local
`hd dev` address) and the credential (`--api-key`, $HD_API_KEY, the owner key of a state directory).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from engine_host.runtime.state_dir import default_state_dir
from hd_core.errors import HdError, InvalidRequest

DEFAULT_API_URL = "http://127.0.0.1:8080"
REQUEST_TIMEOUT_SECONDS = 30.0

# --- errors ---------------------------------------------------------------------------------------


class ControlApiError(HdError):
    """The control API refused a request; `code` and `request_id` come from its error body."""

    def __init__(self, message: str, *, code: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


class ControlApiUnreachable(HdError):
    """No HTTP answer came from the control API (nothing listening, a timeout, a bad host name)."""

    code = "HD_ERR_API_UNREACHABLE"


class NoApiKey(HdError):
    """No credential was given and none could be read from the state directory."""

    code = "HD_ERR_NO_API_KEY"


def bad_response(message: str) -> ControlApiError:
    """The error for an answer this hd cannot read: not JSON, a field missing, a paging loop."""
    return ControlApiError(message, code="HD_ERR_BAD_RESPONSE")


# --- HTTP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlApiClient:
    """JSON over HTTP to the control API, authenticated with one API key or JWT access token."""

    base_url: str
    credential: str = field(repr=False)
    timeout_seconds: float = REQUEST_TIMEOUT_SECONDS

    def call(self, method: str, path: str, *, query: Mapping[str, object] | None = None, body: object = None) -> Any:
        """The decoded JSON answer to one request; raises `ControlApiError` or `ControlApiUnreachable`."""
        request = self._request(method, path, query, body)
        try:
            # The scheme was checked to be http(s) when the client was built (see `api_base_url`).
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:  # noqa: S310
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise _refusal(error) from None
        except (urllib.error.URLError, OSError) as error:
            raise ControlApiUnreachable(self._unreachable(error)) from None
        return _decode(payload)

    def _request(
        self, method: str, path: str, query: Mapping[str, object] | None, body: object
    ) -> urllib.request.Request:
        url = self.base_url + path + _query_string(query or {})
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (scheme checked)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in authorization_headers(self.credential).items():
            request.add_header(name, value)
        return request

    def _unreachable(self, error: OSError) -> str:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, ConnectionRefusedError):
            return f"cannot reach the control API at {self.base_url}: is `hd dev` running?"
        if isinstance(reason, TimeoutError):
            return f"the control API at {self.base_url} did not answer within {self.timeout_seconds:g} s"
        return f"cannot reach the control API at {self.base_url}: {reason}"


def authorization_headers(credential: str) -> dict[str, str]:
    """`Authorization: Bearer` for a JWT access token, `X-API-Key` for an API key."""
    if credential.count(".") == 2 and not credential.startswith("hd_"):
        return {"Authorization": f"Bearer {credential}"}
    return {"X-API-Key": credential}


def api_path(*segments: str) -> str:
    """`/v1/<segments>`, each segment percent-encoded so an id can never reach another route."""
    return "/v1/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)


def _query_string(query: Mapping[str, object]) -> str:
    pairs = [(name, _query_value(value)) for name, value in query.items() if value is not None]
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def _query_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _refusal(error: urllib.error.HTTPError) -> ControlApiError:
    try:
        detail = json.loads(error.read())["error"]
        return ControlApiError(str(detail["message"]), code=str(detail["code"]), request_id=str(detail["request_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        # Not our error shape: a proxy or another program answered on that port.
        return ControlApiError(f"the control API answered HTTP {error.code} {error.reason}",
                               code=f"HD_ERR_HTTP_{error.code}")


def _decode(payload: bytes) -> Any:
    if not payload:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        raise bad_response("the control API answered with something that is not JSON") from None


def text_field(document: object, name: str) -> str:
    """A string field of an API answer, or `ControlApiError` if the answer lacks it."""
    value = document.get(name) if isinstance(document, dict) else None
    if not isinstance(value, str):
        raise bad_response(f"the control API's answer has no {name!r}")
    return value


# --- where the connection comes from --------------------------------------------------------------


def api_base_url(explicit: str | None) -> str:
    """`--api-url`, else $HD_API_URL, else the local `hd dev` address; only http(s) URLs are accepted."""
    url = (explicit or os.environ.get("HD_API_URL") or DEFAULT_API_URL).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest(f"--api-url must be an http:// or https:// URL, got {url!r}")
    return url


def resolve_credential(explicit: str | None, state_dir: Path | None) -> str:
    """`--api-key`, else $HD_API_KEY, else the local owner key in `<state dir>/owner.key`."""
    given = explicit or os.environ.get("HD_API_KEY")
    if given:
        return _checked_credential(given.strip(), "the API key given")
    path = (state_dir or default_state_dir()).expanduser() / "owner.key"
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise NoApiKey(
            f"no API key: pass --api-key, set HD_API_KEY, or point --state-dir (or HD_STATE_DIR) at the state "
            f"directory of `hd dev` (there is no {path})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise NoApiKey(f"cannot read the API key file {path}: {error}") from None
    return _checked_credential(stored, str(path))


def _checked_credential(credential: str, source: str) -> str:
    if not credential:
        raise NoApiKey(f"no API key: {source} is empty")
    # A line break in a header value would let the credential smuggle in other headers.
    if any(character.isspace() or not character.isprintable() for character in credential):
        raise InvalidRequest(f"{source} contains spaces or control characters; it is not an API key")
    return credential
