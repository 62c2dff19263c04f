"""Environment binding: the engine host starts only where the deployment provisioned it.

A host image copied to another account, region or VPC, or launched with other security groups or
pointed at another KMS key, refuses to boot. The region check is also the GDPR region pin: cached
data never lands on an instance outside the provisioned region.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine_host.boot.config import EngineConfig
from engine_host.boot.imds import InstanceIdentity
from hd_core.errors import HdError


class EnvironmentMismatch(HdError):
    """This instance is not the environment the configuration was provisioned for; `differences` says how."""

    code = "HD_ERR_ENVIRONMENT_MISMATCH"

    def __init__(self, differences: list[str]) -> None:
        super().__init__(
            "this instance is not the provisioned environment, refusing to boot: " + "; ".join(differences)
        )
        self.differences = tuple(differences)


def check_binding(config: EngineConfig, identity: InstanceIdentity, key_metadata: Mapping[str, Any]) -> None:
    """Raise `EnvironmentMismatch` naming every difference between `config` and this instance and its key.

    `key_metadata` is the `KeyMetadata` of KMS DescribeKey for `config.kms_key_arn`.
    """
    differences: list[str] = []
    if identity.region != config.region:
        differences.append(f"region is {identity.region}, provisioned {config.region} (region pin)")
    if identity.account_id != config.account_id:
        differences.append(f"account is {identity.account_id}, provisioned {config.account_id}")
    if identity.vpc_id != config.vpc_id:
        differences.append(f"VPC is {identity.vpc_id}, provisioned {config.vpc_id}")
    differences.extend(_security_group_differences(set(config.security_group_ids), set(identity.security_group_ids)))
    differences.extend(_key_differences(config, identity, key_metadata))
    if differences:
        raise EnvironmentMismatch(differences)


def _security_group_differences(provisioned: set[str], attached: set[str]) -> list[str]:
    # Equality, not inclusion: an extra group could open a port the provisioned ones keep closed.
    found = []
    if provisioned - attached:
        found.append(f"security groups {', '.join(sorted(provisioned - attached))} provisioned but not attached")
    if attached - provisioned:
        found.append(f"security groups {', '.join(sorted(attached - provisioned))} attached but not provisioned")
    return found


def _key_differences(config: EngineConfig, identity: InstanceIdentity, key_metadata: Mapping[str, Any]) -> list[str]:
    arn = str(key_metadata.get("Arn", ""))
    found = []
    if arn != config.kms_key_arn:
        found.append(f"KMS key is {arn or 'unknown'}, provisioned {config.kms_key_arn}")
    parts = arn.split(":")
    key_region, key_account = (parts[3], parts[4]) if len(parts) >= 6 else ("unknown", "unknown")
    if key_region != identity.region:
        found.append(f"KMS key region is {key_region}, instance region {identity.region}")
    if key_account != identity.account_id:
        found.append(f"KMS key account is {key_account}, instance account {identity.account_id}")
    return found
