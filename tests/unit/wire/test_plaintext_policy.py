"""Plaintext is allowed only when explicitly enabled, and then only for loopback peers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine_host.wire.connection import PgConnection


def _connection(peer: str, allow: bool) -> PgConnection:
    conn = PgConnection.__new__(PgConnection)
    conn.services = SimpleNamespace(allow_plaintext=allow)  # type: ignore[assignment]
    conn.peer_host = peer
    return conn


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_peers_may_use_plaintext_when_enabled(peer):
    assert _connection(peer, allow=True)._plaintext_allowed()


@pytest.mark.parametrize("peer", ["10.0.0.5", "192.168.1.2", "2001:db8::1", "unknown"])
def test_other_peers_never_get_plaintext(peer):
    assert not _connection(peer, allow=True)._plaintext_allowed()


def test_plaintext_is_off_unless_enabled():
    assert not _connection("127.0.0.1", allow=False)._plaintext_allowed()
