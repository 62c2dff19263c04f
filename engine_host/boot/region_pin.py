"""The engine host's region pin: its buckets, control table and keys all in the provisioned region.

The environment binding (binding.py) pins the instance and the cache key; this pins everything else
the host reads, writes or decrypts with, before the cache is opened (boot) and before serving (serve).

`hd dev --data-source s3://...` pins its bucket to the region configured for the run (`HD_REGION`,
else the AWS SDK's: AWS_REGION, AWS_DEFAULT_REGION or the profile's), with the same refusal. With no
region configured there is nothing to pin to: a laptop belongs to no deployment, so the bucket is
served wherever it is (logged), as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from engine_host.boot.config import EngineConfig
from hd_core.adapters.aws_regions import AwsRegionLookup
from hd_core.region_pinning import PinnedResource, RegionLookup, ResourceKind, require_pinned

log = logging.getLogger(__name__)


def pinned_resources(config: EngineConfig) -> list[PinnedResource]:
    """Every resource of `config` that holds or protects data, with what it is for."""
    return [
        PinnedResource(ResourceKind.BUCKET, config.data_bucket, "data bucket"),
        PinnedResource(ResourceKind.BUCKET, config.audit_bucket, "audit bucket"),
        PinnedResource(ResourceKind.TABLE, config.control_table, "control table"),
        PinnedResource(ResourceKind.KEY, config.kms_key_arn, "cache and data key"),
        PinnedResource(ResourceKind.KEY, config.signing_key_arn, "token signing key"),
        PinnedResource(ResourceKind.KEY, config.checkpoint_key_arn, "checkpoint signing key"),
    ]


def aws_region_lookup(region: str, *, s3: Any = None, dynamodb: Any = None, kms: Any = None) -> AwsRegionLookup:
    """The lookup through the given clients, or new ones of `region` for those not given."""
    import boto3

    session = boto3.session.Session(region_name=region)
    return AwsRegionLookup(s3=s3 or session.client("s3"), dynamodb=dynamodb or session.client("dynamodb"),
                           kms=kms or session.client("kms"))


def check_region_pin(config: EngineConfig, lookup: RegionLookup) -> None:
    """Raise `RegionMismatch` naming every resource of `config` outside `config.region`."""
    require_pinned(config.region, pinned_resources(config), lookup)


def check_data_source_region(url: str, s3: Any = None, environ: Mapping[str, str] | None = None) -> None:
    """`hd dev`'s pin: raise `RegionMismatch` when the bucket of `url` (s3://bucket/prefix/, already checked)
    is, or replicates, outside the configured region."""
    import boto3

    environ = os.environ if environ is None else environ
    bucket = urlsplit(url).netloc
    region = environ.get("HD_REGION", "").strip() or boto3.session.Session().region_name
    if not region:
        log.info("no region configured (HD_REGION, AWS_REGION, AWS_DEFAULT_REGION): the data source bucket %s "
                 "is served wherever it is", bucket)
        return
    require_pinned(region, [PinnedResource(ResourceKind.BUCKET, bucket, "data source")],
                   AwsRegionLookup(s3=s3 or boto3.client("s3"), dynamodb=None, kms=None))
