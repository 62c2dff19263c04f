"""Requests resolved at the same time are each answered as the identity that sent them.

`hd dev` serves the Lambdas from the threads of one process. Powertools keeps the event being
resolved on a class attribute shared by every resolver, so the local dispatcher must resolve one
event at a time; without that, a request was seen answered with another caller's identity (and
one with no credential at all got a 200). The interpreter's switch interval is shortened here so
that threads interleave inside a request as often as they can: with the dispatcher unserialised
this test fails within a few thousand requests.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine_host.devmode.demo_policies import DEMO_PEOPLE, install_demo
from tests.integration.functions.conftest import ControlApi, _control, _local_adapters

REQUESTS = 20_000
THREADS = 16


@dataclass(frozen=True)
class Caller:
    name: str
    key: str | None  # None: no credential at all
    user_id: str | None
    org_id: str | None


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlApi]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    yield from _control("sqlite", _local_adapters(tmp_path))


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _callers(api: ControlApi, state_dir: Path) -> list[Caller]:
    files = install_demo(api.services.store, api.services.hasher, state_dir)
    people = [Caller(person.name, files[person.name].read_text().strip(),
                     f"usr_demo_{person.name.replace('-', '_')}", person.org_id) for person in DEMO_PEOPLE]
    return [Caller("owner", api.owner_key, api.owner_id, api.org_id), *people, Caller("anonymous", None, None, None)]


def _wrong_answer(api: ControlApi, caller: Caller, n: int) -> str | None:
    """Send request `n` as `caller`; why its answer is not the caller's own, or None when it is."""
    own_record = n % 2 == 0 and caller.org_id is not None
    path = f"/v1/organizations/{caller.org_id}/users/{caller.user_id}" if own_record else "/v1/auth/whoami"
    reply = api.call("GET", path, key=caller.key, anonymous=caller.key is None)
    if caller.key is None:
        return None if reply.status == 401 else f"no credential answered {reply.status}"
    if reply.status != 200:
        return f"{caller.name} answered {reply.status}"
    me = reply.json()
    if me.get("user_id") != caller.user_id or me.get("org_id") != caller.org_id:
        return f"{caller.name} answered as {me.get('user_id')} of {me.get('org_id')}"
    return None


@pytest.mark.slow  # twenty thousand requests: CI runs it (`pytest -m slow`)
@pytest.mark.usefixtures("fast_thread_switches")
def test_twenty_thousand_concurrent_requests_are_each_answered_as_their_sender(
    api: ControlApi, tmp_path: Path
) -> None:
    callers = _callers(api, tmp_path)
    assert len({caller.org_id for caller in callers if caller.org_id}) >= 2 and len(callers) >= 4
    wrong: list[str] = []
    answered: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def drive(worker: int) -> None:
        start.wait()
        for n in range(worker, REQUESTS, THREADS):
            caller = callers[n % len(callers)]  # every thread interleaves every identity
            problem = _wrong_answer(api, caller, n)
            with lock:
                answered[caller.name] += 1
                if problem is not None:
                    wrong.append(problem)

    threads = [threading.Thread(target=drive, args=(worker,)) for worker in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(answered.values()) == REQUESTS and len(answered) == len(callers)
    assert wrong == [], f"{len(wrong)} of {REQUESTS} answered for the wrong identity: {Counter(wrong).most_common(5)}"
