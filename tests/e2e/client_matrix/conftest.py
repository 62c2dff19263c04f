"""Fixtures for the client matrix: both sides' endpoints, the mirrored demo data, one runner per client."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.client_matrix.mirror import scratch_database
from tests.e2e.client_matrix.runners import RUNNERS, Endpoint, Runner, Side
from tests.harness import EngineHostProcess


@pytest.fixture(scope="session")
def matrix_endpoints(engine_host: EngineHostProcess, reference_pg: str) -> Iterator[dict[Side, Endpoint]]:
    """The engine host (as the Owner, over TLS) and a scratch PostgreSQL database holding the demo's tables."""
    engine = Endpoint("127.0.0.1", engine_host.port, engine_host.user, engine_host.password, "hd", tls=True)
    with scratch_database(reference_pg, engine.conninfo()) as dsn:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        pg = Endpoint(str(params.get("host", "127.0.0.1")), int(str(params.get("port", 5432))),
                      str(params.get("user", "postgres")), str(params.get("password", "")), str(params["dbname"]),
                      tls=False)
        yield {"engine": engine, "pg": pg}


class RunnerPool:
    """Each client's runner, connected on first use and closed with the module."""

    def __init__(self, endpoints: dict[Side, Endpoint]) -> None:
        self.endpoints = endpoints
        self.open: dict[str, Runner] = {}

    def __getitem__(self, name: str) -> Runner:
        if name not in self.open:
            runner_type = next(r for r in RUNNERS if r.name == name)
            self.open[name] = runner_type(self.endpoints)
        return self.open[name]

    def close(self) -> None:
        for runner in self.open.values():
            runner.close()


@pytest.fixture(scope="module")
def runners(matrix_endpoints: dict[Side, Endpoint]) -> Iterator[RunnerPool]:
    pool = RunnerPool(matrix_endpoints)
    yield pool
    pool.close()
