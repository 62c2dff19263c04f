"""`hd engine boot` end to end: a local IMDSv2 server, moto KMS and SSM, and a recording command runner.

The fake IMDS answers 401 to any GET without a valid session token and can play an IMDSv1-only
service. moto 5.2 keeps a disabled or pending-deletion key usable for GenerateDataKey/Decrypt, so
the refusal here comes from the key state DescribeKey reports (the boot checks it before touching
the device); KMS's own refusals are covered with Stubber in tests/unit/boot/test_cache_volume.py.
`RecordingRunner` simulates cryptsetup/mkfs/mount state: nothing here touches a real block device.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from engine_host.boot.binding import EnvironmentMismatch
from engine_host.boot.cache_volume import CacheKeyUnavailable, CacheState
from engine_host.boot.cli import run_boot
from engine_host.boot.config import EngineConfig
from engine_host.boot.imds import ImdsClient, ImdsUnavailable
from engine_host.boot.options import add_boot_arguments
from engine_host.boot.region_pin import aws_region_lookup
from engine_host.boot.sequence import boot
from engine_host.runtime.fleet import run_serve
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.region_pinning import RegionMismatch
from tests.unit.boot.fakes import (
    INSTANCE_ID,
    MAC_A,
    REGION,
    SG_ENGINE,
    FakeImds,
    Interface,
    RecordingRunner,
    config_data,
    identity_document,
    serve_imds,
    write_json,
)

log = logging.getLogger("test.boot")


def create_pinned_resources(config: EngineConfig, region: str) -> None:
    """The buckets and control table `config` names, made in `region` (moto)."""
    s3 = boto3.client("s3", region_name=region)
    for bucket in (config.data_bucket, config.audit_bucket):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    boto3.client("dynamodb", region_name=region).create_table(**create_table_kwargs(config.control_table))


@dataclass
class Host:
    """One simulated engine host: its metadata service, KMS, provisioned config and block devices."""

    imds: FakeImds
    kms: Any
    ssm: Any
    config: EngineConfig
    runner: RecordingRunner
    tmp: Path

    @property
    def key_id(self) -> str:
        """The cache key's id (moto's disable_key and schedule_key_deletion want the id, not the ARN)."""
        return self.config.kms_key_arn.rsplit("/", 1)[1]

    def boot(self, config: EngineConfig | None = None) -> Any:
        return boot(config or self.config, imds=ImdsClient(self.imds.url, timeout=1.0, sleep=lambda _: None),
                    kms=self.kms, regions=aws_region_lookup(REGION, kms=self.kms), runner=self.runner, log=log)


@pytest.fixture
def host(aws_credentials: None, tmp_path: Path) -> Iterator[Host]:
    with mock_aws(), serve_imds(FakeImds()) as imds:
        kms = boto3.client("kms", region_name=REGION)
        arn = kms.create_key(Description="hd engine cache")["KeyMetadata"]["Arn"]
        config = EngineConfig.model_validate(config_data(
            kms_key_arn=arn, cache_mount=str(tmp_path / "cache"), cache_key_file=str(tmp_path / "cache-key.json"),
        ))
        create_pinned_resources(config, REGION)
        yield Host(imds, kms, boto3.client("ssm", region_name=REGION), config, RecordingRunner(), tmp_path)


# --- the sequence -----------------------------------------------------------------------------------


def test_first_boot_formats_and_reports_the_identity_and_mount(host: Host) -> None:
    result = host.boot()
    assert result.first_boot and result.cache_state is CacheState.FORMATTED
    assert result.identity.instance_id == INSTANCE_ID
    assert result.mount_path == host.config.cache_mount
    assert [argv[1] for argv in host.runner.changing_argvs()] == ["luksFormat", "open", "-q", "-t"]


def test_reboot_reopens_with_the_stored_key_without_formatting(host: Host) -> None:
    host.boot()
    host.runner.state.reboot()
    host.runner.calls.clear()
    result = host.boot()
    assert not result.first_boot and result.cache_state is CacheState.REOPENED
    assert [argv[:2] for argv in host.runner.changing_argvs()] == [("cryptsetup", "open"), ("mount", "-t")]


def test_stop_start_blanks_the_instance_store_and_boot_formats_again(host: Host) -> None:
    host.boot()
    host.runner.state.stop_start()
    assert host.boot().cache_state is CacheState.FORMATTED


def test_running_boot_again_changes_nothing(host: Host) -> None:
    host.boot()
    host.runner.calls.clear()
    assert host.boot().cache_state is CacheState.ALREADY_MOUNTED
    assert host.runner.changing_argvs() == []


def test_a_disabled_key_stops_the_boot_before_any_command(host: Host) -> None:
    host.kms.disable_key(KeyId=host.key_id)
    with pytest.raises(CacheKeyUnavailable, match=r"cache cannot be unlocked: .* is Disabled; re-enable the key"):
        host.boot()
    assert host.runner.calls == []


def test_a_key_disabled_after_first_boot_stops_the_reboot(host: Host) -> None:
    host.boot()
    host.runner.state.reboot()
    host.runner.calls.clear()
    host.kms.disable_key(KeyId=host.key_id)
    with pytest.raises(CacheKeyUnavailable, match="is Disabled"):
        host.boot()
    assert host.runner.calls == []
    assert host.runner.state.luks_passphrase is not None  # the cache is locked, not destroyed


def test_a_key_pending_deletion_stops_the_boot(host: Host) -> None:
    host.kms.schedule_key_deletion(KeyId=host.key_id, PendingWindowInDays=7)
    with pytest.raises(CacheKeyUnavailable, match="is PendingDeletion; cancel the key's scheduled deletion"):
        host.boot()
    assert host.runner.calls == []


@pytest.mark.parametrize(("change", "difference"), [
    (lambda imds: imds.document.update(region="eu-central-1"), "region is eu-central-1, provisioned eu-west-1"),
    (lambda imds: imds.document.update(accountId="210987654321"), "account is 210987654321, provisioned"),
    (lambda imds: imds.interfaces.update({MAC_A: Interface(vpc_id="vpc-0fffffffffffffff9")}),
     "VPC is vpc-0fffffffffffffff9, provisioned"),
    (lambda imds: imds.interfaces.update({MAC_A: Interface(security_group_ids=(SG_ENGINE,))}),
     "provisioned but not attached"),
])
def test_each_binding_difference_stops_the_boot_before_kms_or_any_command(
    host: Host, change: Any, difference: str
) -> None:
    change(host.imds)
    with pytest.raises(EnvironmentMismatch, match=difference):
        host.boot()
    assert host.runner.calls == []
    assert not host.config.cache_key_file.exists()


def test_a_key_in_another_region_is_a_binding_difference_not_an_access_error(host: Host) -> None:
    other = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    with pytest.raises(EnvironmentMismatch, match="KMS key region is us-east-1, instance region eu-west-1"):
        host.boot(host.config.model_copy(update={"kms_key_arn": other}))


def test_a_key_this_role_may_not_describe_stops_the_boot_as_key_unavailable(host: Host) -> None:
    """moto does not enforce key policies, so the denial is played by botocore's Stubber."""
    with Stubber(host.kms) as stub, pytest.raises(
        CacheKeyUnavailable, match=r"KMS DescribeKey .*\(AccessDeniedException\): .*check the key policy"
    ):
        stub.add_client_error("describe_key", service_error_code="AccessDeniedException")
        host.boot()
    assert host.runner.calls == []


def test_a_key_invisible_from_another_vpc_reports_the_vpc_not_the_denial(host: Host) -> None:
    host.imds.interfaces[MAC_A] = Interface(vpc_id="vpc-0fffffffffffffff9")
    with Stubber(host.kms) as stub, pytest.raises(EnvironmentMismatch, match="VPC is vpc-0fffffffffffffff9"):
        stub.add_client_error("describe_key", service_error_code="AccessDeniedException")
        host.boot()


def test_an_imdsv1_only_service_stops_the_boot(host: Host) -> None:
    host.imds.v1_only = True
    with pytest.raises(ImdsUnavailable, match="IMDSv1 is never used"):
        host.boot()
    assert host.runner.calls == []
    assert all(seen.method == "PUT" for seen in host.imds.requests)


# --- the command line -------------------------------------------------------------------------------


def _cli(host: Host, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hd engine boot")
    add_boot_arguments(parser)
    return run_boot(parser.parse_args(["--imds-url", host.imds.url, *argv]), runner=host.runner)


def _config_file(host: Host, **overrides: Any) -> str:
    data = {**json.loads(host.config.model_dump_json()), **overrides}
    return str(write_json(host.tmp / "engine.json", data))


def _refusal(caplog: pytest.LogCaptureFixture) -> str:
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    return errors[0].getMessage()


def test_cli_boots_from_a_config_file_and_exits_0(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="engine_host.boot"):
        assert _cli(host, "--config-file", _config_file(host)) == 0
    assert f"hd engine boot done: instance {INSTANCE_ID}, cache first_boot" in caplog.text


def test_cli_reads_the_ssm_parameter_named_in_the_environment_from_the_instance_region(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.ssm.put_parameter(Name="/hd/engine", Value=host.config.model_dump_json(), Type="SecureString")
    monkeypatch.setenv("HD_ENGINE_CONFIG_PARAMETER", "/hd/engine")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # the parameter is in eu-west-1, where the instance is
    assert _cli(host) == 0
    assert host.runner.state.mounts == {str(host.config.cache_mount): "/dev/mapper/hd-cache"}


def test_cli_region_option_names_the_parameter_region(host: Host) -> None:
    host.ssm.put_parameter(Name="/hd/engine", Value=host.config.model_dump_json(), Type="String")
    assert _cli(host, "--config-parameter", "/hd/engine", "--region", "us-east-1") == 2  # not there
    assert _cli(host, "--config-parameter", "/hd/engine", "--region", REGION) == 0


def test_cli_exits_2_on_an_invalid_config(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    assert _cli(host, "--config-file", _config_file(host, vpc_id="vpc-1")) == 2
    assert "refused (HD_ERR_ENGINE_CONFIG_INVALID)" in _refusal(caplog) and "vpc_id:" in caplog.text
    assert host.imds.requests == []  # a file config needs no metadata before it is valid


def test_cli_exits_2_without_any_config(host: Host, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HD_ENGINE_CONFIG_PARAMETER", raising=False)
    assert _cli(host) == 2
    assert "pass --config-file or --config-parameter" in _refusal(caplog)


def test_cli_exits_2_on_an_environment_mismatch(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.imds.document.update(identity_document(region="us-east-1"))
    assert _cli(host, "--config-file", _config_file(host)) == 2
    assert "refused (HD_ERR_ENVIRONMENT_MISMATCH): this instance is not the provisioned environment" in _refusal(caplog)


def test_cli_exits_3_when_the_key_is_disabled(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.kms.disable_key(KeyId=host.key_id)
    assert _cli(host, "--config-file", _config_file(host)) == 3
    assert "refused (HD_ERR_KEY_UNAVAILABLE): the NVMe cache cannot be unlocked" in _refusal(caplog)


def test_cli_exits_4_when_imds_is_unavailable(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.imds.v1_only = True
    assert _cli(host, "--config-file", _config_file(host)) == 4
    assert "refused (HD_ERR_IMDS_UNAVAILABLE)" in _refusal(caplog)


def test_cli_exits_4_when_a_command_fails(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.runner.fail.add("luksFormat")
    assert _cli(host, "--config-file", _config_file(host)) == 4
    message = _refusal(caplog)
    assert "refused (HD_ERR_BOOT_COMMAND_FAILED): cryptsetup luksFormat" in message
    assert "--key-file - /dev/nvme1n1: exited 1: luksFormat: simulated failure" in message


def test_cli_accepts_only_one_config_source(host: Host) -> None:
    with pytest.raises(SystemExit):
        _cli(host, "--config-file", "a.json", "--config-parameter", "/hd/engine")


# --- hd engine serve checks the same binding at every start -----------------------------------------


def _serve(host: Host, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hd engine serve")
    add_boot_arguments(parser)
    return run_serve(parser.parse_args(["--imds-url", host.imds.url, *argv]))


def test_serve_refuses_an_instance_moved_to_another_region(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.imds.document.update(identity_document(region="us-east-1"))
    assert _serve(host, "--config-file", _config_file(host)) == 2
    assert "hd engine serve refused (HD_ERR_ENVIRONMENT_MISMATCH)" in _refusal(caplog)


def test_serve_refuses_once_the_cache_key_is_disabled(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    host.kms.disable_key(KeyId=host.key_id)
    assert _serve(host, "--config-file", _config_file(host)) == 3
    assert "hd engine serve refused (HD_ERR_KEY_UNAVAILABLE)" in _refusal(caplog)


def test_serve_refuses_before_boot_has_mounted_the_cache(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    assert _serve(host, "--config-file", _config_file(host)) == 4
    assert "hd engine serve refused (HD_ERR_CACHE_NOT_MOUNTED)" in _refusal(caplog)
    assert "run `hd engine boot` first" in caplog.text


# --- the region pin: buckets, control table and every key in the provisioned region ------------------

OTHER_REGION = "us-east-1"


def _bucket_elsewhere(name: str) -> str:
    boto3.client("s3", region_name=OTHER_REGION).create_bucket(Bucket=name)
    return name


def _key_elsewhere() -> str:
    return str(boto3.client("kms", region_name=OTHER_REGION).create_key()["KeyMetadata"]["Arn"])


@pytest.mark.parametrize(("field", "make", "difference"), [
    ("data_bucket", lambda: _bucket_elsewhere("acme-hd-data-us"),
     "data bucket S3 bucket acme-hd-data-us is in us-east-1"),
    ("audit_bucket", lambda: _bucket_elsewhere("acme-hd-audit-us"),
     "audit bucket S3 bucket acme-hd-audit-us is in us-east-1"),
    ("signing_key_arn", _key_elsewhere, "token signing key KMS key arn:aws:kms:us-east-1:"),
    ("checkpoint_key_arn", _key_elsewhere, "checkpoint signing key KMS key arn:aws:kms:us-east-1:"),
])
def test_a_resource_in_another_region_stops_the_boot_before_the_cache_opens(
    host: Host, field: str, make: Any, difference: str
) -> None:
    with pytest.raises(RegionMismatch, match=f"outside the pinned region eu-west-1, refusing to serve: .*{difference}"):
        host.boot(host.config.model_copy(update={field: make()}))
    assert host.runner.calls == []
    assert not host.config.cache_key_file.exists()


def test_a_control_table_only_in_another_region_stops_the_boot(host: Host) -> None:
    """A table name resolves per region: from the pinned one, a table made elsewhere is not there at all."""
    boto3.client("dynamodb", region_name=OTHER_REGION).create_table(**create_table_kwargs("hd-control-us"))
    with pytest.raises(RegionMismatch, match="control table DynamoDB table hd-control-us: region cannot be confirmed "
                                             r"\(DescribeTable failed: ResourceNotFoundException\)"):
        host.boot(host.config.model_copy(update={"control_table": "hd-control-us"}))
    assert host.runner.calls == []


def test_a_bucket_that_does_not_exist_fails_the_pin_closed(host: Host) -> None:
    with pytest.raises(RegionMismatch, match=r"data bucket S3 bucket acme-hd-gone: region cannot be confirmed "
                                             r"\(GetBucketLocation failed: NoSuchBucket\)"):
        host.boot(host.config.model_copy(update={"data_bucket": "acme-hd-gone"}))


def test_every_resource_outside_the_region_is_named_at_once(host: Host) -> None:
    config = host.config.model_copy(update={"data_bucket": _bucket_elsewhere("acme-hd-data-us"),
                                            "checkpoint_key_arn": _key_elsewhere()})
    with pytest.raises(RegionMismatch) as refused:
        host.boot(config)
    assert [line.split(" is in ")[1] for line in refused.value.differences] == ["us-east-1", "us-east-1"]


def test_cli_exits_2_on_a_resource_outside_the_region(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    bucket = _bucket_elsewhere("acme-hd-audit-us")
    assert _cli(host, "--config-file", _config_file(host, audit_bucket=bucket)) == 2
    message = _refusal(caplog)
    assert "hd engine boot refused (HD_ERR_REGION_MISMATCH): resources outside the pinned region eu-west-1" in message
    assert "audit bucket S3 bucket acme-hd-audit-us is in us-east-1" in message
    assert host.runner.calls == []


def test_serve_refuses_a_resource_outside_the_region(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    bucket = _bucket_elsewhere("acme-hd-data-us")
    assert _serve(host, "--config-file", _config_file(host, data_bucket=bucket)) == 2
    assert "hd engine serve refused (HD_ERR_REGION_MISMATCH)" in _refusal(caplog)
