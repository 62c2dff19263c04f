"""A minimal raw PostgreSQL protocol client for tests that must send exact (or broken) bytes."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass


@dataclass
class Message:
    kind: bytes
    body: bytes

    def error_fields(self) -> dict[str, str]:
        fields = {}
        for part in self.body.split(b"\x00"):
            if part:
                fields[part[:1].decode()] = part[1:].decode("utf-8", "replace")
        return fields


def startup_packet(params: dict[str, str], protocol: int = 196608) -> bytes:
    body = struct.pack("!i", protocol)
    for key, value in params.items():
        body += key.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return struct.pack("!i", len(body) + 4) + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


class RawClient:
    """Connects, optionally upgrades to TLS, authenticates with a password and exchanges messages."""

    def __init__(self, port: int, *, tls: bool = True, timeout: float = 10.0):
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            self.sock.sendall(struct.pack("!ii", 8, 80877103))
            assert self.sock.recv(1) == b"S"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)
        self.buffer = b""
        self.backend_key: tuple[int, int] | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read(self) -> Message | None:
        """The next message, or None once the server has closed the connection."""
        try:
            if not self._fill(5):
                return None
            kind = self.buffer[:1]
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if not self._fill(1 + length):
                return None
        except (ConnectionError, ssl.SSLError, OSError):
            return None
        body = self.buffer[5 : 1 + length]
        self.buffer = self.buffer[1 + length :]
        return Message(kind, body)

    def read_until(self, kind: bytes) -> list[Message]:
        messages = []
        while True:
            msg = self.read()
            if msg is None:
                return messages
            messages.append(msg)
            if msg.kind == kind:
                return messages

    def login(self, user: str, password: str) -> list[Message]:
        self.send(startup_packet({"user": user, "database": "hd"}))
        first = self.read()
        assert first is not None and first.kind == b"R", first
        self.send(message(b"p", cstr(password)))
        messages = self.read_until(b"Z")
        for msg in messages:
            if msg.kind == b"K":
                self.backend_key = struct.unpack("!ii", msg.body)
        return messages

    def query(self, sql: str) -> list[Message]:
        self.send(message(b"Q", cstr(sql)))
        return self.read_until(b"Z")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
