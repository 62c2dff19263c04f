"""Local copies of table data objects, so DuckDB reads only the cache directory, never the object store.

Layout under `cache_dir`: `objects/<key>` holds current copies, `incoming/` holds downloads in
progress (renamed into place atomically, so a reader never sees a half-written file). Both are
emptied at start: the cache is disposable and its size accounting starts from zero.

Freshness: an entry is revalidated against the source (head: ETag and version) at most every
`max_staleness_seconds`, which is therefore the bound on how long a replaced object can still be
served. A changed object is fetched again and renamed over the old copy; a reader that already has
the old file open keeps reading the old bytes.

One byte budget for the cache volume: `capacity_bytes` is what the volume may hold of table data,
objects and native DuckDB copies of tables (engine_host/data/native_tables.py) together. The native
copies take their share with `reserve_bytes` / `release_bytes`; the rule, on the one lock:
- objects are evicted (least recently used first, never a pinned one) when objects + reservations
  pass the high-water mark, down to low water: reserved bytes squeeze the objects, never the reverse;
- a reservation is granted only if objects + reservations stay at or under the high-water mark,
  evicting unpinned objects to get there (nothing is evicted when even that would not be enough),
  so the copies never take the room statements need to fetch what they read (capacity - high water
  at least). A refused reservation is the native side's cue to evict its own least recently used
  copies, or to leave the table on its Parquet files;
- once a table is served from its copy, its objects are `demote`d: first in line for eviction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hd_core.errors import HdError
from hd_core.object_source import ObjectChanged, ObjectInfo, ObjectMissing, ObjectSource, safe_relative_path

logger = logging.getLogger(__name__)

# A download that races with a replacement of the same object is retried this many times.
_FETCH_ATTEMPTS = 3
_PLAIN_ETAG = re.compile(r"[A-Za-z0-9-]{1,128}")


class CacheWriteFailed(HdError):
    """The cache directory could not hold a fetched object (disk full, a key that clashes with a folder)."""

    code = "HD_ERR_CACHE_WRITE_FAILED"


@dataclass
class _Entry:
    info: ObjectInfo
    path: Path
    validated_at: float
    pins: int = 0
    retired: bool = False  # a newer version of the object is cached: dropped once no statement holds it


class ObjectCache:
    """A size-bounded, LRU, thread-safe local cache of one `ObjectSource`."""

    def __init__(self, source: ObjectSource, cache_dir: Path, capacity_bytes: int, *, high_water: float = 0.80,
                 low_water: float = 0.70, max_staleness_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity_bytes <= 0 or not 0 < low_water < high_water <= 1:
            raise ValueError("need capacity_bytes > 0 and 0 < low_water < high_water <= 1")
        self._source = source
        self._objects_dir = Path(cache_dir) / "objects"
        self._incoming_dir = Path(cache_dir) / "incoming"
        self._capacity = capacity_bytes
        self._high_bytes = high_water * capacity_bytes
        self._low_bytes = low_water * capacity_bytes
        self._max_staleness = max_staleness_seconds
        self._clock = clock
        self._lock = threading.Lock()  # guards everything below
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._key_locks: dict[str, threading.Lock] = {}
        self._busy: dict[str, int] = {}  # keys being resolved: never evicted under a resolver
        self._usage = 0  # bytes of cached objects
        self._reserved = 0  # bytes granted to native copies (reserve_bytes)
        self._counters = {"hits": 0, "misses": 0, "bytes_fetched": 0, "evictions": 0, "refetches": 0}
        for folder in (self._objects_dir, self._incoming_dir):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

    @property
    def objects_dir(self) -> Path:
        """The directory holding every cached copy (what DuckDB is allowed to read)."""
        return self._objects_dir

    @property
    def cache_dir(self) -> Path:
        return self._objects_dir.parent

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def reservable_bytes(self) -> int:
        """The most `reserve_bytes` can ever grant (the high-water mark)."""
        return int(self._high_bytes)

    @property
    def max_staleness_seconds(self) -> float:
        return self._max_staleness

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def local_path(self, key: str) -> Path:
        """Where the object's copy lives when it is cached (nothing is fetched or checked)."""
        return self._objects_dir / safe_relative_path(key)

    def reserve(self, key: str) -> Path:
        """An empty placeholder at the key's path unless a copy is already there; nothing is fetched.

        DuckDB binds a view over a list of files from the first file alone but wants every other
        one to exist, so placeholders let a table be registered before its files are fetched.
        Reading a placeholder fails ("too small to be a Parquet file"), so a statement must `acquire`
        the real file first, and a placeholder is never mistaken for data.
        """
        path = self.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass  # the real copy (or an earlier placeholder) is already there
        return path

    def path_for(self, key: str) -> Path:
        """A local path holding the object's current bytes (at most `max_staleness_seconds` old), fetched if needed.

        The file may be evicted once this returns; hold `pin(key)` while reading it.
        """
        return self._resolve(key, pin=False)

    def acquire(self, key: str, *, etag: str | None = None, exact: bool = False) -> Path:
        """Like `path_for`, and the file is not evicted until a matching `release(key)`.

        With `etag` (what a listing said the object is now), a copy cached under another ETag is
        revalidated at once instead of being served until the staleness bound: the copy returned is
        that version or a newer one, never an older one.

        With `exact` too, it is that version and no other, kept under its own name
        (`version_name(key, etag)`: release, reserve and demote it by that name) and never replaced:
        fetched with If-Match (`ObjectChanged` when the source no longer has it), never revalidated (a
        listing is what keeps it fresh). A table's objects are read so, all as one listing saw them, and a
        statement still reading an older version is not switched to a newer one another statement fetched.
        """
        if not exact:
            return self._resolve(key, pin=True, etag=etag)
        if etag is None:
            raise ValueError("an exact acquire needs the etag")
        return self._resolve(self.version_name(key, etag), pin=True, etag=etag, source_key=key)

    @staticmethod
    def version_name(key: str, etag: str) -> str:
        """The cache's name for one version of an object: `a/b/part-0@<etag>.parquet` for `a/b/part-0.parquet`
        (an ETag with other characters than letters, digits and '-' is hashed: the name stays a plain path,
        and its last '@' tells versions of different keys apart)."""
        if not _PLAIN_ETAG.fullmatch(etag):
            etag = hashlib.sha256(etag.encode()).hexdigest()
        path = PurePosixPath(key)
        return str(path.with_name(f"{path.stem}@{etag}{path.suffix}"))

    def release(self, key: str) -> None:
        """Undo one `acquire(key)`; the last release of a retired version deletes its file."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1
            if entry is not None and entry.retired and not entry.pins and key not in self._busy:
                self._drop(key, entry)

    def retire(self, prefix: str, keep: Iterable[str]) -> int:
        """Delete every cached copy of an object under `prefix` whose name is not in `keep` (the version names a
        fresh listing reads): an erasure rewrote the table, and an old version may still hold erased rows. A copy
        a statement still holds is deleted when it is released. Returns how many copies were deleted now."""
        kept = set(keep)
        with self._lock:
            return self._retire_locked(lambda name, entry: entry.info.key.startswith(prefix) and name not in kept)

    def _retire_locked(self, retired: Callable[[str, _Entry], bool]) -> int:
        dropped = 0
        for name, entry in list(self._entries.items()):
            if not retired(name, entry):
                continue
            if entry.pins or name in self._busy:
                entry.retired = True
            else:
                self._drop(name, entry)
                dropped += 1
        return dropped

    def _drop(self, name: str, entry: _Entry) -> None:
        """Delete one entry and its file. Caller holds the lock."""
        del self._entries[name]
        entry.path.unlink(missing_ok=True)
        self._usage -= entry.info.size

    @contextmanager
    def pin(self, key: str) -> Iterator[Path]:
        """`acquire` for the duration of a block."""
        path = self.acquire(key)
        try:
            yield path
        finally:
            self.release(key)

    def reserve_bytes(self, size: int) -> bool:
        """Grant `size` bytes of the volume to a native copy, evicting unpinned objects if that makes it fit.

        False (and nothing evicted) when objects that cannot be evicted plus what is already reserved
        leave no room for `size` under the high-water mark.
        """
        if size < 0:
            raise ValueError("size must be >= 0")
        with self._lock:
            limit = self._high_bytes
            if self._usage + self._reserved + size > limit:
                evictable = sum(entry.info.size for key, entry in self._entries.items()
                                if not entry.pins and key not in self._busy)
                if self._usage - evictable + self._reserved + size > limit:
                    return False
                self._evict_until(limit - self._reserved - size + 1)  # sizes are whole bytes: usage <= target
            self._reserved += size
            return True

    def release_bytes(self, size: int) -> None:
        """Give back bytes granted by `reserve_bytes` (a native copy was deleted or came out smaller)."""
        with self._lock:
            self._reserved = max(0, self._reserved - size)

    def available_bytes(self) -> int:
        """What `reserve_bytes` could grant now: the high-water mark less pinned or busy objects and reservations."""
        with self._lock:
            held = sum(entry.info.size for key, entry in self._entries.items() if entry.pins or key in self._busy)
            return max(0, int(self._high_bytes) - held - self._reserved)

    def expire(self, keys: Iterable[str]) -> None:
        """Revalidate these objects against the source at their next use, however recently they were checked
        (an erasure rewrote them: the staleness bound must not keep serving the old bytes)."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.validated_at = float("-inf")

    def demote(self, keys: Iterable[str]) -> None:
        """Put these objects first in line for eviction (their table is served from a native copy now)."""
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._entries.move_to_end(key, last=False)

    def stats(self) -> dict[str, float]:
        """Counters since start, the volume's usage in bytes (objects + native copies' reservations) and
        saturation (usage / capacity)."""
        with self._lock:
            usage = self._usage + self._reserved
            return {**self._counters, "usage_bytes": usage, "object_bytes": self._usage,
                    "reserved_bytes": self._reserved, "saturation": usage / self._capacity}

    # --- resolution: one resolver per key at a time, other keys in parallel --------------------------

    def _resolve(self, key: str, *, pin: bool, etag: str | None = None, source_key: str | None = None) -> Path:
        """`key` is the entry's name; with `source_key` it names that object's version `etag` (exact)."""
        relative = safe_relative_path(key)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            with key_lock:
                if source_key is not None and etag is not None:
                    return self._resolve_exact(source_key, key, self._objects_dir / relative, pin, etag)
                return self._resolve_locked(key, self._objects_dir / relative, pin, etag)
        finally:
            with self._lock:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]
                    entry = self._entries.get(key)
                    if entry is not None and entry.retired and not entry.pins:
                        self._drop(key, entry)

    def _resolve_locked(self, key: str, path: Path, pin: bool, etag: str | None = None) -> Path:
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and not entry.path.exists():
            logger.info("cache file for %s vanished; fetching it again", key)
            self._forget(key)
            entry = None
        if entry is None:
            self._fetch(key, path, pin, refetch=False)
        elif self._clock() - entry.validated_at >= self._max_staleness or (etag is not None
                                                                            and etag != entry.info.etag):
            self._revalidate(key, entry, pin)
        else:
            self._record_hit(key, entry, pin)
        return path

    def _resolve_exact(self, key: str, name: str, path: Path, pin: bool, etag: str) -> Path:
        with self._lock:
            entry = self._entries.get(name)
        if entry is not None and not entry.path.exists():
            logger.info("cache file for %s vanished; fetching it again", name)
            self._forget(name)
            entry = None
        if entry is not None:
            self._record_hit(name, entry, pin)
            return path
        with self._lock:  # another version of the object is cached: this is the object fetched again
            other = any(entry.info.key == key for entry in self._entries.values())
        self._fetch(key, path, pin, refetch=other, known_etag=etag, attempts=1, name=name)
        return path

    def _revalidate(self, key: str, entry: _Entry, pin: bool) -> None:
        try:
            current = self._source.head(key)
        except ObjectMissing:
            # Deleted at the source: stop serving the copy rather than answer from a table that is gone.
            self._forget(key)
            entry.path.unlink(missing_ok=True)
            raise
        if (current.etag, current.version_id) == (entry.info.etag, entry.info.version_id):
            with self._lock:
                entry.validated_at = self._clock()
            self._record_hit(key, entry, pin)
            return
        logger.info("object %s changed (etag %s -> %s); fetching it again", key, entry.info.etag, current.etag)
        self._fetch(key, entry.path, pin, refetch=True, known_etag=current.etag)

    def _record_hit(self, key: str, entry: _Entry, pin: bool) -> None:
        with self._lock:
            self._entries.move_to_end(key)
            self._counters["hits"] += 1
            if pin:
                entry.pins += 1

    def _fetch(self, key: str, path: Path, pin: bool, *, refetch: bool, known_etag: str | None = None,
               attempts: int = _FETCH_ATTEMPTS, name: str | None = None) -> None:
        """Download `key` to `path` and keep it as the entry `name` (default: the key itself)."""
        validated_at = self._clock()
        info = self._download(key, path, known_etag, attempts)
        name = name or key
        with self._lock:
            previous = self._entries.pop(name, None)
            pins = previous.pins if previous is not None else 0
            self._usage += info.size - (previous.info.size if previous is not None else 0)
            self._entries[name] = _Entry(info=info, path=path, validated_at=validated_at, pins=pins + int(pin))
            if name != key:  # an exact version, fetched with If-Match: the source's current one retires the others
                self._retire_locked(lambda other, entry: entry.info.key == key and other != name)
            self._counters["refetches" if refetch else "misses"] += 1
            self._counters["bytes_fetched"] += info.size
            self._evict_over_high_water()
        if not refetch:
            logger.info("cache miss for %s: fetched %d bytes", key, info.size)

    def _download(self, key: str, path: Path, known_etag: str | None, attempts: int) -> ObjectInfo:
        """Fetch into `incoming/`, then rename into place; retries (`attempts`) when the object is replaced
        mid-fetch."""
        for attempt in range(1, attempts + 1):
            expected = known_etag if known_etag is not None else self._source.head(key).etag
            known_etag = None
            temp = self._temp_file()
            try:
                info = self._source.download(key, temp, if_match=expected)
                path.parent.mkdir(parents=True, exist_ok=True)
                temp.replace(path)
                return info
            except ObjectChanged:
                if attempt == attempts:
                    raise
            except OSError as exc:
                raise CacheWriteFailed(f"cannot store {key!r} in the cache: {exc.strerror}") from exc
            finally:
                temp.unlink(missing_ok=True)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _temp_file(self) -> Path:
        try:
            handle, name = tempfile.mkstemp(dir=self._incoming_dir, suffix=".part")
        except OSError as exc:
            raise CacheWriteFailed(f"cannot create a download file in {self._incoming_dir}: {exc.strerror}") from exc
        os.close(handle)  # only the name is needed: the source opens the path itself
        return Path(name)

    def _forget(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._usage -= entry.info.size

    # --- eviction ---------------------------------------------------------------------------------------

    def _evict_over_high_water(self) -> None:
        """Drop least recently used, unpinned, idle entries until objects + reservations are below low water.
        Caller holds the lock."""
        if self._usage + self._reserved <= self._high_bytes:
            return
        self._evict_until(self._low_bytes - self._reserved)

    def _evict_until(self, object_bytes: float) -> None:
        """Drop least recently used, unpinned, idle entries until objects use less than `object_bytes`."""
        for key in list(self._entries):
            if self._usage < object_bytes:
                break
            entry = self._entries[key]
            if entry.pins or key in self._busy:
                continue
            self._drop(key, entry)
            self._counters["evictions"] += 1
            logger.info("evicted %s (%d bytes); cache usage now %d of %d", key, entry.info.size, self._usage,
                        self._capacity)
