"""Credential checks on a small pool of their own, so a flood of logins cannot starve running statements.

Argon2 costs ~19 MiB and tens of milliseconds per check. On the statement pool, 400 concurrent wrong
passwords took RSS from 0.29 to 1.76 GB and made an open session's `SELECT 1` wait 10 s. Here at most
`threads` checks run and `queue` wait; an attempt beyond that is refused at once (53300), before
anything is hashed, so memory and CPU spent on authentication stay bounded whatever arrives.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from engine_host.pipeline.errors import QueryError
from hd_core.models import Principal

# (user name, password, client address) -> the principal, or AuthenticationFailed
Authenticate = Callable[[str, str, str | None], Principal]


class CredentialVerifier:
    """Runs `authenticate` on `threads` threads with at most `queue` attempts waiting."""

    def __init__(self, authenticate: Authenticate, *, threads: int, queue: int):
        self.authenticate = authenticate  # the check itself (API key or JWT): any callable of this shape
        self._threads = threads
        self._capacity = threads + queue
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hd-auth")
        self._pending = 0  # checks running or waiting; changed on the event loop only

    @property
    def pending(self) -> int:
        return self._pending

    async def verify(self, user: str, password: str, address: str | None) -> Principal:
        """The principal the password proves; AuthenticationFailed, or 53300 when too many checks are pending."""
        if self._pending >= self._capacity:
            raise QueryError(
                "53300", "HD_ERR_AUTH_BUSY",
                f"too many authentication attempts in progress ({self._threads} being checked, "
                f"{self._pending - self._threads} waiting)",
                hint="Retry after a short backoff; a host under a login flood refuses the excess at once.",
            )
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, functools.partial(self.authenticate, user, password, address))
        finally:
            self._pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
