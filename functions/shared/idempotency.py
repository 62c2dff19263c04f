"""Retried creates: a request with an `Idempotency-Key` header is carried out once, however often it is sent.

A client that lost the answer to a create (a timeout, a dropped connection) sends the same request
with the same key again and gets the first answer, status and body, without a second write or a
second audit event. The same key with a different request is refused (422
HD_ERR_IDEMPOTENCY_KEY_REUSED); a retry while the first is still running is refused with 409
HD_ERR_IDEMPOTENCY_IN_PROGRESS. A failed request stores nothing, so its retry runs again.

Powertools' idempotency utility keeps the records (DynamoDB in AWS, SQLite in `hd dev`: see
`wiring`). A key belongs to the caller who sent it: the record is keyed by organisation, user,
method, path and key, and the caller is authenticated before a stored answer is replayed, so one
caller's key never returns another's answer. Only a fingerprint of the request is kept, without
secret fields (an invited user's password is Argon2-hashed in the store and nowhere else).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from functions.shared.http import caller
from functions.shared.wiring import services
from hd_core.errors import IdempotencyKeyReused, IdempotentRequestInProgress, InvalidRequest

IDEMPOTENCY_HEADER = "Idempotency-Key"
# A day, as Stripe keeps its keys: long enough for any client's retries, short enough to forget.
RECORD_SECONDS = 24 * 3600
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII without spaces, as a header carries it
_KEY_PREFIX = "hd-control-api"
RETRY_HELP = (
    f"Send an {IDEMPOTENCY_HEADER} header (1-255 printable ASCII characters) to make retries safe: the same key "
    "and request within 24 hours return the first answer without creating anything again; the same key with "
    "another request is 422 HD_ERR_IDEMPOTENCY_KEY_REUSED."
)

Route = TypeVar("Route", bound=Callable[..., Any])


def idempotent_create(router: Router, *, secret_fields: frozenset[str] = frozenset()) -> Callable[[Route], Route]:
    """Make a create route answer a repeated `Idempotency-Key` with its first answer (see the module).

    `secret_fields` of the body are left out of the stored fingerprint: a retry that changes only
    them counts as the same request.
    """

    def decorate(route: Route) -> Route:
        model, default_status = _response_shape(route)

        @functools.wraps(route)
        def handle(*args: Any, **kwargs: Any) -> Any:
            key = _header(router, IDEMPOTENCY_HEADER)
            if key is None:
                return route(*args, **kwargs)
            if not _KEY.match(key):
                raise InvalidRequest(f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters, no spaces")
            principal = caller(router)  # authenticated before anything is replayed to it
            event = router.current_event
            request = {
                "owner": f"{principal.org_id}/{principal.user_id} {event.http_method} {event.path} {key}",
                "fingerprint": {name: _fingerprint(value, secret_fields) for name, value in sorted(kwargs.items())},
            }

            def first_answer(request: dict[str, Any]) -> dict[str, Any]:
                result = route(*args, **kwargs)
                body, status = result if isinstance(result, tuple) else (result, default_status)
                return {"status": status, "body": body.model_dump(mode="json")}

            answer = _once(first_answer, request, router.lambda_context)
            return model.model_validate(answer["body"]), answer["status"]

        # The resolver validates requests against the route's parameters: resolved here, in the route's module.
        handle.__signature__ = inspect.signature(route, eval_str=True)  # type: ignore[attr-defined]
        return handle  # type: ignore[return-value]

    return decorate


def _once(
    first_answer: Callable[[dict[str, Any]], dict[str, Any]], request: dict[str, Any], context: LambdaContext | None
) -> dict[str, Any]:
    config = IdempotencyConfig(
        event_key_jmespath="owner",
        payload_validation_jmespath="fingerprint",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=RECORD_SECONDS,
        hash_function="sha256",
    )
    if context is not None:
        # An invocation that dies mid-way (a timeout) frees its key when the function's time is up.
        config.register_lambda_context(context)
    run = idempotent_function(
        first_answer, data_keyword_argument="request", persistence_store=services().idempotency(), config=config,
        key_prefix=_KEY_PREFIX,
    )
    try:
        answer: dict[str, Any] = run(request=request)
    except IdempotencyValidationError:
        raise IdempotencyKeyReused(
            f"this {IDEMPOTENCY_HEADER} was used for a different request; send a new key for a new request"
        ) from None
    except IdempotencyAlreadyInProgressError:
        raise IdempotentRequestInProgress(
            f"the first request with this {IDEMPOTENCY_HEADER} is still running; retry once it has answered"
        ) from None
    return answer


def _response_shape(route: Callable[..., Any]) -> tuple[type[BaseModel], int]:
    """The response model a create route returns, and its status when it returns the model alone."""
    returned = get_type_hints(route)["return"]
    if get_origin(returned) is tuple:
        return get_args(returned)[0], 201
    return returned, 200


def _header(router: Router, name: str) -> str | None:
    headers = router.current_event.headers or {}
    return next((value for header, value in headers.items() if header.lower() == name.lower()), None)


def _fingerprint(value: Any, secret_fields: frozenset[str]) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude=set(secret_fields))
    return value
