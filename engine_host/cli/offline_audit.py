"""What an offline, audited `hd` command on a local install needs: its store, key file and IAM trail.

`hd reissue-owner-key` and `hd set-owner-password` act without an API credential: local access to the
state folder is the proof. They open only an existing control store (never make one), refuse a
damaged one with the recovery steps, and record what they do in the IAM audit trail with the
operating-system user as actor.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine_host.runtime.local_state import damaged_store_advice
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import ControlStoreDamaged, SqliteControlStore
from hd_core.control_settings import ControlApiSettings
from hd_core.iam_audit import IamAuditTrail
from hd_core.signing_keys import CheckpointKeyRing


@contextmanager
def local_trail(state_dir: Path) -> Iterator[tuple[SqliteControlStore, IamAuditTrail]]:
    """The install's existing control store and its IAM trail (signed with its key file); closed at the end."""
    store_path = state_dir / "control.sqlite3"
    try:
        store = SqliteControlStore(store_path, create=False)
    except ControlStoreDamaged as exc:
        raise ControlStoreDamaged(f"{exc}: {damaged_store_advice(store_path)}") from None
    with store:
        keys = LocalKeyFile(state_dir / "keys" / "local-keys.json", create_missing=False)
        keys.check()
        checkpoints = LocalFolderCheckpointStore(state_dir)
        # The rotated checkpoint keys too: signed with the ring's current key, verified against every proven one.
        yield store, IamAuditTrail(store, checkpoints, CheckpointKeyRing(store, checkpoints, keys),
                                   checkpoint_every=ControlApiSettings().checkpoint_every)


def operator_actor() -> str:
    """Who ran the command, as the operating system says: the audit actor (there is no API credential)."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"local:uid-{os.getuid()}"
