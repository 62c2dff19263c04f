"""`RegionLookup` over AWS: S3 GetBucketLocation and GetBucketReplication, DynamoDB DescribeTable, KMS key ARNs.

IAM: `s3:GetBucketLocation` and `s3:GetReplicationConfiguration` on each bucket (and GetBucketLocation
on a replication rule's destination bucket: a destination whose region cannot be learnt counts as
elsewhere), `dynamodb:DescribeTable` on the table. A bare KMS key id resolves only in the region of
the endpoint asked, so its region is the KMS client's own; a key ARN names its region. Only a
multi-region key (id `mrk-...`) or an alias (which may name one) is described (`kms:DescribeKey`),
for the regions of its primary and replicas.
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

    def bucket_replica_regions(self, bucket: str) -> tuple[str, ...]:
        try:
            configuration = self._s3.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ReplicationConfigurationNotFoundError":
                return ()  # no replication: the objects stay in the bucket's own region
            raise RegionUnknown(f"GetBucketReplication failed: {exc.response.get('Error', {}).get('Code')}") from None
        except BotoCoreError as exc:
            raise RegionUnknown(f"GetBucketReplication failed: {type(exc).__name__}") from None
        destinations = [str(rule.get("Destination", {}).get("Bucket", "")) for rule in configuration.get("Rules", [])
                        if rule.get("Status") == "Enabled"]
        # arn:aws:s3:::<bucket>: a bucket ARN names no region, so the destination is asked where it is.
        return tuple(dict.fromkeys(self.bucket_region(arn.rsplit(":", 1)[-1]) for arn in destinations))

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


    def key_replica_regions(self, key: str) -> tuple[str, ...]:
        name = key.rsplit(":", 1)[-1]  # key/<id>, alias/<name> or a bare id
        if not (name.startswith("alias/") or name.removeprefix("key/").startswith("mrk-")):
            return ()  # a single-region key's material never leaves its region
        metadata = _call("DescribeKey", lambda: self._kms.describe_key(KeyId=key))["KeyMetadata"]
        if not metadata.get("MultiRegion"):
            return ()
        configuration = metadata.get("MultiRegionConfiguration", {})
        keys = [configuration.get("PrimaryKey", {}), *configuration.get("ReplicaKeys", [])]
        return tuple(dict.fromkeys(str(entry.get("Region", "")) for entry in keys if entry))


def _call(operation: str, call: Any) -> Any:
    try:
        return call()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "Unknown")
        raise RegionUnknown(f"{operation} failed: {code}") from None
    except BotoCoreError as exc:
        raise RegionUnknown(f"{operation} failed: {type(exc).__name__}") from None
