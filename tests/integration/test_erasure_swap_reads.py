"""Statements over a table an erasure is rewriting see it all old or all new (issue 20): through the engine's
object cache and native copies over moto S3 (engine_host/data/cached_tables.py, native_tables.py), and over
a local data folder read in place, with and without native copies (engine_host/data/table_sources.py).

A reader counts the subject's rows in a 3-file table again and again while `hd_core.erasure.run` swaps
the files (slowed down so the reader lands between every two of its steps); each count is the old total
or the new one, never one in between.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from engine_host.data.cached_tables import CachedTables
from engine_host.data.object_cache import ObjectCache
from engine_host.data.table_sources import LocalFolderTables, NativeCache, ObjectStoreTables
from engine_host.engine.duckdb_engine import DATA_CATALOG, Database
from engine_host.engine.table_catalog import TableCatalog
from hd_core import erasure, table_swaps
from hd_core.adapters.erasure_objects import LocalFolderTableObjects, S3TableObjects
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.s3_objects import S3ObjectSource
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.erasure_models import ForgetStatus, TableObjects
from hd_core.iam_audit import IamAuditTrail
from hd_core.models import ChangeContext, KeyEnv, Principal, Role
from hd_core.object_source import ObjectInfo
from hd_core.policies import TableBinding
from hd_core.table_swaps import SwapManifestInvalid

BUCKET = "hd-swap-reads"
PREFIX = "wh/"
ORG = "org_swap"
SUBJECT = "cust-00042"
TABLE = "crm.people"
COUNT_SQL = f"SELECT count(*) FROM {DATA_CATALOG}.crm.people WHERE person_id = '{SUBJECT}'"
STEP_PAUSE_SECONDS = 0.15  # between the erasure's writes: long enough for several statements to land there


def _parquet(ids: list[str]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"person_id": ids, "n": list(range(len(ids)))}), sink)
    return sink.getvalue()


class Slowed:
    """The erasure's `TableObjects`, pausing after every write so readers run between any two of them."""

    def __init__(self, inner: TableObjects) -> None:
        self._inner = inner
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _paused(self, result: Any) -> Any:
        self.writes += 1
        time.sleep(STEP_PAUSE_SECONDS)
        return result

    def put_new(self, key: str, data: bytes) -> ObjectInfo:
        return self._paused(self._inner.put_new(key, data))  # type: ignore[no-any-return]

    def replace(self, key: str, data: bytes, *, if_match: str) -> ObjectInfo:
        return self._paused(self._inner.replace(key, data, if_match=if_match))  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self._paused(self._inner.delete(key))


class Host:
    """A locked-down database serving the bucket through the cache and native copies, as a fleet host does
    (or, with `folder`, a data folder read in place as `hd dev` does); every statement re-checks the table's
    files (staleness bound 0)."""

    def __init__(self, s3: Any, cache_dir: Path, folder: Path | None = None, native: bool = True) -> None:
        if folder is None:
            source = S3ObjectSource(s3, BUCKET, PREFIX)
            self.cache = ObjectCache(source, cache_dir, 64 << 20, max_staleness_seconds=0.0)
            self.tables = CachedTables(source, self.cache, listing_interval_seconds=3600)
            self.served: ObjectStoreTables | LocalFolderTables = ObjectStoreTables(self.tables, self.cache)
        else:
            self.served = LocalFolderTables(folder, NativeCache(cache_dir, 64 << 20, max_staleness_seconds=0.0)
                                            if native else None)
        self.database = Database(None, allowed_directories=self.served.allowed_directories)
        self.database.open(setup=[self.served.register])
        self.catalog = TableCatalog(self.database.connection)
        self.served.attach(self.database.connection, self.catalog)
        if self.served.native is not None:
            assert self.served.native.wait_idle()

    def count(self) -> int:
        cursor = self.database.connection.cursor()
        table_data = self.served.table_data
        assert table_data is not None
        try:
            with table_data.hold([TABLE]):
                row = cursor.execute(COUNT_SQL).fetchone()
        finally:
            cursor.close()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self.served.close()
        self.catalog.close()
        self.database.close()


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for n in range(3):  # two of the subject's rows in each file
            client.put_object(Bucket=BUCKET, Key=f"{PREFIX}crm/people/part-{n}.parquet",
                              Body=_parquet([SUBJECT, f"keep-{n}", SUBJECT]))
        yield client


@pytest.fixture
def host(s3: Any, tmp_path: Path) -> Iterator[Host]:
    served = Host(s3, tmp_path / "cache")
    yield served
    served.close()


def _folder(s3: Any, tmp_path: Path) -> Path:
    """The bucket's table copied into a data folder, as `hd dev` keeps it."""
    root = tmp_path / "data"
    for n in range(3):
        path = root / "crm" / "people" / f"part-{n}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}crm/people/part-{n}.parquet")["Body"].read())
    return root


def _services(tmp_path: Path, objects: TableObjects) -> tuple[erasure.ErasureServices, SqliteControlStore]:
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    keys = LocalKeyFile(tmp_path / "keys.json", create_missing=True)
    store.put_policy(TableBinding("tbl_people", TABLE, org_id=ORG, subject_column="person_id"))
    trail = IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path), keys)
    return erasure.ErasureServices(store=store, trail=trail, keys=keys, objects=objects), store


def _ctx() -> ChangeContext:
    principal = Principal(user_id="usr_dpo", org_id=ORG, role=Role.ADMIN, key_id="hd_test_x", env=KeyEnv.TEST,
                          scopes=("forget:manage",), department=None, region=None)
    return ChangeContext(actor=principal, request_id="req_test")


@pytest.mark.parametrize("storage", ["s3 through the cache", "folder with native copies", "folder in place"])
def test_a_reader_counting_during_an_erasure_sees_the_old_total_or_the_new_one(
        s3: Any, tmp_path: Path, storage: str) -> None:
    if storage == "s3 through the cache":
        host = Host(s3, tmp_path / "cache")
        objects = Slowed(S3TableObjects(s3, BUCKET, PREFIX))
    else:
        folder = _folder(s3, tmp_path)
        host = Host(s3, tmp_path / "cache", folder, native=storage == "folder with native copies")
        objects = Slowed(LocalFolderTableObjects(folder))
    try:
        _count_during_an_erasure(host, objects, tmp_path)
    finally:
        host.close()


def _count_during_an_erasure(host: Host, objects: Slowed, tmp_path: Path) -> None:
    assert host.count() == 6
    svc, store = _services(tmp_path, objects)
    request = erasure.submit(svc, _ctx(), ORG, SUBJECT, "")
    counts: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            counts.append(host.count())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        finished = erasure.run(svc, request.request_id)
    finally:
        done.set()
        reader.join(timeout=60)
        store.close()

    assert finished.status is ForgetStatus.COMPLETED, finished.error
    assert finished.rows_removed == 6 and objects.writes == 3 + 1 + 3 + 1 + 3
    assert host.count() == 0
    assert set(counts) <= {6, 0}, f"a statement saw part of the swap: {sorted(set(counts))}"
    assert len(counts) >= objects.writes  # the reader ran throughout, not only before or after


def test_a_table_whose_manifest_does_not_parse_is_refused_with_the_reason(s3: Any, host: Host) -> None:
    assert host.count() == 6
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}crm/people/{table_swaps.MANIFEST_NAME}", Body=b"{truncated")
    host.tables.invalidate([TABLE])  # what the erasure epoch does on every host

    with pytest.raises(SwapManifestInvalid) as refused:
        host.count()
    assert refused.value.code == "HD_ERR_SWAP_MANIFEST_INVALID" and "not served" in str(refused.value)

    s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}crm/people/{table_swaps.MANIFEST_NAME}")
    host.tables.invalidate([TABLE])
    assert host.count() == 6
