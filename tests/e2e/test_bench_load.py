"""`bench.load --smoke` runs end to end so the load benchmark cannot rot: the engine half always, PostgreSQL too
when one is reachable."""

from __future__ import annotations

import os

import psycopg
import pytest

from bench import gil_profile, load
from tests.harness import DEFAULT_PG_DSN

pytestmark = pytest.mark.slow  # a whole benchmark run, if a short one: CI runs it (`pytest -m slow`)


@pytest.fixture(scope="module")
def smoke() -> list[tuple[load.LevelResult, load.LevelResult | None]]:
    """One smoke run (5 clients, 2 s); the bench itself finds out whether PostgreSQL is reachable."""
    return load.main(["--smoke", "--profile"])


def test_every_statement_of_the_smoke_run_is_answered_and_audited_once(smoke) -> None:
    [(engine, _)] = smoke
    assert engine.ok > 0
    assert not engine.errors and not engine.lost and not engine.connect_errors
    assert engine.audit_records == engine.answered
    assert set(engine.by_kind) == set(load.KINDS)  # lookups, aggregates, the join and the writes all ran
    assert engine.rss_peak_kb and engine.rss_peak_kb > 0


def test_the_smoke_run_says_where_the_engine_held_the_gil_when_py_spy_is_installed(smoke) -> None:
    [(engine, _)] = smoke
    if gil_profile.py_spy() is None:
        assert engine.gil is None
        pytest.skip("py-spy is not installed (.venv/bin/pip install py-spy): no GIL profile")
    assert isinstance(engine.gil, gil_profile.GilSummary), engine.gil
    assert engine.gil.samples > 0 and 0 < engine.gil.held_share <= 1
    # The engine answered statements while sampled: some samples are in the stages that serve them.
    assert {"plan: parse, policy, rewrite, transpile", "audit record"} & set(engine.gil.by_stage)


def test_postgresql_replays_the_same_workload_and_its_scratch_schema_is_dropped(smoke) -> None:
    [(engine, pg)] = smoke
    dsn = os.environ.get("HD_TEST_PG_DSN", DEFAULT_PG_DSN)
    if pg is None:
        pytest.skip(f"no PostgreSQL reachable at {dsn!r} (set HD_TEST_PG_DSN): only the engine half ran")
    assert pg.ok > 0 and not pg.errors and not pg.lost
    assert set(pg.by_kind) == set(engine.by_kind)
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                            [f"hd_load_{os.getpid()}"]).fetchone()
    assert left == (0,)
