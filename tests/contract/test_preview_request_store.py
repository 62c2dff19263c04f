"""The `PreviewRequestStore` part of the control store contract (fleet policy previews), on every adapter."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hd_core.errors import Conflict
from hd_core.policy_previews import ANSWERED, CLAIMED, DRY_RUN, FAILED, TTL, PreviewRequest

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _request(request_id: str = "prv_1", at: datetime = T0) -> PreviewRequest:
    return PreviewRequest(request_id=request_id, org_id="org_1", kind=DRY_RUN, requested_by="usr_admin",
                          question={"table": "main.patients", "document": {"kind": "mask", "column": "ssn"}},
                          created_at=at, expires_at=at + TTL)


def test_a_request_round_trips_and_is_never_overwritten(store: Any) -> None:
    request = _request()
    store.put_preview_request(request)
    assert store.get_preview_request("prv_1") == request
    assert store.get_preview_request("prv_missing") is None
    with pytest.raises(Conflict):
        store.put_preview_request(replace(request, requested_by="usr_other"))


def test_pending_lists_unclaimed_unexpired_requests_oldest_first(store: Any) -> None:
    later, earlier = _request("prv_b", T0 + timedelta(seconds=5)), _request("prv_a", T0)
    expired = _request("prv_old", T0 - TTL - timedelta(seconds=1))
    for request in (later, earlier, expired):
        store.put_preview_request(request)
    assert [r.request_id for r in store.pending_preview_requests(T0 + timedelta(seconds=6))] == ["prv_a", "prv_b"]
    assert store.claim_preview_request("prv_a", "i-1", T0 + timedelta(seconds=6)) is not None
    assert [r.request_id for r in store.pending_preview_requests(T0 + timedelta(seconds=6))] == ["prv_b"]
    assert store.pending_preview_requests(T0 + TTL + timedelta(seconds=6)) == []


def test_exactly_one_host_claims_a_request_and_only_it_may_answer(store: Any) -> None:
    store.put_preview_request(_request())
    winners: list[str] = []
    barrier = threading.Barrier(4)

    def claim(host: str) -> None:
        barrier.wait()
        if store.claim_preview_request("prv_1", host, T0) is not None:
            winners.append(host)

    threads = [threading.Thread(target=claim, args=(f"i-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    claimed = store.get_preview_request("prv_1")
    assert claimed.status == CLAIMED and claimed.host_id == winners[0]
    loser = next(f"i-{n}" for n in range(4) if f"i-{n}" != winners[0])
    assert store.answer_preview_request("prv_1", loser, ANSWERED, {"rows": {}}) is False
    assert store.answer_preview_request("prv_1", winners[0], ANSWERED, {"rows": {"Owner": [3, 1]}}) is True
    answered = store.get_preview_request("prv_1")
    assert answered.status == ANSWERED and answered.answer == {"rows": {"Owner": [3, 1]}}
    assert store.answer_preview_request("prv_1", winners[0], FAILED, {}) is False  # answered once


def test_an_expired_or_unknown_request_cannot_be_claimed(store: Any) -> None:
    store.put_preview_request(_request())
    assert store.claim_preview_request("prv_1", "i-1", T0 + TTL) is None
    assert store.claim_preview_request("prv_missing", "i-1", T0) is None
    assert store.answer_preview_request("prv_missing", "i-1", ANSWERED, {}) is False
