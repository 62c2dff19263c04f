"""`ObjectSource` over one S3 bucket and prefix (the table data bucket).

A download is a single GetObject with `If-Match`, so the bytes written are the version whose ETag
the caller saw; they are then checked against the announced size and, for single-part objects,
against the ETag (the MD5 of the content). A failed check leaves no file at `dest_path`.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.errors import InvalidRequest
from hd_core.object_source import (
    ObjectChanged,
    ObjectInfo,
    ObjectIntegrityError,
    ObjectMissing,
    ObjectSourceUnavailable,
    is_single_part_etag,
    safe_relative_path,
)

_CHUNK_BYTES = 1024 * 1024
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_CHANGED_CODES = {"412", "PreconditionFailed"}
# Bucket names as S3 allows them (3-63 of lower-case letters, digits, dots and hyphens).
_S3_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[^\x00]*))?")


class S3ObjectUnavailable(ObjectSourceUnavailable):
    """S3 refused or failed a request for reasons other than a missing or changed object."""

    code = "HD_ERR_S3_OBJECT_UNAVAILABLE"


class S3ObjectCorrupt(ObjectIntegrityError):
    """The body S3 sent does not match its Content-Length or ETag."""

    code = "HD_ERR_S3_OBJECT_CORRUPT"


class S3ObjectSource:
    """Table data objects under `s3://bucket/prefix`; keys are relative to the prefix."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str = "") -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"object prefix must end with '/', got {prefix!r}")
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under the source prefix + `prefix`, sorted by key (ListObjectsV2, all pages)."""
        found: list[ObjectInfo] = []
        try:
            paginator = self._s3.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix)
            for page in pages:
                found.extend(self._listed(item) for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise S3ObjectUnavailable(f"cannot list s3://{self._bucket}/{self._prefix}{prefix}: {exc}") from exc
        return sorted(found, key=lambda info: info.key)

    def head(self, key: str) -> ObjectInfo:
        """Current metadata of one object (HeadObject); raises `ObjectMissing`."""
        safe_relative_path(key)
        try:
            response = self._s3.head_object(Bucket=self._bucket, Key=self._prefix + key)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key) from exc
        return self._described(key, response, response["ContentLength"])

    def download(self, key: str, dest_path: Path, *, if_match: str | None = None) -> ObjectInfo:
        """Fetch one object to `dest_path` (GetObject, `If-Match` when given) and verify size and ETag."""
        safe_relative_path(key)
        request: dict[str, Any] = {"Bucket": self._bucket, "Key": self._prefix + key}
        if if_match is not None:
            request["IfMatch"] = f'"{if_match}"'
        try:
            response = self._s3.get_object(**request)
            written, md5 = _write_body(response["Body"], dest_path)
        except (ClientError, BotoCoreError) as exc:
            dest_path.unlink(missing_ok=True)
            raise self._translate(exc, key) from exc
        info = self._described(key, response, response["ContentLength"])
        try:
            _verify(info, written, md5)
        except S3ObjectCorrupt:
            dest_path.unlink(missing_ok=True)
            raise
        return info

    def _listed(self, item: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(key=item["Key"][len(self._prefix):], size=item["Size"], etag=_unquoted(item["ETag"]),
                          version_id=None, last_modified=item["LastModified"])

    @staticmethod
    def _described(key: str, response: dict[str, Any], size: int) -> ObjectInfo:
        last_modified: datetime = response["LastModified"]
        version = response.get("VersionId")
        # An unversioned bucket reports the literal version "null": that is no version at all.
        return ObjectInfo(key=key, size=size, etag=_unquoted(response["ETag"]),
                          version_id=None if version in (None, "null") else version, last_modified=last_modified)

    def _translate(self, exc: Exception, key: str) -> Exception:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
        where = f"s3://{self._bucket}/{self._prefix}{key}"
        if code in _MISSING_CODES:
            return ObjectMissing(f"{where} does not exist")
        if code in _CHANGED_CODES:
            return ObjectChanged(f"{where} changed since its ETag was read")
        return S3ObjectUnavailable(f"cannot read {where}: {exc}")


def _write_body(body: Any, dest_path: Path) -> tuple[int, str]:
    """Stream a response body to a file; returns (bytes written, MD5 hex of them)."""
    digest = hashlib.md5(usedforsecurity=False)
    written = 0
    with dest_path.open("wb") as out:
        for chunk in body.iter_chunks(_CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            written += len(chunk)
    return written, digest.hexdigest()


def _verify(info: ObjectInfo, written: int, md5: str) -> None:
    if written != info.size:
        raise S3ObjectCorrupt(f"{info.key}: received {written} bytes, S3 announced {info.size}")
    # Multipart ETags are not a content hash; If-Match and the size are what we can check then.
    if is_single_part_etag(info.etag) and md5 != info.etag:
        raise S3ObjectCorrupt(f"{info.key}: content MD5 {md5} does not match ETag {info.etag}")


def _unquoted(etag: str) -> str:
    return etag.strip('"')


def s3_source_from_url(url: str, s3_client: Any = None) -> S3ObjectSource:
    """The source for `s3://bucket/prefix/` (prefix optional); raises `InvalidRequest` for anything else."""
    match = _S3_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(f"expected s3://<bucket>/<prefix>/ as the table data source, got {url!r}")
    prefix = match.group("prefix") or ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if s3_client is None:
        import boto3  # only here: Lambdas that never read table data skip its import

        s3_client = boto3.client("s3")
    return S3ObjectSource(s3_client, match.group("bucket"), prefix)
