"""`bench.copy_load` runs end to end with a small N so the COPY benchmark cannot rot."""

from __future__ import annotations

import pytest

from bench import copy_load


@pytest.mark.slow  # a whole benchmark, if on a tiny input: CI runs it (`pytest -m slow`)
def test_copy_load_bench_loads_every_row_three_ways() -> None:
    results = copy_load.main(["--rows", "2000"])
    assert [r.rows for r in results] == [2000] * 5  # two COPYs, their two client floors, in-process
    assert all(r.rate > 0 for r in results)
