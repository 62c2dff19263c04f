"""The Lambda entry point every control-plane function uses: Powertools logger, tracer and metrics around `resolve`."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions.shared.otel_spans import REQUEST_SPAN, SCHEDULED_SPAN, http_outcome, invocation_span
from functions.shared.wiring import require_region_pin
from hd_core.region_pinning import RegionMismatch

METRICS_NAMESPACE = "HardenedDuck"
_JSON_MEDIA_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json\s*(?:;.*)?$", re.IGNORECASE)

LambdaHandler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def function_logger(service: str) -> Logger:
    """The function's one logger: Powertools Loggers of one service share their handler and keys.

    So a line logged anywhere in the function (the shared error handlers too) carries the keys the
    entry point sets per invocation: `function_request_id`, `correlation_id`, cold start.
    """
    return Logger(service=service)


def lambda_entry(app: APIGatewayRestResolver, service: str) -> LambdaHandler:
    """`lambda_handler` for one function: structured logs keyed by request id, X-Ray traces, EMF metrics."""
    logger = function_logger(service)
    metrics = Metrics(namespace=METRICS_NAMESPACE, service=service)

    # clear_state: one invocation's keys never show up on the next one's lines.
    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
        with invocation_span(REQUEST_SPAN, service, {"faas.trigger": "http",
                                                     "http.request.method": event.get("httpMethod")}) as outcome:
            response = region_refusal(event, logger) or refuse_non_json_body(event) or app.resolve(event, context)
            outcome(http_outcome(response))
        if response.get("statusCode", 500) >= 500:
            metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=1)
        return response

    if not tracing_enabled():
        return lambda_handler
    return traced(lambda_handler, service)


def scheduled_entry(run: Callable[[dict[str, Any], LambdaContext], dict[str, Any]], service: str, *,
                    region_pinned: bool = True) -> LambdaHandler:
    """The same wrapper for a non-HTTP entry point (an EventBridge schedule or event): logger, metrics, tracer.

    Its lines carry the function's request id and the EventBridge event id as `correlation_id`; a
    failure is logged here, with both, and re-raised so the asynchronous invocation is retried.
    A run fails with `RegionMismatch` like a request while the region pin does not hold, unless
    `region_pinned=False` (the wipe hook: erasing a cache must never wait for a configuration fix).
    """
    logger = function_logger(service)
    metrics = Metrics(namespace=METRICS_NAMESPACE, service=service)

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
    @metrics.log_metrics
    def handle(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        metrics.add_metric(name="ScheduledRuns", unit=MetricUnit.Count, value=1)
        try:
            with invocation_span(SCHEDULED_SPAN, service, {"faas.trigger": "timer"}) as outcome:
                if region_pinned:
                    require_region_pin()
                result = run(event, context)
                outcome({"hd.outcome": "ok"})
        except Exception as error:
            metrics.add_metric(name="ScheduledFailures", unit=MetricUnit.Count, value=1)
            logger.exception("scheduled run failed", extra={"error_type": type(error).__name__,
                                                            "code": getattr(error, "code", None)})
            raise
        logger.info("scheduled run done", extra={"result": result})
        return result

    def entry(event: dict[str, Any], context: LambdaContext | None) -> dict[str, Any]:
        # Invoked outside Lambda (tests, local tools) there is no context: Powertools needs one to log.
        return handle(event, context or OutsideLambdaContext(function_name=service))

    if not tracing_enabled():
        return entry
    return traced(entry, service, log_failures=False)


@dataclass(frozen=True)
class OutsideLambdaContext:
    """The attributes Powertools reads from a Lambda context, for an invocation from outside Lambda."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: f"local-{uuid.uuid4().hex}")
    memory_limit_in_mb: int = 0
    invoked_function_arn: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


class UnhandledFailure(RuntimeError):
    """What X-Ray sees of an exception that left a handler: its type, never its message."""

    original: Exception  # raised again once the subsegment is closed


def traced(handler: Callable[[Any, Any], Any], service: str, *, log_failures: bool = True) -> Callable[[Any, Any], Any]:
    """`handler` in an X-Ray subsegment that records neither its response nor an exception's message.

    Powertools captures both by default as segment metadata, and the X-Ray SDK records the message
    of any exception leaving the subsegment. Our responses carry API keys, JWTs and TOTP secrets,
    and an exception message can quote what a caller sent: X-Ray is no place for either. So the
    response is not captured, and an escaping exception is logged whole and re-raised as its type
    alone (`log_failures=False`: `handler` has logged it already). The subsegment still records
    timing, cold start and the fault.
    """
    logger = function_logger(service)

    @functools.wraps(handler)
    def handle(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        except Exception as error:
            if log_failures:
                logger.exception("unhandled error")
            failure = UnhandledFailure(f"unhandled {type(error).__name__}; the function's log has the details")
            failure.original = error
            raise failure from None

    subsegment = Tracer(service=service).capture_lambda_handler(handle, capture_response=False, capture_error=False)

    @functools.wraps(handler)
    def entry(event: Any, context: Any) -> Any:
        try:
            return subsegment(event, context)
        except UnhandledFailure as failure:
            # Past the subsegment: the runtime (its retries, its log) gets the error that was raised.
            raise failure.original from None

    return entry


def tracing_enabled() -> bool:
    """False when Powertools' own `POWERTOOLS_TRACE_DISABLED` says so, or when the X-Ray SDK is not installed.

    Checked before building a `Tracer`: its constructor imports the X-Ray SDK, which builds a botocore
    client for its sampler (~300 ms of cold start) even when tracing is disabled. The SDK comes with
    the `[aws]` extra and the Lambda layer (`aws-lambda-powertools[tracer]`); a base install running
    `hd dev` has neither the SDK nor an X-Ray daemon to send to, and must still import the handlers.
    """
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() in ("1", "true"):
        return False
    return importlib.util.find_spec("aws_xray_sdk") is not None


def region_refusal(event: dict[str, Any], logger: Logger) -> dict[str, Any] | None:
    """A 503 `HD_ERR_REGION_MISMATCH` response while the container's resources are outside its pinned region.

    503, not 500: the service is deliberately unavailable until an operator fixes the deployment (it
    is not a fault in handling this request), and load balancers and monitors treat 503 as "down".
    The body names no resource: the caller is not yet authenticated; the function's log has the list.
    """
    try:
        require_region_pin()
    except RegionMismatch as refused:
        request_id = (event.get("requestContext") or {}).get("requestId") or "-"
        logger.error("request refused: region pin", extra={"code": refused.code, "request_id": request_id,
                                                            "region": refused.region,
                                                            "differences": list(refused.differences)})
        return _error(503, refused.code, "this deployment has resources outside its pinned region and refuses "
                      "every request until that is fixed; the function's log names them", request_id)
    return None


def refuse_non_json_body(event: dict[str, Any]) -> dict[str, Any] | None:
    """A 415 response for a request whose body is not declared as JSON, before anything parses it."""
    if not event.get("body"):
        return None
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    if _JSON_MEDIA_TYPE.match(headers.get("content-type", "")):
        return None
    request_id = (event.get("requestContext") or {}).get("requestId") or "-"
    return _error(415, "HD_ERR_UNSUPPORTED_MEDIA_TYPE",
                  "request bodies must be JSON: send Content-Type: application/json", request_id)


def _error(status: int, code: str, message: str, request_id: str) -> dict[str, Any]:
    """An API Gateway proxy response with the API's error body, for refusals made before routing."""
    body = {"error": {"code": code, "request_id": request_id, "message": message}}
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body),
            "isBase64Encoded": False}
