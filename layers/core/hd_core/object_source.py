"""The `ObjectSource` port: read-only access to table data objects (Parquet files) under one prefix.

Keys are relative to the source's root or prefix, with `/` separators. Engine hosts never hand a key
straight to a filesystem: `safe_relative_path` is the one place a key becomes a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from hd_core.errors import Conflict, HdError, InvalidRequest, NotFound


@dataclass(frozen=True)
class ObjectInfo:
    """What a source says about one object; `etag` is unquoted (an MD5 hex for single-part objects)."""

    key: str
    size: int
    etag: str
    version_id: str | None
    last_modified: datetime


class ObjectMissing(NotFound):
    """The object does not exist in the source."""

    code = "HD_ERR_OBJECT_NOT_FOUND"


class ObjectChanged(Conflict):
    """The object changed between reading its metadata and fetching it (the ETag no longer matches)."""

    code = "HD_ERR_OBJECT_CHANGED"


class ObjectSourceUnavailable(HdError):
    """The source could not be read (network, permissions, a local I/O error)."""

    code = "HD_ERR_OBJECT_SOURCE_UNAVAILABLE"


class ObjectIntegrityError(HdError):
    """Fetched bytes do not match the object's announced size or ETag; the partial file was discarded."""

    code = "HD_ERR_OBJECT_INTEGRITY"


class UnsafeObjectKey(InvalidRequest):
    """A key that could escape a directory when used as a path (`..`, absolute, NUL, empty segment)."""

    code = "HD_ERR_UNSAFE_OBJECT_KEY"


class ObjectSource(Protocol):
    """Read-only object storage for table data. Implementations are safe to call from several threads."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Current metadata of one object; raises `ObjectMissing`."""
        ...

    def download(self, key: str, dest_path: Path, *, if_match: str | None = None) -> ObjectInfo:
        """Write the object's bytes to `dest_path` and describe exactly what was written.

        With `if_match`, raises `ObjectChanged` unless the fetched object has that ETag. Raises
        `ObjectIntegrityError` if the bytes do not match the announced size or ETag.
        """
        ...


def safe_relative_path(key: str) -> PurePosixPath:
    """The key as a relative path that stays under any directory it is joined to; raises `UnsafeObjectKey`."""
    if not key or "\x00" in key or "\\" in key:
        raise UnsafeObjectKey(f"object key {key!r} is empty or contains NUL or backslash")
    if key.startswith("/"):
        raise UnsafeObjectKey(f"object key {key!r} is absolute")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeObjectKey(f"object key {key!r} has an empty, '.' or '..' segment")
    return PurePosixPath(*parts)


def is_single_part_etag(etag: str) -> bool:
    """True when the ETag is the MD5 of the whole content (multipart ETags end in `-<parts>`)."""
    return len(etag) == 32 and "-" not in etag
