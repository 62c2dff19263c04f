"""Environment binding: a host boots only in the provisioned region, account, VPC, security groups and key."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from engine_host.boot.binding import EnvironmentMismatch, check_binding
from engine_host.boot.config import EngineConfig
from engine_host.boot.imds import InstanceIdentity
from tests.unit.boot.fakes import ACCOUNT, IDENTITY, KEY_ARN, SG_ENGINE, SG_METRICS, VPC, config_data

CONFIG = EngineConfig.model_validate(config_data())
KEY: dict[str, Any] = {"Arn": KEY_ARN, "AWSAccountId": ACCOUNT, "KeyState": "Enabled"}


def _mismatch(identity: InstanceIdentity = IDENTITY, key: dict[str, Any] = KEY,
              config: EngineConfig = CONFIG) -> EnvironmentMismatch:
    with pytest.raises(EnvironmentMismatch) as caught:
        check_binding(config, identity, key)
    assert caught.value.code == "HD_ERR_ENVIRONMENT_MISMATCH"
    assert "\n" not in str(caught.value)
    return caught.value


def test_the_provisioned_environment_binds() -> None:
    check_binding(CONFIG, IDENTITY, KEY)


def test_security_groups_bind_in_any_order() -> None:
    check_binding(CONFIG, replace(IDENTITY, security_group_ids=(SG_METRICS, SG_ENGINE)), KEY)


def test_boot_refuses_another_region_as_the_region_pin() -> None:
    error = _mismatch(replace(IDENTITY, region="us-east-1"))
    assert "region is us-east-1, provisioned eu-west-1 (region pin)" in error.differences
    assert "KMS key region is eu-west-1, instance region us-east-1" in error.differences


def test_boot_refuses_another_account() -> None:
    error = _mismatch(replace(IDENTITY, account_id="210987654321"))
    assert error.differences == (
        f"account is 210987654321, provisioned {ACCOUNT}",
        f"KMS key account is {ACCOUNT}, instance account 210987654321",
    )


def test_boot_refuses_when_vpc_differs() -> None:
    assert _mismatch(replace(IDENTITY, vpc_id="vpc-0fffffffffffffff9")).differences == (
        f"VPC is vpc-0fffffffffffffff9, provisioned {VPC}",)


def test_boot_refuses_a_missing_security_group() -> None:
    assert _mismatch(replace(IDENTITY, security_group_ids=(SG_ENGINE,))).differences == (
        f"security groups {SG_METRICS} provisioned but not attached",)


def test_boot_refuses_an_extra_security_group() -> None:
    extra = "sg-0aaaaaaaaaaaaaaaa"
    assert _mismatch(replace(IDENTITY, security_group_ids=(SG_ENGINE, SG_METRICS, extra))).differences == (
        f"security groups {extra} attached but not provisioned",)


def test_boot_refuses_another_kms_key() -> None:
    other = KEY_ARN.replace("1234abcd", "9999abcd")
    assert _mismatch(key={**KEY, "Arn": other}).differences == (f"KMS key is {other}, provisioned {KEY_ARN}",)


def test_boot_refuses_a_key_in_another_region_and_account() -> None:
    other = f"arn:aws:kms:us-east-1:210987654321:key/{KEY_ARN.rsplit('/', 1)[1]}"
    config = CONFIG.model_copy(update={"kms_key_arn": other})
    assert _mismatch(key={**KEY, "Arn": other}, config=config).differences == (
        "KMS key region is us-east-1, instance region eu-west-1",
        f"KMS key account is 210987654321, instance account {ACCOUNT}",
    )


def test_key_metadata_without_an_arn_never_binds() -> None:
    assert f"KMS key is unknown, provisioned {KEY_ARN}" in _mismatch(key={}).differences


def test_every_difference_is_listed_in_one_line() -> None:
    identity = replace(IDENTITY, region="us-east-1", account_id="210987654321", vpc_id="vpc-0fffffffffffffff9",
                       security_group_ids=("sg-0aaaaaaaaaaaaaaaa",))
    error = _mismatch(identity, key={**KEY, "Arn": KEY_ARN.replace("1234abcd", "9999abcd")})
    message = str(error)
    assert message.startswith("this instance is not the provisioned environment, refusing to boot: ")
    for needle in ("region is us-east-1", "account is 210987654321", "VPC is vpc-0fffffffffffffff9",
                   "provisioned but not attached", "attached but not provisioned", "KMS key is arn:"):
        assert needle in message
    assert len(error.differences) == 8
