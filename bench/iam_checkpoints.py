"""IAM audit trail: what a signed checkpoint after every event costs, on the local `hd dev` adapters.

Run from the repository root:  .venv/bin/python -m bench.iam_checkpoints [--events 200] [--runs 5]

Each run builds a fresh state directory (the SQLite control store, the local key file, the local
checkpoint folder) per variant, records one untimed event first (creating the key, the folders
and the chain's first checkpoint), then times, side by side in the same run:
  1. recording --events IAM events with a checkpoint after every one (the default), against the
     same events with no checkpoint at all (`checkpoint_every` beyond the run): the price of
     signing every admin change (an ECDSA P-256 signature and a new fsynced file each);
  2. `verify_chain` over those chains: with a checkpoint per event every one is read and its
     signature checked, against one checkpoint for the whole chain.
Figures are medians over --runs runs; the variants alternate within a run so drift hits both.
KMS Sign and an S3 PUT cost more in AWS (a few ms each over the network); the local ratio shows
the work added, not AWS latency.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType

CHAIN = "org_bench"
NEVER = 10**9  # a checkpoint_every no run reaches


def build_trail(root: Path, checkpoint_every: int) -> tuple[IamAuditTrail, SqliteControlStore]:
    """A trail on fresh local adapters under `root`, its chain already begun (and checkpointed once)."""
    store = SqliteControlStore(root / "control.sqlite3")
    trail = IamAuditTrail(store, LocalFolderCheckpointStore(root), LocalKeyFile(root / "keys" / "local-keys.json"),
                          checkpoint_every=checkpoint_every, checkpoint_interval=timedelta(days=365))
    record(trail, 0)
    return trail, store


def record(trail: IamAuditTrail, n: int) -> None:
    trail.record(CHAIN, IamEventType.USER_ROLE_CHANGED, actor="usr_owner", target=f"usr_{n}",
                 before={"role": "Analyst"}, after={"role": "Admin"}, request_id=f"req-{n}")


def record_many(trail: IamAuditTrail, events: int) -> None:
    for n in range(1, events + 1):
        record(trail, n)


def timed_ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def one_run(scratch: Path, run: int, events: int) -> dict[str, float]:
    """Milliseconds for recording and verifying `events` events, with and without a checkpoint per event."""
    figures: dict[str, float] = {}
    for label, every in (("every event", 1), ("none", NEVER)):
        recorded, verified = one_variant(scratch / f"run{run}-{every}", every, events)
        figures[f"record/{label}"], figures[f"verify/{label}"] = recorded, verified
    return figures


def one_variant(root: Path, checkpoint_every: int, events: int) -> tuple[float, float]:
    """(record ms, verify_chain ms) for `events` events on fresh adapters under `root`."""
    trail, store = build_trail(root, checkpoint_every)
    try:
        recorded = timed_ms(lambda: record_many(trail, events))
        result = trail.verify_chain(CHAIN)
        assert result.chain_valid and result.entry_count == events + 1
        return recorded, timed_ms(lambda: trail.verify_chain(CHAIN))
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("hd_core.adapters.local_keys").setLevel(logging.ERROR)  # its DEV ONLY notice, once per run
    with tempfile.TemporaryDirectory() as scratch:
        runs = [one_run(Path(scratch), run, args.events) for run in range(args.runs)]
    median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    n = args.events
    print(f"IAM trail, {n} events, local adapters, median of {args.runs} runs")
    for step, what in (("record", "record"), ("verify", "verify_chain")):
        signed, unsigned = median[f"{step}/every event"], median[f"{step}/none"]
        print(f"  {what:13s} checkpoint per event {signed:8.1f} ms ({signed / n * 1000:7.1f} us/event)   "
              f"no checkpoints {unsigned:8.1f} ms ({unsigned / n * 1000:7.1f} us/event)   "
              f"ratio {signed / unsigned:5.2f}x")


if __name__ == "__main__":
    main()
