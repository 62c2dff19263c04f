"""`hd forget`: GDPR right to erasure through the control API (`functions/forget`).

    hd forget --subject ID [--reason TEXT] [--no-wait]   erase a data subject's rows, wait for the outcome
    hd forget --subject -                                 the same, reading the id from stdin (not shell history)
    hd forget --status REQUEST_ID                         one request
    hd forget --list                                      every request of the organisation

A request is answered completed at once by `hd dev`; in AWS the forget worker runs it within minutes
and `hd forget` polls until it settles. Exit status 3 when the request failed (the error is printed;
in AWS the worker tries it again hourly, in `hd dev` fix the cause and ask again).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from engine_host.cli.api_session import ApiSession, CommandOutput, connection_options
from engine_host.cli.listing import ListingColumn, cell_text, render_listing, render_record
from hd_core.errors import InvalidRequest

FAILED_EXIT_STATUS = 3
POLL_SECONDS = 2.0
SETTLED = frozenset({"completed", "failed"})

REQUEST_COLUMNS = (
    ListingColumn("REQUEST", "request_id", 28), ListingColumn("STATUS", "status", 17),
    ListingColumn("ROWS", "rows_removed", 8), ListingColumn("REQUESTED", "requested_at", 32),
    ListingColumn("SLA DEADLINE", "sla_deadline", 32), ListingColumn("SUBJECT HMAC", "subject_hmac", 20),
)
REQUEST_FIELDS = (
    ("request", "request_id"), ("status", "status"), ("subject hmac", "subject_hmac"), ("reason", "reason"),
    ("requested by", "requested_by"), ("requested at", "requested_at"), ("sla deadline", "sla_deadline"),
    ("started at", "started_at"), ("finished at", "finished_at"), ("rows removed", "rows_removed"),
    ("old versions pending", "old_versions_pending"), ("error", "error"),
)


def add_forget_command(commands: argparse._SubParsersAction) -> None:
    """Register `hd forget` on the top-level parser."""
    help_text = "erase a data subject's rows from every table that declares a subject column (GDPR)"
    parser = commands.add_parser("forget", help=help_text, description=help_text)
    connection_options(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--subject", metavar="ID", help="the subject column's value to erase ('-': read it from stdin)")
    what.add_argument("--status", metavar="REQUEST_ID", help="show one forget request")
    what.add_argument("--list", action="store_true", help="list the organisation's forget requests")
    parser.add_argument("--reason", default="", help="why (stored in the clear: must not contain the subject id)")
    parser.add_argument("--no-wait", action="store_true", help="return once the request is recorded")
    parser.add_argument("--wait-timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="how long to wait for the request to settle (default 3600)")
    parser.set_defaults(api_command=forget)


def forget(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """Run whichever of --subject, --status and --list was given."""
    if args.list:
        rows = session.org_call("GET", "forget-requests")
        return CommandOutput(rows, render_listing(REQUEST_COLUMNS, rows, empty="no forget requests"))
    if args.status:
        return _shown(session.org_call("GET", "forget-requests", args.status))
    subject = _subject(args.subject)
    request = session.org_call("POST", "forget-requests", body={"subject_id": subject, "reason": args.reason})
    if not args.no_wait:
        request = _settle(session, request, args.wait_timeout)
    return _shown(request)


def _subject(given: str) -> str:
    if given != "-":
        return given
    line = sys.stdin.readline().strip()
    if not line:
        raise InvalidRequest("no subject id on stdin")
    return line


def _settle(session: ApiSession, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while request["status"] not in SETTLED and time.monotonic() < deadline:
        session.progress(f"forget request {request['request_id']}: {request['status']}")
        time.sleep(POLL_SECONDS)
        request = session.org_call("GET", "forget-requests", request["request_id"])
    return request


def _shown(request: dict[str, Any]) -> CommandOutput:
    lines = [render_record(REQUEST_FIELDS, request)]
    for table, result in sorted((request.get("table_results") or {}).items()):
        lines.append(f"  {table}: {cell_text(result.get('rows_removed'))} row(s) removed "
                     f"({cell_text(result.get('storage'))}, {cell_text(result.get('objects_rewritten'))} object(s) "
                     "rewritten)")
        for host, rows in sorted((result.get("hosts") or {}).items()):  # a fleet's writable table: host by host
            lines.append(f"    host {host}: {cell_text(rows)} row(s) removed")
    return CommandOutput(request, "\n".join(lines),
                         status=FAILED_EXIT_STATUS if request["status"] == "failed" else 0)
