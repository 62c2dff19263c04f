"""`RegionLookup` over AWS: S3 GetBucketLocation, DynamoDB DescribeTable, and KMS key ARNs.

IAM: `s3:GetBucketLocation` on each bucket and `dynamodb:DescribeTable` on the table. A bare KMS
key id or alias resolves only in the region of the endpoint asked, so its region is the KMS
client's own; a key ARN names its region. Neither needs `kms:DescribeKey`.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.region_pinning import RegionUnknown, kms_arn_region

# GetBucketLocation answers null for us-east-1 and the legacy "EU" for buckets made long ago in eu-west-1.
_LEGACY_LOCATIONS = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}


class AwsRegionLookup:
    """Asks AWS where each resource is, through the clients the process already uses."""

    def __init__(self, *, s3: Any, dynamodb: Any, kms: Any) -> None:
        self._s3 = s3
        self._dynamodb = dynamodb
        self._kms = kms

    def bucket_region(self, bucket: str) -> str:
        response = _call("GetBucketLocation", lambda: self._s3.get_bucket_location(Bucket=bucket))
        location = response.get("LocationConstraint")
        return _LEGACY_LOCATIONS.get(location, location)

    def table_regions(self, table: str) -> tuple[str, ...]:
        description = _call("DescribeTable", lambda: self._dynamodb.describe_table(TableName=table))["Table"]
        arn = str(description.get("TableArn", ""))
        parts = arn.split(":")
        if len(parts) < 6 or not parts[3]:
            raise RegionUnknown(f"DescribeTable returned no table ARN ({arn or 'none'})")
        replicas = [str(replica.get("RegionName", "")) for replica in description.get("Replicas", [])]
        return (parts[3], *(region for region in replicas if region != parts[3]))

    def key_region(self, key: str) -> str:
        region = kms_arn_region(key) or self._kms.meta.region_name
        if not region:
            raise RegionUnknown("the KMS client has no region")
        return str(region)


def _call(operation: str, call: Any) -> Any:
    try:
        return call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise RegionUnknown(f"{operation} failed: {code}") from None
    except BotoCoreError as exc:
        raise RegionUnknown(f"{operation} failed: {type(exc).__name__}") from None
