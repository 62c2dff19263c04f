"""`hd reissue-owner-key`: a new Owner API key for a local install whose `owner.key` was lost (or may have leaked).

It needs the state folder itself (the control store and the local key file), not a credential:
whoever can read that folder already holds everything the Owner key protects. The earlier local
Owner keys are revoked, the change is recorded in the IAM audit trail (and signed into a
checkpoint), and the key is written to `owner.key` with mode 0600; an existing `owner.key` is
never overwritten, so the command refuses while one is there.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import suppress
from pathlib import Path

from engine_host.cli.offline_audit import local_trail, operator_actor
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import reissue_local_owner_key
from hd_core.errors import HdError
from hd_core.models import new_id

COMMAND = "hd reissue-owner-key"


def add_reissue_owner_key_command(commands: argparse._SubParsersAction, state_dir_help: str) -> None:
    """Register `hd reissue-owner-key` on the top-level parser."""
    parser = commands.add_parser(
        "reissue-owner-key", help="revoke the local Owner's key and write a new one to STATE_DIR/owner.key (audited)")
    parser.add_argument("--state-dir", type=Path, default=None, help=state_dir_help)


def run_reissue_owner_key(state_dir: Path) -> int:
    """Issue the key; 0 on success, else one line on stderr and 1 (refused) or the error's exit code."""
    state_dir = state_dir.expanduser()
    key_file = state_dir / "owner.key"
    if not (state_dir / "control.sqlite3").is_file():
        print(f"{COMMAND}: no local install at {state_dir} (start `hd dev` once to create one)", file=sys.stderr)
        return 1
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"{COMMAND}: {key_file} exists and is never overwritten; if it is lost or leaked, delete it and run "
              "this again (the key it held is then revoked)", file=sys.stderr)
        return 1
    try:
        plaintext, message = _reissue(state_dir)
        os.write(fd, (plaintext + "\n").encode())
        os.fsync(fd)
    except HdError as exc:
        os.close(fd)
        with suppress(OSError):
            key_file.unlink()
        print(f"{COMMAND}: {' '.join(str(exc).split())} ({exc.code})", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    os.close(fd)
    print(message)
    return 0


def _reissue(state_dir: Path) -> tuple[str, str]:
    """The new key's plaintext and what to tell the operator; the store is closed again."""
    with local_trail(state_dir) as (store, trail):
        reissued = reissue_local_owner_key(store, trail, ApiKeyHasher(), actor=operator_actor(),
                                           request_id=new_id("req"))
    revoked = ", ".join(reissued.revoked_key_ids) or "none"
    return reissued.api_key_plaintext, (
        f"new Owner API key {reissued.record.key_id} written to {state_dir / 'owner.key'} (mode 0600); "
        f"revoked earlier Owner keys: {revoked}; recorded in the IAM audit trail of {reissued.record.org_id}")
