"""`hd shadow upload|replay|status|report`: prove the engine answers like the customer's PostgreSQL, and how fast.

Each action is one control-API call (`functions/shadow`): upload a SQL file or JSONL query history,
start a replay of it against a comparison PostgreSQL, follow the replay (a progress bar on stderr
with `--wait`), and read its report as a table, as the API's JSON (`--json`) or as the Markdown a
customer hands to their team (`--markdown`).

The comparison DSN is never taken on the command line, where shell history and `ps` would keep its
password: it is read from the file `--comparison-dsn-file` names, or from $HD_COMPARISON_DSN.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine_host.cli.api_client import _query_string, _refusal, api_path, authorization_headers
from engine_host.cli.api_session import ApiSession, CommandOutput, command_action, command_group, positive_int
from engine_host.cli.listing import ListingColumn, cell_text, render_listing, render_record
from hd_core.errors import InvalidRequest

DSN_VARIABLE = "HD_COMPARISON_DSN"
POLL_SECONDS = 1.0
BAR_WIDTH = 30
FAILED_EXIT_STATUS = 3

REJECTED_COLUMNS = (ListingColumn("LINE", "line", 8), ListingColumn("REASON", "reason", 100))
STATEMENT_COLUMNS = (
    ListingColumn("#", "index", 6), ListingColumn("LINE", "line", 6), ListingColumn("VERDICT", "verdict", 9),
    ListingColumn("REFERENCE_MS", "reference_ms", 12), ListingColumn("ENGINE_MS", "engine_ms", 10),
    ListingColumn("NOTES", "notes", 70),
)
SUMMARY_FIELDS = (
    ("query set", "query_set_id"), ("statements", "query_count"), ("exact", "exact"), ("semantic", "semantic"),
    ("mismatch", "mismatch"), ("error", "error"), ("reference p50/p95/p99 ms", "reference_latency"),
    ("engine p50/p95/p99 ms", "engine_latency"), ("reference total ms", "reference_total"),
    ("engine total ms", "engine_total"), ("speedup at p50", "speedup"), ("incomplete", "incomplete"),
)


def _shadow_path(session: ApiSession, args: argparse.Namespace, *segments: str) -> str:
    return api_path("environments", session.env_id(args.env), "shadow-mode", *segments)


def shadow_upload(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd shadow upload FILE`: store a query set; prints its id and every rejected line."""
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"cannot read {args.file}: {error}") from None
    body: dict[str, Any] = {"text": text}
    if args.format:
        body["format"] = args.format
    answer = session.client.call("POST", _shadow_path(session, args, "upload"), body=body)
    head = f"query set {answer['query_set_id']}: {answer['statement_count']} statements accepted"
    rejected = answer.get("rejected") or []
    if not rejected:
        return CommandOutput(answer, head + ", none rejected")
    table = render_listing(REJECTED_COLUMNS, rejected, empty="")
    return CommandOutput(answer, f"{head}, {len(rejected)} rejected (not read-only, or unreadable):\n{table}")


def _comparison_dsn(args: argparse.Namespace) -> str | None:
    if args.comparison_dsn_file is not None:
        try:
            return Path(args.comparison_dsn_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise InvalidRequest(f"cannot read {args.comparison_dsn_file}: {error.strerror}") from None
    return os.environ.get(DSN_VARIABLE) or None


def shadow_replay(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd shadow replay QUERY_SET_ID`: start a replay; with `--wait`, follow it and print its report."""
    body: dict[str, Any] = {"query_set_id": args.query_set_id, "sample_rate": args.sample_rate,
                            "timeout_seconds": args.timeout, "concurrency": args.concurrency}
    if args.search_path:
        body["search_path"] = args.search_path
    if args.comparison_secret_arn:
        body["comparison_secret_arn"] = args.comparison_secret_arn
    else:
        dsn = _comparison_dsn(args)
        if not dsn:
            raise InvalidRequest(f"name the comparison database: --comparison-dsn-file, ${DSN_VARIABLE} or "
                                 "--comparison-secret-arn")
        body["comparison_dsn"] = dsn
    started = session.client.call("POST", _shadow_path(session, args, "replay"), body=body)
    if not args.wait:
        return CommandOutput(started, f"replay {started['replay_id']} started: `hd shadow status "
                                      f"{started['replay_id']} --wait` follows it")
    args.replay_id = started["replay_id"]
    return _waited_report(session, args)


def shadow_status(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd shadow status REPLAY_ID`: the replay's state and progress; `--wait` follows it to the end."""
    status = _follow(session, args) if args.wait else session.client.call(
        "GET", _shadow_path(session, args, "replays", args.replay_id))
    return CommandOutput(status, f"replay {status['replay_id']}: {status['status']}, {_progress_text(status)}",
                         status=FAILED_EXIT_STATUS if status["status"] == "FAILED" else 0)


def shadow_report(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd shadow report REPLAY_ID`: the verdicts, latencies and speedup, and every statement's verdict."""
    if args.markdown:
        text = _get_text(session, _shadow_path(session, args, "reports", args.replay_id), {"format": "markdown"})
        return CommandOutput(text, text.rstrip("\n"))
    report = session.client.call("GET", _shadow_path(session, args, "reports", args.replay_id))
    return CommandOutput(report, render_report(report))


def _waited_report(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    status = _follow(session, args)
    if status["status"] != "SUCCEEDED":
        return CommandOutput(status, f"replay {status['replay_id']}: {status['status']}", status=FAILED_EXIT_STATUS)
    report = session.client.call("GET", _shadow_path(session, args, "reports", args.replay_id))
    return CommandOutput(report, render_report(report))


def _follow(session: ApiSession, args: argparse.Namespace, *, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Poll the replay until it ends, drawing a progress bar on stderr (one line per change when not a terminal)."""
    path = _shadow_path(session, args, "replays", args.replay_id)
    live = sys.stderr.isatty()
    shown = ""
    while True:
        status = session.client.call("GET", path)
        line = f"{progress_bar(status)} {status['status'].lower()}"
        if line != shown:
            print(("\r" + line) if live else line, end="" if live else "\n", file=sys.stderr, flush=True)
            shown = line
        if status["status"] != "RUNNING":
            if live:
                print(file=sys.stderr, flush=True)
            return status
        sleep(POLL_SECONDS)


def progress_bar(status: Mapping[str, Any]) -> str:
    """`[#########.....] 3/5 batches (22 statements)`, or the bar's frame while the plan is being made."""
    done, total = int(status.get("batches_done") or 0), status.get("batches_total")
    if not total:
        return f"[{'.' * BAR_WIDTH}] preparing"
    filled = min(BAR_WIDTH, BAR_WIDTH * done // int(total))
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {_progress_text(status)}"


def _progress_text(status: Mapping[str, Any]) -> str:
    total = status.get("batches_total")
    if total is None:
        return "preparing"
    return f"{status.get('batches_done', 0)}/{total} batches ({status.get('statements_total')} statements)"


def render_report(report: Mapping[str, Any]) -> str:
    """The report's summary and its statements as a table (Markdown, with the differing rows: `--markdown`)."""

    def latency(side: Mapping[str, Any]) -> str:
        return " / ".join(_ms(side.get(name)) for name in ("p50_ms", "p95_ms", "p99_ms"))

    speedup = report.get("speedup_p50")
    summary = {**report, "reference_latency": latency(report["reference"]), "engine_latency": latency(report["engine"]),
               "reference_total": _ms(report["reference"].get("total_ms")),
               "engine_total": _ms(report["engine"].get("total_ms")),
               "speedup": "n/a" if speedup is None else f"{speedup:.2f}x",
               # A replay that failed, timed out or was stopped says why (hd_core.shadow.report.ReplayEnding).
               "incomplete": (report.get("ended") or {}).get("reason") or "no"}
    rows = [{**statement, "notes": "; ".join(statement.get("notes") or ()) or _errors(statement),
             "reference_ms": _ms(statement.get("reference_ms")), "engine_ms": _ms(statement.get("engine_ms"))}
            for statement in report["statements"]]
    return render_record(SUMMARY_FIELDS, summary) + "\n\n" + render_listing(STATEMENT_COLUMNS, rows,
                                                                              empty="no statements")


def _errors(statement: Mapping[str, Any]) -> str:
    return "; ".join(f"{e.get('side')}: {e.get('sqlstate')} {cell_text(e.get('message'))}"
                     for e in statement.get("errors") or ())


def _ms(value: object) -> str:
    return "" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def _get_text(session: ApiSession, path: str, query: Mapping[str, object]) -> str:
    """A text answer (the Markdown report), with the same credential and error handling as JSON calls."""
    client = session.client
    request = urllib.request.Request(client.base_url + path + _query_string(query))  # noqa: S310 (scheme checked)
    for name, value in authorization_headers(client.credential).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=client.timeout_seconds) as response:  # noqa: S310
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        raise _refusal(error) from None


def _number_up_to(most: float, kind: str) -> Callable[[str], float]:
    """An argparse type: a number more than 0 and at most `most` (`kind` names it in the error)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not 0 < value <= most:
            raise argparse.ArgumentTypeError(f"must be more than 0 and at most {most:g}")
        return value

    return parse


_rate = _number_up_to(1, "a number")
_seconds = _number_up_to(600, "a number of seconds")


def add_shadow_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd shadow` and its actions."""
    actions = command_group(commands, "shadow", "replay a query set on a comparison PostgreSQL and on the engine")
    env_help = "environment id (default: the organization's first environment)"
    upload = command_action(actions, "upload", shadow_upload, "store a SQL file or JSONL query history")
    upload.add_argument("file", type=Path, help="the file to upload")
    upload.add_argument("--format", choices=("sql", "jsonl"), help="default: guessed from the text")
    upload.add_argument("--env", help=env_help)
    replay = command_action(actions, "replay", shadow_replay, "start a replay of an uploaded query set")
    replay.add_argument("query_set_id")
    replay.add_argument("--comparison-dsn-file", type=Path, metavar="PATH",
                        help=f"a file holding the comparison PostgreSQL's DSN (default ${DSN_VARIABLE})")
    replay.add_argument("--comparison-secret-arn", metavar="ARN", help="a Secrets Manager secret holding the DSN")
    replay.add_argument("--sample-rate", type=_rate, default=1.0, help="share of statements replayed (default 1)")
    replay.add_argument("--timeout", type=_seconds, default=60.0, help="seconds per statement and side (default 60)")
    replay.add_argument("--concurrency", type=positive_int, default=4, help="batches at once (default 4)")
    replay.add_argument("--search-path", help="the engine session's search_path")
    replay.add_argument("--wait", action="store_true", help="follow the replay and print its report")
    replay.add_argument("--env", help=env_help)
    status = command_action(actions, "status", shadow_status, "a replay's progress (exit status 3 if it failed)")
    status.add_argument("replay_id")
    status.add_argument("--wait", action="store_true", help="follow it to the end with a progress bar")
    status.add_argument("--env", help=env_help)
    report = command_action(actions, "report", shadow_report, "a finished replay's report")
    report.add_argument("replay_id")
    report.add_argument("--markdown", action="store_true", help="print the Markdown export")
    report.add_argument("--env", help=env_help)
