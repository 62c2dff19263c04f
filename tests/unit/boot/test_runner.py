"""The subprocess runner: no shell, stdin fed and never repeated, failures as `BootCommandFailed`."""

from __future__ import annotations

import sys

import pytest

from engine_host.boot.runner import BootCommandFailed, CommandResult, SubprocessRunner

SECRET = b"\x00\x01very-secret-key-material\xff" * 2
PY = sys.executable


def test_stdin_reaches_the_command_byte_for_byte() -> None:
    result = SubprocessRunner().run([PY, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read()[::-1])"],
                                    stdin=bytearray(SECRET))
    assert result == CommandResult(0, SECRET[::-1], b"")


def test_without_stdin_the_command_reads_nothing_rather_than_waiting() -> None:
    result = SubprocessRunner(timeout_seconds=5).run([PY, "-c", "import sys; print(len(sys.stdin.read()))"])
    assert result.stdout.strip() == b"0"


def test_a_failing_command_names_argv_exit_code_and_stderr_tail_but_never_stdin() -> None:
    script = "import sys; sys.stdin.buffer.read(); sys.stderr.write('x' * 2000 + 'Device is busy'); sys.exit(5)"
    with pytest.raises(BootCommandFailed) as caught:
        SubprocessRunner().run([PY, "-c", script], stdin=SECRET)
    error = caught.value
    assert error.code == "HD_ERR_BOOT_COMMAND_FAILED"
    assert "exited 5" in str(error) and str(error).endswith("Device is busy")
    assert len(error.stderr_tail) == 500
    assert b"very-secret" not in repr(error.__dict__).encode() and "very-secret" not in str(error)
    assert error.__cause__ is None and error.__context__ is None


def test_without_check_a_failure_is_returned() -> None:
    assert SubprocessRunner().run([PY, "-c", "raise SystemExit(3)"], check=False).returncode == 3


def test_arguments_reach_the_tool_without_a_shell() -> None:
    result = SubprocessRunner().run(["printf", "%s", "$HOME;echo pwned"])
    assert result.stdout == b"$HOME;echo pwned"


def test_a_missing_tool_is_a_clear_error() -> None:
    with pytest.raises(BootCommandFailed, match="cryptsetup-does-not-exist is not installed"):
        SubprocessRunner().run(["cryptsetup-does-not-exist", "isLuks", "/dev/nvme1n1"])


def test_a_command_that_hangs_is_stopped_at_the_timeout() -> None:
    with pytest.raises(BootCommandFailed, match=r"timed out after 0.2 s"):
        SubprocessRunner(timeout_seconds=0.2).run([PY, "-c", "import time; time.sleep(5)"])


def test_an_empty_argv_is_refused() -> None:
    with pytest.raises(BootCommandFailed, match="no command given"):
        SubprocessRunner().run([])
