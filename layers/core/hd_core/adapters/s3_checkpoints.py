"""`CheckpointStore` on the Object Lock audit bucket: `<prefix><chain_id>/<size:012d>-<unix_ms>.json`.

A checkpoint is put with `If-None-Match: *`, so S3 itself refuses to replace an existing object.
Retention comes from the bucket's default Object Lock rule; nothing here sets retention, so a
writer cannot shorten it.

Reading lists every object *version* under the chain's prefix, not just the current objects:
Object Lock keeps versions, but a plain DELETE still hides an object behind a delete marker and
a PUT without the condition hides it behind a newer version. Reading versions means nothing
once written can be made to disappear from verification. Names are only used to narrow a
listing to one size; what a checkpoint says is judged from its signed content by the caller.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.errors import AuditWriteFailed, Conflict, HdError
from hd_core.iam_audit import (
    CHECKPOINT_MESSAGE_TYPE,
    checkpoint_from_json,
    checkpoint_name_prefix,
    checkpoint_name_time,
    checkpoint_object_name,
    checkpoint_to_json,
    validate_chain_id,
)
from hd_core.models import ChainCheckpoint

DEFAULT_PREFIX = "audit/iam-checkpoints/"
# 412: the object exists. 409: a concurrent conditional write to the same key is in flight.
_ALREADY_WRITTEN = {"PreconditionFailed", "ConditionalRequestConflict"}
# Verification reads one object per IAM event; a few concurrent GETs keep a long chain within the Lambda timeout.
_READ_CONCURRENCY = 16


class S3CheckpointStore:
    """Signed IAM chain checkpoints as JSON objects in an S3 bucket (the Object Lock audit bucket in AWS)."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str = DEFAULT_PREFIX, *,
                 message_type: str = CHECKPOINT_MESSAGE_TYPE) -> None:
        """`message_type`: what the stored documents say their signatures cover (the IAM chain's unless told)."""
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"checkpoint prefix must end with '/', got {prefix!r}")
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix
        self._message_type = message_type

    def put_checkpoint(self, checkpoint: ChainCheckpoint) -> None:
        """Store a checkpoint; raises `Conflict` if its key exists, `AuditWriteFailed` if S3 refuses it."""
        key = self._chain_prefix(checkpoint.chain_id) + checkpoint_object_name(checkpoint)
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=checkpoint_to_json(checkpoint, self._message_type),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            if code in _ALREADY_WRITTEN:
                raise Conflict(f"IAM checkpoint s3://{self._bucket}/{key} already exists") from None
            raise AuditWriteFailed(
                f"IAM checkpoint s3://{self._bucket}/{key} could not be stored ({code}): check the bucket policy "
                "and this role's s3:PutObject permission"
            ) from exc
        except BotoCoreError as exc:
            raise AuditWriteFailed(f"IAM checkpoint s3://{self._bucket}/{key} could not be sent: {exc}") from exc

    def list_checkpoints(self, chain_id: str, *, size: int | None = None) -> list[ChainCheckpoint]:
        """Every stored version of every checkpoint object of the chain (with `size`, those named for it)."""
        prefix = self._chain_prefix(chain_id) + ("" if size is None else checkpoint_name_prefix(size))
        try:
            versions = self._versions_under(prefix)
            if len(versions) <= 1:
                return [self._read(*version) for version in versions]
            with ThreadPoolExecutor(max_workers=min(_READ_CONCURRENCY, len(versions))) as pool:
                return list(pool.map(lambda version: self._read(*version), versions))
        except (ClientError, BotoCoreError) as exc:
            raise HdError(
                f"IAM checkpoints under s3://{self._bucket}/{prefix} cannot be read ({exc}): check this role's "
                "s3:ListBucketVersions and s3:GetObjectVersion permissions"
            ) from exc

    def latest_filed(self, chain_id: str) -> datetime | None:
        """The latest signing time the chain's checkpoint objects (every version) are named with: an index for
        narrowing a listing, not evidence. One listing, no object read."""
        try:
            versions = self._versions_under(self._chain_prefix(chain_id))
        except (ClientError, BotoCoreError) as exc:
            raise HdError(f"checkpoints of {chain_id} cannot be listed ({exc}): check this role's "
                          "s3:ListBucketVersions permission") from exc
        return max(filter(None, (checkpoint_name_time(key.rsplit("/", 1)[-1]) for key, _ in versions)), default=None)

    def chain_ids(self, prefix: str) -> list[str]:
        """The ids of every chain with a stored checkpoint version whose id starts with `prefix`, sorted.

        Versions, like `list_checkpoints`: a delete marker must not hide that a chain had checkpoints.
        """
        paginator = self._s3.get_paginator("list_object_versions")
        found: set[str] = set()
        try:
            for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix, Delimiter="/"):
                found.update(entry["Prefix"][len(self._prefix):].rstrip("/")
                             for entry in page.get("CommonPrefixes", []))
        except (ClientError, BotoCoreError) as exc:
            raise HdError(
                f"checkpoints under s3://{self._bucket}/{self._prefix}{prefix} cannot be listed ({exc}): check this "
                "role's s3:ListBucketVersions permission"
            ) from exc
        return sorted(found)

    def _versions_under(self, prefix: str) -> list[tuple[str, str]]:
        """(key, version id) of every object version under `prefix`; delete markers hide nothing."""
        paginator = self._s3.get_paginator("list_object_versions")
        return [
            (version["Key"], version["VersionId"])
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix)
            for version in page.get("Versions", [])
        ]

    def _read(self, key: str, version_id: str) -> ChainCheckpoint:
        body = self._s3.get_object(Bucket=self._bucket, Key=key, VersionId=version_id)["Body"].read()
        return checkpoint_from_json(body, f"s3://{self._bucket}/{key}?versionId={version_id}")

    def _chain_prefix(self, chain_id: str) -> str:
        return f"{self._prefix}{validate_chain_id(chain_id)}/"
