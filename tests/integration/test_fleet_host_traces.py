"""A fleet host takes its OTLP endpoint from its EngineConfig (`otel_endpoint`, written by the CDK app from
context hd:otelEndpoint): statements served over TLS leave spans at that collector with no HD_OTEL_ENDPOINT in
the process environment, and a configured endpoint wins over the variable.
"""

from __future__ import annotations

import psycopg
import pytest

from engine_host.boot.config import EngineConfigInvalid, parse_config
from tests.harness import BackgroundLoop
from tests.integration.test_fleet_host import Account, _dsn
from tests.otlp_receiver import otlp_receiver


def test_statement_spans_go_to_the_endpoint_the_engine_config_names(account: Account, loop: BackgroundLoop,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with otlp_receiver() as configured, otlp_receiver() as environment:
        # The variable points elsewhere: the deployment's configuration must win, and nothing go there.
        monkeypatch.setenv("HD_OTEL_ENDPOINT", environment.url)
        account.config_document["otel_endpoint"] = configured.url
        host = account.host()
        loop.run(host.start())
        try:
            with psycopg.connect(_dsn(host, account), autocommit=True) as conn:
                assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (40,)
        finally:
            loop.run(host.stop())  # the host's stop flushes what is batched
        spans = configured.wait_for(lambda got: any(s.name == "hd.statement" for s in got))
        statement = next(s for s in spans if s.name == "hd.statement")
        assert statement.resource["service.name"] == "hardened-duck-engine"
        assert statement.attributes["hd.outcome"] == "ok" and statement.attributes["hd.rows"] == 1
        assert {s.name for s in spans if s.parent_span_id == statement.span_id} >= {"hd.stage.execute",
                                                                                    "hd.stage.audit"}
        assert environment.spans == [] and environment.requests == []


def test_an_engine_config_with_an_unusable_endpoint_is_refused_naming_the_field(account: Account) -> None:
    for endpoint in ("grpc://collector:4317", "http://user:secret@collector:4318", "collector"):
        with pytest.raises(EngineConfigInvalid) as refused:
            parse_config({**account.config_document, "otel_endpoint": endpoint}, "test")
        assert refused.value.field == "otel_endpoint" and refused.value.code == "HD_ERR_ENGINE_CONFIG_INVALID"
        assert "secret" not in str(refused.value)  # the value is never echoed
