"""The HTTP contract every control-plane Lambda shares: the resolver, the error body and caller checks.

Errors are `{"error": {"code": "HD_ERR_…", "message": …, "request_id": …}}`. Domain exceptions map to
statuses in one table (`STATUS_OF`); anything unexpected is logged with its traceback and answered
with a generic 500, so a stack trace never reaches a caller.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from pydantic import BaseModel

from functions.shared.lambda_entry import function_logger
from functions.shared.wiring import services
from hd_core import errors
from hd_core.fleet import FleetLookupUnavailable
from hd_core.models import ChangeContext, Environment, Principal

# Most specific first: the first class an exception is an instance of decides its status.
# A key refused for its source address is an AuthenticationFailed like any other (401, same code and
# message): a distinct answer would tell the holder of a stolen key that the key itself is genuine.
STATUS_OF: tuple[tuple[type[errors.HdError], int], ...] = (
    (errors.AuthenticationFailed, 401),
    (errors.Forbidden, 403),
    (errors.ScopeNotAllowed, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.IdempotencyKeyReused, 422),
    (errors.PolicyNameUnknown, 422),
    # No engine beside this control plane (a Lambda): a state of the deployment the caller can act on, not a fault.
    (errors.EngineRequired, 409),
    (errors.InvalidRequest, 400),
    (errors.PolicyInvalid, 400),
    (errors.UnknownScope, 400),
    (errors.QuotaExceeded, 429),
    (errors.AuditWriteFailed, 503),
    (FleetLookupUnavailable, 503),
    (errors.KeyUnavailable, 503),
)

ERROR_STATUSES = (400, 401, 403, 404, 409, 415, 422, 500, 503)

# No request of this API nests anywhere near this deep; Python's parser recurses once per level and
# fails near 1,000 (a RecursionError, which would be a 500).
MAX_JSON_DEPTH = 64
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class ErrorDetail(BaseModel):
    """What went wrong, in a form a program can branch on (`code`) and a person can act on (`message`)."""

    code: str
    message: str
    request_id: str


class ErrorBody(BaseModel):
    """Every error response of the control API."""

    error: ErrorDetail


def documented(status: int, model: type[BaseModel] | Any, description: str) -> dict[int, OpenAPIResponse]:
    """OpenAPI responses for a route: its success response plus the shared error responses."""
    responses: dict[int, OpenAPIResponse] = {
        code: {"description": "Error", "content": {"application/json": {"model": ErrorBody}}}
        for code in ERROR_STATUSES
    }
    responses[status] = {"description": description, "content": {"application/json": {"model": model}}}
    return responses


def _event(router: Router | APIGatewayRestResolver) -> APIGatewayProxyEvent:
    event = router.current_event
    assert isinstance(event, APIGatewayProxyEvent), "the control API takes API Gateway REST proxy events"
    return event


def request_id(router: Router | APIGatewayRestResolver) -> str:
    """API Gateway's request id for this call (the local server sets one too)."""
    return _event(router).request_context.request_id or f"req_{uuid.uuid4().hex}"


def source_ip(router: Router | APIGatewayRestResolver) -> str | None:
    """The caller's address as API Gateway saw it."""
    return _event(router).request_context.identity.source_ip


def caller(router: Router | APIGatewayRestResolver) -> Principal:
    """Authenticate the request (Bearer JWT, `ApiKey` or `X-API-Key`); raises `AuthenticationFailed`."""
    headers: Mapping[str, str] = router.current_event.headers or {}
    return services().requests.authenticate(headers, source_ip(router))


def authorize(
    router: Router | APIGatewayRestResolver, *, org_id: str | None, scope: str | None = None
) -> ChangeContext:
    """The change context of an authenticated caller allowed to act on `org_id` with `scope`.

    Another organisation's resources answer 404, as if they did not exist; a missing scope is 403.
    """
    principal = caller(router)
    if org_id is not None and principal.org_id != org_id:
        raise errors.NotFound("organization not found")
    return _context(router, principal, scope)


def authorize_environment(
    router: Router | APIGatewayRestResolver, env_id: str, *, scope: str | None = None
) -> tuple[Environment, ChangeContext]:
    """The caller's own environment `env_id`, and the change context to act on it with `scope`.

    The caller is authenticated before the lookup, so another organisation's environment answers
    exactly like a made-up id (404 "environment not found"), never with a hint that it exists.
    """
    principal = caller(router)
    env = services().store.get_environment(env_id)
    if env is None or env.org_id != principal.org_id:
        raise errors.NotFound("environment not found")
    return env, _context(router, principal, scope)


def _context(router: Router | APIGatewayRestResolver, principal: Principal, scope: str | None) -> ChangeContext:
    if scope is not None and not principal.has_scope(scope):
        raise errors.Forbidden(f"this action needs the {scope} scope, which this credential does not carry")
    return ChangeContext(actor=principal, request_id=request_id(router), source_ip=source_ip(router))


def error_response(status: int, code: str, message: str, req_id: str) -> Response:
    """A response in the shared error shape."""
    body = {"error": {"code": code, "message": message, "request_id": req_id}}
    return Response(status_code=status, content_type="application/json", body=json.dumps(body))


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in a JSON text, counted without recursing (brackets in strings skipped)."""
    depth = deepest = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in "]}":
            depth -= 1
    return deepest


def read_json_body(text: str) -> Any:
    """The parsed request body; a body nested deeper than `MAX_JSON_DEPTH` is `InvalidRequest` (400), never parsed."""
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise errors.InvalidRequest(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(text)


def build_app(*routers: Router, service: str) -> APIGatewayRestResolver:
    """A validating resolver with the given routers and the shared error handlers, logging as `service`.

    `service` is the function's (the one `lambda_entry` gets), so error lines carry its request and
    correlation ids.
    """
    # Every route parses its body with `read_json_body`: the depth limit holds for all of them at once.
    app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=read_json_body)
    logger = function_logger(service)
    for router in routers:
        app.include_router(router)

    @app.exception_handler(errors.HdError)
    def _domain_error(error: errors.HdError) -> Response:
        status = next((code for cls, code in STATUS_OF if isinstance(error, cls)), 500)
        req_id = request_id(app)
        if status >= 500:
            logger.error("request failed", extra={"code": error.code, "request_id": req_id})
        if isinstance(error, errors.AuthenticationFailed):
            # The reason says which check failed: for our logs only, never for the caller. This is the
            # refusal's only line: a lockout it started rides on it rather than on a line of its own.
            extra = {"reason": error.reason, "request_id": req_id}
            if error.lockout is not None:
                logger.warning("authentication refused", extra={**extra, "lockout": error.lockout})
            else:
                logger.info("authentication refused", extra=extra)
        return error_response(status, error.code, str(error), req_id)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(error: RequestValidationError) -> Response:
        problems = "; ".join(_describe(item) for item in error.errors()[:5])
        message = f"the request does not match the API: {problems}"
        return error_response(422, "HD_ERR_VALIDATION", message, request_id(app))

    @app.exception_handler(RequestUnsupportedContentType)
    def _unsupported_media_type(_: RequestUnsupportedContentType) -> Response:
        message = "request bodies must be JSON: send Content-Type: application/json"
        return error_response(415, "HD_ERR_UNSUPPORTED_MEDIA_TYPE", message, request_id(app))

    @app.not_found
    def _no_route(_: Exception) -> Response:
        return error_response(404, "HD_ERR_NO_ROUTE", "no such route; see /v1/openapi.json", request_id(app))

    @app.exception_handler(Exception)
    def _unexpected(error: Exception) -> Response:
        req_id = request_id(app)
        logger.exception("unexpected error", extra={"request_id": req_id})
        if _is_aws_failure(error):
            return error_response(503, "HD_ERR_BACKEND_UNAVAILABLE", "a backing AWS service failed; retry", req_id)
        return error_response(500, "HD_ERR_INTERNAL", f"internal error; quote request id {req_id}", req_id)

    return app


def _is_aws_failure(error: Exception) -> bool:
    """Whether an AWS call failed (throttling, an outage): worth a retry, not a bug of ours."""
    # Imported here: the local adapters never load botocore, and this only runs on a failure path.
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(error, BotoCoreError | ClientError)


def _describe(item: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in item.get("loc", ()))
    return f"{location}: {item.get('msg', 'invalid')}"
