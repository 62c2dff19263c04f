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
        # The brute-force lockout this refusal started, described for the same log line (else None).
        self.lockout: str | None = None


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


class UnknownScope(HdError, ValueError):
    """A scope or scope-bundle name that does not exist (still a `ValueError` for older callers)."""

    code = "HD_ERR_UNKNOWN_SCOPE"


class ScopeNotAllowed(HdError):
    """A key was asked for scopes its user's role does not have; `missing` names them."""

    code = "HD_ERR_SCOPE_NOT_ALLOWED"

    def __init__(self, role: str, missing: tuple[str, ...]) -> None:
        super().__init__(
            f"the {role} role does not include {', '.join(missing)}; an API key can only narrow its user's role"
        )
        self.role = role
        self.missing = missing


class PolicyInvalid(HdError):
    """A policy object or policy document is malformed or unsafe; the message says what to fix.

    `field` names the offending field when there is one (for the API's error body).
    """

    code = "HD_ERR_POLICY_INVALID"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RowFilterInvalid(PolicyInvalid):
    """A row filter's SQL is not a single, self-contained condition over the table's own columns."""

    code = "HD_ERR_ROW_FILTER_INVALID"


class PolicyNameUnknown(HdError):
    """A policy names a table or a column the live catalog does not have (the API's 422, with the name)."""

    code = "HD_ERR_POLICY_UNKNOWN_NAME"

    def __init__(self, message: str, *, field: str, name: str) -> None:
        super().__init__(message)
        self.field = field
        self.name = name


class UnknownTable(PolicyNameUnknown):
    """The policy's table is not served (or is another organisation's); `"pending": true` allows that."""

    code = "HD_ERR_UNKNOWN_TABLE"


class UnknownColumn(PolicyNameUnknown):
    """The policy's table exists but has no such column."""

    code = "HD_ERR_UNKNOWN_COLUMN"


class EngineRequired(HdError):
    """The answer needs an engine (counting rows, planning a statement) and this control plane has none (409)."""

    code = "HD_ERR_ENGINE_REQUIRED"


# --- audit and metering -------------------------------------------------------------------------


class AuditWriteFailed(HdError):
    """The query audit record could not be stored; the statement it describes must fail (fail closed)."""

    code = "HD_ERR_AUDIT_UNAVAILABLE"


class QuotaExceeded(HdError):
    """The organisation's monthly credit limit would be exceeded by this statement."""

    code = "HD_ERR_QUOTA_EXCEEDED"

    def __init__(self, message: str, *, used: float, limit: float, estimate: float) -> None:
        super().__init__(message)
        self.used = used
        self.limit = limit
        self.estimate = estimate


# --- control plane --------------------------------------------------------------------------------


class InvalidRequest(HdError, ValueError):
    """A request is well-formed JSON but asks for something impossible (a past expiry, a bad CIDR...)."""

    code = "HD_ERR_INVALID_REQUEST"


class Forbidden(HdError):
    """The caller is authenticated but its role or scopes do not allow this action."""

    code = "HD_ERR_FORBIDDEN"


class SourceAddressNotAllowed(AuthenticationFailed):
    """The API key is valid but the caller's address is outside the key's IP allowlist.

    It answers exactly like a wrong secret (same code, status and message): telling the caller
    would confirm that a stolen key is genuine. Only `reason` (logs, audit) tells them apart.
    """

    code = AuthenticationFailed.code

    def __init__(self, reason: str = "source address outside the key's allowlist") -> None:
        super().__init__(reason)


class MfaRequired(AuthenticationFailed):
    """The organisation requires a TOTP code and none (or a wrong one) came with the login."""

    code = "HD_ERR_MFA_REQUIRED"
    generic_message = "a valid TOTP code is required"

    def __init__(self, reason: str = "totp code missing or wrong") -> None:
        super().__init__(reason)


class PasswordChangeRequired(Forbidden):
    """The password was set by an administrator: it only serves to choose a new one, never to log in.

    Told only to a caller who proved that password, so it reveals nothing to a guesser.
    """

    code = "HD_ERR_PASSWORD_CHANGE_REQUIRED"
    generic_message = (
        "an administrator set this password: choose a new one (POST /v1/auth/password/change) before logging in"
    )

    def __init__(self) -> None:
        super().__init__(self.generic_message)


class RefreshTokenReused(AuthenticationFailed):
    """A refresh token was presented twice: it leaked, so its whole family was revoked."""

    code = "HD_ERR_REFRESH_TOKEN_REUSED"

    def __init__(self, reason: str = "refresh token reused; its family is revoked") -> None:
        super().__init__(reason)


class KeyUnavailable(HdError):
    """Key material could not be used (a disabled or revoked KMS key, an unreadable key file)."""

    code = "HD_ERR_KEY_UNAVAILABLE"


class IdempotencyKeyReused(HdError):
    """An `Idempotency-Key` sent again with a different request: the first request's answer stands."""

    code = "HD_ERR_IDEMPOTENCY_KEY_REUSED"


class IdempotentRequestInProgress(Conflict):
    """An `Idempotency-Key` whose first request is still running: retry once it has answered."""

    code = "HD_ERR_IDEMPOTENCY_IN_PROGRESS"
