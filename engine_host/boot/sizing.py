"""Concurrency and memory of a fleet host derived from its instance size, each overridable in the configuration.

Seed 003's compute tiers give the statements each r6id size runs at once (xlarge 25, 2xlarge 50, 4xlarge 100,
8xlarge 200): 25 per 4 vCPUs. The rest follows from that and from the machine:
- queued statements: twice the concurrent ones (a burst waits `queue_wait_seconds` rather than failing);
- worker threads: one per concurrent statement plus the wire server's spare threads (every admitted statement
  gets a thread at once; DuckDB releases the GIL while it runs);
- DuckDB threads: one per vCPU (DuckDB parallelises a query across them);
- DuckDB `memory_limit`: half the machine's memory (engine/memory.py says why not DuckDB's 80%).

The README's "Concurrency by instance size" table is `sizing_table()` rendered; a test keeps them equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from engine_host.engine.memory import DEFAULT_MEMORY_FRACTION, physical_memory_bytes
from engine_host.wire.server import SPARE_WORKER_THREADS

STATEMENTS_PER_4_VCPUS: Final = 25
QUEUE_FACTOR: Final = 2
GIB: Final = 1 << 30

# The r6id sizes of the compute tiers (vCPUs, memory GiB), for the README table.
TIER_SIZES: Final[dict[str, tuple[str, int, int]]] = {
    "starter": ("r6id.xlarge", 4, 32),
    "standard": ("r6id.2xlarge", 8, 64),
    "performance": ("r6id.4xlarge", 16, 128),
    "high_memory": ("r6id.8xlarge", 32, 256),
}


@dataclass(frozen=True)
class HostSizing:
    """The limits a host runs with: derived from its size, then the configuration's overrides applied."""

    vcpus: int
    memory_bytes: int
    max_concurrent_statements: int
    max_queued_statements: int
    worker_threads: int
    duckdb_threads: int
    memory_limit_bytes: int


def derive_sizing(vcpus: int, memory_bytes: int, *, max_concurrent_statements: int | None = None,
                  max_queued_statements: int | None = None, worker_threads: int | None = None,
                  duckdb_threads: int | None = None, memory_limit_bytes: int | None = None) -> HostSizing:
    """The limits for a machine of `vcpus` and `memory_bytes`; any argument given replaces its derived value.

    The queue and the worker threads follow the concurrent statements actually in force (an override of the
    concurrency moves them too), unless overridden themselves. ValueError for a machine or override below 1.
    """
    if vcpus < 1 or memory_bytes < 1:
        raise ValueError(f"a host needs at least one vCPU and some memory, got {vcpus} vCPUs, {memory_bytes} bytes")
    for name, value in (("max_concurrent_statements", max_concurrent_statements),
                        ("max_queued_statements", max_queued_statements), ("worker_threads", worker_threads),
                        ("duckdb_threads", duckdb_threads), ("memory_limit_bytes", memory_limit_bytes)):
        if value is not None and value < (0 if name == "max_queued_statements" else 1):
            raise ValueError(f"{name} must be positive, got {value}")
    statements = max_concurrent_statements or vcpus * STATEMENTS_PER_4_VCPUS // 4  # 6 on one vCPU
    threads = worker_threads or statements + SPARE_WORKER_THREADS
    if threads < statements:
        raise ValueError(f"worker_threads ({threads}) must be at least max_concurrent_statements ({statements}): "
                         "an admitted statement would wait for a thread after taking its slot")
    return HostSizing(
        vcpus=vcpus, memory_bytes=memory_bytes, max_concurrent_statements=statements,
        max_queued_statements=statements * QUEUE_FACTOR if max_queued_statements is None else max_queued_statements,
        worker_threads=threads, duckdb_threads=duckdb_threads or vcpus,
        memory_limit_bytes=memory_limit_bytes or int(memory_bytes * DEFAULT_MEMORY_FRACTION),
    )


def this_machine() -> tuple[int, int]:
    """(vCPUs this process may run on, physical memory in bytes, cgroup limit included)."""
    try:
        vcpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        vcpus = os.cpu_count() or 1
    return vcpus, physical_memory_bytes()


def sizing_table() -> str:
    """The README's Markdown table of the derived defaults for each compute tier."""
    lines = ["| Tier | Instance | vCPUs | Memory | Statements | Queue | Worker threads | DuckDB threads "
             "| DuckDB memory_limit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tier, (instance, vcpus, memory_gib) in TIER_SIZES.items():
        sizing = derive_sizing(vcpus, memory_gib * GIB)
        lines.append(f"| {tier} | {instance} | {vcpus} | {memory_gib} GiB | {sizing.max_concurrent_statements} "
                     f"| {sizing.max_queued_statements} | {sizing.worker_threads} | {sizing.duckdb_threads} "
                     f"| {sizing.memory_limit_bytes // GIB} GiB |")
    return "\n".join(lines)
