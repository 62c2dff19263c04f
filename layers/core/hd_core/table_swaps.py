"""A table's Parquet objects swapped at once for every reader: the manifest an erasure writes, the rule readers apply.

An erasure rewrites several objects of one table (`<schema>/<table>/<file>.parquet`), and neither S3 nor
a folder can replace several objects in one step. So the writer (`swap_objects`):

1. stages the new bytes of every object K_i under a hidden key next to the table
   (`<schema>/<table>/.hd-erasure/<swap id>/<n>.parquet`; readers never take a dot-prefixed part for a
   table file);
2. writes ONE manifest, `<schema>/<table>/.hd-swap.json`, create-only (If-None-Match in S3, a hard link
   locally): entries {key K_i, old_etag E_i, stand_in, its etag and size}. A second swap of the same
   table cannot start while one is in progress;
3. replaces each K_i in place (If-Match E_i), so any other tool reading the bucket sees the final
   state;
4. deletes the manifest, then the staged objects.

A reader (`resolve`) lists the table FIRST and only then reads the manifest: a key listed at its
`old_etag` is read from its stand-in, any other key as listed. It then reads each object at exactly the
ETag resolved (If-Match), and lists again when one does not match. Every state it can end up with is
all old or all new:
- listed before step 2 (no key replaced yet): all old, or all new through the stand-ins if the manifest
  is there by the time it is read;
- listed during step 3: the manifest was written before the listing, so it is still there (all new)
  unless step 4 removed it, and then every key is new and an old ETag fails its If-Match;
- listed after step 4: all new.
A manifest that cannot be parsed fails closed (`SwapManifestInvalid`): the table is not served.

A swap that stopped after step 2 (a crash, a timeout) is rolled forward by the next erasure of the table
(`finish_swap`): until then readers keep seeing it whole through the stand-ins.

A local folder's engine reads a table's files in place (`hd dev`), where no If-Match can tell it that a
file changed under it. There step 3 holds `TableFolderLock` exclusively on the table's folder and each
statement reading the folder holds it shared, so a statement runs entirely before or after the
replacements.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from hd_core.erasure_models import TableObjects
from hd_core.errors import Conflict, HdError
from hd_core.models import new_id
from hd_core.object_source import ObjectChanged, ObjectInfo, ObjectMissing, ObjectSource, safe_relative_path

MANIFEST_NAME = ".hd-swap.json"
STAGING_DIR = ".hd-erasure"
_VERSION = 1
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_ENTRY_FIELDS = {"key", "old_etag", "stand_in", "stand_in_etag", "stand_in_size"}


class TableBusy(Conflict):
    """A table's folder stayed locked past the deadline (statements reading it, or a swap replacing its files)."""

    code = "HD_ERR_TABLE_BUSY"


class TableFolderLock:
    """A lock on a table's folder (flock on the directory): shared by each statement that reads the files in
    place, exclusive while a swap replaces them. `release` exactly once; a second call does nothing."""

    def __init__(self, folder: Path, *, exclusive: bool, timeout_seconds: float) -> None:
        self._fd: int | None = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self._lock = threading.Lock()
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_seconds
        try:
            while True:
                try:
                    fcntl.flock(self._fd, mode | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = "statements reading them" if exclusive else "an erasure replacing them"
                        raise TableBusy(f"the files of table folder {folder.name} stayed locked for "
                                        f"{timeout_seconds:g} s ({holder}); try again") from None
                    time.sleep(0.005)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file releases its flock

    def __enter__(self) -> TableFolderLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


class SwapManifestInvalid(HdError):
    """A table's swap manifest cannot be read as one: the table is not served until it is fixed or removed."""

    code = "HD_ERR_SWAP_MANIFEST_INVALID"


@dataclass(frozen=True)
class SwapEntry:
    """One object of a swap: `key` is read from `stand_in` while it is still at `old_etag`."""

    key: str
    old_etag: str
    stand_in: str
    stand_in_etag: str
    stand_in_size: int


@dataclass(frozen=True)
class SwapManifest:
    """The objects one swap replaces in a table (`table_prefix` is `<schema>/<table>/`)."""

    table_prefix: str
    swap_id: str
    entries: tuple[SwapEntry, ...]

    def encode(self) -> bytes:
        return json.dumps({"version": _VERSION, "swap_id": self.swap_id, "entries": [
            {"key": e.key, "old_etag": e.old_etag, "stand_in": e.stand_in, "stand_in_etag": e.stand_in_etag,
             "stand_in_size": e.stand_in_size} for e in self.entries]}, sort_keys=True).encode()

    @classmethod
    def parse(cls, table_prefix: str, data: bytes) -> SwapManifest:
        """The manifest in `data`; `SwapManifestInvalid` for anything but a well-formed one of this table."""
        where = f"{table_prefix}{MANIFEST_NAME}"
        try:
            if len(data) > _MAX_MANIFEST_BYTES:
                raise ValueError(f"larger than {_MAX_MANIFEST_BYTES} bytes")
            value = json.loads(data)
            if not isinstance(value, dict) or set(value) != {"version", "swap_id", "entries"}:
                raise ValueError("expected exactly version, swap_id and entries")
            if value["version"] != _VERSION:
                raise ValueError(f"unknown version {value['version']!r}")
            swap_id = value["swap_id"]
            if not isinstance(swap_id, str) or not swap_id.replace("_", "").isalnum():
                raise ValueError("swap_id must be letters, digits and underscores")
            if not isinstance(value["entries"], list) or not value["entries"]:
                raise ValueError("entries must be a non-empty list")
            entries = tuple(_entry(table_prefix, raw) for raw in value["entries"])
        except (ValueError, TypeError, KeyError, HdError) as exc:  # json.JSONDecodeError is a ValueError
            raise SwapManifestInvalid(f"the swap manifest {where} is invalid ({exc}): the table is not served "
                                      "until the manifest is removed or the erasure that wrote it is run again") \
                from exc
        if len({e.key for e in entries}) != len(entries):
            raise SwapManifestInvalid(f"the swap manifest {where} names a key twice: the table is not served")
        return cls(table_prefix, swap_id, entries)


def _entry(table_prefix: str, raw: Any) -> SwapEntry:
    if not isinstance(raw, dict) or set(raw) != _ENTRY_FIELDS:
        raise ValueError(f"an entry must have exactly {', '.join(sorted(_ENTRY_FIELDS))}")
    key, stand_in, size = raw["key"], raw["stand_in"], raw["stand_in_size"]
    texts = (key, stand_in, raw["old_etag"], raw["stand_in_etag"])
    if not all(isinstance(text, str) and text for text in texts):
        raise ValueError("keys and etags must be non-empty strings")
    if not is_table_file(key) or not key.startswith(table_prefix):
        raise ValueError(f"{key!r} is not a file of this table")
    safe_relative_path(stand_in)
    if not stand_in.startswith(f"{table_prefix}{STAGING_DIR}/"):
        raise ValueError(f"stand-in {stand_in!r} is not staged under {table_prefix}{STAGING_DIR}/")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError("stand_in_size must be a whole number of bytes")
    return SwapEntry(key, raw["old_etag"], stand_in, raw["stand_in_etag"], size)


def table_prefix(table: str) -> str:
    """`schema.table` as the prefix of its objects."""
    schema, name = table.split(".", 1)
    return f"{schema}/{name}/"


def manifest_key(prefix: str) -> str:
    return f"{prefix}{MANIFEST_NAME}"


def is_table_file(key: str) -> bool:
    """A Parquet file of a table: `<schema>/<table>/<file>.parquet`, no part hidden (dot-prefixed)."""
    parts = PurePosixPath(key).parts
    return key.endswith(".parquet") and len(parts) == 3 and not any(p.startswith(".") for p in parts)


# --- readers -------------------------------------------------------------------------------------------------


def resolve(listed: Iterable[ObjectInfo], manifest: SwapManifest | None) -> list[ObjectInfo]:
    """What to read for each listed table file, in the listing's order: the stand-in of a key listed at its
    manifest entry's old ETag, else the key as listed. The listing must have been taken before the manifest
    was read, and each object must then be read at exactly the ETag returned (If-Match)."""
    swaps = {entry.key: entry for entry in manifest.entries} if manifest is not None else {}
    resolved = []
    for info in listed:
        entry = swaps.get(info.key)
        if entry is not None and info.etag == entry.old_etag:
            info = ObjectInfo(key=entry.stand_in, size=entry.stand_in_size, etag=entry.stand_in_etag,
                              version_id=None, last_modified=info.last_modified)
        resolved.append(info)
    return resolved


def read_manifest(source: ObjectSource, prefix: str) -> SwapManifest | None:
    """The table's swap manifest through a read-only object source (None: no swap in progress)."""
    with tempfile.TemporaryDirectory(prefix="hd-swap-") as folder:
        path = Path(folder) / "manifest.json"
        try:
            source.download(manifest_key(prefix), path)
        except ObjectMissing:
            return None
        return SwapManifest.parse(prefix, path.read_bytes())


# --- the writer (the erasure) ---------------------------------------------------------------------------------


def finish_interrupted_swaps(objects: TableObjects, root: Path) -> list[str]:
    """Finish every swap an erasure left in a local data folder `root` (it stopped between its in-place
    replacements): a folder read in place would otherwise serve some of a table's files new and some old.
    Returns the tables (`schema.table`) it finished; a manifest that does not parse raises
    `SwapManifestInvalid` naming it."""
    finished = []
    for path in sorted(root.glob(f"*/*/{MANIFEST_NAME}")):
        schema, name = path.parent.parent.name, path.parent.name
        manifest = read_manifest_object(objects, f"{schema}/{name}/")
        if manifest is not None:
            finish_swap(objects, manifest, [])
            finished.append(f"{schema}.{name}")
    return finished


def read_manifest_object(objects: TableObjects, prefix: str) -> SwapManifest | None:
    """The table's swap manifest through the erasure's objects (None: no swap in progress)."""
    try:
        data, _ = objects.read(manifest_key(prefix))
    except ObjectMissing:
        return None
    return SwapManifest.parse(prefix, data)


def swap_objects(objects: TableObjects, prefix: str, new_content: Sequence[tuple[str, str, bytes]],
                 purge: list[str]) -> None:
    """Replace each (key, etag read, new bytes) of one table so readers see all old or all new (steps 1-4).

    `purge` gets `key\\tversion` of every replaced version (S3 versioning). Raises `ObjectChanged` when a
    swap of the table is in progress (before anything is visible), or when a key was written by someone
    else meanwhile: then every other key is still swapped and the manifest removed before it raises.
    """
    swap_id = new_id("swap")
    entries = []
    try:
        for n, (key, etag, data) in enumerate(new_content):
            stand_in = f"{prefix}{STAGING_DIR}/{swap_id}/{n}.parquet"
            staged = objects.put_new(stand_in, data)
            entries.append(SwapEntry(key, etag, stand_in, staged.etag, staged.size))
        manifest = SwapManifest(prefix, swap_id, tuple(entries))
        objects.put_new(manifest_key(prefix), manifest.encode())
    except BaseException:
        _undo_staging(objects, prefix, swap_id, entries)
        raise
    finish_swap(objects, manifest, purge, {key: data for key, _, data in new_content})


def _undo_staging(objects: TableObjects, prefix: str, swap_id: str, entries: list[SwapEntry]) -> None:
    """Take back a swap that failed before any key was replaced: its manifest first, if it was stored after all
    (a put that failed late), so readers never resolve a stand-in that is gone; then the stand-ins."""
    try:
        left = read_manifest_object(objects, prefix)
    except SwapManifestInvalid:
        left = None  # not ours to remove: the next erasure of the table reports it
    if left is not None and left.swap_id == swap_id:
        objects.delete(manifest_key(prefix))
    for entry in entries:
        objects.delete(entry.stand_in)


def finish_swap(objects: TableObjects, manifest: SwapManifest, purge: list[str],
                new_bytes: dict[str, bytes] | None = None) -> int:
    """Steps 3 and 4 of a swap whose manifest is written: replace each key still at its old ETag, then remove
    the manifest and the stand-ins. Returns how many keys it replaced; raises `ObjectChanged` at the end if a
    key had been written by someone else (that key keeps the other writer's bytes)."""
    replaced = 0
    conflicts = []
    contents = dict(new_bytes or {})
    for entry in manifest.entries:
        if entry.key not in contents:
            try:
                data, info = objects.read(entry.stand_in)
            except ObjectMissing:
                continue  # its key is checked below: already swapped, or a conflict
            if info.etag != entry.stand_in_etag:
                raise SwapManifestInvalid(f"stand-in {entry.stand_in} is not the object its manifest names")
            contents[entry.key] = data
    with objects.replacing(manifest.table_prefix):  # readers of the files in place wait, or it raises TableBusy
        for entry in manifest.entries:
            try:
                if entry.key not in contents:
                    raise ObjectMissing(f"stand-in {entry.stand_in} is gone")
                objects.replace(entry.key, contents[entry.key], if_match=entry.old_etag)
            except (ObjectChanged, ObjectMissing) as exc:
                now = [info for info in objects.list(entry.key) if info.key == entry.key]
                if not (now and now[0].etag == entry.stand_in_etag):  # not already swapped by an earlier run
                    conflicts.append(str(exc))
                continue
            replaced += 1
            purge.extend(f"{entry.key}\t{version}" for version in objects.versions(entry.key))
    objects.delete(manifest_key(manifest.table_prefix))
    for entry in manifest.entries:
        objects.delete(entry.stand_in)
    if conflicts:
        raise ObjectChanged(f"{len(conflicts)} object(s) of the table changed while the erasure swapped them "
                            f"({conflicts[0]}); run the request again")
    return replaced
