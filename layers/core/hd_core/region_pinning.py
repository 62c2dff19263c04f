"""Region pinning: everything that holds or protects customer data sits in the one configured region.

A deployment names a region; the data bucket, the audit bucket, the control table (and every replica
of it) and every KMS key must be in it. One resource elsewhere (a bucket created in the wrong region,
a global-table replica added later, a key ARN copied from another deployment) would move data, audit
records or key use out of the region a customer was promised (GDPR data residency). So would a copy:
a bucket's replication rule whose destination bucket is elsewhere (every object written is copied
there), or a multi-region KMS key (`mrk-...`) with its primary or a replica elsewhere (what it
encrypts can be decrypted there). The engine host refuses to start and the control plane refuses
every request while that is so (`RegionMismatch`).

How each region is learnt is a port (`RegionLookup`; `hd_core/adapters/aws_regions.py` asks AWS).
A region that cannot be learnt counts as a mismatch: pinning fails closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from hd_core.errors import HdError

# arn:<partition>:kms:<region>:<account>:key/<id>: a key ARN names the only region its key material is used in.
_KMS_ARN = re.compile(r"^arn:aws[-a-z]*:kms:(?P<region>[a-z]{2}(-[a-z]+)+-\d{1,2}):\d{12}:(key|alias)/.+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
# An SQS queue URL names its region in the host: https://sqs.<region>.amazonaws.com[.cn]/<account>/<name>
# (or the legacy https://<region>.queue.amazonaws.com/...).
_SQS_URL = re.compile(r"^https://(?:sqs\.(?P<region>[a-z]{2}(-[a-z]+)+-\d{1,2})|(?P<legacy>[a-z]{2}(-[a-z]+)+-\d{1,2})"
                      r"\.queue)\.amazonaws\.com(\.cn)?/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$")


class ResourceKind(StrEnum):
    """The kinds of resource a deployment pins, each with its own way of telling its region."""

    BUCKET = "S3 bucket"
    TABLE = "DynamoDB table"
    KEY = "KMS key"
    QUEUE = "SQS queue"


@dataclass(frozen=True)
class PinnedResource:
    """One resource that must be in the pinned region; `role` says what it is for ("audit bucket")."""

    kind: ResourceKind
    name: str
    role: str


class RegionMismatch(HdError):
    """A pinned resource is outside the configured region, or its region could not be confirmed.

    `settled` is False when a region could not be learnt (a denial, a throttle, a network failure):
    asking again later may succeed, whereas a resource seen elsewhere stays there until redeployed.
    """

    code = "HD_ERR_REGION_MISMATCH"
    exit_code = 2  # as `hd engine boot` / `serve` exit when refused; `hd dev` exits with it too

    def __init__(self, region: str, differences: Iterable[str], *, settled: bool = True) -> None:
        self.region = region
        self.differences = tuple(differences)
        self.settled = settled
        super().__init__(f"resources outside the pinned region {region}, refusing to serve: "
                         + "; ".join(self.differences))


class RegionUnknown(Exception):
    """A lookup could not learn a resource's region (denied, missing, unreachable); the message says why."""


class RegionLookup(Protocol):
    """Port: where a resource of each kind is."""

    def bucket_region(self, bucket: str) -> str:
        """The region of S3 bucket `bucket`; raises `RegionUnknown`."""
        ...

    def bucket_replica_regions(self, bucket: str) -> tuple[str, ...]:
        """The regions `bucket`'s enabled replication rules copy objects to (none without replication)."""
        ...

    def table_regions(self, table: str) -> tuple[str, ...]:
        """The regions DynamoDB table `table` keeps data in: its own first, then any global-table replicas."""
        ...

    def key_region(self, key: str) -> str:
        """The region of KMS key `key` (an ARN, a key id or an alias); raises `RegionUnknown`."""
        ...

    def key_replica_regions(self, key: str) -> tuple[str, ...]:
        """The regions of a multi-region key's primary and replicas (none for a single-region key)."""
        ...


def kms_arn_region(key: str) -> str | None:
    """The region a KMS key or alias ARN names, or None when `key` is a bare key id or alias name."""
    match = _KMS_ARN.fullmatch(key)
    return match.group("region") if match else None


def sqs_url_region(queue_url: str) -> str:
    """The region an SQS queue URL names; raises `RegionUnknown` for anything that is not a queue URL."""
    match = _SQS_URL.fullmatch(queue_url)
    if match is None:
        raise RegionUnknown("not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)")
    return match.group("region") or match.group("legacy")


def require_pinned(region: str, resources: Iterable[PinnedResource], lookup: RegionLookup) -> None:
    """Raise `RegionMismatch` naming every resource not (or not provably) in `region`, or a malformed `region`."""
    if not _REGION.fullmatch(region or ""):
        raise RegionMismatch(region or "(none)", ["no pinned region is configured (HD_REGION or AWS_REGION)"])
    differences: list[str] = []
    settled = True
    for resource in resources:
        label = f"{resource.role} {resource.kind.value} {resource.name}"
        try:
            placements = _placements(resource, lookup)
        except RegionUnknown as unknown:
            differences.append(f"{label}: region cannot be confirmed ({unknown})")
            settled = False
            continue
        outside: dict[str, list[str]] = {}
        for how, found in placements:
            if found != region:
                outside.setdefault(how, []).append(found)
        differences.extend(f"{label} {how} {', '.join(dict.fromkeys(found))}" for how, found in outside.items())
    if differences:
        raise RegionMismatch(region, differences, settled=settled)


def _placements(resource: PinnedResource, lookup: RegionLookup) -> list[tuple[str, str]]:
    """Where `resource` keeps data or key material: ("is in" | a copy's verb, region) pairs."""
    if resource.kind is ResourceKind.BUCKET:
        return [("is in", lookup.bucket_region(resource.name)),
                *(("replicates to", found) for found in lookup.bucket_replica_regions(resource.name))]
    if resource.kind is ResourceKind.TABLE:
        return [("is in", found) for found in lookup.table_regions(resource.name)]
    if resource.kind is ResourceKind.QUEUE:  # the URL is authoritative: a queue lives where its endpoint is
        return [("is in", sqs_url_region(resource.name))]
    # A key ARN is authoritative on its own (no call, no kms:DescribeKey grant needed) unless the key is
    # multi-region: then its primary and replicas are asked for (DescribeKey).
    home = kms_arn_region(resource.name) or lookup.key_region(resource.name)
    return [("is in", home), *(("has key material in", found) for found in lookup.key_replica_regions(resource.name))]

