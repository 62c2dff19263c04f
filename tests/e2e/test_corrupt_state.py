"""`hd dev` over a damaged or inconsistent state folder: it refuses, in one line that names the file and the
recovery, with an exit code and no traceback, and leaves every file as it found it (issue 14 item 8).

One real `hd dev` makes the state once (Owner, keys, audit, a table in engine.duckdb, TLS pair); every
test damages its own copy and starts a real `hd dev` on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from engine_host.wire.tls import ensure_self_signed_certificate
from hd_core.adapters.sqlite_store import SqliteControlStore
from tests.harness import overwrite_sqlite_page, sqlite_root_page, start_engine_host

STATE_REFUSED, TLS_REFUSED = 3, 4


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("original") / "state"
    host = start_engine_host(state)
    try:
        with psycopg.connect(host.dsn()) as conn:
            conn.execute("CREATE TABLE main.notes (id INTEGER, body VARCHAR)")
            conn.execute("INSERT INTO main.notes VALUES (1, 'kept')")
    finally:
        assert host.stop() == 0
    # Enough settings that their table's root is an interior page: damage there is found by quick_check on
    # open, where a fresh store's one-page tables would fail the first read as "malformed" instead.
    with SqliteControlStore(state / "control.sqlite3") as store:
        for number in range(200):
            store.put_setting(f"test_padding_{number}", "x" * 500)
    return state


@pytest.fixture
def state(original: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(original, copy)
    return copy


def _hashes(state: Path) -> dict[str, str]:
    return {str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(state.rglob("*")) if p.is_file()}


def _hd_dev(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine_host.cli", "--log-level", "WARNING", "dev", "--state-dir", str(state),
         "--port", "0", "--api-port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _assert_refused(state: Path, exit_code: int, *words: str) -> str:
    """Start `hd dev`; it must exit with `exit_code`, one stderr line holding `words`, and change no file."""
    before = _hashes(state)
    done = _hd_dev(state)
    assert done.returncode == exit_code, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("hd dev: cannot start: ")
    assert all(word in lines[0] for word in words), lines[0]
    after = _hashes(state)
    assert {name: after.get(name) for name in before} == before  # nothing that existed changed
    assert "HD_READY" not in done.stdout
    return lines[0]


def _damage(path: Path, change: Callable[[bytes], bytes]) -> None:
    path.write_bytes(change(path.read_bytes()))


def _middle_overwritten(data: bytes) -> bytes:
    """A page in the middle of the store overwritten: the settings table's root, so the schema still reads and only
    quick_check finds it (a fixed offset lands on whatever page the latest migration moved there)."""
    return overwrite_sqlite_page(data, sqlite_root_page(data, "settings"))


# --- control.sqlite3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("damage", "reason"), [
    pytest.param(lambda data: data[: len(data) // 2], "damaged", id="truncated"),
    pytest.param(lambda data: b"\x13" * 100 + data[100:], "damaged (file is not a database)", id="garbage-header"),
    pytest.param(_middle_overwritten, "damaged (quick_check", id="corrupt-middle-pages"),
])
def test_a_damaged_control_store_is_refused_with_how_to_restore_or_salvage_it(
    state: Path, damage: Callable[[bytes], bytes], reason: str
) -> None:
    _damage(state / "control.sqlite3", damage)
    _assert_refused(state, STATE_REFUSED, str(state / "control.sqlite3"), reason, "restore control.sqlite3 from a "
                    "backup", ".recover")


@pytest.mark.parametrize("loss", ["zero-length", "missing"])
def test_a_lost_control_store_next_to_earlier_state_gets_no_new_owner(state: Path, loss: str) -> None:
    store = state / "control.sqlite3"
    if loss == "missing":
        store.unlink()
    else:
        store.write_bytes(b"")
    line = _assert_refused(state, STATE_REFUSED, str(store), "owner.key", "keys/local-keys.json", "engine.duckdb",
                           "audit/", "restore control.sqlite3 from a backup", f"mv {state} {state}.old")
    assert "empty" in line if loss == "zero-length" else "missing" in line
    assert store.exists() == (loss == "zero-length")  # not even an empty store is made


def test_a_control_store_with_no_owner_next_to_earlier_state_gets_no_new_owner(state: Path) -> None:
    (state / "control.sqlite3").unlink()
    SqliteControlStore(state / "control.sqlite3").close()  # a valid, empty store in place of the lost one
    owner_key = (state / "owner.key").read_bytes()
    _assert_refused(state, STATE_REFUSED, "no Owner is recorded", "owner.key", f"mv {state} {state}.old")
    assert (state / "owner.key").read_bytes() == owner_key


# --- TLS -----------------------------------------------------------------------------------------------


def test_an_unreadable_certificate_is_refused_not_replaced(state: Path) -> None:
    (state / "tls" / "server.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    _assert_refused(state, TLS_REFUSED, str(state / "tls" / "server.crt"), "cannot be read", "delete both")


def test_a_certificate_with_someone_elses_key_is_refused_not_replaced(state: Path, tmp_path: Path) -> None:
    _, other_key = ensure_self_signed_certificate(tmp_path / "other-tls")
    shutil.copyfile(other_key, state / "tls" / "server.key")
    _assert_refused(state, TLS_REFUSED, str(state / "tls" / "server.key"), "does not belong", "delete both")


def test_an_expired_certificate_is_refused_not_replaced(state: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    from engine_host.wire import tls

    monkeypatch.setattr(tls, "CERT_LIFETIME", -tls.CLOCK_SKEW / 2)  # ended a few minutes ago
    for name in ("server.crt", "server.key"):
        (state / "tls" / name).unlink()
    ensure_self_signed_certificate(state / "tls")
    _assert_refused(state, TLS_REFUSED, str(state / "tls" / "server.crt"), "not now", "delete both")


def test_half_a_tls_pair_is_refused_and_not_completed(state: Path) -> None:
    (state / "tls" / "server.key").unlink()
    _assert_refused(state, TLS_REFUSED, str(state / "tls" / "server.key"), "is missing", "delete both")
    assert not (state / "tls" / "server.key").exists()


# --- engine.duckdb and the local key file ------------------------------------------------------------


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: b"\x13" * 4096 + data[4096:], id="garbage-header"),
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: b"", id="zero-length"),
])
def test_a_damaged_duckdb_file_is_refused_with_what_to_do(state: Path, damage: Callable[[bytes], bytes]) -> None:
    _damage(state / "engine.duckdb", damage)
    _assert_refused(state, STATE_REFUSED, str(state / "engine.duckdb"), "cannot be opened",
                    "restore it from a backup", "hd never replaces it")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
    pytest.param(lambda data: json.dumps({**json.loads(data), "master_key": "c2hvcnQ="}).encode(), id="short-key"),
])
def test_a_damaged_local_key_file_is_refused_not_remade(state: Path, damage: Callable[[bytes], bytes]) -> None:
    _damage(state / "keys" / "local-keys.json", damage)
    _assert_refused(state, STATE_REFUSED, str(state / "keys" / "local-keys.json"), "damaged",
                    "restore it from a backup")


def test_a_missing_local_key_file_is_refused_not_remade(state: Path) -> None:
    (state / "keys" / "local-keys.json").unlink()
    _assert_refused(state, STATE_REFUSED, str(state / "keys" / "local-keys.json"), "missing",
                    "restore it from a backup")
    assert not (state / "keys" / "local-keys.json").exists()


# --- owner.key -------------------------------------------------------------------------------------------


def _banner_of_a_host_without_owner_key(state: Path) -> str:
    """Start `hd dev` (the harness needs owner.key, which is gone), read its banner, stop it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine_host.cli", "--log-level", "WARNING", "dev", "--state-dir", str(state),
         "--port", "0", "--no-api"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("HD_READY"):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return "".join(lines)


def _reissue(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine_host.cli", "reissue-owner-key", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=120)


def _iam_events(state: Path) -> list[dict[str, object]]:
    with SqliteControlStore(state / "control.sqlite3") as store:
        org_id = store.get_setting("default_org_id")
        assert org_id is not None
        return [{"type": e.event_type, "actor": e.actor, "target": e.target}
                for e in store.list_iam_events(org_id)]


def test_a_deleted_owner_key_is_reissued_by_an_audited_command_that_revokes_the_old_one(state: Path) -> None:
    old_key = (state / "owner.key").read_text().strip()
    (state / "owner.key").unlink()

    banner = _banner_of_a_host_without_owner_key(state)
    assert f"Owner API key file {state / 'owner.key'} is missing: run `hd reissue-owner-key --state-dir {state}`" \
        in banner
    assert "stored in" not in banner and "Traceback" not in banner
    assert not (state / "owner.key").exists()  # starting never writes one for an existing Owner

    done = _reissue(state)
    assert done.returncode == 0, done.stderr
    new_key = (state / "owner.key").read_text().strip()
    assert stat.S_IMODE((state / "owner.key").stat().st_mode) == 0o600
    assert new_key != old_key and new_key[:16] in done.stdout and old_key[:16] in done.stdout
    events = _iam_events(state)
    assert [e["type"] for e in events[-2:]] == ["api_key.revoked", "api_key.created"]
    assert [e["target"] for e in events[-2:]] == [old_key[:16], new_key[:16]]
    assert all(str(e["actor"]).startswith("local:") for e in events[-2:])
    assert list((state / "audit" / "iam-checkpoints").rglob("*.json"))  # the trail's head is signed

    again = _reissue(state)  # an existing owner.key is never overwritten
    assert again.returncode == 1 and "exists and is never overwritten" in again.stderr
    assert len(again.stderr.splitlines()) == 1 and "Traceback" not in again.stderr
    assert (state / "owner.key").read_text().strip() == new_key

    host = start_engine_host(state)
    try:
        with psycopg.connect(host.dsn()) as conn:
            assert conn.execute("SELECT body FROM main.notes").fetchall() == [("kept",)]
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host.dsn(password=old_key))
    finally:
        host.stop()


def test_reissue_refuses_a_damaged_store_and_writes_no_key(state: Path) -> None:
    (state / "owner.key").unlink()
    _damage(state / "control.sqlite3", _middle_overwritten)
    before = _hashes(state)
    done = _reissue(state)
    assert done.returncode == STATE_REFUSED and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "quick_check" in done.stderr
    assert _hashes(state) == before and not (state / "owner.key").exists()
