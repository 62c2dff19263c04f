"""The provisioned engine configuration: what loads, and how a bad field is named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from engine_host.boot.config import EngineConfig, EngineConfigInvalid, load_config_file, load_config_from_ssm
from tests.unit.boot.fakes import KEY_ARN, SG_ENGINE, config_data, write_json


def _invalid(tmp_path: Path, **overrides: Any) -> EngineConfigInvalid:
    path = write_json(tmp_path / "engine.json", config_data(**overrides))
    with pytest.raises(EngineConfigInvalid) as caught:
        load_config_file(path)
    assert caught.value.code == "HD_ERR_ENGINE_CONFIG_INVALID"
    return caught.value


def test_a_minimal_file_loads_with_the_documented_defaults(tmp_path: Path) -> None:
    config = load_config_file(write_json(tmp_path / "engine.json", config_data()))
    assert config.kms_key_arn == KEY_ARN
    assert config.cache_device == "/dev/nvme1n1"
    assert config.cache_mapper_name == "hd-cache"
    assert config.cache_mount == Path("/var/lib/hd/cache")
    assert config.cache_key_file == Path("/var/lib/hd/cache-key.json")
    assert config.state_dir == Path("/var/lib/hd/state")
    assert config.data_prefix == ""
    assert config.control_api_url is None
    assert config.heartbeat_interval_seconds == 900
    assert (config.listen_host, config.listen_port, config.metrics_host, config.metrics_port) == (
        "0.0.0.0", 5439, "0.0.0.0", 9090)
    assert config.tls_cert_file == Path("/etc/hardened-duck/tls/server.crt")
    assert config.tls_key_file == Path("/etc/hardened-duck/tls/server.key")
    assert config.cache_capacity_bytes is None


def test_every_field_can_be_set(tmp_path: Path) -> None:
    data = config_data(
        cache_device="/dev/nvme2n1", cache_mapper_name="cache_2", cache_mount="/srv/cache",
        cache_key_file="/etc/hd/cache-key.json", state_dir="/srv/state", data_prefix="tables/",
        control_api_url="https://abc.execute-api.eu-west-1.amazonaws.com/prod", jwt_issuer="https://api.example.com",
        jwt_audience="warehouse", tls_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:hd/tls-AbCdEf",
        heartbeat_interval_seconds=60, listen_host="10.0.0.5", listen_port=15432, metrics_host="127.0.0.1",
        metrics_port=19090, tls_cert_file="/etc/tls/a.crt", tls_key_file="/etc/tls/a.key",
        cache_capacity_bytes=500 * 2**30, memory_limit_bytes=8 * 2**30, temp_directory="/srv/cache/spill",
        max_result_bytes=2**30, max_value_bytes=0, otel_endpoint="http://10.0.0.9:4318",
        max_concurrent_statements=8, max_queued_statements=16, worker_threads=12, duckdb_threads=4,
        auto_scaling_group_name="hd-engine-fleet", drain_grace_seconds=120,
    )
    config = load_config_file(write_json(tmp_path / "engine.json", data))
    assert config.model_dump(mode="json") == data


def test_a_govcloud_key_arn_and_region_are_accepted(tmp_path: Path) -> None:
    arn = "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab"
    data = config_data(region="us-gov-west-1", kms_key_arn=arn)
    config = load_config_file(write_json(tmp_path / "engine.json", data))
    assert config.kms_key_arn == arn


@pytest.mark.parametrize(("field", "value"), [
    ("account_id", "12345678901"),
    ("region", "EU-WEST-1"),
    ("vpc_id", "vpc-xyz"),
    ("kms_key_arn", "arn:aws:kms:eu-west-1:123456789012:alias/hd-cache"),
    ("kms_key_arn", "arn:aws:s3:::bucket"),
    ("signing_key_arn", "not-an-arn"),
    ("checkpoint_key_arn", ""),
    ("data_bucket", "Bad_Bucket"),
    ("data_prefix", "tables"),
    ("data_prefix", "/tables/"),
    ("control_table", "x"),
    ("cache_device", "/dev/../etc/passwd"),
    ("cache_mapper_name", "hd/cache"),
    ("cache_mount", "relative/cache"),
    ("state_dir", "/var/lib/../../etc"),
    ("control_api_url", "http://control.internal/"),
    ("heartbeat_interval_seconds", 0),
    ("heartbeat_interval_seconds", 4 * 3600),
    ("listen_port", 70000),
    ("cache_capacity_bytes", 0),
    ("org_id", "org acme"),
])
def test_a_bad_field_is_named(tmp_path: Path, field: str, value: Any) -> None:
    error = _invalid(tmp_path, **{field: value})
    assert error.field == field
    assert f"{field}:" in str(error)


def test_a_bad_security_group_is_named_with_its_position(tmp_path: Path) -> None:
    error = _invalid(tmp_path, security_group_ids=[SG_ENGINE, "sg-nope"])
    assert error.field == "security_group_ids.1"
    assert "sg-0123456789abcdef0" in str(error)  # the expected shape, not the bad value


def test_no_security_groups_is_invalid(tmp_path: Path) -> None:
    assert _invalid(tmp_path, security_group_ids=[]).field == "security_group_ids"


def test_a_security_group_listed_twice_is_invalid(tmp_path: Path) -> None:
    assert _invalid(tmp_path, security_group_ids=[SG_ENGINE, SG_ENGINE]).field == "security_group_ids"


def test_an_unknown_field_is_refused(tmp_path: Path) -> None:
    error = _invalid(tmp_path, cache_devcie="/dev/nvme1n1")
    assert error.field == "cache_devcie"
    assert "is not a known setting" in str(error)


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    data = config_data()
    del data["kms_key_arn"]
    with pytest.raises(EngineConfigInvalid, match="kms_key_arn: Field required") as caught:
        load_config_file(write_json(tmp_path / "engine.json", data))
    assert caught.value.field == "kms_key_arn"


def test_the_key_file_may_not_live_on_the_cache_volume(tmp_path: Path) -> None:
    error = _invalid(tmp_path, cache_mount="/var/lib/hd/cache", cache_key_file="/var/lib/hd/cache/key.json")
    assert error.field == "cache_key_file"


def test_metrics_and_clients_need_different_ports(tmp_path: Path) -> None:
    assert _invalid(tmp_path, listen_port=9090).field == "metrics_port"


def test_every_bad_field_is_reported_in_one_message(tmp_path: Path) -> None:
    error = _invalid(tmp_path, account_id="1", vpc_id="vpc-1", region="mars")
    message = str(error)
    assert "account_id:" in message and "vpc_id:" in message and "region:" in message
    assert "\n" not in message


def test_a_file_that_is_not_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "engine.json"
    path.write_text('{"org_id": "x",\n oops}', encoding="utf-8")
    with pytest.raises(EngineConfigInvalid, match=r"is not JSON: .* at line 2 column 2"):
        load_config_file(path)


def test_a_json_array_is_not_a_configuration(tmp_path: Path) -> None:
    with pytest.raises(EngineConfigInvalid, match="must be a JSON object"):
        load_config_file(write_json(tmp_path / "engine.json", [config_data()]))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineConfigInvalid, match=r"cannot read engine configuration file .*missing\.json"):
        load_config_file(tmp_path / "missing.json")


def test_the_configuration_is_immutable(tmp_path: Path) -> None:
    config = load_config_file(write_json(tmp_path / "engine.json", config_data()))
    with pytest.raises(ValueError, match="frozen"):
        config.region = "us-east-1"


def test_the_ssm_parameter_is_read_with_decryption(aws_ssm: Any) -> None:
    aws_ssm.put_parameter(Name="/hd/engine/config", Value=json.dumps(config_data()), Type="SecureString")
    config = load_config_from_ssm(aws_ssm, "/hd/engine/config")
    assert config == EngineConfig.model_validate(config_data())


def test_an_invalid_ssm_parameter_names_the_parameter_and_the_field(aws_ssm: Any) -> None:
    aws_ssm.put_parameter(Name="/hd/engine/config", Value=json.dumps(config_data(vpc_id="vpc")), Type="String")
    with pytest.raises(EngineConfigInvalid, match="SSM parameter /hd/engine/config is invalid: vpc_id:"):
        load_config_from_ssm(aws_ssm, "/hd/engine/config")


def test_a_missing_ssm_parameter_is_a_clear_error(aws_ssm: Any) -> None:
    with pytest.raises(EngineConfigInvalid, match=r"cannot read .*/hd/missing \(ParameterNotFound\)"):
        load_config_from_ssm(aws_ssm, "/hd/missing")


def test_an_ssm_access_denial_is_a_clear_error(aws_ssm: Any) -> None:
    """moto does not enforce IAM here, so the denial comes from botocore's Stubber."""
    with Stubber(aws_ssm) as stub, pytest.raises(EngineConfigInvalid, match=r"AccessDeniedException.*GetParameter"):
        stub.add_client_error("get_parameter", service_error_code="AccessDeniedException")
        load_config_from_ssm(aws_ssm, "/hd/engine/config")


@pytest.fixture
def aws_ssm(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ssm", region_name="eu-west-1")
