"""Every benchmark under bench/ runs end to end on a tiny input, so none can rot unnoticed.

Numbers from these runs mean nothing (inputs are a few thousand rows); each run must exit 0 and
print the side-by-side lines its docstring promises. `bench.load` has its own smoke test
(tests/e2e/test_bench_load.py), which also checks its figures against the audit trail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # whole benchmarks, if on tiny inputs: CI runs them (`pytest -m slow`)

# module, tiny arguments, lines every run must print (the comparisons the bench exists for)
SMOKE_RUNS = [
    ("bench.cache", ["--rows", "2000", "--files", "2", "--runs", "1"], ["local file", "cold (S3)", "warm (cache)"]),
    ("bench.cold_start", ["--runs", "1"], ["tracing"]),
    ("bench.iam_checkpoints", ["--events", "10", "--runs", "1"], ["verify"]),
    ("bench.pipeline", ["--samples", "3", "--warmup", "1", "--rows", "2000", "--runs", "1", "--megabytes", "0.05"],
     ["[statements]", "[plan check]", "[masking]", "[scrub_pii]"]),
    ("bench.redaction", ["--megabytes", "0.05", "--statements", "20"], ["MB/s"]),
    ("bench.tpch", ["--scale", "0.01", "--rounds", "1", "--lookups", "2"],
     ["[tpch]", "geomean engine/native", "results equal across", "[point lookup]"]),
    ("bench.shadow", ["--smoke"],
     ["[shadow] SF0.01", "replayed as hd_bench_shadow_reader: read-only", "[latency]", "[goal]"]),
    ("bench.statement_size", ["--max-tokens", "200", "--shapes", "2"], ["tokens"]),
    ("bench.wire", ["--rows", "2000", "--runs", "1", "--small", "5", "--clients", "3", "--per-client", "3"],
     ["[bulk]", "[small]", "[concurrent] 3 clients x 3 queries: 9 ok, 0 errors"]),
]


@pytest.mark.parametrize(("module", "args", "expected"), SMOKE_RUNS, ids=[m for m, _, _ in SMOKE_RUNS])
def test_bench_runs_end_to_end(module: str, args: list[str], expected: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"{module} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    for line in expected:
        assert line in done.stdout, f"{module} printed no {line!r}:\n{done.stdout[-3000:]}"
    assert "Traceback" not in done.stderr
