"""Asking the fleet for a policy preview (hd_core/policy_previews.py): the wait, the answer, the failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hd_core import policy_previews
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.policy_previews import (
    DRY_RUN,
    FAILED,
    PreviewFailed,
    PreviewRequest,
    PreviewTimeout,
    ask_fleet,
    serve_pending,
)


class Clock:
    """A monotonic clock that only moves when the waiting caller sleeps; a host may act during a sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.host_acts_after: int | None = None
        self.host: object = None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.host_acts_after is not None and len(self.sleeps) == self.host_acts_after:
            assert callable(self.host)
            self.host()


@pytest.fixture
def store(tmp_path: Path) -> SqliteControlStore:
    return SqliteControlStore(tmp_path / "control.sqlite3")


def _ask(store: SqliteControlStore, clock: Clock, wait: float = 10.0) -> dict[str, object]:
    return ask_fleet(store, org_id="org_1", requested_by="usr_admin", kind=DRY_RUN, question={"table": "main.t"},
                     wait_seconds=wait, sleep=clock.sleep, clock=clock.monotonic)


def test_the_answer_of_the_host_that_claimed_the_request_is_returned(store: SqliteControlStore) -> None:
    clock = Clock()
    seen: list[PreviewRequest] = []

    def answer(request: PreviewRequest) -> dict[str, object]:
        seen.append(request)
        return {"rows": {"Owner": [2, 1]}}

    def host() -> None:
        assert serve_pending(store, "i-1", answer) == 1

    clock.host, clock.host_acts_after = host, 3

    assert _ask(store, clock) == {"rows": {"Owner": [2, 1]}}
    assert seen[0].org_id == "org_1" and seen[0].question == {"table": "main.t"}
    assert clock.sleeps == [0.1, 0.2, 0.4]  # backoff from 100 ms


def test_no_answer_within_the_wait_is_a_timeout_with_a_hint_and_the_wait_is_bounded(
        store: SqliteControlStore) -> None:
    clock = Clock()
    with pytest.raises(PreviewTimeout, match="no engine host answered within 10s") as timeout:
        _ask(store, clock)

    assert timeout.value.code == "HD_ERR_PREVIEW_TIMEOUT"
    assert clock.now == pytest.approx(10.0) and max(clock.sleeps) == policy_previews.MAX_POLL_SECONDS
    assert len(store.pending_preview_requests(policy_previews.utc_now())) == 1  # left to expire, never answered


def test_a_host_that_fails_answers_with_the_failure_instead_of_leaving_the_caller_to_time_out(
        store: SqliteControlStore) -> None:
    clock = Clock()

    def broken(request: PreviewRequest) -> dict[str, object]:
        raise RuntimeError("catalog unreadable")

    clock.host, clock.host_acts_after = (lambda: serve_pending(store, "i-1", broken)), 1
    with pytest.raises(PreviewFailed, match="i-1 could not compute the preview: RuntimeError: catalog unreadable"):
        _ask(store, clock)
    assert clock.now < 1.0
    failed = store.pending_preview_requests(policy_previews.utc_now())
    assert failed == []
    assert [r.status for r in _all(store)] == [FAILED]


def _all(store: SqliteControlStore) -> list[PreviewRequest]:
    with sqlite3.connect(store.path) as raw:  # every request, whatever its state: no store method lists them all
        ids = [row[0] for row in raw.execute("SELECT request_id FROM preview_requests")]
    found = [store.get_preview_request(request_id) for request_id in ids]
    return [request for request in found if request is not None]
