"""A bug in any stage of a statement is an audited refusal with a reference, and the connection goes on.

Faults are injected into the in-process engine host (a stage, the plan, the execution, a SET) to
stand for bugs: the client gets XX000 HD_ERR_INTERNAL "internal error (reference q_...)", the
audit record under that reference says so, one log line names the exception's type (never its
text), the concurrency slot is released, and the next statement on the connection runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from engine_host.pipeline import pipeline as pipeline_module
from engine_host.pipeline.governor import Governor
from engine_host.pipeline.pipeline import StatementContext
from engine_host.pipeline.settings import SessionSettings
from engine_host.runtime.local import LocalConfig, LocalEngineHost
from tests.harness import BackgroundLoop, SwitchableAuditSink

SECRET = "zz-secret-42"


class Bug(Exception):
    """What an injected fault raises; its text must reach neither the client nor the log."""


@pytest.fixture
def loop() -> Iterator[BackgroundLoop]:
    runner = BackgroundLoop()
    yield runner
    runner.close()


@pytest.fixture
def host(tmp_path: Path, loop: BackgroundLoop) -> Iterator[tuple[LocalEngineHost, SwitchableAuditSink, str]]:
    sink = SwitchableAuditSink()
    engine = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True), audit_sink=sink)
    loop.run(engine.start())
    assert engine.server is not None and engine.banner is not None
    key = (tmp_path / "owner.key").read_text().strip()
    dsn = (f"host=127.0.0.1 port={engine.server.port} dbname=hd user={engine.banner.user} password={key} "
           "sslmode=disable connect_timeout=10")
    try:
        yield engine, sink, dsn
    finally:
        loop.run(engine.stop())


def _faulty(original: Callable[..., object], marker: str, *, text_arg: int) -> Callable[..., object]:
    def wrapper(*args: object, **kwargs: object) -> object:
        if marker in str(args[text_arg]):
            raise Bug(SECRET)
        return original(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("protocol", ["simple", "extended"])
@pytest.mark.parametrize("where", ["classify", "plan", "execute", "setting"])
def test_a_bug_is_an_audited_internal_error_and_the_connection_goes_on(
        host: tuple[LocalEngineHost, SwitchableAuditSink, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, where: str, protocol: str) -> None:
    engine, sink, dsn = host
    statement = {"classify": "SELECT 'bug-here' AS a", "plan": "SELECT 'bug-here' AS a",
                 "execute": "SELECT 'bug-here' AS a", "setting": "SET application_name = 'bug-here'"}[where]
    assert engine.engine is not None and engine.engine.pipeline is not None
    pipeline = engine.engine.pipeline
    if where == "classify":
        stage = pipeline.stages[0]

        def classify(ctx: StatementContext) -> None:
            if "bug-here" in ctx.text:
                raise Bug(SECRET)
            stage(ctx)

        pipeline.stages[0] = classify  # this host lives for this test only
    elif where == "plan":
        monkeypatch.setattr(Governor, "plan", _faulty(Governor.plan, "bug-here", text_arg=3))
    elif where == "execute":
        real = pipeline_module.pg_type_for_arrow

        def column_type(arrow_type: object) -> object:
            if "bug-here" in armed:
                raise Bug(SECRET)
            return real(arrow_type)  # type: ignore[arg-type]

        armed: list[str] = []
        monkeypatch.setattr(pipeline_module, "pg_type_for_arrow", column_type)
    else:
        monkeypatch.setattr(SessionSettings, "set", _faulty(SessionSettings.set, "bug-here", text_arg=2))

    with psycopg.connect(dsn, autocommit=True) as conn, caplog.at_level(logging.INFO):
        cursor = psycopg.ClientCursor(conn) if protocol == "simple" else conn.cursor()
        if where == "execute":
            armed.append("bug-here")
        with pytest.raises(psycopg.Error) as caught:
            cursor.execute(statement, prepare=protocol == "extended")
        if where == "execute":
            armed.clear()
        error = caught.value
        assert (error.sqlstate, error.diag.message_detail) == ("XX000", "HD_ERR_INTERNAL")
        message = error.diag.message_primary or ""
        assert message.startswith("internal error (reference q_") and SECRET not in str(error)
        reference = message.split("(reference ", 1)[1].rstrip(")")
        assert conn.execute("SELECT 1").fetchone() == (1,)

    [record] = [r for r in sink.records if r["query_id"] == reference]
    assert record["error"] == {"sqlstate": "XX000", "code": "HD_ERR_INTERNAL", "message": message}
    assert SECRET not in repr(record)
    lines = [r for r in caplog.records if reference in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR and lines[0].exc_info is None
    assert "Bug" in lines[0].getMessage()
    assert SECRET not in caplog.text
    assert pipeline.governor.gate.running == 0
