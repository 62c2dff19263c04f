"""`hd dev` killed with SIGKILL leaves its query audit tail unsigned; the next start signs that head before it
serves, so cutting the tail off afterwards is found by verification as `truncated`."""

from __future__ import annotations

import json
import signal
import time
from datetime import date
from pathlib import Path

import psycopg

from engine_host.runtime.local import LocalConfig, LocalEngineHost
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.iam_audit import ChainVerification
from hd_core.query_audit_chain import CHECKPOINT_FOLDER, CONTROL_PLANE_SIGNER, chain_id_for, verify_query_chains
from tests.harness import BackgroundLoop, start_engine_host


def _day(day_file: Path) -> date:
    """The UTC day of `audit/queries/YYYY/MM/DD/<host>.jsonl`."""
    folder = day_file.parent
    return date(int(folder.parent.parent.name), int(folder.parent.name), int(folder.name))


def _verify(state_dir: Path, host_id: str, day_file: Path) -> ChainVerification:
    reports = verify_query_chains(LocalFolderAuditArchive(state_dir), LocalFolderCheckpointStore(
        state_dir, CHECKPOINT_FOLDER), LocalKeyFile(state_dir / "keys" / "local-keys.json"), [_day(day_file)])
    [report] = [r for r in reports if r.host_id == host_id]
    return report.verification


def test_a_killed_hd_dev_s_unsigned_tail_is_signed_at_the_next_start(tmp_path: Path) -> None:
    host = start_engine_host(tmp_path)
    host_id = f"local-{host.process.pid}"
    try:
        with psycopg.connect(host.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")
            [day_file] = (tmp_path / "audit" / "queries").rglob(f"{host_id}.jsonl")
            chain_folder = tmp_path.joinpath(*CHECKPOINT_FOLDER, chain_id_for(host_id, _day(day_file)))
            deadline = time.monotonic() + 10
            while not (chain_folder.is_dir() and any(chain_folder.glob("*.json"))):
                assert time.monotonic() < deadline, "the new chain's head was not signed"
                time.sleep(0.02)
            for n in range(3):  # past the checkpoint: signed only in 60 s or at a clean stop, neither of which comes
                conn.execute(f"SELECT {n + 2}")
    finally:
        host.process.send_signal(signal.SIGKILL)
        host.process.wait(timeout=10)
    before = _verify(tmp_path, host_id, day_file)
    assert before.chain_valid and before.checkpoint_size is not None and before.checkpoint_size < before.entry_count
    # The next start (in this process: a second `hd dev` would only add its start-up time).
    loop = BackgroundLoop()
    restarted = LocalEngineHost(LocalConfig(state_dir=tmp_path, port=0, insecure_plaintext=True))
    try:
        loop.run(restarted.start())
        after = _verify(tmp_path, host_id, day_file)
        assert after.chain_valid and after.checkpoint_size == before.entry_count
        signers = {json.loads(path.read_bytes()).get("signed_by") for path in chain_folder.iterdir()}
        assert signers == {None, CONTROL_PLANE_SIGNER}  # the host's own first checkpoint, and the owed head
    finally:
        loop.run(restarted.stop())
        loop.close()
    lines = day_file.read_bytes().split(b"\n")[:-1]
    day_file.write_bytes(b"".join(line + b"\n" for line in lines[:-1]))
    cut = _verify(tmp_path, host_id, day_file)
    assert cut.first_break is not None
    assert (cut.first_break.position, cut.first_break.kind) == (before.entry_count, "truncated")
