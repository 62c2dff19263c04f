"""ObjectSource contract, run against a local folder and against an S3 bucket and prefix (moto)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from moto import mock_aws

from hd_core.adapters.local_objects import LocalFolderObjectSource
from hd_core.adapters.s3_objects import S3ObjectCorrupt, S3ObjectSource, S3ObjectUnavailable
from hd_core.errors import HdError
from hd_core.object_source import ObjectChanged, ObjectMissing, ObjectSource, UnsafeObjectKey

BUCKET = "hd-tables-123456789012"
PREFIX = "org_acme/"

Writer = Callable[[str, bytes], None]



@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture(params=["local_folder", "s3"])
def source_and_writer(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ObjectSource, Writer]:
    """A source plus a way to put an object into what it reads."""
    if request.param == "local_folder":
        root = tmp_path / "objects"
        root.mkdir()

        def write_file(key: str, body: bytes) -> None:
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(body)

        return LocalFolderObjectSource(root), write_file
    client = request.getfixturevalue("s3")

    def put_object(key: str, body: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=PREFIX + key, Body=body)

    return S3ObjectSource(client, BUCKET, PREFIX), put_object


@pytest.fixture
def source(source_and_writer: tuple[ObjectSource, Writer]) -> ObjectSource:
    return source_and_writer[0]


@pytest.fixture
def write(source_and_writer: tuple[ObjectSource, Writer]) -> Writer:
    return source_and_writer[1]


def _md5(body: bytes) -> str:
    return hashlib.md5(body, usedforsecurity=False).hexdigest()


# --- the contract ----------------------------------------------------------------------------------


def test_head_reports_size_and_content_md5_as_etag(source: ObjectSource, write: Writer) -> None:
    write("sales/orders/part-0.parquet", b"PAR1 orders PAR1")

    info = source.head("sales/orders/part-0.parquet")

    assert (info.key, info.size, info.etag, info.version_id) == (
        "sales/orders/part-0.parquet", 16, _md5(b"PAR1 orders PAR1"), None)
    assert info.last_modified.tzinfo is not None


def test_list_returns_objects_under_a_prefix_sorted_by_key(source: ObjectSource, write: Writer) -> None:
    for key in ("sales/orders/part-1.parquet", "sales/orders/part-0.parquet", "sales/customers/part-0.parquet",
                "hr/staff/part-0.parquet"):
        write(key, key.encode())

    listed = source.list("sales/orders/")

    assert [info.key for info in listed] == ["sales/orders/part-0.parquet", "sales/orders/part-1.parquet"]
    assert [info.etag for info in listed] == [_md5(b"sales/orders/part-0.parquet"),
                                              _md5(b"sales/orders/part-1.parquet")]
    assert len(source.list()) == 4


def test_download_writes_the_bytes_and_describes_them(source: ObjectSource, write: Writer, tmp_path: Path) -> None:
    body = bytes(range(256)) * 1000
    write("t/part-0.parquet", body)
    dest = tmp_path / "fetched.parquet"

    info = source.download("t/part-0.parquet", dest, if_match=_md5(body))

    assert dest.read_bytes() == body
    assert (info.size, info.etag) == (len(body), _md5(body))


def test_download_with_a_stale_etag_is_refused_and_leaves_no_file(source: ObjectSource, write: Writer,
                                                                   tmp_path: Path) -> None:
    write("t/part-0.parquet", b"version one")
    stale = source.head("t/part-0.parquet").etag
    write("t/part-0.parquet", b"version two")
    dest = tmp_path / "fetched.parquet"

    with pytest.raises(ObjectChanged) as caught:
        source.download("t/part-0.parquet", dest, if_match=stale)

    assert caught.value.code == "HD_ERR_OBJECT_CHANGED"
    assert not dest.exists()


def test_missing_object_raises_object_missing(source: ObjectSource, tmp_path: Path) -> None:
    with pytest.raises(ObjectMissing):
        source.head("t/absent.parquet")
    with pytest.raises(ObjectMissing):
        source.download("t/absent.parquet", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("key", ["../escape.parquet", "/etc/passwd", "t/../../x", "t/\x00.parquet", "", "t//x"])
def test_unsafe_keys_are_refused(source: ObjectSource, key: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeObjectKey):
        source.head(key)
    with pytest.raises(UnsafeObjectKey):
        source.download(key, tmp_path / "x")


# --- S3 specifics -----------------------------------------------------------------------------------


def _corrupt_bodies(client: Any, replace_with: bytes) -> None:
    """Make every GetObject body carry other bytes than S3 announced (a flaky network or proxy)."""

    def swap_body(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        if "Body" in parsed:
            parsed["Body"] = StreamingBody(io.BytesIO(replace_with), len(replace_with))

    client.meta.events.register("after-call.s3.GetObject", swap_body)


def test_s3_download_with_wrong_content_fails_integrity_check(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "t/part-0.parquet", Body=b"genuine bytes")
    _corrupt_bodies(s3, b"tampered byte")  # same length, different content
    dest = tmp_path / "fetched.parquet"

    with pytest.raises(S3ObjectCorrupt, match="does not match ETag"):
        S3ObjectSource(s3, BUCKET, PREFIX).download("t/part-0.parquet", dest)

    assert not dest.exists()


def test_s3_download_with_truncated_content_fails_size_check(s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "t/part-0.parquet", Body=b"genuine bytes")
    _corrupt_bodies(s3, b"genu")
    dest = tmp_path / "fetched.parquet"

    with pytest.raises(S3ObjectCorrupt, match="received 4 bytes"):
        S3ObjectSource(s3, BUCKET, PREFIX).download("t/part-0.parquet", dest)

    assert not dest.exists()


def test_s3_list_follows_every_page(s3: Any) -> None:
    for index in range(1005):  # ListObjectsV2 returns at most 1000 keys per page
        s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}big/part-{index:04d}.parquet", Body=b"x")

    listed = S3ObjectSource(s3, BUCKET, PREFIX).list("big/")

    assert len(listed) == 1005
    assert listed[-1].key == "big/part-1004.parquet"


def test_s3_reports_the_version_id_of_a_versioned_bucket(s3: Any) -> None:
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket=BUCKET, Key=PREFIX + "t/part-0.parquet", Body=b"v1")["VersionId"]

    assert S3ObjectSource(s3, BUCKET, PREFIX).head("t/part-0.parquet").version_id == version


def test_s3_access_failure_is_a_domain_error(s3: Any) -> None:
    source = S3ObjectSource(s3, "hd-no-such-bucket", PREFIX)

    with pytest.raises(S3ObjectUnavailable) as caught:
        source.list()

    assert isinstance(caught.value, HdError)
    assert caught.value.code == "HD_ERR_S3_OBJECT_UNAVAILABLE"
