"""The control API in local mode: HTTP on 127.0.0.1:8080 turned into API Gateway proxy events.

Every request goes to the same `lambda_handler` that serves it in AWS; which function owns a route
comes from `x-hd-function` in the checked-in OpenAPI document, so there is no second
implementation of any route and no second routing table.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from functions.forget.wiring import Erasure, install_erasure, run_at_once
from functions.openapi import DOCUMENT_PATH, FUNCTION_MODULES
from functions.shadow.wiring import install_shadow_services
from functions.shared.wiring import install_services
from hd_core.erasure import ErasureServices
from hd_core.key_lifecycle import run_key_lifecycle
from hd_core.models import utc_now
from hd_core.services import ControlServices
from hd_core.shadow.replay import ReplayServices
from hd_core.webhook_admin import secret_sealer
from hd_core.webhook_delivery import DeliveryOptions, LocalDeliveryWorker, set_default_options
from hd_core.webhooks import set_dispatcher

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
LIFECYCLE_INTERVAL = timedelta(days=1)  # the key lifecycle job's schedule in `hd dev` (EventBridge's in AWS)


@dataclass(frozen=True)
class Route:
    """One path template of the API and the function serving each of its methods."""

    template: str
    pattern: re.Pattern[str]
    functions: dict[str, str]  # HTTP method -> function name


@dataclass(frozen=True)
class HttpReply:
    """What goes back to the HTTP client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def load_routes() -> list[Route]:
    """The routes of the checked-in OpenAPI document, literal paths before templated ones."""
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    routes = []
    for template, operations in document["paths"].items():
        regex = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$"
        functions = {method.upper(): op["x-hd-function"] for method, op in operations.items()}
        routes.append(Route(template, re.compile(regex), functions))
    routes.sort(key=lambda route: (route.template.count("{"), route.template))
    return routes


@dataclass(frozen=True)
class LocalLambdaContext:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:hd-local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class ControlApiDispatcher:
    """Routes an HTTP request to the control-plane Lambda that owns it, as an API Gateway proxy event.

    One event is resolved at a time, as in one Lambda execution environment. That is not caution
    but a requirement: Powertools keeps the event being resolved on a class attribute
    (`BaseRouter.current_event`), shared by every resolver in the process, so two requests resolved
    at once could each read the other's headers and be answered under the other's identity.
    """

    def __init__(self) -> None:
        self._resolving = threading.Lock()
        self._routes = load_routes()
        self._handlers: dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]] = {
            name: import_module(module).lambda_handler for name, module in FUNCTION_MODULES.items()
        }

    def invoke(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | list[tuple[str, str]] = (),  # type: ignore[assignment]
        body: bytes | None = None,
        source_ip: str = "127.0.0.1",
    ) -> HttpReply:
        """Answer one request (`url` is path plus query string)."""
        request_id = f"req_{uuid.uuid4().hex}"
        if body is not None and len(body) > MAX_BODY_BYTES:
            return _error(413, "HD_ERR_PAYLOAD_TOO_LARGE", "request bodies are limited to 1 MiB", request_id)
        parts = urlsplit(url)
        found = self._match(parts.path)
        if found is None:
            return _error(404, "HD_ERR_NO_ROUTE", "no such route; see /v1/openapi.json", request_id)
        route, params = found
        function = route.functions.get(method.upper())
        if function is None:
            allowed = ", ".join(sorted(route.functions))
            reply = _error(405, "HD_ERR_METHOD_NOT_ALLOWED", f"{parts.path} accepts {allowed}", request_id)
            return HttpReply(reply.status, [*reply.headers, ("Allow", allowed)], reply.body)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        event = proxy_event(
            method.upper(), route.template, parts.path, parts.query, params, pairs, body, source_ip, request_id
        )
        context = LocalLambdaContext(function_name=f"hd-{function}", aws_request_id=request_id)
        with self._resolving:
            response = self._handlers[function](event, context)
        return _reply_of(response)

    def _match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        for route in self._routes:
            found = route.pattern.match(path)
            if found is not None:
                # API Gateway hands Lambdas decoded path parameters.
                return route, {name: unquote(value) for name, value in found.groupdict().items()}
        return None


class LifecycleTimer:
    """`hd dev`'s stand-in for the daily EventBridge rule: the key lifecycle job at start, then every `interval`.

    A failed run is logged and the timer keeps its schedule, as a failed scheduled Lambda would be
    retried on the next day's event.
    """

    def __init__(
        self, control: ControlServices, interval: timedelta = LIFECYCLE_INTERVAL,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        if interval <= timedelta(0):
            raise ValueError("the lifecycle interval must be positive")
        self._control = control
        self._interval = interval
        self._now = now
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="key-lifecycle", daemon=True)
        self.runs = 0  # completed runs, failed or not

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                run_key_lifecycle(self._control, self._now())
            except Exception:  # logged; the next run comes on schedule
                log.exception("the key lifecycle run failed")
            self.runs += 1
            self._stopped.wait(self._interval.total_seconds())


class ControlApiServer:
    """A threaded HTTP server in front of a `ControlApiDispatcher`."""

    # Webhooks in `hd dev`: local mode (http and loopback receivers allowed), a delivery round every
    # `webhook_interval` seconds and at once on every new event. Tests set a CA file and a clock here.
    webhook_options: DeliveryOptions = DeliveryOptions(local_mode=True)
    webhook_interval: float = 2.0
    webhook_clock: Callable[[], datetime] | None = None
    webhook_worker: LocalDeliveryWorker | None = None

    def __init__(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        dispatcher = ControlApiDispatcher()

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "HardenedDuckControl/1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    reply = _error(413, "HD_ERR_PAYLOAD_TOO_LARGE", "request bodies are limited to 1 MiB", "-")
                    self.close_connection = True
                else:
                    body = self.rfile.read(length) if length else None
                    reply = dispatcher.invoke(
                        self.command, self.path, headers=list(self.headers.items()), body=body,
                        source_ip=self.client_address[0],
                    )
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            # Every method reaches the dispatcher, so one the API lacks gets a 405 in the error shape.
            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
            do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _serve

            def __getattr__(self, name: str) -> Any:
                # Any other method token (QUERY, PROPFIND...) also gets the dispatcher's 405.
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("control api: " + format, *args)

        self._http = ThreadingHTTPServer((host, port), _Handler)
        self._http.daemon_threads = True
        self.lifecycle: LifecycleTimer | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(
        self,
        control: ControlServices | None = None,
        *,
        shadow: ReplayServices | None = None,
        erasure: ErasureServices | None = None,
        lifecycle_interval: timedelta | None = LIFECYCLE_INTERVAL,
        lifecycle_now: Callable[[], datetime] = utc_now,
    ) -> None:
        """Serve in a background thread; with `control`, every function answers from those services, and
        the shadow function from `shadow` (the state folder, the local interpreter, this host's engine).

        With `control`, the key lifecycle job also runs now and then every `lifecycle_interval` (None: never)."""
        if control is not None:
            install_services(control)
            self._start_webhook_delivery(control)
            if lifecycle_interval is not None:
                self.lifecycle = LifecycleTimer(control, lifecycle_interval, lifecycle_now)
                self.lifecycle.start()
        if shadow is not None:
            install_shadow_services(shadow)
        if erasure is not None:  # forget requests run before the API answers (AWS hands them to a worker)
            install_erasure(Erasure(erasure, run_at_once(erasure)))
        threading.Thread(target=self._http.serve_forever, name="control-api", daemon=True).start()

    def stop(self) -> None:
        """Stop serving and close the socket; the functions forget the services `start` gave them."""
        if self.lifecycle is not None:
            self.lifecycle.stop()
            self.lifecycle = None
        self._stop_webhook_delivery()
        self._http.shutdown()
        self._http.server_close()
        install_services(None)
        install_shadow_services(None)
        install_erasure(None)

    def _start_webhook_delivery(self, control: ControlServices) -> None:
        set_default_options(self.webhook_options)
        extra: dict[str, Any] = {} if self.webhook_clock is None else {"clock": self.webhook_clock}
        self.webhook_worker = LocalDeliveryWorker(
            control.store, secret_sealer(control.keys), interval=self.webhook_interval, options=self.webhook_options,
            **extra,
        ).start()
        set_dispatcher(self.webhook_worker.wake)

    def _stop_webhook_delivery(self) -> None:
        if self.webhook_worker is not None:
            set_dispatcher(None)
            self.webhook_worker.stop()
            self.webhook_worker = None
            set_default_options(DeliveryOptions())


def proxy_event(
    method: str,
    template: str,
    path: str,
    query: str,
    params: dict[str, str],
    headers: list[tuple[str, str]],
    body: bytes | None,
    source_ip: str,
    request_id: str,
) -> dict[str, Any]:
    """An API Gateway REST (v1) proxy event, as API Gateway would build it for this request."""
    multi_query = parse_qs(query, keep_blank_values=True)
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    return {
        "resource": template,
        "path": path,
        "httpMethod": method,
        "headers": {name: values[-1] for name, values in multi_headers.items()},
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": params or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": template,
            "httpMethod": method,
            "path": path,
            "stage": "local",
            "requestId": request_id,
            "identity": {"sourceIp": source_ip},
        },
        "body": body.decode("utf-8", errors="replace") if body is not None else None,
        "isBase64Encoded": False,
    }


def _reply_of(response: Mapping[str, Any]) -> HttpReply:
    headers: list[tuple[str, str]] = []
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers += [(name, str(value)) for value in values]
    headers += [(name, str(value)) for name, value in (response.get("headers") or {}).items()]
    headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
    return HttpReply(int(response.get("statusCode", 500)), headers, (response.get("body") or "").encode("utf-8"))


def _error(status: int, code: str, message: str, request_id: str) -> HttpReply:
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode("utf-8")
    return HttpReply(status, [("Content-Type", "application/json")], body)
