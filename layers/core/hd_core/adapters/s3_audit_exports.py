"""`AuditExportStore` on the audit bucket: `audit/exports/<org>/<export id>.<format>`, fetched by presigned URL.

The export is uploaded with the SDK's managed transfer (multipart above its threshold), so a
large file never sits in memory; the URL is a SigV4 presigned GetObject that expires after
`EXPORT_URL_TTL`. The bucket's Object Lock retention applies to exports as to every audit object:
what was handed to an auditor stays on record. `discard` (the export's IAM event could not be
stored, so its URL is never answered) tries to hide the object behind a delete marker; the CDK app
grants the audit function no delete, so in AWS the object just stays, unreferenced and locked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from hd_core.audit_export import EXPORT_URL_TTL, ExportLocation
from hd_core.errors import AuditWriteFailed

EXPORTS_PREFIX = "audit/exports/"


class S3AuditExports:
    """Uploads exports under `audit/exports/` and presigns a GET for each."""

    def __init__(self, s3_client: Any, bucket: str, *, prefix: str = EXPORTS_PREFIX) -> None:
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise ValueError(f"prefix must be a relative folder ending in '/', got {prefix!r}")
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix
        # The audit bucket encrypts with SSE-KMS, which S3 serves only to SigV4 requests; a client left to
        # its defaults may presign with SigV2, so presigning has its own client, pinned to SigV4.
        self._presigner = boto3.client(
            "s3", region_name=s3_client.meta.region_name, endpoint_url=s3_client.meta.endpoint_url,
            config=s3_client.meta.config.merge(Config(signature_version="s3v4")),
        )

    def put(self, name: str, body: IO[bytes], *, content_type: str) -> ExportLocation:
        """Upload `body` as `<prefix><name>`; returns a presigned URL valid for `EXPORT_URL_TTL`."""
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"an export name is relative and plain, got {name!r}")
        key = self._prefix + name
        # Object Lock buckets refuse uploads without a checksum, multipart parts included.
        extra = {"ContentType": content_type, "ChecksumAlgorithm": "CRC32"}
        try:
            self._s3.upload_fileobj(body, self._bucket, key, ExtraArgs=extra)
            url: str = self._presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": key},
                ExpiresIn=int(EXPORT_URL_TTL.total_seconds()),
            )
        except (BotoCoreError, ClientError) as exc:
            raise AuditWriteFailed(f"the audit export could not be stored: {exc}") from exc
        return ExportLocation(url=url, key=key, expires_at=datetime.now(UTC) + EXPORT_URL_TTL)

    def discard(self, location: ExportLocation) -> None:
        """Try to put a delete marker on the export (Object Lock keeps the version itself); best effort."""
        try:
            self._s3.delete_object(Bucket=self._bucket, Key=location.key)
        except (BotoCoreError, ClientError):
            pass  # best effort: the URL was never handed out
