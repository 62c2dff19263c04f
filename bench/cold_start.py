"""Cold-start import time of each control-plane Lambda: a fresh interpreter imports the handler module.

    .venv/bin/python -m bench.cold_start [--runs 5]

Two columns per function, medians of `--runs` fresh interpreters:
- "as deployed": everything the handler module imports, Powertools Tracer's X-Ray SDK included
  (the SDK builds a botocore client for its sampler when it is imported);
- "own code": the same import with the X-Ray SDK already loaded, i.e. what our modules, Powertools'
  resolver, Pydantic, PyJWT and friends cost on top of it.
The target is 300 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from functions.openapi import FUNCTION_MODULES

TARGET_MS = 300.0
_PROBE = "{preload}import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
_XRAY = "import aws_xray_sdk.core; "


def import_ms(module: str, *, preload: str = "") -> float:
    """Milliseconds a fresh interpreter spends importing `module` (after running `preload`)."""
    probe = _PROBE.format(preload=preload, module=module)
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         env={"POWERTOOLS_METRICS_DISABLED": "true", "PATH": ""})
    return float(out.stdout.strip().splitlines()[-1])


def median_ms(module: str, runs: int, *, preload: str = "") -> float:
    return statistics.median(import_ms(module, preload=preload) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'function':10s} {'as deployed':>12s} {'own code':>10s} {'deployed/target':>16s}")
    slowest = 0.0
    for name, module in FUNCTION_MODULES.items():
        deployed = median_ms(module, args.runs)
        own = median_ms(module, args.runs, preload=_XRAY)
        slowest = max(slowest, deployed)
        print(f"{name:10s} {deployed:12.1f} {own:10.1f} {deployed / TARGET_MS:15.2f}x")
    print(f"{'x-ray sdk':10s} {median_ms('aws_xray_sdk.core', args.runs):12.1f}")
    verdict = "met" if slowest < TARGET_MS else "MISSED"
    print(f"slowest as deployed {slowest:.1f} ms; target {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
