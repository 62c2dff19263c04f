"""`TableObjects` (hd_core/erasure_models.py) over a local folder and over S3: what a forget request rewrites.

Both replace an object under its own key in one atomic step, so an engine host's listing of a table
never changes during an erasure and every object it reads is either the old or the new one whole:
- locally, the new bytes go to a hidden temporary file in the same folder (the engine skips names
  that start with a dot) and `os.replace` swaps it in;
- in S3, one PutObject with `If-Match` on the ETag read, so a concurrent writer makes the erasure
  fail instead of being overwritten. In a versioned bucket the replaced version stays as a noncurrent
  version until `delete_versions` removes it (the erasure's retention).

A table of several objects is swapped for readers all at once through a manifest (hd_core/table_swaps.py):
`put_new` creates the stand-ins and the manifest only where nothing is (a hard link locally, PutObject with
If-None-Match in S3), so two swaps of one table cannot overlap, and `delete` removes them again, every
version included. Locally `replacing` locks the table's folder while its files are replaced, because the
engine reads them in place.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.adapters.local_objects import LocalFolderObjectSource
from hd_core.adapters.s3_objects import S3ObjectSource, S3ObjectUnavailable
from hd_core.errors import InvalidRequest
from hd_core.object_source import ObjectChanged, ObjectInfo, ObjectMissing, safe_relative_path
from hd_core.table_swaps import TableFolderLock

_CHANGED_CODES = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


class LocalFolderTableObjects:
    """The data folder of `hd dev` (`<state>/data/<schema>/<table>/*.parquet`) as rewritable objects."""

    def __init__(self, root: Path, *, lock_timeout_seconds: float = 30.0) -> None:
        self._root = Path(root)
        self._source = LocalFolderObjectSource(self._root)
        self.lock_timeout_seconds = lock_timeout_seconds

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self._root.is_dir():
            return []
        return self._source.list(prefix)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        path = self._root / safe_relative_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ObjectMissing(f"object {key!r} does not exist") from exc
        info = self._source.head(key)
        if info.etag != hashlib.md5(data, usedforsecurity=False).hexdigest():
            raise ObjectChanged(f"object {key!r} changed while being read")
        return data, info

    def replace(self, key: str, data: bytes, *, if_match: str) -> ObjectInfo:
        path = self._root / safe_relative_path(key)
        if self._source.head(key).etag != if_match:
            raise ObjectChanged(f"object {key!r} changed since it was read")
        temp = _durable_temp_file(path.parent, data)
        try:
            os.chmod(temp, path.stat().st_mode & 0o777)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self._source.head(key)

    def put_new(self, key: str, data: bytes) -> ObjectInfo:
        path = self._root / safe_relative_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _durable_temp_file(path.parent, data)
        try:
            os.link(temp, path)  # atomic, and fails where a file already is (os.replace would overwrite it)
        except FileExistsError as exc:
            raise ObjectChanged(f"object {key!r} already exists (another erasure is swapping this table)") from exc
        finally:
            temp.unlink(missing_ok=True)
        return self._source.head(key)

    def delete(self, key: str) -> None:
        path = self._root / safe_relative_path(key)
        path.unlink(missing_ok=True)
        for folder in path.parents:  # the swap's hidden staging folders, once empty; never the table's own folder
            if folder == self._root or not any(part.startswith(".") for part in folder.relative_to(self._root).parts):
                break
            try:
                folder.rmdir()
            except OSError:
                break

    def replacing(self, prefix: str) -> AbstractContextManager[object]:
        """The table folder's lock, exclusive: the engine's statements read these files in place (no If-Match)."""
        return TableFolderLock(self._root / safe_relative_path(prefix.rstrip("/")), exclusive=True,
                               timeout_seconds=self.lock_timeout_seconds)

    def versions(self, key: str) -> tuple[str, ...]:
        return ()  # a replaced file is gone: a folder keeps no versions

    def delete_versions(self, key: str, version_ids: Sequence[str]) -> int:
        return 0


class S3TableObjects:
    """The table data bucket (`s3://bucket/prefix/`) as rewritable objects, versions included."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str = "") -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix
        self._source = S3ObjectSource(s3_client, bucket, prefix)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return self._source.list(prefix)

    def read(self, key: str) -> tuple[bytes, ObjectInfo]:
        safe_relative_path(key)
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=self._prefix + key)
            data = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from exc
        version = response.get("VersionId")
        return data, ObjectInfo(key=key, size=len(data), etag=response["ETag"].strip('"'),
                                version_id=None if version in (None, "null") else version,
                                last_modified=response["LastModified"])

    def replace(self, key: str, data: bytes, *, if_match: str) -> ObjectInfo:
        safe_relative_path(key)
        try:
            self._s3.put_object(Bucket=self._bucket, Key=self._prefix + key, Body=data, IfMatch=f'"{if_match}"')
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from exc
        return self._source.head(key)

    def put_new(self, key: str, data: bytes) -> ObjectInfo:
        safe_relative_path(key)
        try:
            self._s3.put_object(Bucket=self._bucket, Key=self._prefix + key, Body=data, IfNoneMatch="*")
        except (ClientError, BotoCoreError) as exc:
            error = self._translate(exc, key)
            if isinstance(error, ObjectChanged):
                error = ObjectChanged(f"s3://{self._bucket}/{self._prefix}{key} already exists (another erasure "
                                      "is swapping this table)")
            raise error from exc
        return self._source.head(key)

    def delete(self, key: str) -> None:
        """Remove the object and every version of it (a stand-in or manifest leaves nothing behind)."""
        full = self._prefix + key
        safe_relative_path(key)
        try:
            found = self.versions(key)
            self._s3.delete_object(Bucket=self._bucket, Key=full)
            found = tuple(dict.fromkeys((*found, *self.versions(key), *self._latest_version(full))))
        except (ClientError, BotoCoreError) as exc:
            raise S3ObjectUnavailable(f"cannot delete s3://{self._bucket}/{full}: {exc}") from exc
        if found:
            self.delete_versions(key, found)

    def _latest_version(self, full: str) -> builtins.list[str]:
        """The current version id of `full` (a delete marker after `delete_object` in a versioned bucket)."""
        page = self._s3.list_object_versions(Bucket=self._bucket, Prefix=full)
        return [entry["VersionId"] for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
                if entry["Key"] == full and entry.get("IsLatest") and entry.get("VersionId") not in (None, "null")]

    def replacing(self, prefix: str) -> AbstractContextManager[object]:
        return nullcontext()  # readers fetch with If-Match: a replaced object fails theirs, nothing to hold

    def versions(self, key: str) -> tuple[str, ...]:
        """Noncurrent versions of exactly this key (and its delete markers), oldest last."""
        full = self._prefix + key
        found: builtins.list[str] = []
        try:
            pages = self._s3.get_paginator("list_object_versions").paginate(Bucket=self._bucket, Prefix=full)
            for page in pages:
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if entry["Key"] == full and not entry.get("IsLatest") and entry.get("VersionId") not in (None,
                                                                                                             "null"):
                        found.append(entry["VersionId"])
        except (ClientError, BotoCoreError) as exc:
            raise S3ObjectUnavailable(f"cannot list the versions of s3://{self._bucket}/{full}: {exc}") from exc
        return tuple(found)

    def delete_versions(self, key: str, version_ids: Sequence[str]) -> int:
        full = self._prefix + key
        deleted = 0
        for start in range(0, len(version_ids), _DELETE_BATCH):
            batch = version_ids[start:start + _DELETE_BATCH]
            try:
                response = self._s3.delete_objects(Bucket=self._bucket, Delete={
                    "Objects": [{"Key": full, "VersionId": version} for version in batch], "Quiet": False})
            except (ClientError, BotoCoreError) as exc:
                raise S3ObjectUnavailable(f"cannot delete old versions of s3://{self._bucket}/{full}: {exc}") from exc
            if response.get("Errors"):
                first = response["Errors"][0]
                raise S3ObjectUnavailable(f"cannot delete version {first.get('VersionId')} of s3://{self._bucket}/"
                                          f"{full}: {first.get('Code')} {first.get('Message')}")
            deleted += len(response.get("Deleted", []))
        return deleted

    def _translate(self, exc: Exception, key: str) -> Exception:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
        where = f"s3://{self._bucket}/{self._prefix}{key}"
        if code in _CHANGED_CODES:
            return ObjectChanged(f"{where} changed since it was read")
        if code in _MISSING_CODES:
            return ObjectMissing(f"{where} does not exist")
        return S3ObjectUnavailable(f"cannot read or write {where}: {exc}")


def s3_table_objects_from_url(url: str, s3_client: Any = None) -> S3TableObjects:
    """The rewritable objects of `s3://bucket/prefix/` (the URL form of the engine's table source)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise InvalidRequest(f"expected s3://<bucket>/<prefix>/ as the table data location, got {url!r}")
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if s3_client is None:
        import boto3  # only here: the local folder adapter never needs it

        s3_client = boto3.client("s3")
    return S3TableObjects(s3_client, parts.netloc, prefix)


def _durable_temp_file(folder: Path, data: bytes) -> Path:
    """`data` in a new hidden file in `folder`, flushed to disk: what a swap then renames or links into place."""
    fd, name = tempfile.mkstemp(prefix=".hd-erasure-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
