"""Real TLS handshakes against the engine's server context: TLS 1.3 with the approved suites, nothing else."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine_host.wire.tls import TLS13_CIPHER_SUITES, ensure_self_signed_certificate, server_ssl_context

ROOT = Path(__file__).resolve().parents[2]
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the `openssl` command-line tool is not on PATH")


@dataclass
class EchoServer:
    """An asyncio TLS echo server on 127.0.0.1, running on its own event loop thread."""

    port: int
    cert: Path
    handshake_errors: list[str]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        data = await reader.read(1024)
        writer.write(data)
        await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass  # a client that gave up mid-stream is not what these tests are about
    finally:
        writer.close()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoServer]:
    cert, key = ensure_self_signed_certificate(tmp_path_factory.mktemp("tls") / "tls")
    ctx = server_ssl_context(cert, key)
    loop = asyncio.new_event_loop()
    errors: list[str] = []
    # Failed handshakes are the expected outcome of half these tests: record them instead of logging.
    loop.set_exception_handler(lambda _loop, context: errors.append(str(context.get("exception"))))
    server = loop.run_until_complete(asyncio.start_server(_echo, "127.0.0.1", 0, ssl=ctx))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="tls-echo", daemon=True)
    thread.start()
    try:
        yield EchoServer(port=port, cert=cert, handshake_errors=errors)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def _client_context(cert: Path, *, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    return ctx


def _round_trip(server: EchoServer, ctx: ssl.SSLContext, server_hostname: str) -> tuple[str | None, str, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
            conn.sendall(b"ping")
            cipher = conn.cipher()
            assert cipher is not None
            return conn.version(), cipher[0], conn.recv(1024)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls13_client_verifies_the_certificate_and_negotiates_an_approved_suite(
    echo_server: EchoServer, server_hostname: str
) -> None:
    version, cipher, echoed = _round_trip(echo_server, _client_context(echo_server.cert), server_hostname)

    assert version == "TLSv1.3"
    assert cipher in TLS13_CIPHER_SUITES
    assert echoed == b"ping"


def test_client_limited_to_tls12_fails_the_handshake(echo_server: EchoServer) -> None:
    ctx = _client_context(echo_server.cert, max_version=ssl.TLSVersion.TLSv1_2)

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        _round_trip(echo_server, ctx, "localhost")


def _s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


@needs_openssl
def test_openssl_s_client_with_tls13_succeeds_and_verifies(echo_server: EchoServer) -> None:
    result = _s_client(
        echo_server.port, "-tls1_3", "-CAfile", str(echo_server.cert), "-verify_hostname", "localhost",
        "-verify_return_error", "-alpn", "postgresql",
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" in result.stdout  # server preference: strongest first
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "ALPN protocol: postgresql" in result.stdout


@needs_openssl
def test_openssl_s_client_with_tls12_fails(echo_server: EchoServer) -> None:
    result = _s_client(echo_server.port, "-tls1_2")

    assert result.returncode != 0
    assert "Cipher is (NONE)" in result.stdout


@needs_openssl
@pytest.mark.parametrize("suite", sorted(TLS13_CIPHER_SUITES))
def test_each_approved_suite_is_accepted(echo_server: EchoServer, suite: str) -> None:
    result = _s_client(echo_server.port, "-tls1_3", "-ciphersuites", suite)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"New, TLSv1.3, Cipher is {suite}" in result.stdout


@needs_openssl
@pytest.mark.parametrize("suite", ["TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256"])
def test_other_tls13_suites_are_refused(echo_server: EchoServer, suite: str) -> None:
    result = _s_client(echo_server.port, "-tls1_3", "-ciphersuites", suite)

    assert result.returncode != 0
    assert "Cipher is (NONE)" in result.stdout


def test_an_openssl_configuration_that_changes_the_suites_makes_startup_fail(tmp_path: Path) -> None:
    # Python cannot set TLS 1.3 suites, but the OpenSSL configuration can: prove the guard notices.
    conf = tmp_path / "openssl.cnf"
    conf.write_text(
        textwrap.dedent(
            """\
            openssl_conf = default_conf
            [default_conf]
            ssl_conf = ssl_sect
            [ssl_sect]
            system_default = system_default_sect
            [system_default_sect]
            Ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_128_CCM_SHA256
            """
        )
    )
    script = textwrap.dedent(
        f"""\
        from pathlib import Path
        from engine_host.wire.tls import TlsConfigurationError, ensure_self_signed_certificate, server_ssl_context
        cert, key = ensure_self_signed_certificate(Path({str(tmp_path / "tls")!r}))
        try:
            server_ssl_context(cert, key)
        except TlsConfigurationError as exc:
            print("refused:", exc)
        else:
            print("accepted")
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "OPENSSL_CONF": str(conf)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:"), result.stdout
    assert "TLS_AES_128_CCM_SHA256" in result.stdout
