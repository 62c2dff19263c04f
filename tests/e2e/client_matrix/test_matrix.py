"""Every case through every client that can run it, on the engine host and on PostgreSQL 15: same answers.

A test fails with each difference spelled out (column names, type OIDs or dtypes, the first differing row,
an SQLSTATE), so a failing id such as `psycopg-binary-sum_int_is_bigint` reads as a bug report.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tests.e2e.client_matrix.cases import CASES, WRITE_SCHEMA, Case
from tests.e2e.client_matrix.conftest import RunnerPool
from tests.e2e.client_matrix.outcome import mismatches
from tests.e2e.client_matrix.runners import RUNNERS, PsqlRunner

MATRIX = [(runner.name, case) for runner in RUNNERS for case in CASES if runner.supports(case)]


def _table_for(client: str, case: Case) -> str:
    """A writable table of the test's own: the same name on both sides, never shared between tests."""
    digest = hashlib.sha256(f"{client}/{case.id}".encode()).hexdigest()[:12]
    return f"{WRITE_SCHEMA}.matrix_{digest}"


@pytest.mark.parametrize(("client", "case"), MATRIX, ids=[f"{client}-{case.id}" for client, case in MATRIX])
def test_engine_answers_as_postgres_does(runners: RunnerPool, client: str, case: Case) -> None:
    if client == PsqlRunner.name and shutil.which("psql") is None:
        pytest.skip("psql is not installed (apt-get install postgresql-client); .ci/run installs it")
    runner = runners[client]
    table = _table_for(client, case)
    engine = runner.run("engine", case, table)
    postgres = runner.run("pg", case, table)
    problems = mismatches(case, engine, postgres)
    assert not problems, f"{client} {case.id} ({case.expect.value}): " + "; ".join(problems)


def test_matrix_covers_every_client_and_kind() -> None:
    """No client is left without cases and no case without a client (a kind nobody runs would test nothing)."""
    clients = {client for client, _ in MATRIX}
    assert clients == {runner.name for runner in RUNNERS}
    assert {case.id for _, case in MATRIX} == {case.id for case in CASES}
