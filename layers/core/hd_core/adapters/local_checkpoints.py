"""`CheckpointStore` on a local folder, for `hd dev`: `<root>/audit/iam-checkpoints/<chain_id>/<size>-<ms>.json`.

A checkpoint file is written whole under a temporary name and then linked to its final name,
which fails if that name exists: a checkpoint is never overwritten and never seen half written.
Files are 0600 and folders 0700. Every other file in a chain's folder is read back as a
checkpoint (only this adapter's own in-flight temporaries, dot-named, are skipped): a name proves
nothing, and something that is not a checkpoint where checkpoints live is an error to inspect.
Unlike the Object Lock bucket, a local folder cannot stop its owner from deleting files; it is
for development only.
"""

from __future__ import annotations

import os
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from hd_core.errors import AuditWriteFailed, Conflict, HdError
from hd_core.iam_audit import (
    CHECKPOINT_MESSAGE_TYPE,
    checkpoint_from_json,
    checkpoint_name_prefix,
    checkpoint_name_time,
    checkpoint_object_name,
    checkpoint_to_json,
    validate_chain_id,
)
from hd_core.models import ChainCheckpoint

CHECKPOINTS_FOLDER = ("audit", "iam-checkpoints")
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class LocalFolderCheckpointStore:
    """Signed IAM chain checkpoints as JSON files under a local folder."""

    def __init__(self, root: Path, folder: tuple[str, ...] = CHECKPOINTS_FOLDER, *,
                 message_type: str = CHECKPOINT_MESSAGE_TYPE) -> None:
        """`folder`: where under `root` (the query audit chain keeps its checkpoints apart from the IAM chain's);
        `message_type`: what the stored documents say their signatures cover."""
        self._root = Path(root)
        self._folder = folder
        self._message_type = message_type

    def put_checkpoint(self, checkpoint: ChainCheckpoint) -> None:
        """Store a checkpoint; raises `Conflict` if one with the same name exists, `AuditWriteFailed` on I/O errors."""
        folder = self._chain_folder(checkpoint.chain_id)
        final = folder / checkpoint_object_name(checkpoint)
        temporary = folder / f".{final.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        try:
            _ensure_private_dirs(self._root, (*self._folder, checkpoint.chain_id))
            _write_new_file(temporary, checkpoint_to_json(checkpoint, self._message_type))
            os.link(temporary, final)
        except FileExistsError:
            raise Conflict(f"IAM checkpoint {final} already exists; checkpoints are never overwritten") from None
        except OSError as exc:
            raise AuditWriteFailed(f"IAM checkpoint {final} could not be stored: {exc.strerror or exc}") from exc
        finally:
            with suppress(OSError):  # the temporary may never have been created
                temporary.unlink()

    def list_checkpoints(self, chain_id: str, *, size: int | None = None) -> list[ChainCheckpoint]:
        """Every checkpoint file of the chain (with `size`, those named for it); raises `HdError` on unreadable ones."""
        folder = self._chain_folder(chain_id)
        prefix = "" if size is None else checkpoint_name_prefix(size)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HdError(f"IAM checkpoints in {folder} cannot be listed: {exc.strerror or exc}") from exc
        return [_read_checkpoint(folder / name) for name in sorted(names)
                if name.startswith(prefix) and not name.startswith(".")]

    def latest_filed(self, chain_id: str) -> datetime | None:
        """The latest signing time the chain's checkpoint files are named with (names are an index, not evidence)."""
        try:
            names = os.listdir(self._chain_folder(chain_id))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HdError(f"checkpoints of {chain_id} cannot be listed: {exc.strerror or exc}") from exc
        return max(filter(None, map(checkpoint_name_time, names)), default=None)

    def chain_ids(self, prefix: str) -> list[str]:
        """The ids of every chain with a checkpoint folder whose id starts with `prefix`, sorted."""
        folder = self._root.joinpath(*self._folder)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HdError(f"checkpoint folder {folder} cannot be listed: {exc.strerror or exc}") from exc
        return sorted(name for name in names if name.startswith(prefix) and (folder / name).is_dir())

    def _chain_folder(self, chain_id: str) -> Path:
        return self._root.joinpath(*self._folder, validate_chain_id(chain_id))


def _read_checkpoint(path: Path) -> ChainCheckpoint:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HdError(f"IAM checkpoint {path} cannot be read: {exc.strerror or exc}") from exc
    return checkpoint_from_json(data, str(path))


def _write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (owner-only, failing if it exists) with `data`, synced to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _ensure_private_dirs(root: Path, parts: tuple[str, ...]) -> None:
    """Create `root/parts...` level by level with mode 0700; existing levels are left as they are."""
    for depth in range(len(parts) + 1):
        level = root.joinpath(*parts[:depth])
        try:
            os.mkdir(level, _DIR_MODE)
        except FileExistsError:
            if not level.is_dir():
                raise NotADirectoryError(f"{level} exists and is not a directory") from None
