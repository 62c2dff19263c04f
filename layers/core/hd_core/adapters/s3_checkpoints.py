"""`CheckpointStore` on the Object Lock audit bucket: `<prefix><chain_id>/<size:012d>-<unix_ms>.json`.

A checkpoint is put with `If-None-Match: *`, so S3 itself refuses to replace an existing object.
Retention comes from the bucket's default Object Lock rule; nothing here sets retention, so a
writer cannot shorten it. Object names sort by zero-padded size and then time, so the latest
checkpoint is the last key listed under the chain's prefix.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.errors import AuditWriteFailed, Conflict, HdError
from hd_core.iam_audit import (
    checkpoint_from_json,
    checkpoint_name_order,
    checkpoint_object_name,
    checkpoint_to_json,
    validate_chain_id,
)
from hd_core.models import ChainCheckpoint

DEFAULT_PREFIX = "audit/iam-checkpoints/"
# 412: the object exists. 409: a concurrent conditional write to the same key is in flight.
_ALREADY_WRITTEN = {"PreconditionFailed", "ConditionalRequestConflict"}


class S3CheckpointStore:
    """Signed IAM chain checkpoints as JSON objects in an S3 bucket (the Object Lock audit bucket in AWS)."""

    def __init__(self, s3_client: Any, bucket: str, prefix: str = DEFAULT_PREFIX) -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"checkpoint prefix must end with '/', got {prefix!r}")
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix

    def put_checkpoint(self, checkpoint: ChainCheckpoint) -> None:
        """Store a checkpoint; raises `Conflict` if its key exists, `AuditWriteFailed` if S3 refuses it."""
        key = self._chain_prefix(checkpoint.chain_id) + checkpoint_object_name(checkpoint)
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=checkpoint_to_json(checkpoint),
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

    def latest_checkpoint(self, chain_id: str) -> ChainCheckpoint | None:
        """The checkpoint with the largest size (then latest time) for the chain, or None."""
        chain_prefix = self._chain_prefix(chain_id)
        latest: tuple[tuple[int, int], str] | None = None
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=chain_prefix):
                for item in page.get("Contents", []):
                    order = checkpoint_name_order(item["Key"][len(chain_prefix) :])
                    if order is not None and (latest is None or order > latest[0]):
                        latest = (order, item["Key"])
            if latest is None:
                return None
            body = self._s3.get_object(Bucket=self._bucket, Key=latest[1])["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise HdError(
                f"IAM checkpoints under s3://{self._bucket}/{chain_prefix} cannot be read ({exc}): check this "
                "role's s3:ListBucket and s3:GetObject permissions"
            ) from exc
        return checkpoint_from_json(body, f"s3://{self._bucket}/{latest[1]}")

    def _chain_prefix(self, chain_id: str) -> str:
        return f"{self._prefix}{validate_chain_id(chain_id)}/"
