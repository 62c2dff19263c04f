"""`hd audit`: search query audit records and the IAM audit trail, and verify the IAM audit chain."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import date
from typing import Any

from engine_host.cli.api_client import api_path, bad_response
from engine_host.cli.api_session import ApiSession, CommandOutput, command_action, command_group, positive_int
from engine_host.cli.listing import ListingColumn, printable, render_listing, render_record

CHAIN_BROKEN_EXIT_STATUS = 3

QUERY_COLUMNS = (
    ListingColumn("TIME", "ts", 20),
    ListingColumn("USER_ID", "user_id", 26),
    ListingColumn("AGENT", "agent_id", 16),
    ListingColumn("KIND", "statement_kind", 8),
    ListingColumn("TABLES", "tables", 28),
    ListingColumn("ROWS", "rows_returned", 8),
    ListingColumn("MS", "total_ms", 9),
    ListingColumn("OUTCOME", "outcome", 24),
    ListingColumn("SQL", "sql_redacted", 60),
)
IAM_COLUMNS = (
    ListingColumn("SEQ", "seq", 6),
    ListingColumn("TIME", "at", 20),
    ListingColumn("EVENT", "event_type", 26),
    ListingColumn("ACTOR", "actor", 28),
    ListingColumn("TARGET", "target", 32),
    ListingColumn("REQUEST_ID", "request_id", 40),
)
CHAIN_FIELDS = (
    ("chain valid", "chain_valid"), ("entries", "entry_count"), ("first entry hash", "first_entry_hash"),
    ("last entry hash", "last_entry_hash"), ("checkpoint size", "checkpoint_size"), ("verified at", "verified_at"),
)


def _query_row(record: Mapping[str, Any]) -> dict[str, Any]:
    timings, error = record.get("timings_ms"), record.get("error")
    total = timings.get("total") if isinstance(timings, dict) else None
    outcome = error.get("code", "error") if isinstance(error, dict) else "ok"
    return {**record, "total_ms": None if total is None else f"{total:.1f}", "outcome": outcome}


def audit_queries(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd audit queries`: one page, or with `--all` every page, following `next_cursor`."""
    env_id = session.env_id(args.env)
    query: dict[str, object] = {"start": args.start, "end": args.end, "user_id": args.user, "agent_id": args.agent,
                                "table": args.table, "min_duration_ms": args.min_duration_ms, "limit": args.limit}
    records: list[Any] = []
    cursor, page = args.cursor, None
    while True:
        page = session.client.call("GET", api_path("environments", env_id, "audit", "queries"),
                                   query={**query, "cursor": cursor})
        records.extend(page["records"])
        next_cursor = page.get("next_cursor")
        if not args.all or not next_cursor:
            break
        if next_cursor == cursor:
            raise bad_response("the control API handed back the cursor it was given; stopping")
        session.progress(f"hd: {len(records)} records so far, fetching the next page…")
        cursor = next_cursor
    data = {"records": records, "next_cursor": None} if args.all else page
    rows = [_query_row(record) for record in records]
    text = render_listing(QUERY_COLUMNS, rows, empty="no matching query audit records")
    warning = f"hd: more records match: add --all, or --cursor {next_cursor}" if next_cursor else None
    return CommandOutput(data, text, warning=warning)


def audit_iam(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd audit iam`: the IAM audit trail in chain order; `--all` reads on to its head."""
    env_id = session.env_id(args.env)
    events: list[Any] = []
    after_seq = args.after_seq
    while True:
        page = session.client.call("GET", api_path("environments", env_id, "audit", "admin"),
                                   query={"after_seq": after_seq, "limit": args.limit})
        events.extend(page)
        more = len(page) == args.limit
        if not args.all or not more:
            break
        after_seq = int(page[-1]["seq"])
        session.progress(f"hd: {len(events)} events so far, fetching the next page…")
    text = render_listing(IAM_COLUMNS, events, empty="no IAM audit events")
    warning = f"hd: more events may follow: add --all, or --after-seq {events[-1]['seq']}" if more else None
    return CommandOutput(events, text, warning=warning)


def audit_verify_chain(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd audit verify-chain`: re-hash the IAM audit chain; exit status 3 when it is broken."""
    env_id = session.env_id(args.env)
    report = session.client.call("GET", api_path("environments", env_id, "audit", "admin", "verify-chain"))
    text = render_record(CHAIN_FIELDS, report)
    if report.get("chain_valid") is True:
        return CommandOutput(report, text)
    broken = report.get("first_break") or {}
    where = (f"the IAM audit chain is broken at position {broken.get('position')} ({broken.get('kind')}): "
             f"{printable(str(broken.get('detail')))}")
    return CommandOutput(report, f"{text}\nfirst break       {where}", warning=f"hd: {where}",
                         status=CHAIN_BROKEN_EXIT_STATUS)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def add_audit_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd audit` and its actions."""
    actions = command_group(commands, "audit", "search query audit records and the IAM audit trail")
    env_help = "environment id (default: the organization's first environment)"
    queries = command_action(actions, "queries", audit_queries, "search query audit records of a date range")
    queries.add_argument("--env", help=env_help)
    queries.add_argument("--start", type=_day, required=True, metavar="YYYY-MM-DD")
    queries.add_argument("--end", type=_day, required=True, metavar="YYYY-MM-DD", help="inclusive")
    queries.add_argument("--user", help="only this user's statements")
    queries.add_argument("--agent", help="only this agent's statements")
    queries.add_argument("--table", help="only statements that read or wrote this table")
    queries.add_argument("--min-duration-ms", type=_non_negative_float, metavar="MS")
    queries.add_argument("--limit", type=positive_int, default=100, help="records per page (default 100)")
    queries.add_argument("--cursor", help="continue after an earlier page")
    queries.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
    iam = command_action(actions, "iam", audit_iam, "list IAM audit events (administrative changes)")
    iam.add_argument("--env", help=env_help)
    iam.add_argument("--after-seq", type=int, default=0, metavar="SEQ", help="start after this position")
    iam.add_argument("--limit", type=positive_int, default=100, help="events per page (default 100)")
    iam.add_argument("--all", action="store_true", help="read on to the head of the chain")
    verify = command_action(actions, "verify-chain", audit_verify_chain,
                            "re-hash the IAM audit chain against its signed checkpoint (exit status 3 if broken)")
    verify.add_argument("--env", help=env_help)
