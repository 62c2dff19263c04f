"""Query audit checkpoints a host owes when it dies: a host killed with SIGKILL after writing records past its
last checkpoint leaves its tail unsigned; the control plane's job signs the owed head (after a settle period,
having verified the chain), and cutting the tail off afterwards is found as `truncated`. Local folder and S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from hd_core.adapters.local_audit import LocalFolderAuditArchive, LocalFolderAuditSink
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.s3_audit import S3AuditArchive, S3AuditSink
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.audit import format_audit_ts
from hd_core.errors import KeyUnavailable
from hd_core.iam_audit import checkpoint_to_json
from hd_core.models import ChainCheckpoint, utc_now
from hd_core.query_audit_chain import (
    CHECKPOINT_FOLDER,
    CHECKPOINT_PREFIX,
    CONTROL_PLANE_SIGNER,
    QUERY_CHECKPOINT_MESSAGE_TYPE,
    ChainHead,
    QueryChainCheckpointer,
    QueryChainStores,
    chain_id_for,
    chained_line,
    sign_owed_query_checkpoints,
    verify_query_chains,
)

DAY = date(2026, 3, 1)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST = "host-k"
BUCKET = "hd-owed-checkpoints"
WRITTEN = 6  # records the killed host stored; it signed only the first (a new chain is signed at once)


def _record(n: int) -> dict[str, object]:
    return {"ts": format_audit_ts(T0 + timedelta(milliseconds=n)), "query_id": f"q{n:04}", "org_id": "org_a",
            "sql_redacted": "SELECT ?", "rows_returned": n}


def _later(minutes: float) -> Callable[[], datetime]:
    return lambda: utc_now() + timedelta(minutes=minutes)


def _wait_for(found: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _report(stores: QueryChainStores, keys: LocalKeyFile) -> Any:
    (report,) = verify_query_chains(stores.records, stores.checkpoints, keys, [DAY])
    return report.verification


# --- local folder: a real host process killed with SIGKILL -----------------------------------------

_KILLED_HOST = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    from hd_core.adapters.local_audit import LocalFolderAuditSink
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
    from hd_core.adapters.local_keys import LocalKeyFile
    from hd_core.audit import format_audit_ts
    from hd_core.query_audit_chain import (CHECKPOINT_FOLDER, QUERY_CHECKPOINT_MESSAGE_TYPE, QueryChainCheckpointer,
                                           chain_id_for)
    root, host, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    checkpoints = LocalFolderCheckpointStore(root, CHECKPOINT_FOLDER, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)
    # A live host signs every 1,000 records or 60 s; this one dies long before either.
    sink = LocalFolderAuditSink(root, host_id=host, checkpointer=QueryChainCheckpointer(
        checkpoints, LocalKeyFile(root / "keys" / "local-keys.json"), every_records=1000, every_seconds=3600))
    def write(n):
        sink.write({"ts": format_audit_ts(t0 + timedelta(milliseconds=n)), "query_id": f"q{n:04}",
                    "org_id": "org_a", "sql_redacted": "SELECT ?", "rows_returned": n})
    write(0)
    while not checkpoints.list_checkpoints(chain_id_for(host, t0.date())):  # the new chain's head, signed at once
        time.sleep(0.01)
    for n in range(1, count):
        write(n)
    print("written", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyFile:
    return LocalKeyFile(tmp_path / "keys" / "local-keys.json")  # created here, before the host opens it


def _local_stores(root: Path) -> QueryChainStores:
    return QueryChainStores(LocalFolderAuditArchive(root), LocalFolderCheckpointStore(
        root, CHECKPOINT_FOLDER, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE))


def _kill_host_after_writing(root: Path) -> None:
    """Run a host process that stores WRITTEN records, signs only the first, and is then killed with SIGKILL."""
    process = subprocess.Popen([sys.executable, "-c", _KILLED_HOST, str(root), HOST, str(WRITTEN)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "written", process.stderr.read() if process.stderr else line
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


def _day_file(root: Path) -> Path:
    return root / "audit" / "queries" / "2026" / "03" / "01" / f"{HOST}.jsonl"


def _cut_tail(path: Path, keep: int) -> None:
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in lines[:keep]))


def test_a_killed_hosts_unsigned_tail_is_signed_by_the_job_and_cutting_it_is_then_found(
    tmp_path: Path, keys: LocalKeyFile
) -> None:
    _kill_host_after_writing(tmp_path)
    stores = _local_stores(tmp_path)
    before = _report(stores, keys)
    # The gap: the chain verifies and its tail could be cut without a trace, as only position 1 is signed.
    assert before.chain_valid and (before.entry_count, before.checkpoint_size) == (WRITTEN, 1)
    # Within the settle period the host may still be alive (and would sign its own head): nothing is signed.
    assert sign_owed_query_checkpoints(stores, keys, days=[DAY]) == []
    [owed] = sign_owed_query_checkpoints(stores, keys, days=[DAY], now=_later(6))
    assert (owed.chain_id, owed.host_id, owed.size, owed.outcome) == (chain_id_for(HOST, DAY), HOST, WRITTEN, "signed")
    assert sign_owed_query_checkpoints(stores, keys, days=[DAY], now=_later(6)) == []  # owed once, signed once
    signed = max(stores.checkpoints.list_checkpoints(chain_id_for(HOST, DAY)), key=lambda c: c.size)
    assert (signed.size, signed.signed_by) == (WRITTEN, CONTROL_PLANE_SIGNER)
    stored = json.loads(checkpoint_to_json(signed, QUERY_CHECKPOINT_MESSAGE_TYPE))
    assert (stored["signed_by"], stored["message_type"]) == ("control_plane", QUERY_CHECKPOINT_MESSAGE_TYPE)
    assert _report(stores, keys).chain_valid and _report(stores, keys).checkpoint_size == WRITTEN
    _cut_tail(_day_file(tmp_path), WRITTEN - 2)
    after = _report(stores, keys)
    assert after.first_break is not None
    assert (after.first_break.position, after.first_break.kind) == (WRITTEN - 1, "truncated")


def test_a_chain_that_does_not_verify_is_not_signed_for_its_host(tmp_path: Path, keys: LocalKeyFile) -> None:
    _kill_host_after_writing(tmp_path)
    path = _day_file(tmp_path)
    path.write_bytes(path.read_bytes().replace(b'"rows_returned":3', b'"rows_returned":0'))
    stores = _local_stores(tmp_path)
    [owed] = sign_owed_query_checkpoints(stores, keys, days=[DAY], now=_later(6))
    assert (owed.outcome, owed.size) == ("broken", WRITTEN) and "edited at position 4" in owed.detail
    assert max(c.size for c in stores.checkpoints.list_checkpoints(chain_id_for(HOST, DAY))) == 1
    report = _report(stores, keys)
    assert report.first_break is not None and (report.first_break.position, report.first_break.kind) == (4, "edited")


def test_who_signed_an_owed_checkpoint_is_covered_by_its_signature(tmp_path: Path, keys: LocalKeyFile) -> None:
    _kill_host_after_writing(tmp_path)
    stores = _local_stores(tmp_path)
    sign_owed_query_checkpoints(stores, keys, days=[DAY], now=_later(6))
    folder = tmp_path.joinpath(*CHECKPOINT_FOLDER, chain_id_for(HOST, DAY))
    [path] = [p for p in folder.iterdir() if json.loads(p.read_bytes()).get("signed_by") == CONTROL_PLANE_SIGNER]
    for claimed in (None, "engine_host"):  # passed off as the host's own, or as an unknown signer's
        document = json.loads(path.read_bytes())
        document["signed_by"] = claimed
        path.write_text(json.dumps(document))
        report = _report(stores, keys)
        assert report.first_break is not None and report.first_break.kind == "checkpoint_signature_invalid", claimed


# --- S3 (moto): a host that stops mid-day without closing its sink ---------------------------------


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_a_stopped_s3_hosts_tail_is_signed_by_the_job_and_a_deleted_last_object_is_then_found(
    s3: Any, keys: LocalKeyFile
) -> None:
    checkpoints = S3CheckpointStore(s3, BUCKET, prefix=CHECKPOINT_PREFIX, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)
    stores = QueryChainStores(S3AuditArchive(s3, BUCKET), checkpoints)
    sink = S3AuditSink(s3, BUCKET, host_id=HOST, batch_window_seconds=0,
                       checkpointer=QueryChainCheckpointer(checkpoints, keys, every_seconds=3600))
    try:
        sink.write(_record(0))
        _wait_for(lambda: bool(checkpoints.list_checkpoints(chain_id_for(HOST, DAY))), "the new chain's checkpoint")
        for n in range(1, WRITTEN):
            sink.write(_record(n))  # one object each (no batching window): the host then dies, nothing signed
        assert _report(stores, keys).checkpoint_size == 1
        # Another host's chain, signed to its head, owes nothing and is not touched.
        with S3AuditSink(s3, BUCKET, host_id="host-ok", batch_window_seconds=0,
                         checkpointer=QueryChainCheckpointer(checkpoints, keys)) as healthy:
            healthy.write(_record(0))
        assert sign_owed_query_checkpoints(stores, keys, days=[DAY]) == []
        [owed] = sign_owed_query_checkpoints(stores, keys, days=[DAY], now=_later(6))
        assert (owed.host_id, owed.size, owed.outcome) == (HOST, WRITTEN, "signed")
        newest = max(checkpoints.list_checkpoints(chain_id_for(HOST, DAY)), key=lambda c: c.size)
        assert (newest.size, newest.signed_by) == (WRITTEN, CONTROL_PLANE_SIGNER)
        objects = sorted(entry["Key"] for entry in s3.list_objects_v2(
            Bucket=BUCKET, Prefix=f"audit/queries/2026/03/01/{HOST}-")["Contents"])
        assert len(objects) == WRITTEN
        s3.delete_object(Bucket=BUCKET, Key=objects[-1])
        reports = {r.host_id: r.verification for r in verify_query_chains(stores.records, checkpoints, keys, [DAY])}
        assert reports["host-ok"].chain_valid
        cut = reports[HOST].first_break
        assert cut is not None and (cut.position, cut.kind) == (WRITTEN, "truncated")
    finally:
        sink.close()  # only now: the threads of the "dead" host are stopped


def _put_batch(s3: Any, host: str, at: datetime, n: int, head: ChainHead | None) -> ChainHead:
    """Store one batch object of `host` the way S3AuditSink names it, put at `at`, holding record `n`."""
    line, head = chained_line(_record(n), head)
    unix_ms = int(at.timestamp() * 1000)
    s3.put_object(Bucket=BUCKET, Key=f"audit/queries/2026/03/01/{host}-{unix_ms}-r{n:09d}.jsonl",
                  Body=(line + "\n").encode())
    return head


def test_finding_each_hosts_latest_object_lists_only_near_its_latest_checkpoint(s3: Any) -> None:
    heads: dict[str, ChainHead] = {}
    head = None
    for n in range(19):  # a busy host: an object every 10 minutes from 09:00 to 12:00
        head = _put_batch(s3, "i-0a", T0 - timedelta(hours=3) + timedelta(minutes=10 * n), n, head)
    heads["i-0a"] = head
    heads["i-0a-b"] = _put_batch(s3, "i-0a-b", T0 - timedelta(hours=5), 0, None)  # an id extending another's
    heads["i-0c"] = _put_batch(s3, "i-0c", T0 - timedelta(hours=1), 0, None)
    s3.put_object(Bucket=BUCKET, Key="audit/queries/2026/03/01/README.txt", Body=b"not a batch")
    listed: list[int] = []
    s3.meta.events.register("after-call.s3.ListObjectsV2",
                            lambda parsed, **_: listed.append(len(parsed.get("Contents", []))))
    archive = S3AuditArchive(s3, BUCKET)
    hints = {"i-0a": T0 + timedelta(seconds=30), "i-0a-b": None, "i-0c": T0 + timedelta(days=3)}  # the last: forged
    tails = {tail.host_id: tail for tail in archive.chain_tails(DAY, hints.get)}
    assert {host: tail.head for host, tail in tails.items()} == heads
    assert all(tail.stored_at.tzinfo is not None for tail in tails.values())
    # 19 + 1 + 1 objects: the busy host's is found among its last few minutes; a wrong hint only widens the search.
    assert sum(listed) <= 10, listed
    listed.clear()
    assert {tail.host_id: tail.head for tail in archive.chain_tails(DAY)} == heads  # no hints: every host listed
    assert sum(listed) >= 21


def test_both_checkpoint_stores_say_when_a_chains_latest_checkpoint_was_filed(
    s3: Any, tmp_path: Path, keys: LocalKeyFile
) -> None:
    local = LocalFolderCheckpointStore(tmp_path, CHECKPOINT_FOLDER, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)
    remote = S3CheckpointStore(s3, BUCKET, prefix=CHECKPOINT_PREFIX, message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)
    chain_id = chain_id_for(HOST, DAY)
    for store in (local, remote):
        assert store.latest_filed(chain_id) is None
        for size, at in ((3, T0 + timedelta(hours=1)), (7, T0 + timedelta(minutes=5, milliseconds=250))):
            store.put_checkpoint(ChainCheckpoint(chain_id, size, "0" * 64, at, keys.checkpoint_key_id(), "c2ln"))
        assert store.latest_filed(chain_id) == T0 + timedelta(hours=1)  # by time, whatever the size
        assert store.latest_filed(chain_id_for("another", DAY)) is None


class _SignerDownFor:
    """The real key file, except that signing a checkpoint of one chain fails (KMS refusing, throttled...)."""

    def __init__(self, keys: LocalKeyFile, chain_id: str) -> None:
        self._keys, self._chain_id = keys, chain_id

    def checkpoint_key_id(self) -> str:
        return self._keys.checkpoint_key_id()

    def sign_checkpoint(self, message: bytes) -> bytes:
        if json.loads(message)["chain_id"] == self._chain_id:
            raise KeyUnavailable("the checkpoint key is unavailable")
        return self._keys.sign_checkpoint(message)

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        return self._keys.verify_checkpoint(key_id, message, signature)


def test_a_host_that_never_signed_is_covered_and_one_chain_failing_does_not_hold_up_the_others(
    tmp_path: Path, keys: LocalKeyFile
) -> None:
    for host in ("host-a", "host-b"):  # hosts whose own checkpoints never got stored at all
        with LocalFolderAuditSink(tmp_path, host_id=host) as sink:
            for n in range(3):
                sink.write(_record(n))
    stores = _local_stores(tmp_path)
    failing = _SignerDownFor(keys, chain_id_for("host-a", DAY))
    outcomes = {o.host_id: o for o in sign_owed_query_checkpoints(stores, failing, days=[DAY], now=_later(6))}
    assert (outcomes["host-a"].outcome, outcomes["host-b"].outcome) == ("failed", "signed")
    assert "unavailable" in outcomes["host-a"].detail
    assert [o.host_id for o in sign_owed_query_checkpoints(stores, keys, days=[DAY], now=_later(6))] == ["host-a"]
    reports = verify_query_chains(stores.records, stores.checkpoints, keys, [DAY])
    assert [(r.host_id, r.verification.checkpoint_size) for r in reports] == [("host-a", 3), ("host-b", 3)]
