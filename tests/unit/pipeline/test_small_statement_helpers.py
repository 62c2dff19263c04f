"""Per-statement helpers made cheap for small statements (issue 17 item 3) still give the same answers."""

from __future__ import annotations

import gc
import re

import pyarrow as pa

from engine_host.engine import duckdb_engine
from engine_host.engine.duckdb_engine import batch_nbytes
from engine_host.pipeline.governor import _QueryIds


def test_batch_nbytes_is_pyarrows_nbytes_for_batches_and_slices_and_forgets_dead_batches() -> None:
    batch = pa.record_batch([pa.array(range(1000)), pa.array([f"value {i}" for i in range(1000)])], names=["i", "s"])
    parts = [batch, batch.slice(10, 5), batch.slice(900), batch.slice(0, 0)]
    for part in parts:
        assert batch_nbytes(part) == part.nbytes
        assert batch_nbytes(part) == part.nbytes  # the remembered size, asked again
    key = id(parts[1])
    assert key in duckdb_engine._BATCH_BYTES
    del parts[1:]
    gc.collect()
    assert key not in duckdb_engine._BATCH_BYTES  # an entry goes with its batch, so ids are never confused


def test_query_ids_are_80_random_bits_and_unique_across_pool_refills() -> None:
    ids = _QueryIds()
    drawn = [ids.next() for _ in range(3 * _QueryIds._BATCH + 7)]
    assert all(re.fullmatch(r"q_[0-9a-f]{20}", q) for q in drawn)
    assert len(set(drawn)) == len(drawn)
