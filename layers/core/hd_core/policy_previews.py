"""Policy previews answered by the fleet: how a control plane with no engine (a Lambda) counts and explains.

A dry run's row counts and an explanation need an engine (hd_core/policy_preview.py). `hd dev`
runs one beside its control API; in AWS the policies Lambda has none, so it stores the question
as a preview request in the control store, an engine host of the fleet claims it (a conditional
write, so exactly one host answers), runs the engine's own preview code under the requesting
organisation and writes the answer back, and the Lambda polls for it for at most
`WAIT_SECONDS`. No answer in time is a 503 `HD_ERR_PREVIEW_TIMEOUT`, never a guessed count.

A request holds the question (the candidate policy document, or the user and SQL, with the
caller's session attributes) and an answer holds counts, masks and plans only, never a row
value. Both expire after `TTL`: DynamoDB deletes them by TTL, SQLite when the next one is stored.

The fleet path is switched on by `HD_POLICY_PREVIEWS=fleet` (the CDK app sets it on the policies
function): a control API without it and without an engine answers as before (`row_counts:
"unavailable"`, explain 409), since nothing would ever claim its requests.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from hd_core.fleet import FleetLookupUnavailable
from hd_core.models import utc_now
from hd_core.records import RecordCodec

log = logging.getLogger(__name__)

PREVIEWS_ENV = "HD_POLICY_PREVIEWS"
FLEET = "fleet"
DRY_RUN = "dry_run"
EXPLAIN = "explain"
PENDING, CLAIMED, ANSWERED, FAILED = "pending", "claimed", "answered", "failed"
# API Gateway gives up at 29 s and the policies function at 20 s: the wait stays well inside both.
WAIT_SECONDS = 10.0
FIRST_POLL_SECONDS = 0.1
MAX_POLL_SECONDS = 1.0
# Past its wait nobody reads a request; a few minutes more let a late host's answer land harmlessly.
TTL = timedelta(minutes=5)
POLL_INTERVAL_SECONDS = 1.0  # how often a fleet host looks for pending requests
_TIMEOUT_HINT = ("no engine host answered within {seconds:.0f}s: check that the fleet has healthy hosts "
                 "(the EngineNoHealthyHost alarm) and retry, or preview against hd dev")


class PreviewTimeout(FleetLookupUnavailable):
    """No engine host answered a preview in time (503): the fleet is down, busy or draining."""

    code = "HD_ERR_PREVIEW_TIMEOUT"


class PreviewFailed(FleetLookupUnavailable):
    """The engine host that claimed a preview could not compute it (503); it said why in its log."""

    code = "HD_ERR_PREVIEW_FAILED"


@dataclass(frozen=True)
class PreviewRequest:
    """One question to the fleet and, once a host has answered, its answer."""

    request_id: str
    org_id: str
    kind: str  # DRY_RUN or EXPLAIN
    requested_by: str
    question: dict[str, object]
    created_at: datetime
    expires_at: datetime
    status: str = PENDING
    host_id: str | None = None
    answer: dict[str, object] = field(default_factory=dict)


PREVIEW_REQUESTS = RecordCodec(PreviewRequest)


class PreviewRequestStore(Protocol):
    """Where preview requests wait for a host (the control store: SQLite locally, DynamoDB in AWS)."""

    def put_preview_request(self, request: PreviewRequest) -> None:
        """Store a new pending request; raises `Conflict` if its id exists."""
        ...

    def get_preview_request(self, request_id: str) -> PreviewRequest | None:
        """The request with this id (answered or not), or None."""
        ...

    def pending_preview_requests(self, at: datetime) -> list[PreviewRequest]:
        """Requests no host has claimed that have not expired at `at`, oldest first."""
        ...

    def claim_preview_request(self, request_id: str, host_id: str, at: datetime) -> PreviewRequest | None:
        """Mark a pending, unexpired request as `host_id`'s; the claimed request, or None if another host won."""
        ...

    def answer_preview_request(self, request_id: str, host_id: str, status: str, answer: dict[str, object]) -> bool:
        """Store `host_id`'s answer (ANSWERED or FAILED) to the request it claimed; False if it is not its claim."""
        ...


def fleet_enabled() -> bool:
    """Whether this control plane asks the fleet (`HD_POLICY_PREVIEWS=fleet`, set on the policies function)."""
    return os.environ.get(PREVIEWS_ENV, "").strip().lower() == FLEET


def ask_fleet(
    store: PreviewRequestStore, *, org_id: str, requested_by: str, kind: str, question: dict[str, object],
    wait_seconds: float | None = None, now: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> dict[str, object]:
    """Store a preview request, wait (polling with backoff) for a host's answer and return it.

    Raises `PreviewTimeout` when no host answered within `wait_seconds`, `PreviewFailed` when the host failed.
    """
    wait_seconds = WAIT_SECONDS if wait_seconds is None else wait_seconds
    created = now()
    request = PreviewRequest(request_id=f"prv_{secrets.token_hex(12)}", org_id=org_id, kind=kind,
                             requested_by=requested_by, question=question, created_at=created,
                             expires_at=created + TTL)
    store.put_preview_request(request)
    deadline = clock() + wait_seconds
    delay = FIRST_POLL_SECONDS
    while True:
        stored = store.get_preview_request(request.request_id)
        if stored is not None and stored.status == ANSWERED:
            return stored.answer
        if stored is not None and stored.status == FAILED:
            raise PreviewFailed(f"engine host {stored.host_id} could not compute the preview: "
                                f"{stored.answer.get('message', 'see its log')}")
        remaining = deadline - clock()
        if remaining <= 0:
            raise PreviewTimeout(_TIMEOUT_HINT.format(seconds=wait_seconds))
        sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_POLL_SECONDS)


def serve_pending(
    store: PreviewRequestStore, host_id: str, answer: Callable[[PreviewRequest], dict[str, object]],
    *, now: Callable[[], datetime] = utc_now,
) -> int:
    """Claim and answer every pending request this host wins; the number answered (a host's poll tick).

    `answer` computes the answer of one claimed request; an exception it raises is stored as a failure
    (its type and message, which the engine's errors keep free of row values) so the caller is not left
    waiting for the timeout.
    """
    answered = 0
    for pending in store.pending_preview_requests(now()):
        claimed = store.claim_preview_request(pending.request_id, host_id, now())
        if claimed is None:
            continue  # another host won it
        try:
            result, status = answer(claimed), ANSWERED
        except Exception as error:  # reported to the waiting caller; the next request is still served
            log.exception("preview request %s failed", claimed.request_id)
            result, status = {"message": f"{type(error).__name__}: {error}"[:500]}, FAILED
        if store.answer_preview_request(claimed.request_id, host_id, status, result):
            answered += 1
    return answered


def claimed_by(request: PreviewRequest, host_id: str) -> PreviewRequest:
    """`request` as claimed by `host_id` (the stores' shared transition)."""
    return replace(request, status=CLAIMED, host_id=host_id)


def question_field(request: PreviewRequest, name: str) -> Any:
    """One field of a request's question; a malformed request (written by no Lambda of ours) is refused."""
    if name not in request.question:
        raise ValueError(f"preview request {request.request_id} has no {name!r}")
    return request.question[name]
