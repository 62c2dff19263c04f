"""LocalFolderAuditSink under concurrent writers: records queued while one is written go out in one append.

The hash chain stays ordered and byte-identical to `chained_line`, a failed append fails exactly the
records of its batch, and a record that cannot be serialised fails only its own writer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from hd_core.adapters import local_audit
from hd_core.adapters.local_audit import LocalFolderAuditSink
from hd_core.errors import AuditWriteFailed
from hd_core.iam_audit import GENESIS_HASH
from hd_core.query_audit_chain import chained_line

TS = "2026-03-01T12:00:00.000Z"


def _record(n: int) -> dict[str, object]:
    return {"ts": TS, "query_id": f"q{n}", "sql_redacted": "SELECT ?"}


def _lines(root: Path) -> list[bytes]:
    return (root / "audit" / "queries" / "2026" / "03" / "01" / "h.jsonl").read_bytes().splitlines()


class _HeldAppends:
    """Wraps _DayFile.append: the first call waits for `release`; every call is counted (and may be made to fail)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_call: int | None = None
        self.failure: Exception = OSError(28, "No space left on device")
        original = local_audit._DayFile.append

        def append(handle: local_audit._DayFile, data: bytes, fsync: bool) -> None:
            self.calls += 1
            call = self.calls
            if call == 1:
                self.entered.set()
                assert self.release.wait(10)
            if call == self.fail_call:
                raise self.failure
            original(handle, data, fsync)

        monkeypatch.setattr(local_audit._DayFile, "append", append)


class _CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self) -> None:
        self.taken = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _queued(sink: LocalFolderAuditSink) -> int:
    with sink._queue_lock:
        return len(sink._queue)


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def _write_while_first_is_held(sink: LocalFolderAuditSink, held: _HeldAppends, pool: ThreadPoolExecutor,
                               others: int) -> tuple[Future[None], list[Future[None]]]:
    first = pool.submit(sink.write, _record(0))
    assert held.entered.wait(5)
    queued = [pool.submit(sink.write, _record(n)) for n in range(1, others + 1)]
    _wait_for(lambda: _queued(sink) == others)
    held.release.set()
    return first, queued


def test_records_queued_during_a_write_are_appended_together_and_chained_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor) -> None:
    held = _HeldAppends(monkeypatch)
    with LocalFolderAuditSink(tmp_path, host_id="h") as sink:
        sink._lock = lock = _CountingLock()  # type: ignore[assignment]
        first, queued = _write_while_first_is_held(sink, held, pool, others=6)
        for future in [first, *queued]:
            future.result(5)
        assert held.calls == 2  # the first record, then the six queued behind it in one append
        assert lock.taken == 2  # the six writers were woken by their batch, not handed the lock one by one
    lines = _lines(tmp_path)
    records = [json.loads(line) for line in lines]
    assert [r["chain_seq"] for r in records] == list(range(1, 8))
    head = None
    for record, line in zip(records, lines, strict=True):  # each line is exactly what chained_line makes
        plain = {k: v for k, v in record.items() if k not in ("chain_seq", "prev_hash", "hash")}
        expected, head = chained_line(plain, head)
        assert line.decode() == expected
    assert records[0]["prev_hash"] == GENESIS_HASH


def test_a_failed_append_fails_every_record_of_its_batch_and_the_chain_goes_on_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor) -> None:
    held = _HeldAppends(monkeypatch)
    held.fail_call = 2
    with LocalFolderAuditSink(tmp_path, host_id="h") as sink:
        first, queued = _write_while_first_is_held(sink, held, pool, others=4)
        first.result(5)
        errors = [future.exception(5) for future in queued]
        assert all(isinstance(error, AuditWriteFailed) for error in errors)
        assert len({id(error) for error in errors}) == 4  # each writer raises its own error
        sink.write(_record(9))
    records = [json.loads(line) for line in _lines(tmp_path)]
    assert [(r["query_id"], r["chain_seq"]) for r in records] == [("q0", 1), ("q9", 2)]
    assert records[1]["prev_hash"] == records[0]["hash"]


def test_an_unforeseen_failure_in_a_batch_fails_each_of_its_writers_never_returns_silently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: ThreadPoolExecutor) -> None:
    held = _HeldAppends(monkeypatch)
    held.fail_call, held.failure = 2, RuntimeError("unforeseen")
    with LocalFolderAuditSink(tmp_path, host_id="h") as sink:
        first, queued = _write_while_first_is_held(sink, held, pool, others=3)
        first.result(5)
        assert all(isinstance(future.exception(5), AuditWriteFailed) for future in queued)
    assert [json.loads(line)["query_id"] for line in _lines(tmp_path)] == ["q0"]


def test_a_record_that_cannot_be_serialised_fails_only_its_own_writer(tmp_path: Path) -> None:
    with LocalFolderAuditSink(tmp_path, host_id="h") as sink:
        with pytest.raises(ValueError):
            sink.write({**_record(1), "credits": float("nan")})
        with pytest.raises(ValueError):
            sink.write({**_record(2), "chain_seq": 5})
        sink.write(_record(3))
    assert [json.loads(line)["query_id"] for line in _lines(tmp_path)] == ["q3"]


def test_members_sorting_around_the_chain_fields_serialise_as_chained_line_does(tmp_path: Path) -> None:
    record = {"ts": TS, "a": 1, "chain_r": [1, {"z": 2, "b": None}], "chain_seq_x": "é\u2028", "m": {"k": 1.5},
              "prev": True, "prev_hash_y": "x", "zz": "\"quoted\""}
    with LocalFolderAuditSink(tmp_path, host_id="h") as sink:
        sink.write(record)
        sink.write({"ts": TS})
    first, second = _lines(tmp_path)
    line, head = chained_line(record, None)
    assert first.decode() == line
    assert second.decode() == chained_line({"ts": TS}, head)[0]
