"""`hd audit`: search, look up and export query audit records; list the IAM audit trail and verify its chain.

`hd audit queries`, `hd audit queries <q_ref>` and `hd audit export` act on one environment:
`--env`, else the organisation's environment of the caller's own key environment (an `hd_test_`
key: staging), so the statements you just ran are the ones you find.
"""

from __future__ import annotations

import argparse
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from engine_host.cli.api_client import api_path, bad_response, text_field
from engine_host.cli.api_session import ApiSession, CommandOutput, command_action, command_group, positive_int
from engine_host.cli.listing import ListingColumn, printable, render_listing, render_record
from hd_core.audit_search import outcome_of

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


QUERY_CHAIN_COLUMNS = (
    ListingColumn("DAY", "day"), ListingColumn("HOST", "host_id"), ListingColumn("VALID", "valid"),
    ListingColumn("RECORDS", "entry_count"), ListingColumn("SIGNED", "checkpoint_size"),
    ListingColumn("UNCHAINED", "unchained_count"), ListingColumn("FIRST_BREAK", "break", 40),
)


RECORD_FIELDS = (
    ("query id", "query_id"), ("time", "ts"), ("environment", "key_env"), ("user", "user_id"), ("role", "role"),
    ("key", "key_id"), ("agent", "agent_id"), ("source ip", "source_ip"), ("request id", "request_id"),
    ("kind", "statement_kind"), ("tables", "tables"), ("outcome", "outcome"), ("sqlstate", "sqlstate"),
    ("error code", "error_code"), ("error", "error_message"), ("rows returned", "rows_returned"),
    ("rows written", "rows_written"), ("duration ms", "total_ms"), ("masked columns", "masked_columns"),
    ("row filters", "row_filters_applied"), ("verdicts", "verdict_lines"), ("sql", "sql_redacted"),
)
EXPORT_FIELDS = (
    ("export id", "export_id"), ("format", "format"), ("records", "record_count"), ("bytes", "size_bytes"),
    ("start", "start"), ("end", "end"), ("url", "url"), ("expires at", "expires_at"),
)


def _query_row(record: Mapping[str, Any]) -> dict[str, Any]:
    timings, error = record.get("timings_ms"), record.get("error")
    total = timings.get("total") if isinstance(timings, dict) else None
    outcome = error.get("code", "error") if isinstance(error, dict) else "ok"
    return {**record, "total_ms": None if total is None else f"{total:.1f}", "outcome": outcome}


def _record_view(record: Mapping[str, Any]) -> dict[str, Any]:
    raw_error, raw_verdicts = record.get("error"), record.get("verdicts")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    verdicts: list[Any] = raw_verdicts if isinstance(raw_verdicts, list) else []
    return {
        **_query_row(record),
        "outcome": outcome_of(dict(record)),
        "sqlstate": error.get("sqlstate"), "error_code": error.get("code"), "error_message": error.get("message"),
        "verdict_lines": [f"{v.get('stage')}: {v.get('decision')} ({v.get('reason')})"
                          for v in verdicts if isinstance(v, dict)],
    }


def _audit_env(session: ApiSession, requested: str | None) -> str:
    """`--env`, else the caller's organisation's environment of the caller's key environment, else its first."""
    if requested:
        return requested
    key_env = session.client.call("GET", api_path("auth", "whoami")).get("env")
    environments = session.client.call("GET", api_path("organizations", session.org_id(), "environments"))
    matching = [env for env in environments if env.get("key_env") == key_env]
    return text_field(matching[0], "env_id") if matching else session.env_id(None)


def _filters(args: argparse.Namespace) -> dict[str, object]:
    return {"start": args.start, "end": args.end, "user_id": args.user, "agent_id": args.agent, "table": args.table,
            "min_duration_ms": args.min_duration_ms, "outcome": args.outcome, "sqlstate": args.sqlstate,
            "code": args.code}


def audit_queries(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd audit queries`: a page (with `--all` every page, following `next_cursor`), or one reference's record."""
    env_id = _audit_env(session, args.env)
    if args.query_id:
        return _lookup(session, env_id, args)
    query: dict[str, object] = {**_filters(args), "limit": args.limit}
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
        # Later pages take the window from the cursor: a defaulted "last 24 hours" must not move between pages.
        if args.start is None and args.end is None:
            query = {**query, "start": None, "end": None}
    data = {"records": records, "next_cursor": None, "start": page.get("start"), "end": page.get("end")} \
        if args.all else page
    rows = [_query_row(record) for record in records]
    text = render_listing(QUERY_COLUMNS, rows, empty="no matching query audit records")
    warning = f"hd: more records match: add --all, or --cursor {next_cursor}" if next_cursor else None
    return CommandOutput(data, text, warning=warning)


def _lookup(session: ApiSession, env_id: str, args: argparse.Namespace) -> CommandOutput:
    """`hd audit queries <q_ref>`: the record(s) of the statement an error message quoted."""
    found = session.client.call("GET", api_path("environments", env_id, "audit", "queries", args.query_id),
                                query={"start": args.start, "end": args.end})
    records = found.get("records") or []
    text = "\n\n".join(render_record(RECORD_FIELDS, _record_view(record)) for record in records)
    return CommandOutput(found, text)


def audit_export(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd audit export`: store a window's records as one JSONL or CSV file; `--output` fetches it."""
    env_id = _audit_env(session, args.env)
    export = session.client.call("GET", api_path("environments", env_id, "audit", "queries", "export"),
                                 query={**_filters(args), "format": args.format})
    text = render_record(EXPORT_FIELDS, export)
    if args.output is not None:
        _download(text_field(export, "url"), args.output)
        text += f"\nsaved to    {args.output}"
    return CommandOutput(export, text)


def _download(url: str, target: Path) -> None:
    """Copy the export to `target`: a presigned HTTPS URL (AWS) or a file:// URL of the state directory (hd dev)."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("https", "http", "file"):
        raise bad_response(f"the export URL has an unexpected scheme {scheme!r}")
    # The scheme is one of the three checked above: the control API named where its own export is.
    with urllib.request.urlopen(url, timeout=300) as source, target.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(source, out)


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
    """`hd audit verify-chain [--trail iam|queries]`: re-hash an audit chain; exit status 3 when it is broken."""
    env_id = session.env_id(args.env)
    # The IAM trail has no days: the API ignores --start/--end for it.
    query = {"trail": args.trail, **{name: value.isoformat() for name in ("start", "end")
                                     if (value := getattr(args, name)) is not None}}
    report = session.client.call("GET", api_path("environments", env_id, "audit", "admin", "verify-chain"),
                                 query=query)
    if args.trail == "queries":
        return _query_chains_output(report)
    text = render_record(CHAIN_FIELDS, report)
    if report.get("chain_valid") is True:
        return CommandOutput(report, text)
    broken = report.get("first_break") or {}
    where = (f"the IAM audit chain is broken at position {broken.get('position')} ({broken.get('kind')}): "
             f"{printable(str(broken.get('detail')))}")
    return CommandOutput(report, f"{text}\nfirst break       {where}", warning=f"hd: {where}",
                         status=CHAIN_BROKEN_EXIT_STATUS)


def _query_chains_output(report: Mapping[str, Any]) -> CommandOutput:
    """One line per host chain of each day; the first broken one names its position."""
    chains = report.get("chains") or []
    rows = [{**chain, "valid": "yes" if chain.get("chain_valid") else "no",
             "break": "" if not chain.get("first_break") else
             f"{chain['first_break'].get('position')} ({chain['first_break'].get('kind')})"} for chain in chains]
    text = render_listing(QUERY_CHAIN_COLUMNS, rows, empty="no query audit records in these days")
    if report.get("chain_valid") is True:
        return CommandOutput(report, text)
    broken = next(chain for chain in chains if not chain.get("chain_valid"))
    first = broken.get("first_break") or {}
    where = (f"the query audit chain of {printable(str(broken.get('host_id')))} on {broken.get('day')} is broken at "
             f"position {first.get('position')} ({first.get('kind')}): {printable(str(first.get('detail')))}")
    return CommandOutput(report, text, warning=f"hd: {where}", status=CHAIN_BROKEN_EXIT_STATUS)


def _utc_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def _bound(text: str) -> str:
    """A date (YYYY-MM-DD) or an ISO-8601 time with an offset, sent as written (normalised to UTC if a time)."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD or a time with an offset "
                                         f"(2026-03-01T12:00:00Z), got {text!r}")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _filter_options(parser: argparse.ArgumentParser, env_help: str) -> None:
    parser.add_argument("--env", help=env_help)
    parser.add_argument("--start", type=_bound, metavar="WHEN",
                        help="YYYY-MM-DD or a time with an offset (default: 24 hours before --end)")
    parser.add_argument("--end", type=_bound, metavar="WHEN",
                        help="a date is inclusive, a time exclusive (default: now)")
    parser.add_argument("--user", help="only this user's statements")
    parser.add_argument("--agent", help="only this agent's statements")
    parser.add_argument("--table", help="only statements that read or wrote this table")
    parser.add_argument("--min-duration-ms", type=_non_negative_float, metavar="MS")
    parser.add_argument("--outcome", choices=("ok", "denied", "error"),
                        help="ok, denied (a policy stage refused it) or error")
    parser.add_argument("--sqlstate", metavar="CODE", help="only statements that failed with this SQLSTATE")
    parser.add_argument("--code", metavar="HD_ERR_…", help="only statements that failed with this error code")


def add_audit_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd audit` and its actions."""
    actions = command_group(commands, "audit", "search query audit records and the IAM audit trail")
    env_help = "environment id (default: the organization's first environment)"
    query_env_help = "environment id (default: the one of your key's environment, e.g. staging for hd_test_ keys)"
    queries = command_action(actions, "queries", audit_queries,
                             "search query audit records (default: the last 24 hours), or show one by reference")
    queries.add_argument("query_id", nargs="?", metavar="Q_REF",
                         help="the reference an error message quoted (q_…): show that statement's record")
    _filter_options(queries, query_env_help)
    queries.add_argument("--limit", type=positive_int, default=100, help="records per page (default 100)")
    queries.add_argument("--cursor", help="continue after an earlier page")
    queries.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
    export = command_action(actions, "export", audit_export,
                            "export a window of query audit records as JSONL or CSV (recorded in the IAM trail)")
    _filter_options(export, query_env_help)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="file format (default jsonl)")
    export.add_argument("--output", type=Path, metavar="FILE", help="download the export to FILE")
    iam = command_action(actions, "iam", audit_iam, "list IAM audit events (administrative changes)")
    iam.add_argument("--env", help=env_help)
    iam.add_argument("--after-seq", type=int, default=0, metavar="SEQ", help="start after this position")
    iam.add_argument("--limit", type=positive_int, default=100, help="events per page (default 100)")
    iam.add_argument("--all", action="store_true", help="read on to the head of the chain")
    verify = command_action(actions, "verify-chain", audit_verify_chain,
                            "re-hash an audit chain against its signed checkpoints (exit status 3 if broken)")
    verify.add_argument("--env", help=env_help)
    verify.add_argument("--trail", choices=("iam", "queries"), default="iam",
                        help="iam: the IAM trail (default); queries: every engine host's daily query audit chain")
    verify.add_argument("--start", type=_utc_day, metavar="YYYY-MM-DD", help="--trail queries: first day (today)")
    verify.add_argument("--end", type=_utc_day, metavar="YYYY-MM-DD", help="--trail queries: last day, inclusive")
