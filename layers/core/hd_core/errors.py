"""Domain exceptions. Each carries a stable `HD_ERR_*` code that the API and the wire protocol report."""

from __future__ import annotations


class HdError(Exception):
    """Base of every Hardened Duck domain error."""

    code = "HD_ERR_INTERNAL"


class AuthenticationFailed(HdError):
    """A credential was not accepted.

    `str(error)` is always the generic message, safe to show a client. `reason` says which check
    failed (for server-side logs and the audit record only: telling a caller whether a key id
    exists, or that a key was revoked, helps an attacker enumerate keys).
    """

    code = "HD_ERR_AUTH_FAILED"
    generic_message = "authentication failed"

    def __init__(self, reason: str = "unspecified") -> None:
        super().__init__(self.generic_message)
        self.reason = reason


class InvalidApiKeyFormat(AuthenticationFailed):
    """A string is not shaped like an API key (`hd_live_`/`hd_test_` + 32 base62) or its checksum is wrong."""

    code = "HD_ERR_INVALID_API_KEY_FORMAT"

    def __init__(self, reason: str = "malformed api key") -> None:
        super().__init__(reason)


class NotFound(HdError):
    """The entity named in a request does not exist."""

    code = "HD_ERR_NOT_FOUND"


class Conflict(HdError):
    """A write conflicts with current state: an id that already exists, or an entity not in the state required."""

    code = "HD_ERR_CONFLICT"
