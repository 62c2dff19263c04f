"""The one place boot runs external commands (cryptsetup, mkfs, mount), so tests can see every argv and stdin."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hd_core.errors import HdError

DEFAULT_TIMEOUT_SECONDS = 300.0  # mkfs on a multi-terabyte NVMe volume takes tens of seconds
_STDERR_TAIL_CHARS = 500
# Where the tools live on Amazon Linux and Debian, whatever PATH user data runs with.
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class CommandResult:
    """What a finished command returned."""

    returncode: int
    stdout: bytes
    stderr: bytes


class BootCommandFailed(HdError):
    """A boot command could not run or exited non-zero; the message has its argv and stderr tail, never stdin."""

    code = "HD_ERR_BOOT_COMMAND_FAILED"

    def __init__(self, argv: Sequence[str], problem: str, stderr: bytes = b"") -> None:
        tail = stderr.decode("utf-8", errors="replace").strip()[-_STDERR_TAIL_CHARS:]
        super().__init__(f"{' '.join(argv)}: {problem}" + (f": {tail}" if tail else ""))
        self.argv = tuple(argv)
        self.stderr_tail = tail


class CommandRunner(Protocol):
    """Runs one command; `stdin` is fed to it and never appears in logs or errors."""

    def run(
        self, argv: Sequence[str], *, stdin: bytes | bytearray | None = None, check: bool = True
    ) -> CommandResult:
        """Run `argv`; with `check`, a non-zero exit raises `BootCommandFailed`."""
        ...


class SubprocessRunner:
    """Runs commands as child processes: no shell, the tool resolved to an absolute path, a timeout."""

    def __init__(self, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS, search_path: str | None = None) -> None:
        self._timeout = timeout_seconds
        self._search_path = search_path or os.pathsep.join(filter(None, [os.environ.get("PATH"), _SYSTEM_PATH]))

    def run(
        self, argv: Sequence[str], *, stdin: bytes | bytearray | None = None, check: bool = True
    ) -> CommandResult:
        """Run `argv`; raises `BootCommandFailed` if the tool is missing, times out, or (with `check`) fails."""
        if not argv:
            raise BootCommandFailed(argv, "no command given")
        tool = shutil.which(argv[0], path=self._search_path)
        if tool is None:
            raise BootCommandFailed(argv, f"{argv[0]} is not installed (not found on {self._search_path})")
        try:
            # The bytearray is handed over as is (a memoryview, no copy) so its owner can still wipe it.
            completed = subprocess.run(  # noqa: S603 - fixed tool list, no shell, argv built by our code
                [tool, *argv[1:]],
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,  # never a prompt on the console
                capture_output=True,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BootCommandFailed(argv, f"timed out after {self._timeout:g} s", _as_bytes(exc.stderr)) from None
        except OSError as exc:
            raise BootCommandFailed(argv, f"could not start ({exc.strerror or exc})") from None
        result = CommandResult(completed.returncode, completed.stdout, completed.stderr)
        if check and result.returncode != 0:
            raise BootCommandFailed(argv, f"exited {result.returncode}", result.stderr)
        return result


def _as_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()
