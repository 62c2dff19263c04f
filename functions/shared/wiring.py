"""This Lambda container's `ControlServices`, built on first use and kept for every later invocation.

Clients and key caches survive warm starts. `hd dev` assembles its own around the store its engine
host already uses and installs them with `install_services` (engine_host/devmode/control_server.py).

The container's region pin (`require_region_pin`) is checked on its first request and its verdict
kept: a bucket, table or key in another region stays there until the deployment changes, which
starts new containers. A region that could not be learnt is asked again on the next request.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from hd_core.control_plane_pin import PinnedRegionSettings, control_plane_resources
from hd_core.control_settings import settings
from hd_core.region_pinning import RegionMismatch, require_pinned
from hd_core.services import ControlServices, build_services

if TYPE_CHECKING:
    from hd_core.adapters.aws_regions import AwsRegionLookup

_lock = threading.Lock()
_services: ControlServices | None = None
_pin_lock = threading.Lock()
_pin_verdict: RegionMismatch | bool = False  # True: holds; False: not checked yet; a RegionMismatch: refused


def services() -> ControlServices:
    """This process's services, built from the environment on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(settings())
        return _services


def install_services(value: ControlServices | None) -> None:
    """Use `value` for every later request in this process (`hd dev`, tests); None forgets them.

    The region pin is checked again on the next request, against the environment then.
    """
    global _services, _pin_verdict
    with _lock:
        _services = value
    with _pin_lock:
        _pin_verdict = False


def require_region_pin() -> None:
    """Raise `RegionMismatch` while this container's table, audit bucket or keys are outside its pinned region."""
    global _pin_verdict
    with _pin_lock:
        if _pin_verdict is True:
            return
        if isinstance(_pin_verdict, RegionMismatch):  # a fresh error each time: no traceback piles up
            raise RegionMismatch(_pin_verdict.region, _pin_verdict.differences)
        resources = control_plane_resources(settings())
        if resources:
            try:
                require_pinned(PinnedRegionSettings().region, resources, _aws_region_lookup())
            except RegionMismatch as refused:
                if refused.settled:
                    _pin_verdict = refused
                raise
        _pin_verdict = True


def _aws_region_lookup() -> AwsRegionLookup:
    # boto3 only here, like the AWS services: the clients' region is the one the services' clients use.
    import boto3

    from hd_core.adapters.aws_regions import AwsRegionLookup

    return AwsRegionLookup(s3=boto3.client("s3"), dynamodb=boto3.client("dynamodb"), kms=boto3.client("kms"))
