"""The `ControlStore` adapters under one contract: every test in this package runs once per adapter."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.ports import ControlStore

StoreFactory = Callable[[], ControlStore]


class PerRequestAtomicClient:
    """A DynamoDB client whose calls run one at a time.

    DynamoDB applies each request atomically, but moto checks a condition and then writes in
    plain Python (and restores a whole-table copy when a transaction fails), so two threads can
    interleave inside one request. Serialising calls gives back the service's per-request
    atomicity while still letting threads interleave *between* requests, which is where the
    adapter's own races would be.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def dynamodb_client() -> Iterator[PerRequestAtomicClient]:
    """A moto DynamoDB client shared by a module's tests (creating a client costs ~0.1 s; each test gets a table)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            patch.setenv(name, value)
        with mock_aws():
            yield PerRequestAtomicClient(boto3.client("dynamodb", region_name="us-east-1"))


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the adapter under test on the same backing state (file or table) each time it is called."""
    if request.param == "sqlite":
        opened: list[SqliteControlStore] = []

        def open_sqlite() -> ControlStore:
            store = SqliteControlStore(tmp_path / "control.sqlite3")
            opened.append(store)
            return store

        yield open_sqlite
        for store in opened:
            store.close()
        return
    client = request.getfixturevalue("dynamodb_client")
    table_name = f"hd-control-{uuid.uuid4().hex}"
    client.create_table(**create_table_kwargs(table_name))
    yield lambda: DynamoDbControlStore(table_name, client=client)
    client.delete_table(TableName=table_name)


@pytest.fixture
def store(store_factory: StoreFactory) -> ControlStore:
    return store_factory()
