"""The erasure's services for this process: AWS adapters from `HD_ERASURE_*` settings, or `hd dev`'s.

In AWS the forget API function only records a request: the forget worker (functions/forget/worker.py)
runs every pending request on its schedule (every few minutes), in the VPC like the API function, so
no Lambda-to-Lambda call (and no Lambda VPC endpoint) is needed. `hd dev` installs its own
(`install_erasure`): the state folder's data (or its S3 source), the running engine host for writable
tables, and a dispatch that runs the request at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.shared.wiring import services
from hd_core.erasure import ErasureServices, run
from hd_core.fleet import FleetInstance, FleetMembership

_lock = threading.Lock()
_installed: Erasure | None = None


class ErasureSettings(BaseSettings):
    """Where table data lives, how long replaced object versions are kept, and which function does the work."""

    model_config = SettingsConfigDict(env_prefix="HD_ERASURE_", extra="ignore")

    data_url: str = ""  # s3://<data bucket>/<tables prefix>/, as the engine hosts' table source
    version_retention_hours: float = Field(default=0.0, ge=0, le=24 * 365)


@lru_cache(maxsize=1)
def erasure_settings() -> ErasureSettings:
    return ErasureSettings()


@dataclass(frozen=True)
class Erasure:
    """The services a request runs with, how a new request reaches them, and who says a silent fleet host is gone.

    `fleet_instances` (EC2 in AWS) is asked whether a host that stopped heartbeating was terminated; without it
    (`hd dev`: no fleet hosts) no host is known gone, so a request never stops waiting for one.
    """

    services: ErasureServices
    dispatch: Callable[[str], None]
    fleet_instances: FleetMembership | None = None


def erasure() -> Erasure:
    """This process's erasure wiring, built from the settings on first use."""
    global _installed
    with _lock:
        if _installed is None:
            _installed = _build_aws(erasure_settings())
        return _installed


def install_erasure(value: Erasure | None) -> None:
    """Use `value` for every later request in this process (`hd dev`, tests); None forgets it."""
    global _installed
    with _lock:
        _installed = value


def run_at_once(svc: ErasureServices) -> Callable[[str], None]:
    """A dispatch that runs the request in this process before the API answers (`hd dev`)."""

    def dispatch(request_id: str) -> None:
        run(svc, request_id)

    return dispatch


def _build_aws(settings: ErasureSettings) -> Erasure:
    from hd_core.adapters.erasure_objects import s3_table_objects_from_url

    control = services()
    # Without a data location a request is still recorded and run: it completes when the organisation
    # declares no subject column, and otherwise fails saying what is missing (never a silent success).
    # No engine here: a writable table is erased by every fleet host from its own engine.duckdb
    # (hd_core/erasure_fleet.py); the request waits for each until it acks or EC2 says it is gone.
    svc = ErasureServices(store=control.store, trail=control.trail, keys=control.keys,
                          objects=s3_table_objects_from_url(settings.data_url) if settings.data_url else None,
                          version_retention=timedelta(hours=settings.version_retention_hours),
                          writable_on_hosts=True)
    return Erasure(services=svc, dispatch=_left_for_the_worker, fleet_instances=Ec2OnFirstUse())


class Ec2OnFirstUse:
    """`FleetMembership` over EC2, its client built when the worker first asks about a silent host.

    The API function shares this wiring and never asks EC2, so it never builds the client.
    """

    def __init__(self) -> None:
        self._membership: FleetMembership | None = None

    def describe_instance(self, instance_id: str) -> FleetInstance | None:
        """The instance, or None if EC2 does not know it; raises `FleetLookupUnavailable` if EC2 cannot answer."""
        if self._membership is None:
            import boto3

            from hd_core.adapters.ec2_fleet import Ec2FleetMembership

            self._membership = Ec2FleetMembership(boto3.client("ec2"))
        return self._membership.describe_instance(instance_id)


def _left_for_the_worker(request_id: str) -> None:
    """AWS: the request stays pending until the worker's next scheduled sweep runs it."""
