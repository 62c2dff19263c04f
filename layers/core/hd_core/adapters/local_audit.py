"""`AuditSink` on a local folder: `root/audit/queries/YYYY/MM/DD/<host_id>.jsonl`, one line per record.

Each host appends to its own file, so one in-process lock is enough to keep lines whole. Writers
serialise their records before queueing them; one writer at a time chains and appends everything
queued in one write while the others wait for their batch, so under load the lock is taken once per
batch, not once per statement. A write that cannot be stored raises `AuditWriteFailed` (for every
record of its batch) and leaves no partial line behind. Each day file is one hash chain
(hd_core/query_audit_chain.py): a line links to the line before it, the chain resumes from the
file's last line when a file is reopened, and a `QueryChainCheckpointer`, when given, signs the
heads in the background.
`LocalFolderAuditArchive` reads the same folders back for audit search.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path

from hd_core.audit import audit_partition, to_json_line
from hd_core.audit_search import records_from_lines
from hd_core.errors import AuditWriteFailed, HdError
from hd_core.query_audit_chain import (
    CHAIN_FIELDS,
    ChainHead,
    QueryChainCheckpointer,
    StoredChainTail,
    chain_id_for,
    chained_line,
    head_of_line,
    last_line,
)

_DIR_MODE = 0o700
_FILE_MODE = 0o600
# The current day and the one before stay open: statements that started before midnight finish after it.
_OPEN_DAYS = 2
# How much of a day file's end is read to find its last line (records are a few hundred bytes to a few KiB).
_TAIL_BYTES = 65536


class _DayFile:
    """An open append handle on one day's file, with the identity of the inode it was opened on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            _drop_partial_last_line(self.fd)
            info = os.fstat(self.fd)
            self.head = _last_head(self.fd)
        except OSError:
            os.close(self.fd)
            raise
        self.identity = (info.st_dev, info.st_ino)

    def still_linked(self) -> bool:
        """Whether the path still names the file we hold (not deleted, renamed or replaced)."""
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self.identity

    def append(self, data: bytes, fsync: bool) -> None:
        size = os.fstat(self.fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            if fsync:
                os.fsync(self.fd)
        except OSError:
            # Best effort: cut a half-written line now; reopening repairs it otherwise.
            try:
                os.ftruncate(self.fd, size)
            except OSError:
                pass
            raise

    def close(self) -> None:
        os.close(self.fd)


def _drop_partial_last_line(fd: int) -> None:
    """Truncate after the last newline, so a line cut by a crash or a full disk never gets glued to the next."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def _last_head(fd: int) -> ChainHead | None:
    """The chain head the file's last line records (None for an empty file or one written before chaining)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    end = size - 1  # the final newline
    start = end
    while start > 0:
        begin = max(0, start - 65536)
        newline = os.pread(fd, start - begin, begin).rfind(b"\n")
        if newline >= 0:
            start = begin + newline + 1
            break
        start = begin
    return head_of_line(os.pread(fd, end - start, start))


def _ensure_private_dirs(root: Path, relative: str) -> Path:
    """Create `root/relative` level by level with mode 0700 (existing levels are left as they are)."""
    levels = [root]
    for part in relative.strip("/").split("/"):
        levels.append(levels[-1] / part)
    for current in levels:
        try:
            os.mkdir(current, _DIR_MODE)
        except FileExistsError:
            if not current.is_dir():
                raise NotADirectoryError(f"{current} exists and is not a directory") from None
    return levels[-1]


class _Queued:
    """One record waiting to be appended: its serialised parts, and, once its batch was written, any error."""

    __slots__ = ("day", "done", "error", "parts", "record", "turn")

    def __init__(self, record: Mapping[str, object], day: datetime) -> None:
        if any(name in record for name in CHAIN_FIELDS):
            raise ValueError("a query audit record must not carry chain fields before it is chained")
        self.record = record
        self.day = day
        # The sorted members before `chain_seq`, between it and `prev_hash`, and after: the line is these
        # with the two chain fields put in their sorted places, exactly as to_json_line would write it.
        self.parts = tuple(to_json_line({k: v for k, v in record.items() if low <= k < high})[1:-1]
                           for low, high in (("", "chain_seq"), ("chain_seq", "prev_hash"), ("prev_hash", "\uffff")))
        self.error: AuditWriteFailed | None = None
        self.done = False
        # Set once the record's batch was written (`done`), or when its writer is to write the queue itself.
        self.turn = threading.Event()

    def serialize(self, document: Mapping[str, object]) -> str:
        seq = to_json_line(document["chain_seq"])
        prev = to_json_line(document["prev_hash"])
        members = (self.parts[0], f'"chain_seq":{seq}', self.parts[1], f'"prev_hash":{prev}', self.parts[2])
        return "{" + ",".join(part for part in members if part) + "}"


class LocalFolderAuditSink:
    """Appends query audit records to date-partitioned JSONL files under a local folder."""

    def __init__(self, root: Path, *, host_id: str, fsync: bool = False,
                 checkpointer: QueryChainCheckpointer | None = None) -> None:
        if not host_id or "/" in host_id or host_id in (".", ".."):
            raise ValueError(f"host_id must be a plain file name, got {host_id!r}")
        self._root = Path(root)
        self._host_id = host_id
        self._fsync = fsync
        self._checkpointer = checkpointer
        self._lock = threading.Lock()  # held while appending; the queue has its own
        self._queue_lock = threading.Lock()
        self._queue: list[_Queued] = []
        self._writing = False  # some writer is appending the queue, or has been handed the turn to
        self._open: dict[date, _DayFile] = {}
        self._closed = False

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record to the file of its `ts` day; raises `AuditWriteFailed` if it is not stored."""
        ts = record.get("ts")
        if not isinstance(ts, str):
            raise ValueError("audit record has no 'ts' string")
        day = datetime.fromisoformat(ts)
        if day.tzinfo is None:
            raise ValueError(f"audit record ts must carry a UTC offset, got {ts!r}")
        queued = _Queued(record, day)
        with self._queue_lock:
            self._queue.append(queued)
            first = not self._writing
            self._writing = True
        # Waiters block on their own event, not on a lock: one batch wakes all its writers at once
        # instead of handing a lock (and the GIL with it) from thread to thread.
        if not first:
            queued.turn.wait()
        if not queued.done:  # it is this writer's turn to append the queue
            self._append_queued()
        if queued.error is not None:
            raise queued.error

    def _append_queued(self) -> None:
        """Append every queued record, wake their writers, and hand the turn to the first record queued since."""
        with self._queue_lock:
            batch, self._queue = self._queue, []
        try:
            with self._lock:
                self._append_batch(batch)
        finally:
            for queued in batch:
                if not queued.done:  # fail closed whatever went wrong
                    queued.error = queued.error or AuditWriteFailed("query audit record not stored")
                    queued.done = True
                queued.turn.set()
            with self._queue_lock:
                if self._queue:
                    self._queue[0].turn.set()
                else:
                    self._writing = False

    def _append_batch(self, batch: list[_Queued]) -> None:
        """Chain and append `batch`, one write per day file (the caller holds `_lock`).

        A failed append fails exactly the records it carried, and the chain goes on from the last
        stored line.
        """
        for day in dict.fromkeys(queued.day.astimezone(UTC).date() for queued in batch):
            records = [queued for queued in batch if queued.day.astimezone(UTC).date() == day]
            try:
                if self._closed:
                    raise AuditWriteFailed("query audit sink is closed")
                handle = self._day_file(records[0].day)
                head, lines = handle.head, []
                for queued in records:
                    line, head = chained_line(queued.record, head, serialize=queued.serialize)
                    lines.append(line + "\n")
                assert head is not None  # records is never empty
                handle.append("".join(lines).encode(), self._fsync)
                handle.head = head
                if self._checkpointer is not None:  # under the lock, so the heads it sees only move forward
                    self._checkpointer.advanced(chain_id_for(self._host_id, day), head)
            except OSError as exc:
                self._forget(day)
                for queued in records:
                    queued.error = AuditWriteFailed(
                        f"query audit record could not be stored: {exc.strerror or exc}")
                    queued.error.__cause__ = exc
            except Exception as exc:  # noqa: BLE001 - a closed sink or anything unforeseen: each writer fails closed
                for queued in records:
                    queued.error = AuditWriteFailed(
                        str(exc) if isinstance(exc, AuditWriteFailed) else f"query audit record not stored: {exc!r}")
            for queued in records:
                queued.done = True

    def close(self) -> None:
        """Close the open day files and sign the chains' final heads; later writes raise `AuditWriteFailed`."""
        with self._lock:
            self._closed = True
            for day in list(self._open):
                self._forget(day)
        if self._checkpointer is not None:
            self._checkpointer.close()

    def __enter__(self) -> LocalFolderAuditSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _day_file(self, ts: datetime) -> _DayFile:
        day = ts.astimezone(UTC).date()
        handle = self._open.get(day)
        if handle is not None and handle.still_linked():
            return handle
        self._forget(day)
        folder = _ensure_private_dirs(self._root, audit_partition(ts))
        handle = _DayFile(folder / f"{self._host_id}.jsonl")
        others = sorted(open_day for open_day in self._open if open_day != day)
        for stale in others[: max(0, len(others) + 1 - _OPEN_DAYS)]:
            self._forget(stale)
        self._open[day] = handle
        return handle

    def _forget(self, day: date) -> None:
        handle = self._open.pop(day, None)
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass


class LocalFolderAuditArchive:
    """`QueryAuditArchive` over the folders `LocalFolderAuditSink` writes (every host's file of a day)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def records(self, day: date) -> Iterator[dict[str, object]]:
        """Every record of `day`'s partition; a missing day is empty, and a line still being appended is skipped."""
        for path in self._day_files(day):
            yield from _stream_day_file(path)

    def chain_segments(self, day: date, host_id: str | None = None) -> Iterator[tuple[str, bytes]]:
        """(host id, the file's bytes) of every host's file of `day` (or `host_id`'s): one chain each."""
        for path in self._day_files(day):
            if host_id is None or path.stem == host_id:
                yield path.stem, _read_day_file(path)

    def chain_tails(self, day: date, signed_since: Callable[[str], datetime | None] | None = None,
                    ) -> Iterator[StoredChainTail]:
        """Each host's chain head of `day` from its file's last complete line, stored at the file's mtime.

        `signed_since` is not needed here: reading the end of one file costs the same whenever it was signed.
        """
        for path in self._day_files(day):
            tail = _read_tail(path)
            if tail is not None:
                data, modified = tail
                line = last_line(data)
                yield StoredChainTail(path.stem, head_of_line(line) if line is not None else None,
                                      datetime.fromtimestamp(modified, UTC))

    def _day_files(self, day: date) -> list[Path]:
        """Every host's file of `day`'s partition, by name; none for a missing day."""
        folder = self._root / audit_partition(datetime.combine(day, time(), UTC))
        try:
            return sorted(path for path in folder.iterdir() if path.suffix == ".jsonl" and path.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise HdError(f"query audit folder {folder} could not be read: {exc.strerror or exc}") from exc


def _stream_day_file(path: Path) -> Iterator[dict[str, object]]:
    """A host's day file read line by line: a busy host's whole day never sits in memory at once."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return  # removed between listing and reading (retention clean-up): nothing left to read
    except OSError as exc:
        raise HdError(f"query audit file {path} could not be read: {exc.strerror or exc}") from exc
    with handle:
        try:
            yield from records_from_lines(handle, source=str(path))
        except OSError as exc:
            raise HdError(f"query audit file {path} could not be read: {exc.strerror or exc}") from exc


def _read_tail(path: Path) -> tuple[bytes, float] | None:
    """The end of a day file holding its last complete line (the whole file if need be), and its mtime."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            start = max(0, info.st_size - _TAIL_BYTES)
            handle.seek(start)
            data = handle.read()
            if start > 0 and data.count(b"\n") < 2:  # a line longer than the tail read: read the whole file
                handle.seek(0)
                data = handle.read()
    except FileNotFoundError:
        return None  # removed between listing and reading (retention clean-up)
    except OSError as exc:
        raise HdError(f"query audit file {path} could not be read: {exc.strerror or exc}") from exc
    return data, info.st_mtime


def _read_day_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""  # removed between listing and reading (retention clean-up): nothing left to read
    except OSError as exc:
        raise HdError(f"query audit file {path} could not be read: {exc.strerror or exc}") from exc
