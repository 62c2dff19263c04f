"""`AuditExportStore` on a local folder: `root/audit/exports/<org>/<export id>.<format>`, files only the owner reads.

`hd dev` has no presigned URLs: the export's location is a `file://` URL of the state directory,
which the CLI copies wherever `--output` says.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

from hd_core.audit_export import ExportLocation
from hd_core.errors import AuditWriteFailed

EXPORTS_FOLDER = "audit/exports"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class LocalFolderAuditExports:
    """Stores each export as a new file; an existing name is never overwritten."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def put(self, name: str, body: IO[bytes], *, content_type: str) -> ExportLocation:
        """Copy `body` into a new 0600 file under the exports folder; returns its `file://` URL."""
        path = self._path_of(name)
        try:
            self._private_dirs(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(body, out)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise AuditWriteFailed(f"the audit export could not be stored: {exc.strerror or exc}") from exc
        return ExportLocation(url=path.resolve().as_uri(), key=str(path), expires_at=None)

    def discard(self, location: ExportLocation) -> None:
        """Delete the export's file."""
        Path(location.key).unlink(missing_ok=True)

    def _path_of(self, name: str) -> Path:
        parts = name.split("/")
        if not parts or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"an export name is relative and plain, got {name!r}")
        return self._root.joinpath(EXPORTS_FOLDER, *parts)

    def _private_dirs(self, folder: Path) -> None:
        missing = []
        current = folder
        while not current.exists():
            missing.append(current)
            current = current.parent
        for level in reversed(missing):
            try:
                os.mkdir(level, _DIR_MODE)
            except FileExistsError:
                pass
