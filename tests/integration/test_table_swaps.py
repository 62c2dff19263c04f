"""A table's objects swapped all at once for readers (hd_core/table_swaps.py), on a data folder and on moto S3.

The reader's rule is checked against every interleaving with the writer: the reader lists the table after
writer step a, reads the manifest after step b and reads the objects (If-Match) after step c, for every
a <= b <= c. Whatever it reads is the table all old or all new; the in-place, one-object-at-a-time writer
this replaced fails the same check.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from hd_core import erasure, table_swaps
from hd_core.adapters.erasure_objects import LocalFolderTableObjects, S3TableObjects
from hd_core.adapters.local_objects import LocalFolderObjectSource
from hd_core.adapters.s3_objects import S3ObjectSource
from hd_core.erasure_models import TableObjects
from hd_core.object_source import ObjectChanged, ObjectInfo, ObjectMissing, ObjectSource
from hd_core.table_swaps import SwapManifestInvalid, TableBusy, TableFolderLock

BUCKET = "hd-swap-data"
PREFIX = "crm/people/"
KEYS = [f"{PREFIX}part-{n}.parquet" for n in range(3)]
UNTOUCHED = f"{PREFIX}part-9.parquet"


def _parquet(ids: list[str]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"person_id": ids}), sink)
    return sink.getvalue()


OLD = {key: _parquet(["subject", f"keep-{n}"]) for n, key in enumerate(KEYS)}
NEW = {key: _parquet([f"keep-{n}"]) for n, key in enumerate(KEYS)}
STILL = _parquet(["keep-9"])


class Stepped:
    """`TableObjects` that calls `on_step(n)` after the writer's n-th change (create, replace or delete)."""

    def __init__(self, inner: TableObjects, on_step: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_step = on_step
        self.steps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _step(self, result: Any) -> Any:
        self.steps += 1
        self._on_step(self.steps)
        return result

    def put_new(self, key: str, data: bytes) -> ObjectInfo:
        return self._step(self._inner.put_new(key, data))  # type: ignore[no-any-return]

    def replace(self, key: str, data: bytes, *, if_match: str) -> ObjectInfo:
        return self._step(self._inner.replace(key, data, if_match=if_match))  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self._step(self._inner.delete(key))


class Observed:
    """What a reader sees after each writer step: the listing, the manifest and every object's ETag and bytes."""

    def __init__(self, source: ObjectSource, scratch: Path) -> None:
        self._source = source
        self._scratch = scratch
        self.listings: list[list[ObjectInfo]] = []
        self.manifests: list[table_swaps.SwapManifest | None] = []
        self.objects: list[dict[str, tuple[str, bytes]]] = []

    def __call__(self, step: int) -> None:
        assert step == len(self.listings)
        listed = self._source.list(PREFIX)
        self.listings.append([info for info in listed if table_swaps.is_table_file(info.key)])
        self.manifests.append(table_swaps.read_manifest(self._source, PREFIX))
        contents = {}
        for info in listed:
            path = self._scratch / "object"
            try:
                got = self._source.download(info.key, path)
            except ObjectMissing:
                continue
            contents[info.key] = (got.etag, path.read_bytes())
        self.objects.append(contents)

    def read(self, a: int, b: int, c: int) -> dict[str, bytes] | None:
        """The table as a reader listing at a, reading the manifest at b and the objects at c gets it
        (None: an If-Match failed, so it lists again)."""
        got = {}
        for listed, read in zip(self.listings[a], table_swaps.resolve(self.listings[a], self.manifests[b]),
                                strict=True):
            etag, data = self.objects[c].get(read.key, ("", b""))
            if etag != read.etag:
                return None
            got[listed.key] = data
        return got

    def states(self) -> set[str]:
        """`old`, `new` (or `mixed`) for every interleaving; an If-Match failure re-lists at c."""
        seen = set()
        for a, b, c in itertools.combinations_with_replacement(range(len(self.listings)), 3):
            table = self.read(a, b, c) or self.read(c, c, c)
            assert table is not None, f"a reader listing again at step {c} still found changed objects"
            assert table.pop(UNTOUCHED) == STILL
            seen.add("old" if table == OLD else "new" if table == NEW else "mixed")
        return seen


@pytest.fixture
def folder(tmp_path: Path) -> tuple[TableObjects, ObjectSource]:
    root = tmp_path / "data"
    (root / PREFIX).mkdir(parents=True)
    for key, data in [*OLD.items(), (UNTOUCHED, STILL)]:
        (root / key).write_bytes(data)
    return LocalFolderTableObjects(root), LocalFolderObjectSource(root)


@pytest.fixture
def bucket(aws_credentials: None) -> Iterator[tuple[TableObjects, ObjectSource, Any]]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        for key, data in [*OLD.items(), (UNTOUCHED, STILL)]:
            client.put_object(Bucket=BUCKET, Key=f"wh/{key}", Body=data)
        yield S3TableObjects(client, BUCKET, "wh/"), S3ObjectSource(client, BUCKET, "wh/"), client


def _swap(objects: TableObjects, observed: Observed) -> list[str]:
    stepped = Stepped(objects, observed)
    etags = {info.key: info.etag for info in objects.list(PREFIX)}
    observed(0)
    purge: list[str] = []
    table_swaps.swap_objects(stepped, PREFIX, [(key, etags[key], NEW[key]) for key in KEYS], purge)  # type: ignore[arg-type]
    assert stepped.steps == 3 + 1 + 3 + 1 + 3  # stand-ins, manifest, replacements, manifest and stand-ins gone
    return purge


def _in_place(objects: TableObjects, observed: Observed) -> None:
    """What the erasure did before: each object replaced under its key, one after another."""
    stepped = Stepped(objects, observed)
    etags = {info.key: info.etag for info in objects.list(PREFIX)}
    observed(0)
    for key in KEYS:
        stepped.replace(key, NEW[key], if_match=etags[key])


def test_every_interleaving_on_a_folder_reads_the_table_all_old_or_all_new(
        folder: tuple[TableObjects, ObjectSource], tmp_path: Path) -> None:
    objects, source = folder
    observed = Observed(source, tmp_path)
    _swap(objects, observed)

    assert observed.states() == {"old", "new"}
    assert sorted(info.key for info in source.list(PREFIX)) == sorted([*KEYS, UNTOUCHED])  # nothing left behind
    assert not (tmp_path / "data" / PREFIX / table_swaps.STAGING_DIR).exists()


def test_every_interleaving_in_s3_reads_the_table_all_old_or_all_new(
        bucket: tuple[TableObjects, ObjectSource, Any], tmp_path: Path) -> None:
    objects, source, client = bucket
    observed = Observed(source, tmp_path)
    purge = _swap(objects, observed)

    assert observed.states() == {"old", "new"}
    # The stand-ins and the manifest leave no version behind; the replaced versions are the erasure's to purge.
    versions = client.list_object_versions(Bucket=BUCKET, Prefix="wh/")
    left = {entry["Key"] for entry in [*versions.get("Versions", []), *versions.get("DeleteMarkers", [])]}
    assert left == {f"wh/{key}" for key in [*KEYS, UNTOUCHED]}
    assert sorted(entry.split("\t")[0] for entry in purge) == KEYS


@pytest.mark.parametrize("storage", ["folder", "bucket"])
def test_the_check_catches_objects_replaced_one_after_another(storage: str, request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    objects, source, *_ = request.getfixturevalue(storage)
    observed = Observed(source, tmp_path)
    _in_place(objects, observed)
    assert observed.states() == {"old", "new", "mixed"}


def test_a_swap_stopped_after_its_manifest_is_served_whole_and_finished_by_the_next_erasure(
        folder: tuple[TableObjects, ObjectSource], tmp_path: Path) -> None:
    objects, source = folder

    class Crash(Exception):
        pass

    def crash_after_one_replacement(step: int) -> None:
        if step == 5:  # three stand-ins, the manifest, one replacement
            raise Crash

    stepped = Stepped(objects, crash_after_one_replacement)
    etags = {info.key: info.etag for info in objects.list(PREFIX)}
    with pytest.raises(Crash):
        table_swaps.swap_objects(stepped, PREFIX, [(key, etags[key], NEW[key]) for key in KEYS], [])  # type: ignore[arg-type]
    listed = [info for info in source.list(PREFIX) if table_swaps.is_table_file(info.key)]
    read = table_swaps.resolve(listed, table_swaps.read_manifest(source, PREFIX))
    staged = table_swaps.STAGING_DIR
    assert [info.key.split("/")[2] for info in read] == ["part-0.parquet", staged, staged, "part-9.parquet"]
    assert [(tmp_path / "data" / info.key).read_bytes() for info in read[:3]] == [NEW[key] for key in KEYS]

    changed: list[str] = []
    outcome = erasure._erase_parquet(objects, "crm.people", "person_id", "nobody", None, [], changed)
    assert outcome == {"storage": "parquet", "rows_removed": 0, "objects_rewritten": 0}
    assert changed == ["crm.people"]  # hosts served its stand-ins: their copies go
    assert {key: (tmp_path / "data" / key).read_bytes() for key in KEYS} == NEW
    assert sorted(info.key for info in source.list(PREFIX)) == sorted([*KEYS, UNTOUCHED])


def test_a_second_swap_of_a_table_cannot_start_while_one_is_in_progress(
        bucket: tuple[TableObjects, ObjectSource, Any]) -> None:
    objects, source, _ = bucket
    etags = {info.key: info.etag for info in objects.list(PREFIX)}
    objects.put_new(table_swaps.manifest_key(PREFIX), table_swaps.SwapManifest(PREFIX, "swap_other", (
        table_swaps.SwapEntry(KEYS[0], etags[KEYS[0]], f"{PREFIX}.hd-erasure/swap_other/0.parquet", "e", 1),)).encode())

    with pytest.raises(ObjectChanged, match="another erasure"):
        table_swaps.swap_objects(objects, PREFIX, [(KEYS[1], etags[KEYS[1]], NEW[KEYS[1]])], [])
    assert [info.key for info in source.list(PREFIX)] == [table_swaps.manifest_key(PREFIX), *KEYS, UNTOUCHED]
    assert objects.read(KEYS[1])[0] == OLD[KEYS[1]]


@pytest.mark.parametrize("text", [
    b"not json", b"[]", b'{"version": 1, "swap_id": "swap_x", "entries": []}',
    b'{"version": 2, "swap_id": "swap_x", "entries": [{}]}',
    b'{"version": 1, "swap_id": "swap_x", "entries": [{"key": "crm/people/a.parquet", "old_etag": "e", '
    b'"stand_in": "crm/other/.hd-erasure/swap_x/0.parquet", "stand_in_etag": "f", "stand_in_size": 3}]}',
    b'{"version": 1, "swap_id": "swap_x", "entries": [{"key": "crm/people/../x.parquet", "old_etag": "e", '
    b'"stand_in": "crm/people/.hd-erasure/swap_x/0.parquet", "stand_in_etag": "f", "stand_in_size": 3}]}',
])
def test_a_manifest_that_does_not_parse_fails_closed(text: bytes,
                                                     folder: tuple[TableObjects, ObjectSource]) -> None:
    objects, source = folder
    objects.put_new(table_swaps.manifest_key(PREFIX), text)
    with pytest.raises(SwapManifestInvalid, match="not served") as raised:
        table_swaps.read_manifest(source, PREFIX)
    assert raised.value.code == "HD_ERR_SWAP_MANIFEST_INVALID"


def test_a_folder_swap_waits_for_statements_reading_the_files_in_place_and_a_later_run_finishes_it(
        folder: tuple[TableObjects, ObjectSource], tmp_path: Path) -> None:
    objects, _ = folder
    assert isinstance(objects, LocalFolderTableObjects)
    objects.lock_timeout_seconds = 0.2
    etags = {info.key: info.etag for info in objects.list(PREFIX)}
    reading = TableFolderLock(tmp_path / "data" / PREFIX, exclusive=False, timeout_seconds=1)  # a statement
    try:
        with pytest.raises(TableBusy, match="statements reading them") as busy:
            table_swaps.swap_objects(objects, PREFIX, [(key, etags[key], NEW[key]) for key in KEYS], [])
        assert busy.value.code == "HD_ERR_TABLE_BUSY"
        assert {key: (tmp_path / "data" / key).read_bytes() for key in KEYS} == OLD  # nothing replaced
    finally:
        reading.release()
    with objects.replacing(PREFIX), pytest.raises(TableBusy, match="an erasure replacing them"):
        TableFolderLock(tmp_path / "data" / PREFIX, exclusive=False, timeout_seconds=0.1)  # the other way round

    erasure._erase_parquet(objects, "crm.people", "person_id", "nobody", None, [], [])
    assert {key: (tmp_path / "data" / key).read_bytes() for key in KEYS} == NEW


class _Interrupted(Exception):
    """The writer stopping dead (a crash) at a chosen step."""


def _old_folder(root: Path) -> LocalFolderTableObjects:
    for key in KEYS:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(OLD[key])
    return LocalFolderTableObjects(root)


def test_a_swap_failing_once_its_manifest_is_stored_takes_the_manifest_back_before_its_stand_ins(
        tmp_path: Path) -> None:
    objects = _old_folder(tmp_path)

    def fail_after_the_manifest(step: int) -> None:
        if step == len(KEYS) + 1:  # the manifest's put succeeded, then failed (a timeout after the write)
            raise _Interrupted

    etags = {key: objects.read(key)[1].etag for key in KEYS}
    with pytest.raises(_Interrupted):
        table_swaps.swap_objects(Stepped(objects, fail_after_the_manifest), PREFIX,
                                 [(k, etags[k], NEW[k]) for k in KEYS], [])
    assert {key: (tmp_path / key).read_bytes() for key in KEYS} == OLD
    assert sorted(p.name for p in (tmp_path / PREFIX).iterdir()) == sorted(k.rsplit("/", 1)[1] for k in KEYS)


# The process dies during the in-place replacements (steps 5-7, after 3 stand-ins and the manifest): 1, 2 or 3
# keys replaced, the manifest still there.
@pytest.mark.parametrize("crash_after", [5, 6, 7])
def test_hd_dev_start_finishes_a_swap_an_interrupted_erasure_left_in_the_data_folder(
        tmp_path: Path, crash_after: int) -> None:
    objects = _old_folder(tmp_path)

    def crash(step: int) -> None:
        if step == crash_after:
            raise _Interrupted

    etags = {key: objects.read(key)[1].etag for key in KEYS}
    with pytest.raises(_Interrupted):
        table_swaps.swap_objects(Stepped(objects, crash), PREFIX, [(k, etags[k], NEW[k]) for k in KEYS], [])
    assert (tmp_path / PREFIX / table_swaps.MANIFEST_NAME).exists()  # left half done: some files old, some new

    assert table_swaps.finish_interrupted_swaps(objects, tmp_path) == ["crm.people"]
    assert {key: (tmp_path / key).read_bytes() for key in KEYS} == NEW
    assert sorted(p.name for p in (tmp_path / PREFIX).iterdir()) == sorted(k.rsplit("/", 1)[1] for k in KEYS)
    assert table_swaps.finish_interrupted_swaps(objects, tmp_path) == []  # nothing left: start-up is idempotent
