"""`hd engine boot`: run once per boot by user data, before `hd engine serve`.

Exit codes: 0 booted; 2 refused (environment mismatch, a resource outside the pinned region, invalid
configuration); 3 the KMS key cannot unlock the cache; 4 a command, the cache volume or the metadata
service failed; 1 anything unexpected.
A refusal is one log line with its `HD_ERR_*` code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

import boto3

from engine_host.boot.binding import EnvironmentMismatch
from engine_host.boot.config import EngineConfig, EngineConfigInvalid, load_config_file, load_config_from_ssm
from engine_host.boot.imds import ImdsClient, InstanceIdentity
from engine_host.boot.options import CONFIG_PARAMETER_ENV
from engine_host.boot.region_pin import aws_region_lookup
from engine_host.boot.runner import CommandRunner, SubprocessRunner
from engine_host.boot.sequence import boot
from hd_core.errors import HdError, KeyUnavailable
from hd_core.region_pinning import RegionMismatch

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_REFUSED = 2
EXIT_KEY_UNAVAILABLE = 3
EXIT_FAILED = 4

log = logging.getLogger("engine_host.boot")


def run_boot(args: argparse.Namespace, *, runner: CommandRunner | None = None) -> int:
    """Run `hd engine boot` with parsed `args`; returns the exit code. `runner` replaces real commands in tests."""
    def steps() -> None:
        imds = KnownIdentity(ImdsClient(args.imds_url))
        config = load_engine_config(args, imds)
        kms = boto3.client("kms", region_name=config.region)
        result = boot(config, imds=imds, kms=kms, regions=aws_region_lookup(config.region, kms=kms),
                      runner=runner or SubprocessRunner(), log=log,
                      secrets=boto3.client("secretsmanager", region_name=config.region))
        log.info("hd engine boot done: instance %s, cache %s at %s", result.identity.instance_id,
                 result.cache_state.value, result.mount_path)

    return run_engine_command("hd engine boot", steps)


def run_engine_command(command: str, steps: Callable[[], None]) -> int:
    """Run an `hd engine` command's steps; every failure becomes one log line and its exit code."""
    try:
        steps()
    except (EnvironmentMismatch, RegionMismatch, EngineConfigInvalid) as error:
        return _refused(command, error, EXIT_REFUSED)
    except KeyUnavailable as error:
        return _refused(command, error, EXIT_KEY_UNAVAILABLE)
    except HdError as error:  # BootCommandFailed, CacheVolumeFailed, ImdsUnavailable, CacheNotMounted...
        return _refused(command, error, EXIT_FAILED)
    except Exception as error:  # user data and systemd get one line and an exit code, not a traceback
        log.debug("%s failed", command, exc_info=True)
        log.error("%s failed unexpectedly: %s: %s", command, type(error).__name__, error)
        return EXIT_UNEXPECTED
    return EXIT_OK


def _refused(command: str, error: HdError, exit_code: int) -> int:
    log.error("%s refused (%s): %s", command, error.code, error)
    return exit_code


def load_engine_config(args: argparse.Namespace, imds: KnownIdentity) -> EngineConfig:
    """The provisioned configuration named by `--config-file`, `--config-parameter` or the environment."""
    if args.config_file is not None:
        return load_config_file(args.config_file)
    name = args.config_parameter or os.environ.get(CONFIG_PARAMETER_ENV)
    if not name:
        raise EngineConfigInvalid(
            f"no engine configuration: pass --config-file or --config-parameter, or set {CONFIG_PARAMETER_ENV}"
        )
    region = args.region or imds.identity().region
    return load_config_from_ssm(boto3.client("ssm", region_name=region), name)


class KnownIdentity:
    """Asks the metadata service once, even when the SSM region and the boot sequence both need the identity."""

    def __init__(self, source: ImdsClient) -> None:
        self._source = source
        self._identity: InstanceIdentity | None = None

    def identity(self) -> InstanceIdentity:
        if self._identity is None:
            self._identity = self._source.identity()
        return self._identity
