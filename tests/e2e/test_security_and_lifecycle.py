"""TLS 1.3 only, plaintext refusal, authentication failures, cancel, concurrency, bounded memory, clean stop."""

from __future__ import annotations

import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.e2e.rawpg import RawClient, cstr, message, startup_packet
from tests.harness import start_engine_host


@pytest.fixture(scope="module")
def strict_host(tmp_path_factory):
    """An engine host started without --insecure-plaintext."""
    host = start_engine_host(tmp_path_factory.mktemp("hd-strict"))
    yield host
    host.stop()


def _tls_client(maximum: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = maximum
    return ctx


def _ssl_handshake(port: int, maximum: ssl.TLSVersion) -> str:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(struct.pack("!ii", 8, 80877103))
    assert sock.recv(1) == b"S"
    with _tls_client(maximum).wrap_socket(sock) as tls:
        return tls.version() or ""


def test_tls12_handshake_is_refused(strict_host):
    with pytest.raises(ssl.SSLError):
        _ssl_handshake(strict_host.port, ssl.TLSVersion.TLSv1_2)
    assert _ssl_handshake(strict_host.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


def test_openssl_s_client_tls12_is_refused(strict_host):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed; .ci/run installs it")
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{strict_host.port}", "-starttls", "postgres"]
    refused = subprocess.run([*base, "-tls1_2"], input="", capture_output=True, text=True, timeout=30, check=False)
    accepted = subprocess.run([*base, "-tls1_3"], input="", capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode != 0
    assert "TLSv1.3" in accepted.stdout, accepted.stdout + accepted.stderr


def test_certificate_verifies_against_the_generated_cert(strict_host):
    with psycopg.connect(strict_host.dsn(sslmode="verify-full", sslrootcert=str(strict_host.cert),
                                         host="localhost")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_plaintext_is_refused_without_the_flag(strict_host):
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(strict_host.dsn(sslmode="disable"))
    assert "TLS is required" in str(err.value)


def test_plaintext_allowed_on_loopback_only_with_the_flag(engine_host):
    with psycopg.connect(engine_host.dsn(sslmode="disable")) as conn:
        assert conn.pgconn.ssl_in_use is False
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _login_error(port: int, user: str, password: str) -> dict[str, str]:
    client = RawClient(port)
    try:
        client.send(startup_packet({"user": user, "database": "hd"}))
        assert client.read().kind == b"R"
        client.send(message(b"p", cstr(password)))
        reply = client.read()
        assert reply is not None and reply.kind == b"E"
        return reply.error_fields()
    finally:
        client.close()


@pytest.mark.parametrize(
    "password",
    ["wrong", "hd_live_" + "A" * 32, "hd_test_" + "0" * 32],
    ids=["not-a-key", "unknown-key", "bad-checksum"],
)
def test_bad_credentials_get_28P01_with_a_generic_message(strict_host, password):
    fields = _login_error(strict_host.port, strict_host.user, password)
    assert fields["C"] == "28P01"
    assert fields["M"] == f'password authentication failed for user "{strict_host.user}"'


def test_right_key_wrong_user_is_refused(strict_host):
    fields = _login_error(strict_host.port, "usr_someone_else", strict_host.password)
    assert fields["C"] == "28P01"


def test_failure_timing_does_not_reveal_whether_the_key_id_exists(strict_host):
    known_prefix = strict_host.password[:16]
    wrong_secret_known_id = known_prefix + "x" * (len(strict_host.password) - 16)

    def timed(password: str) -> float:
        start = time.perf_counter()
        _login_error(strict_host.port, strict_host.user, password)
        return time.perf_counter() - start

    for pw in (wrong_secret_known_id, "hd_test_" + "Q" * 32):
        timed(pw)  # warm-up
    known = statistics.median(timed(wrong_secret_known_id) for _ in range(7))
    unknown = statistics.median(timed("hd_test_" + "Q" * 32) for _ in range(7))
    assert 0.5 < known / unknown < 2.0, (known, unknown)


def test_cancel_request_interrupts_a_running_query(engine_host):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT count(*) FROM range(100000000000) a")
        assert time.monotonic() - start < 10
        assert conn.execute("SELECT 'usable after cancel'").fetchone() == ("usable after cancel",)


def test_slow_query_does_not_stall_other_sessions(engine_host):
    slow = psycopg.connect(engine_host.dsn(), autocommit=True)
    result: list[float] = []

    def run_slow() -> None:
        try:
            slow.execute("SELECT count(*) FROM range(100000000000) a")
        except psycopg.errors.QueryCanceled:
            pass

    worker = threading.Thread(target=run_slow)
    worker.start()
    time.sleep(0.3)
    try:
        with psycopg.connect(engine_host.dsn()) as fast:
            start = time.monotonic()
            for _ in range(20):
                fast.execute("SELECT 1").fetchone()
            result.append(time.monotonic() - start)
    finally:
        slow.cancel()
        worker.join(30)
        slow.close()
    assert result[0] < 5


def test_many_clients_at_once(engine_host):
    def client(i: int) -> int:
        with psycopg.connect(engine_host.dsn()) as conn:
            return sum(conn.execute("SELECT %s::INTEGER", [i]).fetchone()[0] for _ in range(10))

    with ThreadPoolExecutor(32) as pool:
        totals = list(pool.map(client, range(64)))
    assert totals == [i * 10 for i in range(64)]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_when_a_client_reads_5m_rows_slowly(engine_host):
    pid = engine_host.process.pid
    client = RawClient(engine_host.port)
    client.login(engine_host.user, engine_host.password)
    before = _rss_kib(pid)
    big = "SELECT range AS i, range * 2 AS j, 'x' || range::VARCHAR AS s FROM range(5000000)"
    client.send(message(b"Q", cstr(big)))
    client.sock.settimeout(10)
    peak = before
    for _ in range(40):  # read ~2.5 MB slowly while the server would like to send ~150 MB
        client.sock.recv(65536)
        time.sleep(0.02)
        peak = max(peak, _rss_kib(pid))
    client.close()
    assert peak - before < 150_000, f"server RSS grew by {(peak - before) // 1024} MiB"


def test_sigterm_stops_cleanly_and_keeps_committed_writes(tmp_path):
    host = start_engine_host(tmp_path / "state")
    with psycopg.connect(host.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE main.durable (id INTEGER)")
        conn.execute("INSERT INTO main.durable SELECT range FROM range(1000)")
    assert host.stop() == 0
    assert any("stopped" in line for line in host.output)
    again = start_engine_host(tmp_path / "state")
    try:
        with psycopg.connect(again.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM main.durable").fetchone() == (1000,)
        assert again.password == host.password
    finally:
        again.stop()


def test_sigterm_cancels_a_statement_still_running_after_the_grace_period(tmp_path):
    host = start_engine_host(tmp_path / "state", "--shutdown-grace", "1")
    errors: list[BaseException] = []

    def long_query() -> None:
        try:
            with psycopg.connect(host.dsn(), autocommit=True) as conn:
                conn.execute("SELECT count(*) FROM range(100000000000) a")
        except psycopg.Error as exc:
            errors.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    time.sleep(1.0)
    start = time.monotonic()
    assert host.stop(timeout=30) == 0
    worker.join(30)
    assert time.monotonic() - start < 15
    assert errors and isinstance(errors[0], psycopg.errors.QueryCanceled | psycopg.OperationalError)


def test_gssenc_request_is_declined_and_tls_follows(strict_host):
    sock = socket.create_connection(("127.0.0.1", strict_host.port), timeout=10)
    try:
        sock.sendall(struct.pack("!ii", 8, 80877104))
        assert sock.recv(1) == b"N"
        sock.sendall(struct.pack("!ii", 8, 80877103))
        assert sock.recv(1) == b"S"
        with _tls_client(ssl.TLSVersion.TLSv1_3).wrap_socket(sock) as tls:
            assert tls.version() == "TLSv1.3"
    finally:
        sock.close()


def test_owner_key_file_is_private_and_reused(strict_host):
    key_file = strict_host.state_dir / "owner.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert strict_host.password.startswith(("hd_live_", "hd_test_"))


def test_describe_never_executes_the_statement(engine_host):
    client = RawClient(engine_host.port)
    client.login(engine_host.user, engine_host.password)
    try:
        client.query("CREATE TABLE IF NOT EXISTS main.describe_probe (id INTEGER)")
        client.send(
            message(b"P", b"ins\x00INSERT INTO main.describe_probe VALUES (1)\x00\x00\x00")
            + message(b"D", b"Sins\x00")
            + message(b"B", b"\x00ins\x00\x00\x00\x00\x00\x00\x00")
            + message(b"D", b"P\x00")
            + message(b"S")
        )
        kinds = [m.kind for m in client.read_until(b"Z")]
        assert kinds == [b"1", b"t", b"n", b"2", b"n", b"Z"]
        rows = [m for m in client.query("SELECT count(*) FROM main.describe_probe") if m.kind == b"D"]
        assert rows[0].body.endswith(b"0")
    finally:
        client.close()
