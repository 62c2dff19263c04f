"""The report of one shadow replay: verdict counts, latencies per side, speedup, and per-statement details.

Everything in a report may leave the customer's account in an e-mail: statements are shown with
their literals replaced by `?` (`hd_core.redaction.redact_sql`), rows only as the comparison's
`redact` callable left them, and error messages as `compare` redacted them.

Percentiles are linear interpolations between closest ranks (numpy's default); a side's latencies
are those of the statements it answered or failed, in milliseconds. `speedup_p50` is the reference's
p50 divided by the engine's p50 (how many times faster the typical statement runs on the engine).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hd_core.redaction import redact_sql
from hd_core.shadow.compare import Comparison, Verdict

VERDICTS: tuple[Verdict, ...] = ("exact", "semantic", "mismatch", "error")


@dataclass(frozen=True)
class StatementResult:
    """One replayed statement: where it came from, its verdict, and each side's time in milliseconds."""

    index: int
    line: int
    sql: str
    comparison: Comparison
    reference_ms: float | None
    engine_ms: float | None


@dataclass(frozen=True)
class LatencySummary:
    """A side's latency percentiles and total over its timed statements, in milliseconds."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    total: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencySummary:
        """The summary of `samples` (None percentiles when there are none)."""
        ordered = sorted(samples)
        return cls(len(ordered), percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99),
                   math.fsum(ordered))


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile of sorted values, interpolated linearly between closest ranks."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class ReplayEnding:
    """Why a replay ended without WriteReport: the execution's status (FAILED, TIMED_OUT, ABORTED) and the
    error name Step Functions gave (a state's error, `States.Timeout`, ...); never a cause's text."""

    status: str
    error: str

    def describe(self) -> str:
        return f"the replay ended {self.status} ({self.error}) before its report was written"


@dataclass(frozen=True)
class ShadowReport:
    """A replay's results; build it with `build_report`. `ended` is set when the replay did not finish: the
    statements it had not replayed are errors, and the report says why."""

    query_set_id: str
    statements: tuple[StatementResult, ...]
    reference: LatencySummary
    engine: LatencySummary
    ended: ReplayEnding | None = None

    @property
    def query_count(self) -> int:
        return len(self.statements)

    def count(self, verdict: Verdict) -> int:
        """How many statements got `verdict`."""
        return sum(1 for result in self.statements if result.comparison.verdict == verdict)

    @property
    def speedup_p50(self) -> float | None:
        """Reference p50 over engine p50; None without both."""
        if self.reference.p50 is None or not self.engine.p50:
            return None
        return self.reference.p50 / self.engine.p50

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {
            "query_set_id": self.query_set_id,
            "query_count": self.query_count,
            **{verdict: self.count(verdict) for verdict in VERDICTS},
            "reference": _latency_dict(self.reference),
            "engine": _latency_dict(self.engine),
            "speedup_p50": _rounded(self.speedup_p50, 2),
            "ended": None if self.ended is None else {"status": self.ended.status, "error": self.ended.error,
                                                      "reason": self.ended.describe()},
            "statements": [
                {
                    "index": result.index,
                    "line": result.line,
                    "sql": redact_sql(result.sql),
                    "reference_ms": _rounded(result.reference_ms, 3),
                    "engine_ms": _rounded(result.engine_ms, 3),
                    **result.comparison.to_dict(),
                }
                for result in self.statements
            ],
        }

    def to_json(self) -> str:
        """The report as JSON (what the API serves and `hd shadow report --json` prints)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str)

    def to_markdown(self) -> str:
        """The report as Markdown, for a customer to hand to their team."""
        lines = [f"# Shadow replay report: {_cell(self.query_set_id)}", "",
                 f"{self.query_count} statements replayed on the reference PostgreSQL and on Hardened Duck.", "",
                 *([f"**Incomplete:** {self.ended.describe()}.", ""] if self.ended is not None else []),
                 "| verdict | statements |", "|---|---:|"]
        lines += [f"| {verdict} | {self.count(verdict)} |" for verdict in VERDICTS]
        lines += ["", "| side | statements | p50 ms | p95 ms | p99 ms | total ms |", "|---|---:|---:|---:|---:|---:|"]
        for name, summary in (("reference PostgreSQL", self.reference), ("Hardened Duck", self.engine)):
            lines.append(f"| {name} | {summary.count} | {_ms(summary.p50)} | {_ms(summary.p95)} | "
                         f"{_ms(summary.p99)} | {_ms(summary.total)} |")
        speedup = self.speedup_p50
        lines += ["", f"Speedup at p50: {'n/a' if speedup is None else f'{speedup:.2f}x'}", "",
                  "## Statements", "", "| # | line | verdict | reference ms | engine ms | notes |",
                  "|---:|---:|---|---:|---:|---|"]
        for result in self.statements:
            notes = "; ".join(result.comparison.notes)
            lines.append(f"| {result.index} | {result.line} | {result.comparison.verdict} | "
                         f"{_ms(result.reference_ms)} | {_ms(result.engine_ms)} | {_cell(notes)} |")
        details = [result for result in self.statements if result.comparison.verdict in ("mismatch", "error")]
        if details:
            lines += ["", "## Differences"]
        for result in details:
            lines += _details(result)
        return "\n".join(lines) + "\n"


def build_report(query_set_id: str, results: Sequence[StatementResult],
                 ended: ReplayEnding | None = None) -> ShadowReport:
    """The report of a replay's statement results (in replay order); `ended` when the replay did not finish."""
    ordered = tuple(sorted(results, key=lambda result: result.index))
    return ShadowReport(
        query_set_id=query_set_id,
        statements=ordered,
        reference=LatencySummary.of([r.reference_ms for r in ordered if r.reference_ms is not None]),
        engine=LatencySummary.of([r.engine_ms for r in ordered if r.engine_ms is not None]),
        ended=ended,
    )


def _details(result: StatementResult) -> list[str]:
    comparison = result.comparison
    lines = ["", f"### Statement {result.index} (line {result.line}): {comparison.verdict}", "", "```sql",
             redact_sql(result.sql).replace("```", "` ` `"), "```", ""]
    if comparison.verdict == "error":
        lines += ["| side | SQLSTATE | message |", "|---|---|---|"]
        lines += [f"| {e.side} | {_cell(e.sqlstate)} | {_cell(e.message)} |" for e in comparison.errors]
        return lines
    lines.append(f"Rows: reference {comparison.reference_rows}, engine {comparison.engine_rows}.")
    for label, rows in (("Only on the reference", comparison.reference_only),
                        ("Only on the engine", comparison.engine_only)):
        if not rows:
            continue
        columns = list(rows[0])
        lines += ["", f"{label} (first {len(rows)}, redacted):", "",
                  "| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(_shown(row.get(c))) for c in columns) + " |" for row in rows]
    return lines


def _shown(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _latency_dict(summary: LatencySummary) -> dict[str, Any]:
    return {"count": summary.count, "p50_ms": _rounded(summary.p50, 3), "p95_ms": _rounded(summary.p95, 3),
            "p99_ms": _rounded(summary.p99, 3), "total_ms": _rounded(summary.total, 3)}
