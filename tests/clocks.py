"""A wall clock for tests: it moves only when the test says so."""

from __future__ import annotations

from datetime import datetime, timedelta


class HandWoundClock:
    """Call it for the current time; `advance(minutes=15)` moves it forward."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)
