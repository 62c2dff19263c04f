"""The engine host's operations endpoint (port 9090 by default): Prometheus metrics, liveness and readiness.

    GET /metrics   the HostMetrics registry in the Prometheus (or, when asked, OpenMetrics) text format
    GET /healthz   200 "ok" while the process runs
    GET /readyz    200 when every readiness check passes, else 503; JSON with each check's state and reason

Anything else is 404, and any other method 405. Nothing here reads a request body or takes input
beyond the path and the Accept header, and no response carries SQL text or user data.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from engine_host.ops.metrics import HostMetrics
from hd_core.heartbeat import GateState

log = logging.getLogger(__name__)

DEFAULT_PORT = 9090
# A client that opens a connection and sends nothing must not hold a server thread for long.
REQUEST_TIMEOUT_SECONDS = 10.0

ReadinessCheck = Callable[[], bool | tuple[bool, str]]


def heartbeat_check(status: Callable[[], Mapping[str, object]]) -> ReadinessCheck:
    """A readiness check on a heartbeat gate's status (e.g. `ServiceGate.status`): ready unless refusing."""
    def check() -> tuple[bool, str]:
        state = status().get("state")
        return state in (GateState.SERVING.value, GateState.DEGRADED.value), f"heartbeat {state}"

    return check


def run_checks(checks: Mapping[str, ReadinessCheck]) -> tuple[bool, dict[str, dict[str, object]]]:
    """Run every check; a check that raises counts as failing (fail closed), with only its exception type shown."""
    results: dict[str, dict[str, object]] = {}
    for name, check in checks.items():
        try:
            outcome = check()
            passed, reason = outcome if isinstance(outcome, tuple) else (outcome, None)
            ok = passed is True  # only a real True passes: a truthy mistake must not report ready
            if reason is None:
                reason = "ok" if ok else "not ready"
        except Exception as exc:  # a broken check means "not ready", never a 500 or a pass
            log.warning("readiness check %s raised", name, exc_info=True)
            ok, reason = False, f"check raised {type(exc).__name__}"
        results[name] = {"ok": ok, "reason": str(reason)}
    return all(result["ok"] for result in results.values()), results


class HealthServer:
    """A threaded HTTP server for /metrics, /healthz and /readyz; port 0 picks a free port (see `port`)."""

    def __init__(self, metrics: HostMetrics, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 readiness: Mapping[str, ReadinessCheck] | None = None) -> None:
        """`readiness` names the checks /readyz runs (policy snapshot loaded, cache mounted, heartbeat OK...)."""
        checks = dict(readiness or {})
        registry = metrics.registry

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "HardenedDuckHealth/1"
            timeout = REQUEST_TIMEOUT_SECONDS

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept") or "")
                    self._reply(200, content_type, encoder(registry))
                elif path == "/healthz":
                    self._reply(200, "text/plain; charset=utf-8", b"ok\n")
                elif path == "/readyz":
                    ready, results = run_checks(checks)
                    body = json.dumps({"ready": ready, "checks": results}, sort_keys=True).encode()
                    self._reply(200 if ready else 503, "application/json", body)
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found\n")

            def _not_allowed(self) -> None:
                self._reply(405, "text/plain; charset=utf-8", b"method not allowed\n", allow="GET")

            def __getattr__(self, name: str) -> Any:
                # http.server looks up do_<METHOD>; every method but GET (HEAD, POST, PROPFIND...) is a 405.
                if name.startswith("do_"):
                    return self._not_allowed
                raise AttributeError(name)

            def _reply(self, status: int, content_type: str, body: bytes, allow: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                if allow is not None:
                    self.send_header("Allow", allow)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health endpoint: " + format, *args)

        self._http = ThreadingHTTPServer((host, port), _Handler)
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound (the ephemeral one when constructed with port 0)."""
        return int(self._http.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        if self._thread is not None:
            raise RuntimeError("HealthServer.start() called twice")
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="hd-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join(5)
            self._thread = None
        self._http.server_close()
