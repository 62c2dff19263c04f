"""Shutting down with hundreds of connections in every state is quiet and complete (issue 14 item 9).

An in-process host with a short grace period is stopped while 300 connections are idle, reading
nothing of a large result, running a statement that ignores the grace period, or half way through
logging in (some sending their password only once the shutdown began). The stop is bounded, no
traceback is logged (no "cannot schedule new futures after shutdown"), every statement that was
running has exactly one completion record, and no concurrency slot is left taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from engine_host.runtime.local import LocalConfig, LocalEngineHost
from engine_host.wire.limits import ConnectionLimits
from tests.e2e.rawpg import RawClient, cstr, message, startup_packet
from tests.harness import BackgroundLoop, SwitchableAuditSink

LARGE = "SELECT range AS i, repeat('x', 100) AS s FROM range(2000000)"
SLOW = "SELECT count(*) FROM range(100000000000) t(i) WHERE i % 7 = 3"
GRACE_SECONDS = 1.0
UNREAD, SLOW_ONES = 30, 20  # statements running at the stop (DuckDB shares 2 cores among the slow ones)


def _login(port: int, user: str, key: str, request_id: str) -> RawClient:
    client = RawClient(port, tls=False, timeout=30)
    client.send(startup_packet({"user": user, "database": "hd", "request_id": request_id}))
    assert client.read().kind == b"R"  # type: ignore[union-attr]
    client.send(message(b"p", cstr(key)))
    assert client.read_until(b"Z")[-1].kind == b"Z"
    return client


@pytest.mark.slow  # hundreds of connections at shutdown: CI runs it (`pytest -m slow`)
def test_shutdown_with_hundreds_of_connections_is_bounded_quiet_and_audited(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loop = BackgroundLoop()
    loop_errors: list[dict[str, Any]] = []
    loop.loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    sink = SwitchableAuditSink()
    config = LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True, shutdown_grace_seconds=GRACE_SECONDS,
                         connections=ConnectionLimits(max_startups_per_address=1000))
    engine = LocalEngineHost(config, audit_sink=sink)
    loop.run(engine.start())
    assert engine.server is not None and engine.banner is not None and engine.engine is not None
    gate = engine.engine.pipeline.governor.gate  # type: ignore[union-attr]
    port, user, key = engine.server.port, engine.banner.user, (tmp_path / "owner.key").read_text().strip()
    clients: list[RawClient] = []
    try:
        with caplog.at_level(logging.WARNING):
            for i in range(150):  # idle sessions
                clients.append(_login(port, user, key, f"idle-{i}"))
            for i in range(UNREAD):  # a large result the client never reads
                clients.append(client := _login(port, user, key, f"unread-{i}"))
                client.send(message(b"Q", cstr(LARGE)))
            for i in range(SLOW_ONES):  # a statement that outlasts the grace period
                clients.append(client := _login(port, user, key, f"slow-{i}"))
                client.send(message(b"Q", cstr(SLOW)))
            logging_in = []
            for _ in range(100):  # startup sent, password not yet
                client = RawClient(port, tls=False, timeout=30)
                client.send(startup_packet({"user": user, "database": "hd"}))
                assert client.read().kind == b"R"  # type: ignore[union-attr]
                logging_in.append(client)
            clients.extend(logging_in)
            time.sleep(0.5)
            assert gate.running == UNREAD + SLOW_ONES

            started = time.monotonic()
            stopping = asyncio.run_coroutine_threadsafe(engine.stop(), loop.loop)
            time.sleep(GRACE_SECONDS / 2)
            for client in logging_in[:50]:  # their passwords arrive while the host stops
                client.send(message(b"p", cstr(key)))
            time.sleep(2 * GRACE_SECONDS)
            for client in logging_in[50:]:  # and after both grace periods, when the pools are going away
                try:
                    client.send(message(b"p", cstr(key)))
                except OSError:
                    pass  # already closed by the shutdown
            stopping.result(60)
            took = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
        loop.close()

    assert took < 4 * GRACE_SECONDS + 10, f"stopping took {took:.1f}s"
    text = caplog.text
    assert "cannot schedule new futures" not in text and "Traceback" not in text
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert loop_errors == []
    assert gate.running == 0
    for prefix, count in (("unread", UNREAD), ("slow", SLOW_ONES)):
        for i in range(count):
            records = [r for r in sink.records if r.get("request_id") == f"{prefix}-{i}"]
            completions = [r for r in records if not _interim(r, records)]
            assert len(completions) == 1, (prefix, i, records)
            assert completions[0]["error"] is not None, completions[0]
    assert not [r for r in sink.records if str(r.get("request_id", "")).startswith("idle-")]


def _interim(record: Any, records: list[Any]) -> bool:
    """A streamed result's record before its first row (its completion record comes after it)."""
    return record is not records[-1] and any(v["stage"] == "stream" for v in record["verdicts"])
