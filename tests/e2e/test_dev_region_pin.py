"""`hd dev --data-source s3://...` pins its bucket to the configured region: a bucket elsewhere (or replicating
elsewhere) stops the start with the engine's HD_ERR_REGION_MISMATCH line and exit 2, before anything is cached.
The real CLI runs against moto's server with buckets in two regions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

HOME, ELSEWHERE = "eu-central-1", "ap-southeast-2"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    for bucket, region in (("hd-dev-home", HOME), ("hd-dev-far", ELSEWHERE), ("hd-dev-copied", HOME)):
        client = _s3(url, region)
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    _s3(url, HOME).put_bucket_replication(Bucket="hd-dev-copied", ReplicationConfiguration={
        "Role": "arn:aws:iam::123456789012:role/replication", "Rules": [{
            "ID": "copy", "Status": "Enabled", "Priority": 1, "Filter": {"Prefix": ""},
            "DeleteMarkerReplication": {"Status": "Disabled"}, "Destination": {"Bucket": "arn:aws:s3:::hd-dev-far"}}]})
    try:
        yield url
    finally:
        server.stop()


def _s3(url: str, region: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def _hd_dev(tmp_path: Path, endpoint: str, bucket: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`hd dev` until it refuses (or, started, until the timeout: the caller asserts it refused)."""
    clean = {name: value for name, value in os.environ.items()
             if name not in ("AWS_REGION", "AWS_DEFAULT_REGION", "HD_REGION", "AWS_PROFILE")}
    return subprocess.run(
        [sys.executable, "-m", "engine_host.cli", "dev", "--state-dir", str(tmp_path / "hd"), "--port", "0",
         "--no-api", "--insecure-plaintext", "--data-source", f"s3://{bucket}/tables/"],
        capture_output=True, text=True, timeout=60,
        env={**clean, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "AWS_CONFIG_FILE": str(tmp_path / "none"),
             **env})


def test_a_bucket_in_another_region_than_configured_stops_hd_dev(tmp_path: Path, endpoint: str) -> None:
    result = _hd_dev(tmp_path, endpoint, "hd-dev-far", AWS_DEFAULT_REGION=HOME)
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "HD_ERR_REGION_MISMATCH" in line]
    assert line == (f"hd dev: cannot start: resources outside the pinned region {HOME}, refusing to serve: "
                    f"data source S3 bucket hd-dev-far is in {ELSEWHERE} (HD_ERR_REGION_MISMATCH)")
    assert not list((tmp_path / "hd" / "cache").rglob("*.parquet"))


def test_hd_region_pins_over_the_sdk_region_and_replication_counts(tmp_path: Path, endpoint: str) -> None:
    result = _hd_dev(tmp_path, endpoint, "hd-dev-copied", AWS_DEFAULT_REGION=HOME, HD_REGION=HOME)
    assert result.returncode == 2, result.stderr
    assert f"data source S3 bucket hd-dev-copied replicates to {ELSEWHERE} (HD_ERR_REGION_MISMATCH)" in result.stderr
    result = _hd_dev(tmp_path / "again", endpoint, "hd-dev-home", AWS_DEFAULT_REGION=ELSEWHERE, HD_REGION=ELSEWHERE)
    assert result.returncode == 2 and f"hd-dev-home is in {HOME}" in result.stderr
