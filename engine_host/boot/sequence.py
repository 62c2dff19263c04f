"""The boot sequence: identity, environment binding, then the cache volume; each step refuses before the next."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine_host.boot.binding import check_binding
from engine_host.boot.cache_volume import (
    CacheKeyUnavailable,
    CacheState,
    describe_cache_key,
    prepare_cache_volume,
    require_usable_key,
)
from engine_host.boot.config import EngineConfig
from engine_host.boot.imds import InstanceIdentity
from engine_host.boot.region_pin import check_region_pin
from engine_host.boot.runner import CommandRunner
from engine_host.boot.tls_material import install_tls_material
from hd_core.region_pinning import RegionLookup


class IdentitySource(Protocol):
    """Where the instance identity comes from (`ImdsClient` on EC2)."""

    def identity(self) -> InstanceIdentity:
        """This instance's identity."""
        ...


@dataclass(frozen=True)
class BootResult:
    """What boot found and did."""

    identity: InstanceIdentity
    cache_state: CacheState
    mount_path: Path

    @property
    def first_boot(self) -> bool:
        """Whether the cache volume was formatted (first boot, or instance store blank after a stop/start)."""
        return self.cache_state is CacheState.FORMATTED


def boot(
    config: EngineConfig, *, imds: IdentitySource, kms: Any, regions: RegionLookup, runner: CommandRunner,
    log: logging.Logger, secrets: Any = None,
) -> BootResult:
    """Boot the engine host; raises the first step's `HdError` (nothing after it runs).

    `regions` tells where the buckets and the control table are (the region pin, region_pin.py).
    """
    identity = imds.identity()
    log.info("instance %s (%s) in %s, account %s, %s", identity.instance_id, identity.instance_type,
             identity.availability_zone, identity.account_id, identity.vpc_id)
    try:
        key_metadata = describe_cache_key(kms, config.kms_key_arn)
    except CacheKeyUnavailable:
        # From the wrong account or region the key is simply invisible: say that, not "access denied".
        check_binding(config, identity, {"Arn": config.kms_key_arn})
        raise
    check_binding(config, identity, key_metadata)
    log.info("environment binding holds: region, account, VPC, security groups and KMS key are as provisioned")
    # Before the cache is opened: a host whose buckets, table or keys are elsewhere never holds their data.
    check_region_pin(config, regions)
    log.info("region pin holds: buckets, control table and keys are in %s", config.region)
    require_usable_key(key_metadata)
    state = prepare_cache_volume(config, identity, kms=kms, runner=runner, log=log)
    if config.tls_secret_arn is not None:
        install_tls_material(config, secrets, log)
    return BootResult(identity=identity, cache_state=state, mount_path=config.cache_mount)
