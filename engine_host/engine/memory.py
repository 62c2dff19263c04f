"""What DuckDB and each statement's result may hold in memory: plain values, no DuckDB import, so the
command line can show the defaults without loading the engine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Share of the machine's memory DuckDB may use by default. DuckDB's own default (80%) leaves too
# little for the host around it: Arrow batches in flight, their wire encoding, sqlglot trees,
# the authentication pool, the OS page cache that Parquet scans lean on.
DEFAULT_MEMORY_FRACTION = 0.5
DEFAULT_MAX_RESULT_BYTES = 1 << 30
DEFAULT_MAX_VALUE_BYTES = 256 << 20


def physical_memory_bytes() -> int:
    """The machine's (or the container's, where cgroup v2 sets a lower limit) physical memory."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        cgroup = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(cgroup)) if cgroup.isdigit() else total


@dataclass(frozen=True)
class EngineMemory:
    """What DuckDB and each statement's result may hold in memory, and where DuckDB spills.

    `memory_limit_bytes` None: `DEFAULT_MEMORY_FRACTION` of physical memory. `temp_directory`
    None: `duckdb-tmp` next to the database file (the state folder, the cache volume on a fleet
    host). `max_result_bytes` / `max_value_bytes` 0: no cap.
    """

    memory_limit_bytes: int | None = None
    temp_directory: Path | None = None
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES

    def memory_limit(self) -> int:
        if self.memory_limit_bytes is not None:
            return self.memory_limit_bytes
        return int(physical_memory_bytes() * DEFAULT_MEMORY_FRACTION)
