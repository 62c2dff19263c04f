"""`ObjectSource` over a local folder (development and tests); the ETag is the content MD5, as S3 single-part."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from hd_core.object_source import (
    ObjectChanged,
    ObjectInfo,
    ObjectIntegrityError,
    ObjectMissing,
    ObjectSourceUnavailable,
    safe_relative_path,
)

_CHUNK_BYTES = 1024 * 1024


class LocalFolderObjectSource:
    """Files under `root` as objects; a key is the file's path relative to `root` with `/` separators."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every regular file whose key starts with `prefix`, sorted by key."""
        if not self._root.is_dir():
            raise ObjectSourceUnavailable(f"object folder {self._root} does not exist")
        keys = sorted(p.relative_to(self._root).as_posix() for p in self._root.rglob("*") if p.is_file())
        return [self.head(key) for key in keys if key.startswith(prefix)]

    def head(self, key: str) -> ObjectInfo:
        """Current metadata of one file; raises `ObjectMissing`."""
        path = self._path(key)
        try:
            stat = path.stat()
            etag = self._etag(path)
        except FileNotFoundError as exc:
            raise ObjectMissing(f"object {key!r} does not exist") from exc
        except OSError as exc:
            raise ObjectSourceUnavailable(f"cannot read object {key!r}: {exc.strerror}") from exc
        return ObjectInfo(key=key, size=stat.st_size, etag=etag, version_id=None,
                          last_modified=datetime.fromtimestamp(stat.st_mtime, UTC))

    def download(self, key: str, dest_path: Path, *, if_match: str | None = None) -> ObjectInfo:
        """Copy one file to `dest_path`; the ETag returned is the MD5 of the bytes actually copied."""
        path = self._path(key)
        try:
            stat = path.stat()
            written, md5 = _copy_hashing(path, dest_path)
        except FileNotFoundError as exc:
            dest_path.unlink(missing_ok=True)
            raise ObjectMissing(f"object {key!r} does not exist") from exc
        except OSError as exc:
            dest_path.unlink(missing_ok=True)
            raise ObjectSourceUnavailable(f"cannot read object {key!r}: {exc.strerror}") from exc
        if if_match is not None and md5 != if_match:
            dest_path.unlink(missing_ok=True)
            raise ObjectChanged(f"object {key!r} changed since its ETag was read")
        if written != stat.st_size:
            dest_path.unlink(missing_ok=True)
            raise ObjectIntegrityError(f"object {key!r} changed size while being copied")
        return ObjectInfo(key=key, size=written, etag=md5, version_id=None,
                          last_modified=datetime.fromtimestamp(stat.st_mtime, UTC))

    def _path(self, key: str) -> Path:
        return self._root / safe_relative_path(key)

    @staticmethod
    def _etag(path: Path) -> str:
        # Hashed on every call: mtime granularity is too coarse to tell same-size rewrites apart.
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as source:
            while chunk := source.read(_CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()


def _copy_hashing(source_path: Path, dest_path: Path) -> tuple[int, str]:
    digest = hashlib.md5(usedforsecurity=False)
    written = 0
    with source_path.open("rb") as source, dest_path.open("wb") as out:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    return written, digest.hexdigest()
