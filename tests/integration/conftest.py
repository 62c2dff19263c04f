"""Fixtures of the fleet-host tests (test_fleet_host.py and the suites that start fleet hosts the same way)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from moto import mock_aws

from tests.harness import BackgroundLoop

if TYPE_CHECKING:
    from tests.integration.test_fleet_host import Account


@pytest.fixture
def account(aws_credentials: None, tmp_path: Path) -> Iterator[Account]:
    """A moto account holding one fleet deployment's table, buckets, keys and engine configuration."""
    from tests.integration.test_fleet_host import Account

    with mock_aws():
        yield Account(tmp_path)


@pytest.fixture
def loop() -> Iterator[BackgroundLoop]:
    """An event loop on its own thread, for hosts started and stopped from a test."""
    runner = BackgroundLoop()
    yield runner
    runner.close()
