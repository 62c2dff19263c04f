"""Credits, the usage meter (buckets, flush, month-to-date without double counting) and the quota check."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from hd_core.errors import HdError, QuotaExceeded
from hd_core.metering import UsageMeter, check_quota, credits_for, estimate_credits
from hd_core.models import UsageDelta

T0 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


class FakeUsageStore:
    """In-memory stand-in for the ControlStore metering methods (unit tests only)."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, date, str, str | None], UsageDelta] = {}
        self.fail_next = 0
        self.reads = 0
        self.lock = threading.Lock()

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise OSError("control store unavailable")
            for d in deltas:
                key = (d.org_id, d.day, d.user_id, d.agent_id)
                old = self.buckets.get(key)
                self.buckets[key] = (
                    d
                    if old is None
                    else replace(
                        old,
                        statements=old.statements + d.statements,
                        credits=old.credits + d.credits,
                        rows=old.rows + d.rows,
                        bytes=old.bytes + d.bytes,
                    )
                )

    def usage(self, org_id: str, start: date, end: date) -> list[UsageDelta]:
        with self.lock:
            self.reads += 1
            return [
                d
                for k, d in sorted(self.buckets.items(), key=lambda kv: str(kv[0]))
                if k[0] == org_id and start <= k[1] <= end
            ]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- credits ------------------------------------------------------------------------------------


def test_a_trivial_statement_costs_the_statement_fee() -> None:
    assert credits_for(0, 0, 0, 0.0) == 0.001


def test_credit_formula() -> None:
    # 0.001 + 20M rows scanned (2) + 0.5 GB returned (0.5) + 36 s of engine time (0.01)
    assert credits_for(20_000_000, 1_000, 500_000_000, 36_000.0) == 2.511


def test_rows_returned_count_as_scanned_when_the_estimate_is_lower() -> None:
    assert credits_for(0, 10_000_000, 0, 0.0) == 1.001


def test_negative_and_non_finite_inputs_count_as_zero() -> None:
    assert credits_for(-5, -1, -1, float("nan")) == 0.001


def test_estimate_is_the_same_formula_before_execution() -> None:
    assert estimate_credits(5_000_000) == credits_for(5_000_000, 0, 0, 0.0) == 0.501


# --- quota --------------------------------------------------------------------------------------


def test_no_limit_means_no_quota() -> None:
    check_quota(None, 1e12, 1e12)


def test_within_the_limit_passes() -> None:
    check_quota(10.0, 9.0, 1.0)


def test_over_the_limit_raises_with_what_to_do() -> None:
    with pytest.raises(QuotaExceeded) as caught:
        check_quota(10.0, 9.5, 0.6)
    error = caught.value
    assert isinstance(error, HdError) and error.code == "HD_ERR_QUOTA_EXCEEDED"
    assert "9.500 of 10.000" in str(error)
    assert "ask an organisation admin to raise the monthly credit limit" in str(error)
    assert (error.used, error.limit, error.estimate) == (9.5, 10.0, 0.6)


# --- usage meter --------------------------------------------------------------------------------


def test_records_sum_into_buckets_per_org_day_user_agent() -> None:
    meter = UsageMeter(FakeUsageStore())
    meter.record("org_a", "usr_1", "agt_1", 0.5, 10, 100, T0)
    meter.record("org_a", "usr_1", "agt_1", 0.25, 5, 50, T0 + timedelta(hours=1))
    meter.record("org_a", "usr_1", None, 1.0, 1, 1, T0)
    meter.record("org_b", "usr_2", None, 2.0, 2, 2, T0)
    assert meter.pending() == [
        UsageDelta("org_a", date(2026, 3, 15), "usr_1", None, 1, 1.0, 1, 1),
        UsageDelta("org_a", date(2026, 3, 15), "usr_1", "agt_1", 2, 0.75, 15, 150),
        UsageDelta("org_b", date(2026, 3, 15), "usr_2", None, 1, 2.0, 2, 2),
    ]


def test_days_are_utc_days() -> None:
    meter = UsageMeter(FakeUsageStore())
    late_evening_in_new_york = datetime(2026, 3, 15, 22, 0, tzinfo=timezone(timedelta(hours=-4)))
    meter.record("org_a", "usr_1", None, 1.0, 0, 0, late_evening_in_new_york)
    assert meter.pending()[0].day == date(2026, 3, 16)


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError):
        UsageMeter(FakeUsageStore()).record("org_a", "usr_1", None, 1.0, 0, 0, datetime(2026, 3, 15))


def test_flush_writes_pending_deltas_once() -> None:
    store = FakeUsageStore()
    meter = UsageMeter(store)
    meter.record("org_a", "usr_1", None, 1.0, 3, 30, T0)
    assert meter.flush() == 1
    assert meter.flush() == 0
    assert meter.pending() == []
    assert list(store.buckets.values()) == [UsageDelta("org_a", date(2026, 3, 15), "usr_1", None, 1, 1.0, 3, 30)]


def test_a_failed_flush_keeps_the_deltas_for_the_next_one() -> None:
    store = FakeUsageStore()
    meter = UsageMeter(store)
    meter.record("org_a", "usr_1", None, 1.0, 1, 1, T0)
    store.fail_next = 1
    with pytest.raises(OSError):
        meter.flush()
    meter.record("org_a", "usr_1", None, 2.0, 1, 1, T0)
    assert meter.flush() == 1
    (stored,) = store.buckets.values()
    assert (stored.statements, stored.credits) == (2, 3.0)


def test_month_to_date_counts_store_and_local_usage_once() -> None:
    store = FakeUsageStore()
    store.add_usage([UsageDelta("org_a", date(2026, 3, 1), "usr_9", None, 1, 5.0, 0, 0)])  # another host
    clock = FakeClock()
    meter = UsageMeter(store, refresh_seconds=60, clock=clock)
    meter.record("org_a", "usr_1", None, 1.0, 0, 0, T0)  # pending before the first read
    assert meter.month_to_date_credits("org_a", T0) == 6.0
    meter.record("org_a", "usr_1", None, 2.0, 0, 0, T0)  # recorded after the read
    assert meter.month_to_date_credits("org_a", T0) == 8.0
    meter.flush()  # now in the store, but not in the cached figure
    assert meter.month_to_date_credits("org_a", T0) == 8.0
    assert store.reads == 1
    clock.now += 61  # the refresh sees the flushed usage, and stops counting it locally
    assert meter.month_to_date_credits("org_a", T0) == 8.0
    assert store.reads == 2
    meter.record("org_a", "usr_1", None, 0.5, 0, 0, T0)
    clock.now += 61
    assert meter.month_to_date_credits("org_a", T0) == 8.5  # pending at refresh time: counted locally


def test_month_to_date_is_per_utc_month_and_org() -> None:
    store = FakeUsageStore()
    meter = UsageMeter(store)
    end_of_february = datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC)
    meter.record("org_a", "usr_1", None, 1.0, 0, 0, end_of_february)
    meter.record("org_a", "usr_1", None, 2.0, 0, 0, end_of_february + timedelta(seconds=1))
    meter.record("org_b", "usr_2", None, 4.0, 0, 0, T0)
    meter.flush()
    meter.record("org_a", "usr_1", None, 8.0, 0, 0, datetime(2026, 3, 31, 23, 59, tzinfo=UTC))
    assert meter.month_to_date_credits("org_a", end_of_february) == 1.0
    assert meter.month_to_date_credits("org_a", T0) == 10.0
    assert meter.month_to_date_credits("org_b", T0) == 4.0
    assert meter.month_to_date_credits("org_a", datetime(2026, 4, 1, tzinfo=UTC)) == 0.0


def test_a_failing_store_read_keeps_the_stale_figure_plus_local_usage() -> None:
    store = FakeUsageStore()
    clock = FakeClock()
    meter = UsageMeter(store, refresh_seconds=60, clock=clock)
    store.add_usage([UsageDelta("org_a", date(2026, 3, 1), "usr_9", None, 1, 5.0, 0, 0)])
    assert meter.month_to_date_credits("org_a", T0) == 5.0

    def broken(*_: object) -> list[UsageDelta]:
        raise OSError("control store unavailable")

    store.usage = broken  # type: ignore[method-assign,assignment]
    meter.record("org_a", "usr_1", None, 1.0, 0, 0, T0)
    clock.now += 61
    assert meter.month_to_date_credits("org_a", T0) == 6.0


def test_first_read_failure_propagates() -> None:
    store = FakeUsageStore()
    store.usage = lambda *_: (_ for _ in ()).throw(OSError("down"))  # type: ignore[method-assign]
    with pytest.raises(OSError):
        UsageMeter(store).month_to_date_credits("org_a", T0)


def test_concurrent_records_flushes_and_reads_lose_and_double_nothing() -> None:
    store = FakeUsageStore()
    clock = FakeClock()
    meter = UsageMeter(store, refresh_seconds=0, clock=clock)  # refresh on every read
    threads, per_thread = 8, 500
    stop = threading.Event()
    observed: list[float] = []

    def recorder(t: int) -> None:
        for i in range(per_thread):
            meter.record("org_a", f"usr_{t}", None, 0.001, 1, 1, T0 + timedelta(seconds=i))

    def flusher() -> None:
        while not stop.is_set():
            meter.flush()

    def reader() -> None:
        while not stop.is_set():
            observed.append(meter.month_to_date_credits("org_a", T0))

    background = [threading.Thread(target=flusher), threading.Thread(target=reader)]
    workers = [threading.Thread(target=recorder, args=(t,)) for t in range(threads)]
    for thread in background + workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    for thread in background:
        thread.join()
    meter.flush()
    total = threads * per_thread * 0.001
    assert sum(d.statements for d in store.buckets.values()) == threads * per_thread
    assert sum(d.credits for d in store.buckets.values()) == pytest.approx(total)
    assert meter.month_to_date_credits("org_a", T0) == pytest.approx(total)
    # Never more than what was recorded, and never going back: nothing counted twice or dropped on the way.
    assert max(observed, default=0.0) <= total + 1e-9
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(observed))
