"""Audit redaction benchmark: `scrub_pii` throughput on mixed text and `redact_sql` on typical statements.

Run from the repository root:  .venv/bin/python -m bench.redaction [--megabytes 4] [--statements 2000]

Prints, side by side from one run:
  1. `scrub_pii` on ~N MB of mixed SQL / log / error text with some PII: MB/s (best of --runs)
  2. `redact_sql` (AST literal redaction + PII pass) on typical statements: statements/s and mean us each
"""

from __future__ import annotations

import argparse
import random
import time

from hd_core.redaction import redact_sql
from hd_core.text_redaction import scrub_pii

LINES = (
    "SELECT id, name, email FROM crm.customers WHERE region = 'EMEA' AND created_at > '2024-01-01' LIMIT 100;\n",
    "2026-03-01T12:00:00.123Z INFO query q_123 user=usr_abc rows=1532 elapsed_ms=12.5 contact jane.doe@example.com\n",
    "ERROR conversion failed for value '4111 1111 1111 1111' in column card_number (row 88123)\n",
    "callback to (415) 555-2671 or +442079460958; ssn=123456789 ssn 123-45-6789\n",
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore\n",
    "UPDATE sales.orders SET status = 'shipped', shipped_at = now() WHERE order_id = 99812 AND org_id = $1;\n",
    "2026-03-01T12:00:01.456Z WARN slow statement 1834.2 ms scanned 12,400,000 rows in 38 row groups\n",
)

STATEMENTS = (
    "SELECT * FROM crm.customers WHERE customer_id = 42",
    "SELECT c.name, sum(o.total) AS revenue FROM crm.customers c JOIN sales.orders o ON o.customer_id = c.id "
    "WHERE o.created_at >= DATE '2026-01-01' AND c.email = 'jane.doe@example.com' GROUP BY c.name "
    "ORDER BY revenue DESC LIMIT 20",
    "INSERT INTO sales.orders (order_id, customer_id, total, note) VALUES (1, 42, 19.99, 'call 415-555-2671')",
    "UPDATE crm.customers SET phone = '+1 415 555 2671', updated_at = now() WHERE customer_id IN (1, 2, 3)",
    "WITH recent AS (SELECT * FROM sales.orders WHERE created_at > now() - INTERVAL '7 days') "
    "SELECT status, count(*) FROM recent GROUP BY status",
    "SELECT * FROM crm.customers WHERE name = 'unterminated",
)


def mixed_text(megabytes: float, seed: int = 7) -> str:
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    parts: list[str] = []
    size = 0
    while size < target:
        line = rng.choice(LINES)
        parts.append(line)
        size += len(line)
    return "".join(parts)


def best_of(runs: int, fn) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    text = mixed_text(args.megabytes)
    scrubbed = scrub_pii(text)
    markers = {m: scrubbed.count(m) for m in ("[EMAIL]", "[SSN]", "[CARD]", "[PHONE]")}
    seconds = best_of(args.runs, lambda: scrub_pii(text))
    mb = len(text.encode()) / 1_000_000
    print(
        f"[scrub_pii]  {mb:.1f} MB mixed text, best of {args.runs}: {seconds * 1000:7.1f} ms  "
        f"{mb / seconds:6.1f} MB/s   markers {markers}"
    )

    batch = [STATEMENTS[i % len(STATEMENTS)] for i in range(args.statements)]
    for sql in STATEMENTS[:50]:
        redact_sql(sql)  # warm up sqlglot's caches
    seconds = best_of(args.runs, lambda: [redact_sql(sql) for sql in batch])
    print(
        f"[redact_sql] {len(batch):,} typical statements, best of {args.runs}: {seconds * 1000:7.1f} ms  "
        f"{len(batch) / seconds:8,.0f} statements/s   {seconds / len(batch) * 1e6:6.1f} us each"
    )
    per_kind = {sql[:24] + "...": redact_sql(sql) for sql in STATEMENTS[1:4]}
    for before, after in per_kind.items():
        print(f"  {before:28s} -> {after}")


if __name__ == "__main__":
    main()
