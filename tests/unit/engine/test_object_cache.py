"""ObjectCache: local copies of source objects, fetched once, kept fresh within a bound, evicted LRU."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine_host.data import ObjectCache
from hd_core.adapters.local_objects import LocalFolderObjectSource
from hd_core.object_source import ObjectInfo, ObjectMissing, UnsafeObjectKey


class RecordingSource:
    """A real local-folder source that counts calls and can hold a download until told to go on."""

    def __init__(self, root: Path) -> None:
        self._inner = LocalFolderObjectSource(root)
        self.downloads: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.hold: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return self._inner.list(prefix)

    def head(self, key: str) -> ObjectInfo:
        with self._lock:
            self.heads[key] += 1
        return self._inner.head(key)

    def download(self, key: str, dest_path: Path, *, if_match: str | None = None) -> ObjectInfo:
        with self._lock:
            self.downloads[key] += 1
        if key in self.hold:
            self.started[key].set()
            assert self.hold[key].wait(5), "test never released the held download"
        return self._inner.download(key, dest_path, if_match=if_match)

    def hold_downloads_of(self, key: str) -> threading.Event:
        self.hold[key], self.started[key] = threading.Event(), threading.Event()
        return self.hold[key]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    root = tmp_path / "bucket"
    root.mkdir()
    return root


@pytest.fixture
def source(bucket: Path) -> RecordingSource:
    return RecordingSource(bucket)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _put(bucket: Path, key: str, body: bytes) -> None:
    (bucket / key).parent.mkdir(parents=True, exist_ok=True)
    (bucket / key).write_bytes(body)


def _cache(source: RecordingSource, tmp_path: Path, clock: FakeClock, capacity: int = 10_000) -> ObjectCache:
    return ObjectCache(source, tmp_path / "nvme", capacity, clock=clock, max_staleness_seconds=60.0)


def test_first_access_fetches_and_second_is_a_hit(source: RecordingSource, bucket: Path, tmp_path: Path,
                                                  clock: FakeClock) -> None:
    _put(bucket, "sales/orders/part-0.parquet", b"orders v1")
    cache = _cache(source, tmp_path, clock)

    first = cache.path_for("sales/orders/part-0.parquet")
    second = cache.path_for("sales/orders/part-0.parquet")

    assert first == second
    assert first.read_bytes() == b"orders v1"
    assert first.is_relative_to(tmp_path / "nvme")
    assert source.downloads["sales/orders/part-0.parquet"] == 1
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["bytes_fetched"], stats["usage_bytes"]) == (1, 1, 9, 9)
    assert stats["saturation"] == pytest.approx(9 / 10_000)


def test_eight_threads_asking_for_one_key_cause_one_download(source: RecordingSource, bucket: Path,
                                                             tmp_path: Path, clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"x" * 500)
    cache = _cache(source, tmp_path, clock)
    release = source.hold_downloads_of("t/part-0.parquet")
    start = threading.Barrier(8)

    def ask() -> Path:
        start.wait(5)
        return cache.path_for("t/part-0.parquet")

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(ask) for _ in range(8)]
        assert source.started["t/part-0.parquet"].wait(5)
        release.set()
        paths = {future.result(5) for future in futures}

    assert len(paths) == 1
    assert source.downloads["t/part-0.parquet"] == 1
    assert (cache.stats()["misses"], cache.stats()["hits"]) == (1, 7)


def test_a_slow_download_does_not_block_other_keys(source: RecordingSource, bucket: Path, tmp_path: Path,
                                                   clock: FakeClock) -> None:
    _put(bucket, "slow/part-0.parquet", b"slow")
    _put(bucket, "fast/part-0.parquet", b"fast")
    cache = _cache(source, tmp_path, clock)
    release = source.hold_downloads_of("slow/part-0.parquet")

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(cache.path_for, "slow/part-0.parquet")
        assert source.started["slow/part-0.parquet"].wait(5)
        assert cache.path_for("fast/part-0.parquet").read_bytes() == b"fast"
        assert not slow.done()
        release.set()
        assert slow.result(5).read_bytes() == b"slow"


def test_eviction_past_high_water_drops_least_recently_used_down_to_low_water(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    for name in "abcd":
        _put(bucket, f"t/{name}.parquet", name.encode() * 250)
    cache = _cache(source, tmp_path, clock, capacity=1000)  # high water 800, low water 700
    paths = {name: cache.path_for(f"t/{name}.parquet") for name in "abc"}
    cache.path_for("t/a.parquet")  # a is now the most recently used; b the least

    cache.path_for("t/d.parquet")  # 1000 bytes > 800: evict until below 700

    assert not paths["b"].exists() and not paths["c"].exists()
    assert paths["a"].exists()
    stats = cache.stats()
    assert (stats["evictions"], stats["usage_bytes"]) == (2, 500)


def test_eviction_never_removes_a_pinned_entry(source: RecordingSource, bucket: Path, tmp_path: Path,
                                              clock: FakeClock) -> None:
    for name in "abcd":
        _put(bucket, f"t/{name}.parquet", name.encode() * 250)
    cache = _cache(source, tmp_path, clock, capacity=1000)

    with cache.pin("t/a.parquet") as pinned:
        cache.path_for("t/b.parquet")
        cache.path_for("t/c.parquet")
        cache.path_for("t/d.parquet")  # a is least recently used, but pinned
        assert pinned.read_bytes() == b"a" * 250
    b_path = tmp_path / "nvme" / "objects" / "t" / "b.parquet"
    assert not b_path.exists()
    assert cache.stats()["evictions"] == 2

    cache.path_for("t/b.parquet")
    cache.path_for("t/c.parquet")  # past high water again; a is unpinned now and the first to go
    assert not pinned.exists()
    assert cache.stats()["evictions"] == 4


def test_changed_etag_is_seen_only_after_the_staleness_bound(source: RecordingSource, bucket: Path,
                                                             tmp_path: Path, clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"version 1")
    cache = _cache(source, tmp_path, clock)
    cache.path_for("t/part-0.parquet")
    _put(bucket, "t/part-0.parquet", b"version 2")

    clock.now += 59.9
    assert cache.path_for("t/part-0.parquet").read_bytes() == b"version 1"
    assert source.heads["t/part-0.parquet"] == 1  # the fetch's own head; no revalidation yet

    clock.now += 0.1
    assert cache.path_for("t/part-0.parquet").read_bytes() == b"version 2"
    assert source.downloads["t/part-0.parquet"] == 2
    assert (cache.stats()["refetches"], cache.stats()["usage_bytes"]) == (1, 9)


def test_unchanged_object_is_revalidated_without_a_download(source: RecordingSource, bucket: Path,
                                                            tmp_path: Path, clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"version 1")
    cache = _cache(source, tmp_path, clock)
    cache.path_for("t/part-0.parquet")

    clock.now += 61
    cache.path_for("t/part-0.parquet")
    cache.path_for("t/part-0.parquet")  # validated just now: no second head

    assert (source.heads["t/part-0.parquet"], source.downloads["t/part-0.parquet"]) == (2, 1)
    assert (cache.stats()["hits"], cache.stats()["refetches"]) == (2, 0)


def test_object_deleted_at_the_source_stops_being_served_after_the_bound(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"version 1")
    cache = _cache(source, tmp_path, clock)
    local = cache.path_for("t/part-0.parquet")
    (bucket / "t/part-0.parquet").unlink()

    clock.now += 60
    with pytest.raises(ObjectMissing):
        cache.path_for("t/part-0.parquet")

    assert not local.exists()
    assert cache.stats()["usage_bytes"] == 0


def test_a_local_file_deleted_under_the_cache_is_rebuilt(source: RecordingSource, bucket: Path, tmp_path: Path,
                                                         clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"orders")
    cache = _cache(source, tmp_path, clock)
    cache.path_for("t/part-0.parquet").unlink()

    rebuilt = cache.path_for("t/part-0.parquet")

    assert rebuilt.read_bytes() == b"orders"
    assert source.downloads["t/part-0.parquet"] == 2
    assert (cache.stats()["misses"], cache.stats()["usage_bytes"]) == (2, 6)


@pytest.mark.parametrize("key", ["../outside.parquet", "/etc/passwd", "t/../../x", "t/\x00", "", "t/./x"])
def test_unsafe_keys_are_refused_before_touching_source_or_disk(source: RecordingSource, tmp_path: Path,
                                                                clock: FakeClock, key: str) -> None:
    cache = _cache(source, tmp_path, clock)

    with pytest.raises(UnsafeObjectKey) as caught:
        cache.path_for(key)

    assert caught.value.code == "HD_ERR_UNSAFE_OBJECT_KEY"
    assert not source.heads and not source.downloads


def test_downloads_leave_no_partial_files_behind(source: RecordingSource, bucket: Path, tmp_path: Path,
                                                 clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"orders")
    cache = _cache(source, tmp_path, clock)

    cache.path_for("t/part-0.parquet")
    with pytest.raises(ObjectMissing):
        cache.path_for("t/absent.parquet")

    assert list((tmp_path / "nvme" / "incoming").iterdir()) == []
    assert cache.stats()["usage_bytes"] == 6


def test_a_restart_starts_from_an_empty_cache(source: RecordingSource, bucket: Path, tmp_path: Path,
                                              clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"orders")
    _cache(source, tmp_path, clock).path_for("t/part-0.parquet")

    restarted = _cache(source, tmp_path, clock)

    assert not (tmp_path / "nvme" / "objects" / "t" / "part-0.parquet").exists()
    assert restarted.stats()["usage_bytes"] == 0


def test_invalid_water_marks_are_refused(source: RecordingSource, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ObjectCache(source, tmp_path, 1000, high_water=0.5, low_water=0.7)


def test_an_object_replaced_during_the_download_is_fetched_again_at_its_new_etag(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _put(bucket, "t/part-0.parquet", b"version 1")
    cache = _cache(source, tmp_path, clock)
    real_download = source.download

    def replaced_once(key: str, dest_path: Path, *, if_match: str | None = None) -> ObjectInfo:
        if source.downloads[key] == 0:
            _put(bucket, key, b"version 2")  # a writer replaces the object after our head
        return real_download(key, dest_path, if_match=if_match)

    monkeypatch.setattr(source, "download", replaced_once)

    assert cache.path_for("t/part-0.parquet").read_bytes() == b"version 2"
    assert source.downloads["t/part-0.parquet"] == 2


def test_misses_and_evictions_are_logged_without_object_contents(source: RecordingSource, bucket: Path,
                                                                 tmp_path: Path, clock: FakeClock,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    for name in "abcd":
        _put(bucket, f"t/{name}.parquet", b"SECRET-ROW-" + name.encode() * 239)
    cache = _cache(source, tmp_path, clock, capacity=1000)

    with caplog.at_level("INFO", logger="engine_host.data.object_cache"):
        for name in "abcd":
            cache.path_for(f"t/{name}.parquet")

    messages = [record.getMessage() for record in caplog.records]
    assert sum("cache miss for t/" in message for message in messages) == 4
    assert sum(message.startswith("evicted t/") for message in messages) == 2
    assert not any("SECRET-ROW" in message for message in messages)


# --- one budget with native copies (reserve_bytes / release_bytes / demote) ------------------------------------


def test_a_reservation_evicts_unpinned_objects_least_recently_used_first(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    for name in "abc":
        _put(bucket, f"t/{name}.parquet", name.encode() * 200)
    cache = _cache(source, tmp_path, clock, capacity=1000)  # reservations may take up to high water, 800
    paths = {name: cache.path_for(f"t/{name}.parquet") for name in "abc"}
    cache.path_for("t/a.parquet")  # b is the least recently used now

    assert cache.reserve_bytes(300)  # 600 + 300 > 800: b goes
    assert not paths["b"].exists() and paths["a"].exists() and paths["c"].exists()
    stats = cache.stats()
    assert (stats["object_bytes"], stats["reserved_bytes"], stats["usage_bytes"]) == (400, 300, 700)
    assert stats["saturation"] == pytest.approx(0.7)


def test_a_reservation_that_cannot_fit_is_refused_without_evicting_anything(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    for name in "ab":
        _put(bucket, f"t/{name}.parquet", name.encode() * 300)
    cache = _cache(source, tmp_path, clock, capacity=1000)
    with cache.pin("t/a.parquet") as pinned:
        other = cache.path_for("t/b.parquet")
        assert not cache.reserve_bytes(600)  # 300 pinned + 600 > 800 even with b evicted
        assert pinned.exists() and other.exists()
        assert cache.stats()["evictions"] == 0
        assert cache.reserve_bytes(500)  # evicting b is enough for this one
        assert not other.exists()
    assert not cache.reserve_bytes(cache.reservable_bytes)  # past the high-water mark with what is reserved
    cache.release_bytes(500)
    assert cache.stats()["reserved_bytes"] == 0


def test_reserved_bytes_squeeze_the_objects_not_the_reverse(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    for name in "abc":
        _put(bucket, f"t/{name}.parquet", name.encode() * 200)
    cache = _cache(source, tmp_path, clock, capacity=1000)  # high water 800, low water 700
    assert cache.reserve_bytes(400)
    cache.path_for("t/a.parquet")
    cache.path_for("t/b.parquet")  # 400 + 400 = 800: at high water, nothing to do
    assert cache.stats()["evictions"] == 0
    cache.path_for("t/c.parquet")  # 1000 > 800: objects go down to below low water (700 - 400 reserved)
    stats = cache.stats()
    assert (stats["evictions"], stats["object_bytes"], stats["reserved_bytes"]) == (2, 200, 400)


def test_demoted_objects_are_evicted_first(source: RecordingSource, bucket: Path, tmp_path: Path,
                                           clock: FakeClock) -> None:
    for name in "abc":
        _put(bucket, f"t/{name}.parquet", name.encode() * 200)
    cache = _cache(source, tmp_path, clock, capacity=1000)
    paths = {name: cache.path_for(f"t/{name}.parquet") for name in "abc"}  # a is the least recently used
    cache.demote(["t/c.parquet", "t/not-cached.parquet"])  # c's table is served from a native copy now

    assert cache.reserve_bytes(400)  # 600 + 400 > 800: one object goes, the demoted one
    assert not paths["c"].exists() and paths["a"].exists() and paths["b"].exists()


def test_acquire_at_a_listed_etag_does_not_serve_an_older_copy_within_the_bound(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    _put(bucket, "t/part-0.parquet", b"version 1")
    cache = _cache(source, tmp_path, clock)
    cache.path_for("t/part-0.parquet")
    _put(bucket, "t/part-0.parquet", b"version 2")
    listed = source.head("t/part-0.parquet")

    assert cache.acquire("t/part-0.parquet").read_bytes() == b"version 1"  # within the bound, as before
    cache.release("t/part-0.parquet")
    assert cache.acquire("t/part-0.parquet", etag=listed.etag).read_bytes() == b"version 2"
    cache.release("t/part-0.parquet")
    assert cache.stats()["refetches"] == 1


def test_available_bytes_counts_what_a_reservation_could_evict(source: RecordingSource, bucket: Path,
                                                                tmp_path: Path, clock: FakeClock) -> None:
    for name in "ab":
        _put(bucket, f"t/{name}.parquet", name.encode() * 300)
    cache = _cache(source, tmp_path, clock, capacity=1000)
    with cache.pin("t/a.parquet"):
        cache.path_for("t/b.parquet")
        assert cache.reserve_bytes(100)
        assert cache.available_bytes() == 800 - 300 - 100  # b could go; a is pinned
        assert cache.reserve_bytes(cache.available_bytes())
        assert cache.available_bytes() == 0 and not cache.reserve_bytes(1)


def _etag(source: RecordingSource, key: str) -> str:
    return source.head(key).etag


def test_a_newer_version_fetched_deletes_the_old_one_at_once_or_when_its_last_reader_releases_it(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    # An erasure rewrote the object: the old version's file may hold erased rows, so it must not wait for eviction.
    key = "crm/people/part-0.parquet"
    _put(bucket, key, b"old rows with the subject")
    cache = _cache(source, tmp_path, clock)
    old_etag = _etag(source, key)
    old = cache.acquire(key, etag=old_etag, exact=True)  # a running statement reads the old version
    _put(bucket, key, b"new rows")
    new_etag = _etag(source, key)
    new = cache.acquire(key, etag=new_etag, exact=True)

    assert old.read_bytes() == b"old rows with the subject"  # still held: kept for its reader
    cache.release(ObjectCache.version_name(key, old_etag))
    assert not old.exists() and new.read_bytes() == b"new rows"
    assert cache.stats()["object_bytes"] == len(b"new rows")

    _put(bucket, key, b"newest")
    cache.release(ObjectCache.version_name(key, new_etag))  # nobody holds it now: the next version drops it at once
    cache.acquire(key, etag=_etag(source, key), exact=True)
    assert not new.exists()


def test_retire_deletes_every_copy_under_the_table_a_listing_no_longer_reads(
        source: RecordingSource, bucket: Path, tmp_path: Path, clock: FakeClock) -> None:
    for key in ("crm/people/part-0.parquet", "crm/people/part-1.parquet", "crm/visits/part-0.parquet"):
        _put(bucket, key, key.encode())
    cache = _cache(source, tmp_path, clock)
    paths = {key: cache.acquire(key, etag=_etag(source, key), exact=True)
             for key in ("crm/people/part-0.parquet", "crm/people/part-1.parquet", "crm/visits/part-0.parquet")}
    kept = ObjectCache.version_name("crm/people/part-0.parquet", _etag(source, "crm/people/part-0.parquet"))
    held = ObjectCache.version_name("crm/people/part-1.parquet", _etag(source, "crm/people/part-1.parquet"))
    cache.release(kept)

    assert cache.retire("crm/people/", keep=[kept]) == 0  # part-1 is still read: deleted at its release
    assert paths["crm/people/part-1.parquet"].exists()
    cache.release(held)
    assert not paths["crm/people/part-1.parquet"].exists()
    assert paths["crm/people/part-0.parquet"].exists() and paths["crm/visits/part-0.parquet"].exists()
    cache.release(ObjectCache.version_name("crm/visits/part-0.parquet", _etag(source, "crm/visits/part-0.parquet")))
    assert cache.retire("crm/people/", keep=[]) == 1
    assert not paths["crm/people/part-0.parquet"].exists() and paths["crm/visits/part-0.parquet"].exists()
