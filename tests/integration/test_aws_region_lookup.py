"""`AwsRegionLookup` against moto in two regions, and global-table replicas (which moto does not model) by Stubber.

moto models S3 replication (GetBucketReplication) and multi-region KMS keys (ReplicateKey, DescribeKey's
MultiRegionConfiguration), so copies of data and of key material are checked on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from hd_core.adapters.aws_regions import AwsRegionLookup
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.region_pinning import PinnedResource, RegionMismatch, RegionUnknown, ResourceKind, require_pinned

HOME, ELSEWHERE = "eu-central-1", "ap-southeast-2"


@pytest.fixture
def lookup(aws_credentials: None) -> Iterator[AwsRegionLookup]:
    with mock_aws():
        yield _lookup(HOME)


def _lookup(region: str) -> AwsRegionLookup:
    return AwsRegionLookup(s3=boto3.client("s3", region_name=region),
                           dynamodb=boto3.client("dynamodb", region_name=region),
                           kms=boto3.client("kms", region_name=region))


def test_a_bucket_reports_the_region_it_was_created_in_whichever_endpoint_asks(lookup: AwsRegionLookup) -> None:
    boto3.client("s3", region_name=ELSEWHERE).create_bucket(
        Bucket="hd-far-away", CreateBucketConfiguration={"LocationConstraint": ELSEWHERE})
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="hd-virginia")  # GetBucketLocation: null
    assert lookup.bucket_region("hd-far-away") == ELSEWHERE
    assert lookup.bucket_region("hd-virginia") == "us-east-1"


def test_a_table_reports_its_arn_region(lookup: AwsRegionLookup) -> None:
    boto3.client("dynamodb", region_name=HOME).create_table(**create_table_kwargs("hd-control"))
    assert lookup.table_regions("hd-control") == (HOME,)


def test_a_table_read_through_a_client_of_another_region_reports_that_region(aws_credentials: None) -> None:
    """The control plane's case: HD_REGION pins one region while the function's own clients talk to another."""
    with mock_aws():
        boto3.client("dynamodb", region_name=ELSEWHERE).create_table(**create_table_kwargs("hd-control"))
        with pytest.raises(RegionMismatch, match=f"control table DynamoDB table hd-control is in {ELSEWHERE}"):
            require_pinned(HOME, [PinnedResource(ResourceKind.TABLE, "hd-control", "control table")],
                           _lookup(ELSEWHERE))


def test_global_table_replicas_count_as_regions_the_table_keeps_data_in(lookup: AwsRegionLookup) -> None:
    client = boto3.client("dynamodb", region_name=HOME)
    checked = AwsRegionLookup(s3=None, dynamodb=client, kms=None)
    arn = f"arn:aws:dynamodb:{HOME}:123456789012:table/hd-control"
    with Stubber(client) as stub:
        stub.add_response("describe_table", {"Table": {"TableArn": arn, "Replicas": [
            {"RegionName": HOME}, {"RegionName": ELSEWHERE}]}}, {"TableName": "hd-control"})
        assert checked.table_regions("hd-control") == (HOME, ELSEWHERE)


def test_a_key_arn_names_its_region_and_a_bare_key_id_is_the_clients_region(lookup: AwsRegionLookup) -> None:
    far = boto3.client("kms", region_name=ELSEWHERE).create_key()["KeyMetadata"]
    assert lookup.key_region(far["Arn"]) == ELSEWHERE
    assert lookup.key_region(far["KeyId"]) == HOME  # a bare id resolves only where it is asked
    assert lookup.key_region("alias/hd-data") == HOME


def test_a_denied_lookup_is_unknown_not_assumed(lookup: AwsRegionLookup) -> None:
    client = boto3.client("s3", region_name=HOME)
    with Stubber(client) as stub, pytest.raises(RegionUnknown, match="GetBucketLocation failed: AccessDenied"):
        stub.add_client_error("get_bucket_location", service_error_code="AccessDenied")
        AwsRegionLookup(s3=client, dynamodb=None, kms=None).bucket_region("hd-data")


def _versioned_bucket(name: str, region: str) -> None:
    client = boto3.client("s3", region_name=region)
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def _replicate(source: str, destination: str, status: str = "Enabled") -> None:
    boto3.client("s3", region_name=HOME).put_bucket_replication(Bucket=source, ReplicationConfiguration={
        "Role": "arn:aws:iam::123456789012:role/hd-replication", "Rules": [{
            "ID": "copy", "Status": status, "Priority": 1, "Filter": {"Prefix": ""},
            "DeleteMarkerReplication": {"Status": "Disabled"},
            "Destination": {"Bucket": f"arn:aws:s3:::{destination}"}}]})


DATA_BUCKET = [PinnedResource(ResourceKind.BUCKET, "hd-data", "data bucket")]


def test_a_bucket_replicating_to_another_region_is_data_leaving_it(lookup: AwsRegionLookup) -> None:
    _versioned_bucket("hd-data", HOME)
    _versioned_bucket("hd-copy-far", ELSEWHERE)
    require_pinned(HOME, DATA_BUCKET, lookup)  # no replication yet
    _replicate("hd-data", "hd-copy-far")
    assert lookup.bucket_replica_regions("hd-data") == (ELSEWHERE,)
    with pytest.raises(RegionMismatch, match=f"data bucket S3 bucket hd-data replicates to {ELSEWHERE}$") as refused:
        require_pinned(HOME, DATA_BUCKET, lookup)
    assert refused.value.settled and refused.value.code == "HD_ERR_REGION_MISMATCH"


def test_replication_inside_the_region_or_disabled_keeps_the_pin(lookup: AwsRegionLookup) -> None:
    _versioned_bucket("hd-data", HOME)
    _versioned_bucket("hd-copy-near", HOME)
    _versioned_bucket("hd-copy-far", ELSEWHERE)
    _replicate("hd-data", "hd-copy-near")
    require_pinned(HOME, DATA_BUCKET, lookup)
    _replicate("hd-data", "hd-copy-far", status="Disabled")
    require_pinned(HOME, DATA_BUCKET, lookup)


def test_a_replication_destination_that_cannot_be_placed_is_not_assumed_inside(lookup: AwsRegionLookup) -> None:
    _versioned_bucket("hd-data", HOME)
    _replicate("hd-data", "someone-elses-bucket")  # GetBucketLocation: NoSuchBucket (or AccessDenied in AWS)
    with pytest.raises(RegionMismatch, match="hd-data: region cannot be confirmed") as refused:
        require_pinned(HOME, DATA_BUCKET, lookup)
    assert not refused.value.settled


def test_a_multi_region_key_with_a_replica_elsewhere_is_key_material_leaving(lookup: AwsRegionLookup) -> None:
    kms = boto3.client("kms", region_name=HOME)
    key = kms.create_key(MultiRegion=True)["KeyMetadata"]
    assert key["KeyId"].startswith("mrk-")
    pinned = [PinnedResource(ResourceKind.KEY, key["Arn"], "data key"),
              PinnedResource(ResourceKind.KEY, key["KeyId"], "token signing key")]
    require_pinned(HOME, pinned, lookup)  # a multi-region key with no replica yet stays here
    kms.replicate_key(KeyId=key["KeyId"], ReplicaRegion=ELSEWHERE)
    with pytest.raises(RegionMismatch) as refused:
        require_pinned(HOME, pinned, lookup)
    assert refused.value.differences == (f"data key KMS key {key['Arn']} has key material in {ELSEWHERE}",
                                         f"token signing key KMS key {key['KeyId']} has key material in {ELSEWHERE}")


def test_a_replica_key_here_whose_primary_is_elsewhere_is_refused(lookup: AwsRegionLookup) -> None:
    primary = boto3.client("kms", region_name=ELSEWHERE).create_key(MultiRegion=True)["KeyMetadata"]
    replica = boto3.client("kms", region_name=ELSEWHERE).replicate_key(
        KeyId=primary["KeyId"], ReplicaRegion=HOME)["ReplicaKeyMetadata"]
    with pytest.raises(RegionMismatch, match=f"has key material in {ELSEWHERE}"):
        require_pinned(HOME, [PinnedResource(ResourceKind.KEY, replica["Arn"], "data key")], lookup)


def test_a_single_region_key_arn_is_never_described(aws_credentials: None) -> None:
    client = boto3.client("kms", region_name=HOME)
    arn = f"arn:aws:kms:{HOME}:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with Stubber(client):  # any call would fail: none is stubbed
        require_pinned(HOME, [PinnedResource(ResourceKind.KEY, arn, "data key")],
                       AwsRegionLookup(s3=None, dynamodb=None, kms=client))


def test_a_multi_region_key_that_cannot_be_described_is_unconfirmed(aws_credentials: None) -> None:
    client = boto3.client("kms", region_name=HOME)
    arn = f"arn:aws:kms:{HOME}:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
    with Stubber(client) as stub, pytest.raises(RegionMismatch, match="DescribeKey failed: AccessDeniedException"):
        stub.add_client_error("describe_key", service_error_code="AccessDeniedException")
        require_pinned(HOME, [PinnedResource(ResourceKind.KEY, arn, "data key")],
                       AwsRegionLookup(s3=None, dynamodb=None, kms=client))


class _Everywhere:
    def bucket_region(self, bucket: str) -> str:
        return HOME

    def bucket_replica_regions(self, bucket: str) -> tuple[str, ...]:
        return ()

    def table_regions(self, table: str) -> tuple[str, ...]:
        return (HOME,)

    def key_region(self, key: str) -> str:
        return HOME

    def key_replica_regions(self, key: str) -> tuple[str, ...]:
        return ()


@pytest.mark.parametrize("region", ["", "EU", "eu-central"])
def test_no_usable_pinned_region_refuses_everything(region: str) -> None:
    with pytest.raises(RegionMismatch, match="no pinned region is configured"):
        require_pinned(region, [], _Everywhere())
