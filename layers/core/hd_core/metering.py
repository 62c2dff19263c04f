"""Credits, usage metering and the monthly quota check.

A statement costs (`credits_for`):

    0.001                                   per statement
  + rows scanned           / 10,000,000     (1 credit per 10M rows; the planner's estimate,
                                             but never less than the rows returned)
  + bytes returned         / 1,000,000,000  (1 credit per GB sent to the client)
  + engine time in ms      / 3,600,000      (1 credit per engine-hour)

rounded to 6 decimals. Negative or non-finite inputs count as 0. Before execution the quota check
uses `estimate_credits`, the same formula with nothing returned and no time spent yet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from hd_core.errors import QuotaExceeded
from hd_core.models import UsageDelta
from hd_core.ports import UsageStore

CREDITS_PER_STATEMENT = 0.001
ROWS_SCANNED_PER_CREDIT = 10_000_000
BYTES_RETURNED_PER_CREDIT = 1_000_000_000
ENGINE_MS_PER_CREDIT = 3_600_000
CREDIT_DECIMALS = 6


def _non_negative(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def credits_for(rows_scanned_estimate: int, rows_returned: int, bytes_returned: int, elapsed_ms: float) -> float:
    """The credits one executed statement costs (see the module docstring for the formula)."""
    rows_scanned = max(_non_negative(rows_scanned_estimate), _non_negative(rows_returned))
    credits = (
        CREDITS_PER_STATEMENT
        + rows_scanned / ROWS_SCANNED_PER_CREDIT
        + _non_negative(bytes_returned) / BYTES_RETURNED_PER_CREDIT
        + _non_negative(elapsed_ms) / ENGINE_MS_PER_CREDIT
    )
    return round(credits, CREDIT_DECIMALS)


def estimate_credits(rows_scanned_estimate: int) -> float:
    """The credits a statement is expected to cost before it runs, for the quota check."""
    return credits_for(rows_scanned_estimate, 0, 0, 0.0)


def check_quota(limit_credits: float | None, used: float, estimate: float) -> None:
    """Raise `QuotaExceeded` if `used + estimate` would pass the monthly limit; `None` means no limit."""
    if limit_credits is None or used + estimate <= limit_credits:
        return
    raise QuotaExceeded(
        f"monthly credit limit reached: {used:,.3f} of {limit_credits:,.3f} credits used this month, and this "
        f"statement needs about {estimate:,.3f} more; ask an organisation admin to raise the monthly credit limit",
        used=used,
        limit=limit_credits,
        estimate=estimate,
    )


_BucketKey = tuple[str, date, str, str | None]
_OrgMonth = tuple[str, date]


@dataclass
class _Bucket:
    statements: int = 0
    credits: float = 0.0
    rows: int = 0
    bytes: int = 0

    def add(self, other: _Bucket) -> None:
        self.statements += other.statements
        self.credits += other.credits
        self.rows += other.rows
        self.bytes += other.bytes


@dataclass
class _StoreFigure:
    credits: float
    read_at: float


def _month_start(day: date) -> date:
    return day.replace(day=1)


def _month_end(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def _utc_day(at: datetime) -> date:
    if at.tzinfo is None:
        raise ValueError("usage timestamps must be timezone-aware")
    return at.astimezone(UTC).date()


class UsageMeter:
    """Accumulates usage in memory per (org, UTC day, user, agent) and flushes it to the control store.

    Month-to-date credits are the store's figure (read at most every `refresh_seconds`) plus what
    this meter recorded that the figure cannot contain yet. A store read and a flush never overlap,
    so each recorded credit is counted exactly once: in the figure, or in the local tally.
    """

    def __init__(
        self,
        store: UsageStore,
        *,
        refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()  # guards the in-memory state; never held during store calls
        self._store_lock = threading.Lock()  # serialises flushes and store reads
        self._pending: dict[_BucketKey, _Bucket] = {}
        self._figures: dict[_OrgMonth, _StoreFigure] = {}
        # Credits recorded here that the cached store figure of their (org, month) does not include.
        self._unseen: dict[_OrgMonth, float] = {}

    def record(
        self,
        org_id: str,
        user_id: str,
        agent_id: str | None,
        credits: float,
        rows: int,
        bytes: int,  # the UsageDelta field name, shadowing the builtin on purpose
        at: datetime,
    ) -> None:
        """Count one statement's consumption in the bucket of its UTC day."""
        day = _utc_day(at)
        delta = _Bucket(1, credits, rows, bytes)
        with self._lock:
            self._pending.setdefault((org_id, day, user_id, agent_id), _Bucket()).add(delta)
            month = (org_id, _month_start(day))
            self._unseen[month] = self._unseen.get(month, 0.0) + credits

    def pending(self) -> list[UsageDelta]:
        """The deltas not yet stored, ordered by org, day, user, agent."""
        with self._lock:
            return [_delta(key, bucket) for key, bucket in sorted(self._pending.items(), key=_sort_key)]

    def flush(self) -> int:
        """Write pending deltas with `store.add_usage`; on failure they stay pending and the error propagates.

        Returns how many buckets were written.
        """
        with self._store_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            try:
                self._store.add_usage([_delta(key, bucket) for key, bucket in sorted(batch.items(), key=_sort_key)])
            except BaseException:
                with self._lock:
                    for key, bucket in batch.items():
                        self._pending.setdefault(key, _Bucket()).add(bucket)
                raise
            return len(batch)

    def month_to_date_credits(self, org_id: str, now: datetime) -> float:
        """Credits the organisation used in the UTC month of `now`, across every host that flushed."""
        month_start = _month_start(_utc_day(now))
        key = (org_id, month_start)
        with self._lock:
            figure = self._figures.get(key)
            if figure is not None and self._clock() - figure.read_at < self._refresh_seconds:
                return figure.credits + self._unseen.get(key, 0.0)
        self._refresh(org_id, month_start)
        with self._lock:
            return self._figures[key].credits + self._unseen.get(key, 0.0)

    def _refresh(self, org_id: str, month_start: date) -> None:
        key = (org_id, month_start)
        with self._store_lock:
            with self._lock:
                figure = self._figures.get(key)
                if figure is not None and self._clock() - figure.read_at < self._refresh_seconds:
                    return  # another thread refreshed while we waited
            try:
                buckets = self._store.usage(org_id, month_start, _month_end(month_start))
            except Exception:
                with self._lock:
                    if key not in self._figures:
                        raise
                    # Keep the stale figure (local usage is still counted) and retry after the interval.
                    self._figures[key].read_at = self._clock()
                return
            stored = sum(bucket.credits for bucket in buckets)
            with self._lock:
                # No flush runs during the read, so exactly the pending credits are missing from it.
                self._unseen[key] = sum(
                    bucket.credits
                    for (org, day, _, _), bucket in self._pending.items()
                    if org == org_id and _month_start(day) == month_start
                )
                self._figures[key] = _StoreFigure(stored, self._clock())
                self._forget_older_months(month_start)

    def _forget_older_months(self, month_start: date) -> None:
        # The previous month stays: a caller whose `now` is a little behind may still ask for it.
        keep_from = _month_start(month_start - timedelta(days=1))
        for key in [key for key in self._figures if key[1] < keep_from]:
            del self._figures[key]
        for key in [key for key in self._unseen if key[1] < keep_from]:
            del self._unseen[key]


def _sort_key(item: tuple[_BucketKey, _Bucket]) -> tuple[str, date, str, str]:
    org_id, day, user_id, agent_id = item[0]
    return org_id, day, user_id, agent_id or ""


def _delta(key: _BucketKey, bucket: _Bucket) -> UsageDelta:
    org_id, day, user_id, agent_id = key
    return UsageDelta(org_id, day, user_id, agent_id, bucket.statements, bucket.credits, bucket.rows, bucket.bytes)
