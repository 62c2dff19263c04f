"""Where one engine host process spends the GIL during a load level, sampled with py-spy (`bench.load --profile`).

The question it answers is issue 17 item 4's first one: does a single process saturate on the GIL (our Python
pipeline: parse, policy, rewrite, transpile, result encoding, the audit record) or on DuckDB (which releases the
GIL while it executes)? `py-spy record --gil` keeps a sample only when some thread holds the GIL, so the share of
sampling ticks that produced one is the share of wall time the GIL was held; each kept stack is put in the first
stage below that it passes through. Engine CPU beyond that share ran outside the GIL (DuckDB's threads, TLS,
system calls). On a machine shared with other work the holder can be descheduled while it holds the GIL, which
counts as held: the share is an upper bound there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# (stage, functions any of which in a stack puts the sample in it); first match wins, so a stage nested in
# another comes before it (the audit record is written from inside the statement's execution).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("audit record", ("AuditWriter.write", "Governor.record")),
    ("plan: parse, policy, rewrite, transpile", ("Governor.plan",)),
    ("DuckDB calls", ("EngineSession.run", "EngineSession.bound_plan", "ResultStream.next_batch",
                      "ResultStream._release", "ResultStream.__init__")),
    ("result encoding and wire", ("PgConnection._send_rows", "PgConnection._flush", "PgConnection._send")),
    ("pipeline: admission, leases, bookkeeping", ("StatementPipeline.", "Execution.", "GovernedRows.")),
    ("connection handling", ("PgConnection.",)),
    ("event loop and sockets", ("BaseEventLoop._run_once",)),
)
OTHER = "other"
RATE = 100  # samples a second


@dataclass
class GilSummary:
    """The GIL's share of wall time during the profile, and how its holders' samples fall into stages."""

    held_share: float
    samples: int
    by_stage: Counter = field(default_factory=Counter)

    def stage_shares(self) -> list[tuple[str, float]]:
        """(stage, share of GIL-held samples), largest first."""
        return [(stage, count / self.samples) for stage, count in self.by_stage.most_common()] if self.samples else []


def stage_of(stack: list[str]) -> str:
    """The first stage of STAGES whose functions the stack passes through (frames are `name (file:line)`)."""
    names = [frame.split(" (", 1)[0] for frame in stack]
    for stage, functions in STAGES:
        if any(name == f or (f.endswith(".") and name.startswith(f)) for name in names for f in functions):
            return stage
    return OTHER


def summarize(raw: str, rate: float, seconds: float) -> GilSummary:
    """A summary of py-spy's `--format raw` output (`frame;frame;... count` lines) of `seconds` at `rate` Hz."""
    by_stage: Counter = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples += int(count)
        by_stage[stage_of(stack.split(";"))] += int(count)
    ticks = rate * seconds
    return GilSummary(min(1.0, samples / ticks) if ticks else 0.0, samples, by_stage)


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH, or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class GilProfile:
    """One `py-spy record --gil` of a process for a fixed time, started now; `finish` waits and summarizes."""

    def __init__(self, executable: str, pid: int, seconds: float) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="hd-gil-")
        self._output = Path(self._folder.name) / "gil.raw"
        self.seconds = max(1, int(seconds))
        self._process = subprocess.Popen(
            [executable, "record", "--pid", str(pid), "--duration", str(self.seconds), "--rate", str(RATE), "--gil",
             "--nonblocking", "--format", "raw", "--output", str(self._output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(self, timeout: float = 30.0) -> GilSummary | str:
        """The summary, or why there is none (py-spy failed: say, no permission to trace the process)."""
        try:
            _, err = self._process.communicate(timeout=self.seconds + timeout)
            if self._process.returncode != 0 or not self._output.exists():
                lines = (err or "").strip().splitlines()
                return f"py-spy exited with {self._process.returncode}: {lines[-1] if lines else 'no output'}"
            return summarize(self._output.read_text(), RATE, self.seconds)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            return "py-spy did not finish"
        finally:
            self._folder.cleanup()


def describe(summary: GilSummary, engine_cpu: float | None) -> str:
    """One line: the GIL's share, what ran outside it, and the stages that held it."""
    outside = (f"; engine CPU {engine_cpu:.2f} cores, so ~{max(0.0, engine_cpu - summary.held_share):.2f} cores ran "
               "outside the GIL (DuckDB, TLS, system calls)" if engine_cpu is not None else "")
    stages = ", ".join(f"{stage} {share:.0%}" for stage, share in summary.stage_shares())
    return f"GIL held {summary.held_share:.0%} of wall time ({summary.samples} samples){outside}. Held by: {stages}"
