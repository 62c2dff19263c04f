"""This Lambda container's `ControlServices`, built on first use and kept for every later invocation.

Clients and key caches survive warm starts. `hd dev` assembles its own around the store its engine
host already uses and installs them with `install_services` (engine_host/devmode/control_server.py).
"""

from __future__ import annotations

import threading

from hd_core.control_settings import settings
from hd_core.services import ControlServices, build_services

_lock = threading.Lock()
_services: ControlServices | None = None


def services() -> ControlServices:
    """This process's services, built from the environment on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = build_services(settings())
        return _services


def install_services(value: ControlServices | None) -> None:
    """Use `value` for every later request in this process (`hd dev`, tests); None forgets them."""
    global _services
    with _lock:
        _services = value
