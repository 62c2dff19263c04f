"""Test doubles for boot: a local IMDS HTTP server and a recording command runner that simulates the host.

Both are for tests only. `FakeImds` speaks HTTP like the real service (a PUT for a token, GETs that
answer 401 without a valid one); `RecordingRunner` keeps the state cryptsetup, mkfs and mount would
change (a LUKS header and its passphrase, an open mapping, a filesystem, a mount) so the boot code
meets the same answers it would on a host, and records every argv and stdin exactly.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from engine_host.boot.imds import InstanceIdentity
from engine_host.boot.runner import BootCommandFailed, CommandResult

INSTANCE_ID = "i-0123456789abcdef0"
ACCOUNT = "123456789012"
REGION = "eu-west-1"
VPC = "vpc-0a1b2c3d4e5f60718"
SUBNET_A = "subnet-0aaaaaaaaaaaaaaa1"
SUBNET_B = "subnet-0bbbbbbbbbbbbbbb2"
SG_ENGINE = "sg-0123456789abcdef0"
SG_METRICS = "sg-0fedcba9876543210"
MAC_A = "0e:11:22:33:44:55"
MAC_B = "0e:66:77:88:99:aa"

IDENTITY = InstanceIdentity(
    instance_id=INSTANCE_ID, account_id=ACCOUNT, region=REGION, availability_zone=f"{REGION}a",
    instance_type="r6id.2xlarge", launch_time=datetime(2026, 11, 23, 8, 30, tzinfo=UTC), vpc_id=VPC,
    subnet_ids=(SUBNET_A,), security_group_ids=(SG_ENGINE, SG_METRICS),
)


def identity_document(**overrides: Any) -> dict[str, Any]:
    """An instance identity document as EC2 serves it."""
    document = {
        "accountId": ACCOUNT, "architecture": "x86_64", "availabilityZone": f"{REGION}a",
        "imageId": "ami-0123456789abcdef0", "instanceId": INSTANCE_ID, "instanceType": "r6id.2xlarge",
        "pendingTime": "2026-11-23T08:30:00Z", "privateIp": "10.0.1.12", "region": REGION, "version": "2017-09-30",
    }
    document.update(overrides)
    return document


@dataclass
class Interface:
    """One network interface's metadata."""

    vpc_id: str = VPC
    subnet_id: str = SUBNET_A
    security_group_ids: tuple[str, ...] = (SG_ENGINE, SG_METRICS)


@dataclass
class SeenRequest:
    """A request the fake IMDS received."""

    method: str
    path: str
    token: str | None
    ttl: str | None


@dataclass
class FakeImds:
    """What the fake metadata service serves and how it behaves."""

    document: dict[str, Any] = field(default_factory=identity_document)
    interfaces: dict[str, Interface] = field(default_factory=lambda: {MAC_A: Interface()})
    v1_only: bool = False  # no token endpoint: answers tokenless GETs like an old IMDSv1-only service
    failures_before_success: int = 0  # 503s served before behaving
    missing_paths: set[str] = field(default_factory=set)  # answered 404
    requests: list[SeenRequest] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)
    url: str = ""

    def _take_failure(self) -> bool:
        if self.failures_before_success > 0:
            self.failures_before_success -= 1
            return True
        return False

    def _answer_get(self, path: str) -> str | None:
        if path in self.missing_paths:
            return None
        if path == "/latest/dynamic/instance-identity/document":
            return json.dumps(self.document)
        prefix = "/latest/meta-data/network/interfaces/macs/"
        if path == prefix:
            return "\n".join(f"{mac}/" for mac in self.interfaces)
        if path.startswith(prefix):
            mac, _, leaf = path[len(prefix):].partition("/")
            interface = self.interfaces.get(mac)
            if interface is None:
                return None
            return {"vpc-id": interface.vpc_id, "subnet-id": interface.subnet_id,
                    "security-group-ids": "\n".join(interface.security_group_ids)}.get(leaf)
        return None


def _handler(imds: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: str = "") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            self._record("PUT")
            if imds._take_failure():
                return self._reply(503)
            if imds.v1_only or self.path != "/latest/api/token":
                return self._reply(404, "Not Found")
            if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._reply(400, "Missing TTL header")
            token = secrets.token_urlsafe(32)
            imds.tokens.add(token)
            return self._reply(200, token)

        def do_GET(self) -> None:
            self._record("GET")
            if imds._take_failure():
                return self._reply(503)
            if not imds.v1_only and self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                return self._reply(401, "Unauthorized")
            body = imds._answer_get(self.path)
            return self._reply(404, "Not Found") if body is None else self._reply(200, body)

        def _record(self, method: str) -> None:
            imds.requests.append(SeenRequest(
                method, self.path, self.headers.get("X-aws-ec2-metadata-token"),
                self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"),
            ))

    return Handler


@contextmanager
def serve_imds(imds: FakeImds) -> Iterator[FakeImds]:
    """Serve `imds` on a free loopback port; `imds.url` is its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(imds))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    imds.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield imds
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Call:
    """One command the runner was asked to run; `stdin` is a copy taken when it ran."""

    argv: tuple[str, ...]
    stdin: bytes | None
    stdin_object: bytes | bytearray | None  # the very buffer passed, to check it was wiped afterwards


@dataclass
class HostState:
    """What the commands change on a host."""

    device: str = "/dev/nvme1n1"
    luks_passphrase: bytes | None = None  # None: no LUKS header (a blank instance store)
    mapped: dict[str, str] = field(default_factory=dict)  # mapper name -> device
    has_filesystem: bool = False
    mounts: dict[str, str] = field(default_factory=dict)  # mount point -> source

    def reboot(self) -> None:
        """What survives a reboot: the LUKS header and the filesystem inside it, not mappings or mounts."""
        self.mapped.clear()
        self.mounts.clear()

    def stop_start(self) -> None:
        """What survives a stop/start on instance store: nothing."""
        self.reboot()
        self.luks_passphrase = None
        self.has_filesystem = False


class RecordingRunner:
    """A `CommandRunner` that records every call and answers as the host in `state` would."""

    def __init__(self, state: HostState | None = None, fail: Sequence[str] = ()) -> None:
        self.state = state or HostState()
        self.calls: list[Call] = []
        self.fail = set(fail)  # subcommands ("luksFormat", "mkfs.ext4", ...) that exit 1

    def argvs(self) -> list[tuple[str, ...]]:
        """Every argv run, in order."""
        return [call.argv for call in self.calls]

    def changing_argvs(self) -> list[tuple[str, ...]]:
        """The argvs that change the host (not the findmnt/status/isLuks probes)."""
        probes = {"findmnt", "status", "isLuks"}
        return [argv for argv in self.argvs() if not probes & {argv[0], argv[1]}]

    def run(self, argv: Sequence[str], *, stdin: bytes | bytearray | None = None, check: bool = True) -> CommandResult:
        argv = tuple(argv)
        self.calls.append(Call(argv, None if stdin is None else bytes(stdin), stdin))
        name = argv[1] if argv[0] == "cryptsetup" else argv[0]
        if name in self.fail:
            result = CommandResult(1, b"", f"{name}: simulated failure\n".encode())
        else:
            result = self._simulate(argv, stdin)
        if check and result.returncode != 0:
            raise BootCommandFailed(argv, f"exited {result.returncode}", result.stderr)
        return result

    def _simulate(self, argv: tuple[str, ...], stdin: bytes | bytearray | None) -> CommandResult:
        state = self.state
        ok = CommandResult(0, b"", b"")
        if argv[0] == "findmnt":
            source = state.mounts.get(argv[-1])
            return CommandResult(0, f"{source}\n".encode(), b"") if source else CommandResult(1, b"", b"")
        if argv[0] == "mkfs.ext4":
            assert argv[-1].removeprefix("/dev/mapper/") in state.mapped, "mkfs on a mapping that is not open"
            state.has_filesystem = True
            return ok
        if argv[0] == "mount":
            source, target = argv[-2], argv[-1]
            if source.removeprefix("/dev/mapper/") not in state.mapped or not state.has_filesystem:
                return CommandResult(32, b"", b"mount: wrong fs type, bad option, bad superblock\n")
            state.mounts[target] = source
            return ok
        assert argv[0] == "cryptsetup", f"unexpected command {argv}"
        verb = argv[1]
        if verb == "isLuks":
            return ok if argv[-1] == state.device and state.luks_passphrase is not None else CommandResult(1, b"", b"")
        if verb == "status":
            device = state.mapped.get(argv[-1])
            if device is None:
                return CommandResult(4, f"/dev/mapper/{argv[-1]} is inactive.\n".encode(), b"")
            text = f"/dev/mapper/{argv[-1]} is active.\n  type:    LUKS2\n  cipher:  aes-xts-plain64\n" \
                   f"  keysize: 512 bits\n  device:  {device}\n  mode:    read/write\n"
            return CommandResult(0, text.encode(), b"")
        if verb == "luksFormat":
            assert stdin is not None and argv[-1] == state.device
            state.luks_passphrase = bytes(stdin)
            state.has_filesystem = False
            return ok
        if verb == "open":
            device, mapper = argv[-2], argv[-1]
            if stdin is None or bytes(stdin) != state.luks_passphrase or device != state.device:
                return CommandResult(2, b"", b"No key available with this passphrase.\n")
            state.mapped[mapper] = device
            return ok
        if verb == "close":
            state.mapped.pop(argv[-1], None)
            return ok
        raise AssertionError(f"unexpected cryptsetup call {argv}")


def write_json(path: Path, data: object) -> Path:
    """Write `data` as JSON to `path` and return the path."""
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def config_data(**overrides: Any) -> dict[str, Any]:
    """A valid provisioned configuration (as decoded JSON) for the fake environment above."""
    data: dict[str, Any] = {
        "org_id": "org_acme", "account_id": ACCOUNT, "region": REGION, "vpc_id": VPC,
        "security_group_ids": [SG_ENGINE, SG_METRICS], "kms_key_arn": KEY_ARN,
        "data_bucket": "acme-hd-data", "audit_bucket": "acme-hd-audit", "control_table": "hd-control",
        "signing_key_arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/22222222-12ab-34cd-56ef-1234567890ab",
        "checkpoint_key_arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/33333333-12ab-34cd-56ef-1234567890ab",
    }
    data.update(overrides)
    return data
