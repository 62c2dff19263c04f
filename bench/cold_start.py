"""Cold-start import time of each control-plane Lambda: a fresh interpreter imports the handler module.

    .venv/bin/python -m bench.cold_start [--runs 5]

Two columns per function, medians of `--runs` fresh interpreters:
- "tracing on": the default, with Powertools' Tracer, whose constructor imports the X-Ray SDK (which
  builds a botocore client for its sampler);
- "tracing off": with `POWERTOOLS_TRACE_DISABLED=true`, where no Tracer is built at all.
The target is 300 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from functions.openapi import FUNCTION_MODULES

TARGET_MS = 300.0
_PROBE = "import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"


def import_ms(module: str, *, tracing: bool = True) -> float:
    """Milliseconds a fresh interpreter spends importing `module`."""
    env = {"POWERTOOLS_METRICS_DISABLED": "true", "PATH": ""}
    if not tracing:
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)], check=True, capture_output=True,
                         text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def median_ms(module: str, runs: int, *, tracing: bool = True) -> float:
    return statistics.median(import_ms(module, tracing=tracing) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'function':10s} {'tracing on':>11s} {'/target':>8s} {'tracing off':>12s} {'/target':>8s}")
    slowest = {True: 0.0, False: 0.0}
    for name, module in FUNCTION_MODULES.items():
        on, off = median_ms(module, args.runs), median_ms(module, args.runs, tracing=False)
        slowest = {True: max(slowest[True], on), False: max(slowest[False], off)}
        print(f"{name:10s} {on:11.1f} {on / TARGET_MS:7.2f}x {off:12.1f} {off / TARGET_MS:7.2f}x")
    for tracing, label in ((True, "on"), (False, "off")):
        verdict = "met" if slowest[tracing] < TARGET_MS else "MISSED"
        print(f"tracing {label}: slowest {slowest[tracing]:.1f} ms; target {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
