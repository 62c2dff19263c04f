"""`AwsRegionLookup` against moto in two regions, and global-table replicas (which moto does not model) by Stubber."""

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


class _Everywhere:
    def bucket_region(self, bucket: str) -> str:
        return HOME

    def table_regions(self, table: str) -> tuple[str, ...]:
        return (HOME,)

    def key_region(self, key: str) -> str:
        return HOME


@pytest.mark.parametrize("region", ["", "EU", "eu-central"])
def test_no_usable_pinned_region_refuses_everything(region: str) -> None:
    with pytest.raises(RegionMismatch, match="no pinned region is configured"):
        require_pinned(region, [], _Everywhere())
