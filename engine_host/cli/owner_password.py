"""`hd set-owner-password`: a password for the local Owner (`owner@localhost`), who is made without one.

No API route gives users a first password of their own (an Owner's or Admin's reset needs a second
person, and `PUT /v1/auth/password` needs the current one), so the local Owner gets it from the
state folder, as `hd reissue-owner-key` gets a key: whoever can read that folder already holds the
Owner key. A password already set is replaced only with the current one. The change is recorded
in the IAM audit trail (`user.password_set`, actor `local:<os user>`) and signed into a checkpoint.

The password is read from the terminal (asked twice), or else from standard input: one line, the
new password; with `--replace`, two lines, the current one then the new one. Never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TextIO

from engine_host.cli.offline_audit import local_trail, operator_actor
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import set_local_owner_password
from hd_core.errors import AuthenticationFailed, Conflict, HdError
from hd_core.models import new_id

COMMAND = "hd set-owner-password"


def add_set_owner_password_command(commands: argparse._SubParsersAction, state_dir_help: str) -> None:
    """Register `hd set-owner-password` on the top-level parser."""
    parser = commands.add_parser(
        "set-owner-password",
        help="give the local Owner (owner@localhost) a password, read from the terminal or stdin (audited)")
    parser.add_argument("--state-dir", type=Path, default=None, help=state_dir_help)
    parser.add_argument("--replace", action="store_true",
                        help="the Owner has a password already: ask for the current one first (stdin: its first line)")


def run_set_owner_password(state_dir: Path, *, replace: bool, stdin: TextIO | None = None) -> int:
    """Set the password; 0 on success, else one line on stderr and 1 (refused) or the error's exit code."""
    state_dir = state_dir.expanduser()
    if not (state_dir / "control.sqlite3").is_file():
        print(f"{COMMAND}: no local install at {state_dir} (start `hd dev` once to create one)", file=sys.stderr)
        return 1
    try:
        current, new = _read_passwords(stdin or sys.stdin, replace=replace)
    except (EOFError, ValueError) as exc:
        print(f"{COMMAND}: {exc or 'no password given'}", file=sys.stderr)
        return 1
    try:
        email = _set(state_dir, current, new)
    except AuthenticationFailed as exc:
        print(f"{COMMAND}: the current password is wrong; nothing was changed ({exc.code})", file=sys.stderr)
        return 1
    except Conflict as exc:
        print(f"{COMMAND}: {exc}: run `{COMMAND} --replace --state-dir {state_dir}` ({exc.code})", file=sys.stderr)
        return 1
    except HdError as exc:
        print(f"{COMMAND}: {' '.join(str(exc).split())} ({exc.code})", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    print(f"password set for the local Owner {email}; log in with POST /v1/auth/login "
          "(recorded in the IAM audit trail as user.password_set)")
    return 0


def _read_passwords(stream: TextIO, *, replace: bool) -> tuple[str | None, str]:
    """(current or None, new): prompted on a terminal, else one line each from `stream`."""
    if stream.isatty():
        current = getpass.getpass("Current password: ") if replace else None
        new = getpass.getpass("New password (12 characters or more): ")
        if getpass.getpass("Repeat the new password: ") != new:
            raise ValueError("the two new passwords differ; nothing was changed")
        return current, new
    lines = [line.rstrip("\r\n") for line in stream.read().splitlines()]
    wanted = 2 if replace else 1
    if len(lines) < wanted or not all(lines[:wanted]):
        raise ValueError("expected " + ("the current password and the new one, one per line," if replace
                                        else "the new password as one line") + " on standard input")
    return (lines[0], lines[1]) if replace else (None, lines[0])


def _set(state_dir: Path, current: str | None, new: str) -> str:
    """Set the password in the store and record it; the Owner's email. The store is closed again."""
    with local_trail(state_dir) as (store, trail):
        owner = set_local_owner_password(store, trail, ApiKeyHasher(), new_password=new, current_password=current,
                                         actor=operator_actor(), request_id=new_id("req"))
    return owner.email
