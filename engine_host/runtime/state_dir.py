"""Where local mode keeps its state; a module of its own so the command line can name it without loading the host."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """`$HD_STATE_DIR`, else `~/.hd`."""
    return Path(os.environ.get("HD_STATE_DIR") or Path.home() / ".hd")
