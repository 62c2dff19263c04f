"""Instance identity over IMDSv2, against a local HTTP server that behaves like the metadata service."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from engine_host.boot.imds import ImdsClient, ImdsUnavailable, InstanceIdentity
from tests.unit.boot.fakes import (
    ACCOUNT,
    INSTANCE_ID,
    MAC_A,
    MAC_B,
    REGION,
    SG_ENGINE,
    SG_METRICS,
    SUBNET_A,
    SUBNET_B,
    VPC,
    FakeImds,
    Interface,
    identity_document,
    serve_imds,
)


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with serve_imds(FakeImds()) as served:
        yield served


def _client(imds: FakeImds, sleeps: list[float] | None = None) -> ImdsClient:
    return ImdsClient(imds.url, timeout=1.0, sleep=(sleeps if sleeps is not None else []).append)


def test_identity_comes_from_the_document_and_the_interfaces(imds: FakeImds) -> None:
    assert _client(imds).identity() == InstanceIdentity(
        instance_id=INSTANCE_ID, account_id=ACCOUNT, region=REGION, availability_zone=f"{REGION}a",
        instance_type="r6id.2xlarge", launch_time=datetime(2026, 11, 23, 8, 30, tzinfo=UTC), vpc_id=VPC,
        subnet_ids=(SUBNET_A,), security_group_ids=(SG_ENGINE, SG_METRICS),
    )


def test_the_launch_time_is_timezone_aware(imds: FakeImds) -> None:
    assert _client(imds).identity().launch_time.utcoffset() is not None


def test_security_groups_and_subnets_cover_every_interface(imds: FakeImds) -> None:
    imds.interfaces[MAC_B] = Interface(subnet_id=SUBNET_B, security_group_ids=("sg-0aaaaaaaaaaaaaaaa",))
    identity = _client(imds).identity()
    assert identity.subnet_ids == (SUBNET_A, SUBNET_B)
    assert identity.security_group_ids == (SG_ENGINE, "sg-0aaaaaaaaaaaaaaaa", SG_METRICS)


def test_interfaces_in_two_vpcs_are_refused(imds: FakeImds) -> None:
    imds.interfaces[MAC_B] = Interface(vpc_id="vpc-0fffffffffffffff9")
    with pytest.raises(ImdsUnavailable, match="more than one VPC"):
        _client(imds).identity()


def test_a_token_is_fetched_with_a_ttl_and_sent_on_every_get(imds: FakeImds) -> None:
    _client(imds).identity()
    put, *gets = imds.requests
    assert (put.method, put.path, put.ttl) == ("PUT", "/latest/api/token", "300")
    assert gets and all(seen.method == "GET" and seen.token in imds.tokens for seen in gets)
    assert {seen.path for seen in gets} >= {
        "/latest/dynamic/instance-identity/document",
        f"/latest/meta-data/network/interfaces/macs/{MAC_A}/vpc-id",
        f"/latest/meta-data/network/interfaces/macs/{MAC_A}/security-group-ids",
    }


def test_an_imdsv1_only_service_is_refused_without_any_tokenless_get() -> None:
    with serve_imds(FakeImds(v1_only=True)) as imds:
        refused = r"refused an IMDSv2 session token \(HTTP 404\); IMDSv1 is never used"
        with pytest.raises(ImdsUnavailable, match=refused):
            _client(imds).identity()
        assert [seen.method for seen in imds.requests] == ["PUT"]


def test_the_fake_service_answers_401_to_a_get_without_a_token(imds: FakeImds) -> None:
    """The fake is only a fair test if it refuses what the real service refuses."""
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{imds.url}/latest/dynamic/instance-identity/document", timeout=1)
    assert caught.value.code == 401


def test_server_errors_are_retried_with_backoff(imds: FakeImds) -> None:
    imds.failures_before_success = 2
    sleeps: list[float] = []
    assert _client(imds, sleeps).identity().instance_id == INSTANCE_ID
    assert sleeps == [0.2, 0.4]


def test_three_server_errors_in_a_row_give_up(imds: FakeImds) -> None:
    imds.failures_before_success = 3
    sleeps: list[float] = []
    with pytest.raises(ImdsUnavailable, match=r"PUT /latest/api/token failed 3 times \(HTTP 503\)"):
        _client(imds, sleeps).identity()
    assert len(sleeps) == 2


def test_no_service_at_all_is_unavailable_after_three_attempts() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(ImdsUnavailable, match="failed 3 times") as caught:
        ImdsClient(f"http://127.0.0.1:{port}", timeout=0.5, sleep=sleeps.append).identity()
    assert caught.value.code == "HD_ERR_IMDS_UNAVAILABLE"
    assert len(sleeps) == 2


def test_a_proxy_in_the_environment_is_never_used(imds: FakeImds, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: any proxied request would fail
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _client(imds).identity().instance_id == INSTANCE_ID


def test_a_document_without_an_instance_id_is_unusable() -> None:
    document = identity_document()
    del document["instanceId"]
    with serve_imds(FakeImds(document=document)) as imds, pytest.raises(ImdsUnavailable, match="no instanceId"):
        _client(imds).identity()


def test_a_launch_time_without_a_zone_is_unusable() -> None:
    document = identity_document(pendingTime="2026-11-23T08:30:00")
    with serve_imds(FakeImds(document=document)) as imds, pytest.raises(ImdsUnavailable, match="no time zone"):
        _client(imds).identity()


def test_an_instance_without_interfaces_is_unusable() -> None:
    with serve_imds(FakeImds(interfaces={})) as imds, pytest.raises(ImdsUnavailable, match="no network interfaces"):
        _client(imds).identity()


def test_a_missing_metadata_path_is_unavailable(imds: FakeImds) -> None:
    imds.missing_paths.add(f"/latest/meta-data/network/interfaces/macs/{MAC_A}/security-group-ids")
    with pytest.raises(ImdsUnavailable, match=r"GET /latest/meta-data/.*/security-group-ids failed with HTTP 404"):
        _client(imds).identity()


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ImdsUnavailable, match="must be http"):
        ImdsClient("file:///etc/passwd")
