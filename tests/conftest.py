"""Shared fixtures: a real `hd dev` engine host process, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import EngineHostProcess, start_engine_host

# Credentials for moto: never real ones, and set so boto3 never looks for a profile or IMDS.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake AWS credentials and region in the environment, for tests under moto's `mock_aws`."""
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def engine_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHostProcess]:
    """One engine host with the demo dataset, shared by the end-to-end tests."""
    host = start_engine_host(tmp_path_factory.mktemp("hd-state"), "--demo", "--insecure-plaintext")
    yield host
    host.stop()


@pytest.fixture(scope="session")
def reference_pg() -> str:
    """A real PostgreSQL for side-by-side comparisons; skips (saying why) when none is reachable."""
    from tests.harness import DEFAULT_PG_DSN, reference_postgres_dsn

    dsn = reference_postgres_dsn()
    if dsn is None:
        pytest.skip(f"no PostgreSQL reachable (set HD_TEST_PG_DSN; default tried: {DEFAULT_PG_DSN!r})")
    return dsn
