"""`hd keys|users|policies|audit`: administer an installation through its control API.

Unlike `hd local-policy`, which edits a local state directory offline, these commands speak HTTP to the
control API (locally the one `hd dev` serves on 127.0.0.1:8080), so every change passes the same
authentication, authorisation and IAM audit trail as any other client's. Output is a readable
table, or with `--json` the API's JSON as it came, for scripts.

Exit status: 0 on success, 1 on an error (one line on stderr), 2 on a usage error, 3 when
`hd audit verify-chain` finds the IAM audit chain broken.
"""


from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from engine_host.cli.api_client import (
    DEFAULT_API_URL,
    ControlApiClient,
    ControlApiError,
    api_base_url,
    api_path,
    bad_response,
    resolve_credential,
    text_field,
)
from engine_host.cli.listing import ListingColumn, cell_text, printable, render_listing, render_record
from hd_core.errors import HdError, NotFound, PolicyInvalid
from hd_core.models import KeyEnv, Role, UserStatus, utc_now
from hd_core.policies import PolicyKind

API_COMMANDS = frozenset({"keys", "users", "policies", "audit"})
CHAIN_BROKEN_EXIT_STATUS = 3
POLICY_FILE_VERSION = 1


def error_line(error: HdError) -> str:
    """The one line an error is reported as: `hd: <message> (<code>, request <request_id>)`."""
    request_id = getattr(error, "request_id", None)
    where = f"{error.code}, request {request_id}" if request_id else error.code
    return f"hd: {printable(str(error))} ({where})"


# --- session --------------------------------------------------------------------------------------


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CommandOutput:
    """What a command produced: the API's JSON (for `--json`), its readable form and an exit status."""

    data: Any
    text: str
    warning: str | None = None
    status: int = 0


@dataclass
class ApiSession:
    """One command's connection to the control API, and the organisation and environment it acts on."""

    client: ControlApiClient
    org: str | None = None
    now: Callable[[], datetime] = utc_now
    progress: Callable[[str], None] = _to_stderr

    def org_id(self) -> str:
        """`--org`, or else the caller's own organisation (from `whoami`)."""
        if self.org is None:
            self.org = text_field(self.client.call("GET", api_path("auth", "whoami")), "org_id")
        return self.org

    def env_id(self, requested: str | None) -> str:
        """`--env`, or else the organisation's first environment."""
        if requested:
            return requested
        org_id = self.org_id()
        environments = self.client.call("GET", api_path("organizations", org_id, "environments"))
        if not environments:
            raise NotFound(f"organization {org_id} has no environments; pass --env")
        return text_field(environments[0], "env_id")

    def org_call(self, method: str, *segments: str, query: Mapping[str, object] | None = None,
                 body: object = None) -> Any:
        """A request to `/v1/organizations/<org>/<segments>`."""
        return self.client.call(method, api_path("organizations", self.org_id(), *segments), query=query, body=body)


def open_session(args: argparse.Namespace, now: Callable[[], datetime] = utc_now) -> ApiSession:
    """The session the connection options of `args` describe."""
    client = ControlApiClient(
        api_base_url(getattr(args, "api_url", None)),
        resolve_credential(getattr(args, "api_key", None), getattr(args, "state_dir", None)),
    )
    return ApiSession(client, org=getattr(args, "org", None), now=now)


Command = Callable[[ApiSession, argparse.Namespace], CommandOutput]

# --- hd keys --------------------------------------------------------------------------------------

KEY_COLUMNS = (
    ListingColumn("KEY_ID", "key_id", 30),
    ListingColumn("USER_ID", "user_id", 30),
    ListingColumn("ENV", "env", 4),
    ListingColumn("NAME", "name", 20),
    ListingColumn("SCOPES", "scopes", 36),
    ListingColumn("STATUS", "status", 8),
    ListingColumn("CREATED", "created_at", 20),
    ListingColumn("EXPIRES", "expires_at", 20),
)
KEY_FIELDS = (
    ("key id", "key_id"), ("organization", "org_id"), ("user", "user_id"), ("env", "env"), ("name", "name"),
    ("scopes", "scopes"), ("allowed cidrs", "allowed_cidrs"), ("created", "created_at"),
    ("expires", "expires_at"), ("revoked", "revoked_at"), ("rotated to", "rotated_to"),
)
SHOWN_ONCE = "hd: this is the only time the API key is shown (only its hash is kept): store it now"


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def key_status(key: Mapping[str, Any], now: datetime) -> str:
    """`revoked`, `expired`, `rotated` (still valid during its grace period) or `active`."""
    if key.get("revoked_at"):
        return "revoked"
    expires_at = _parse_time(key.get("expires_at"))
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "rotated" if key.get("rotated_to") else "active"


def _with_status(key: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    return {**key, "status": key_status(key, now)}


def _issued_key_text(issued: Mapping[str, Any]) -> str:
    """A newly issued key: its record, then its plaintext."""
    return f"{render_record(KEY_FIELDS, issued['key'])}\n\napi key     {issued['api_key']}"


def keys_list(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys list`."""
    keys = session.org_call("GET", "api-keys", query={"user_id": args.user, "include_revoked": not args.active})
    rows = [_with_status(key, session.now()) for key in keys]
    return CommandOutput(keys, render_listing(KEY_COLUMNS, rows, empty="no API keys"))


def keys_create(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys create`: the plaintext key is printed this once."""
    body: dict[str, object] = {"env": args.env, "name": args.name, "allowed_cidrs": args.cidrs or []}
    if args.user:
        body["user_id"] = args.user
    if args.scopes:
        body["scopes"] = [scope for value in args.scopes for scope in value.split(",") if scope]
    if args.expires_in_days is not None:
        body["expires_at"] = (session.now() + timedelta(days=args.expires_in_days)).isoformat()
    created = session.org_call("POST", "api-keys", body=body)
    return CommandOutput(created, _issued_key_text(created), warning=SHOWN_ONCE)


def keys_get(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys get KEY_ID`."""
    key = session.org_call("GET", "api-keys", args.key_id)
    return CommandOutput(key, render_record((*KEY_FIELDS, ("status", "status")), _with_status(key, session.now())))


def keys_rotate(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys rotate KEY_ID`: a new key now; the old one keeps working until its grace period ends."""
    rotated = session.org_call("POST", "api-keys", args.key_id, "rotate")
    previous = rotated["previous"]
    text = (
        f"{_issued_key_text(rotated)}\n\n"
        f"the previous key {previous['key_id']} keeps working until {cell_text(previous['expires_at'])}"
    )
    return CommandOutput(rotated, text, warning=SHOWN_ONCE)


def keys_revoke(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys revoke KEY_ID`: refused from now on, by the API and the engine."""
    key = session.org_call("DELETE", "api-keys", args.key_id)
    return CommandOutput(key, f"revoked {key['key_id']}\n\n{render_record(KEY_FIELDS, key)}")


# --- hd users -------------------------------------------------------------------------------------

USER_COLUMNS = (
    ListingColumn("USER_ID", "user_id", 30),
    ListingColumn("EMAIL", "email", 32),
    ListingColumn("NAME", "name", 20),
    ListingColumn("ROLE", "role", 14),
    ListingColumn("STATUS", "status", 9),
    ListingColumn("DEPARTMENT", "department", 16),
    ListingColumn("REGION", "region", 12),
    ListingColumn("MFA", "mfa_enabled", 3),
)
USER_FIELDS = (
    ("user id", "user_id"), ("organization", "org_id"), ("email", "email"), ("name", "name"), ("role", "role"),
    ("status", "status"), ("department", "department"), ("region", "region"), ("mfa", "mfa_enabled"),
    ("identities", "external_ids"), ("created", "created_at"),
)


def users_list(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd users list`."""
    query = {"role": args.role, "status": args.status, "email_contains": args.email_contains,
             "department": args.department}
    users = session.org_call("GET", "users", query=query)
    return CommandOutput(users, render_listing(USER_COLUMNS, users, empty="no matching users"))


def users_invite(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd users invite`."""
    body = {"email": args.email, "role": args.role, "name": args.name, "department": args.department,
            "region": args.region}
    return _user_outcome("invited", session.org_call("POST", "users", body=body))


def _user_outcome(verb: str, user: Mapping[str, Any]) -> CommandOutput:
    return CommandOutput(user, f"{verb} {user['email']}\n\n{render_record(USER_FIELDS, user)}")


def users_suspend(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd users suspend USER_ID`: their keys and sessions stop working."""
    return _user_outcome("suspended", session.org_call("POST", "users", args.user_id, "suspend"))


def users_reactivate(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd users reactivate USER_ID`."""
    return _user_outcome("reactivated", session.org_call("POST", "users", args.user_id, "reactivate"))


def users_remove(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd users remove USER_ID`: the user is kept, as removed, for the audit trail."""
    return _user_outcome("removed", session.org_call("DELETE", "users", args.user_id))


def users_role(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd users role USER_ID ROLE`."""
    user = session.org_call("PUT", "users", args.user_id, "role", body={"role": args.role})
    return _user_outcome(f"{user['role']} is now the role of", user)


# --- hd policies ----------------------------------------------------------------------------------

POLICY_COLUMNS = (
    ListingColumn("KIND", "kind", 13),
    ListingColumn("ID", "id", 30),
    ListingColumn("TARGET", "target", 36),
    ListingColumn("DOCUMENT", "details", 60),
)


def policy_documents(text: str, source: str) -> list[dict[str, Any]]:
    """The documents of one policy document or a policy file (`{"version": 1, "policies": [...]}`)."""
    try:
        content = json.loads(text)
    except ValueError as error:
        raise PolicyInvalid(f"{source} is not valid JSON: {error}") from None
    if isinstance(content, dict) and "policies" in content:
        if content.get("version") != POLICY_FILE_VERSION:
            raise PolicyInvalid(f"{source}: unsupported policy file version {content.get('version')!r}; "
                                f"expected {POLICY_FILE_VERSION}")
        documents = content["policies"]
    else:
        documents = [content]
    if not isinstance(documents, list) or not all(isinstance(document, dict) for document in documents):
        raise PolicyInvalid(f"{source}: expected a policy document (a JSON object with a kind) or "
                            '{"version": 1, "policies": [...]}')
    return documents


def _policy_row(policy: Mapping[str, Any]) -> dict[str, Any]:
    document = policy.get("document") or {}
    table, column = document.get("table"), document.get("column")
    target = f"{table}.{column}" if table and column else table or document.get("name") or document.get("resources")
    # Kind, organisation and id have their own columns (or are implied): the rest says what the policy does.
    details = {name: value for name, value in document.items()
               if name not in ("kind", "org_id") and value != policy.get("id")}
    return {**policy, "target": target, "details": details}


def policies_list(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd policies list`."""
    policies = session.org_call("GET", "policies", query={"kind": args.kind})
    rows = [_policy_row(policy) for policy in policies]
    return CommandOutput(policies, render_listing(POLICY_COLUMNS, rows, empty="no policies"))


def policies_add(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd policies add`: POST each document in order, stopping at the first one refused."""
    if args.file is not None:
        try:
            text, source = args.file.read_text(encoding="utf-8"), str(args.file)
        except (OSError, UnicodeDecodeError) as error:
            raise PolicyInvalid(f"cannot read {args.file}: {error}") from None
    else:
        text, source = args.document, "--json"
    documents = policy_documents(text, source)
    org_id = session.org_id()
    added: list[Any] = []
    for number, document in enumerate(documents, start=1):
        _require_same_org(document, org_id, number)
        try:
            added.append(session.org_call("POST", "policies", body=document))
        except ControlApiError as error:
            message = f"policy {number} of {len(documents)} refused ({len(added)} added before it): {error}"
            raise ControlApiError(message, code=error.code, request_id=error.request_id) from None
    lines = [f"added {_policy_heading(policy)}" for policy in added]
    return CommandOutput(added, "\n".join(lines) or "the document holds no policies")


def _require_same_org(document: Mapping[str, Any], org_id: str, number: int) -> None:
    # The API files every document under the organisation in the URL: a document written for another
    # organisation would silently change this one's governance.
    named = document.get("org_id")
    if named is not None and named != org_id:
        raise PolicyInvalid(f"policy {number} is for organization {named}, not {org_id}; pass --org {named}")


def policies_get(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd policies get KIND ID`."""
    policy = session.org_call("GET", "policies", args.kind, args.policy_id)
    document = json.dumps(policy["document"], indent=2, sort_keys=True)
    return CommandOutput(policy, f"{_policy_heading(policy)}\n{document}")


def policies_remove(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd policies remove KIND ID`."""
    removed = session.org_call("DELETE", "policies", args.kind, args.policy_id)
    return CommandOutput(removed, f"removed {_policy_heading(removed)}")


def _policy_heading(policy: Mapping[str, Any]) -> str:
    return f"{policy['kind']} {policy['id']} (policy version {policy['policy_version']})"


# --- hd audit -------------------------------------------------------------------------------------

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


# --- the command line -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


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


def _connection_options(parser: argparse.ArgumentParser, *, output_flag: bool = True) -> None:
    # SUPPRESS: an option given before the action (`hd keys --json list`) is not reset by the action's
    # parser, and `getattr(args, name, None)` tells "not given" apart.
    group = parser.add_argument_group("control API")
    group.add_argument("--api-url", default=argparse.SUPPRESS,
                       help=f"control API base URL (default $HD_API_URL or {DEFAULT_API_URL})")
    group.add_argument("--api-key", default=argparse.SUPPRESS,
                       help="API key or JWT access token (default $HD_API_KEY, else <state dir>/owner.key)")
    group.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                       help="where `hd dev` keeps owner.key (default $HD_STATE_DIR or ~/.hd)")
    group.add_argument("--org", default=argparse.SUPPRESS, help="organization id (default: the caller's own)")
    if output_flag:
        group.add_argument("--json", dest="raw_json", action="store_true", default=argparse.SUPPRESS,
                           help="print the API's JSON answer instead of a table")


def _group(commands: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    _connection_options(parser)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def _action(actions: argparse._SubParsersAction, name: str, command: Command, help_text: str,
            *, output_flag: bool = True) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text)
    _connection_options(parser, output_flag=output_flag)
    parser.set_defaults(api_command=command)
    return parser


def _add_keys(commands: argparse._SubParsersAction) -> None:
    actions = _group(commands, "keys", "list, create, rotate and revoke API keys through the control API")
    listing = _action(actions, "list", keys_list, "list the organization's API keys")
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")
    create = _action(actions, "create", keys_create, "create a key; its plaintext is shown this once")
    create.add_argument("--user", help="whose key (default: your own)")
    create.add_argument("--env", choices=[env.value for env in KeyEnv], default=KeyEnv.LIVE.value,
                        help="hd_live_ or hd_test_ key (default live)")
    create.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE",
                        help="a scope (query:read) or bundle (read_only, agent, developer, admin); repeatable "
                             "or comma-separated; default read_only")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--cidr", dest="cidrs", action="append", metavar="CIDR",
                        help="only accept the key from this network; repeatable (default: any address)")
    create.add_argument("--expires-in-days", type=_positive_int, metavar="DAYS", help="default: never")
    for name, command, help_text in (
        ("get", keys_get, "show one key"),
        ("rotate", keys_rotate, "issue a replacement; the old key keeps working for its grace period"),
        ("revoke", keys_revoke, "revoke a key at once"),
    ):
        _action(actions, name, command, help_text).add_argument("key_id")


def _add_users(commands: argparse._SubParsersAction) -> None:
    roles = [role.value for role in Role]
    actions = _group(commands, "users", "invite, list, suspend and remove users through the control API")
    listing = _action(actions, "list", users_list, "list the organization's users")
    listing.add_argument("--role", choices=roles)
    listing.add_argument("--status", choices=[status.value for status in UserStatus])
    listing.add_argument("--email-contains", metavar="TEXT")
    listing.add_argument("--department")
    invite = _action(actions, "invite", users_invite, "invite a user")
    invite.add_argument("--email", required=True)
    invite.add_argument("--role", required=True, choices=roles)
    invite.add_argument("--name", default="")
    invite.add_argument("--department", help="feeds ABAC policies and row filters")
    invite.add_argument("--region", help="feeds ABAC policies and row filters")
    for name, command, help_text in (
        ("suspend", users_suspend, "suspend a user: their keys and sessions stop working"),
        ("reactivate", users_reactivate, "reactivate a suspended user"),
        ("remove", users_remove, "remove a user (kept for the audit trail)"),
    ):
        _action(actions, name, command, help_text).add_argument("user_id")
    role = _action(actions, "role", users_role, "change a user's role")
    role.add_argument("user_id")
    role.add_argument("role", choices=roles)


def _add_policies(commands: argparse._SubParsersAction) -> None:
    kinds = [kind.value for kind in PolicyKind]
    actions = _group(commands, "policies", "add, list and remove governance policies through the control API")
    listing = _action(actions, "list", policies_list, "list the organization's policies")
    listing.add_argument("--kind", choices=kinds)
    # Here --json takes the document, so the raw-output flag goes before the action: `hd policies --json add`.
    add = _action(actions, "add", policies_add, "add policies from one document or a policy file",
                  output_flag=False)
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", dest="document", metavar="DOCUMENT", help="one policy document as JSON")
    source.add_argument("--file", type=Path, help='one document, or a policy file {"version": 1, "policies": [...]}')
    for name, command, help_text in (
        ("get", policies_get, "show one policy document"),
        ("remove", policies_remove, "remove one policy"),
    ):
        parser = _action(actions, name, command, help_text)
        parser.add_argument("kind", choices=kinds)
        parser.add_argument("policy_id")


def _add_audit(commands: argparse._SubParsersAction) -> None:
    actions = _group(commands, "audit", "search query audit records and the IAM audit trail")
    env_help = "environment id (default: the organization's first environment)"
    queries = _action(actions, "queries", audit_queries, "search query audit records of a date range")
    queries.add_argument("--env", help=env_help)
    queries.add_argument("--start", type=_day, required=True, metavar="YYYY-MM-DD")
    queries.add_argument("--end", type=_day, required=True, metavar="YYYY-MM-DD", help="inclusive")
    queries.add_argument("--user", help="only this user's statements")
    queries.add_argument("--agent", help="only this agent's statements")
    queries.add_argument("--table", help="only statements that read or wrote this table")
    queries.add_argument("--min-duration-ms", type=_non_negative_float, metavar="MS")
    queries.add_argument("--limit", type=_positive_int, default=100, help="records per page (default 100)")
    queries.add_argument("--cursor", help="continue after an earlier page")
    queries.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
    iam = _action(actions, "iam", audit_iam, "list IAM audit events (administrative changes)")
    iam.add_argument("--env", help=env_help)
    iam.add_argument("--after-seq", type=int, default=0, metavar="SEQ", help="start after this position")
    iam.add_argument("--limit", type=_positive_int, default=100, help="events per page (default 100)")
    iam.add_argument("--all", action="store_true", help="read on to the head of the chain")
    verify = _action(actions, "verify-chain", audit_verify_chain,
                     "re-hash the IAM audit chain against its signed checkpoint (exit status 3 if broken)")
    verify.add_argument("--env", help=env_help)


def add_api_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd keys`, `hd users`, `hd policies` and `hd audit` on the top-level parser."""
    _add_keys(commands)
    _add_users(commands)
    _add_policies(commands)
    _add_audit(commands)


def run_api_command(args: argparse.Namespace, *, now: Callable[[], datetime] = utc_now) -> int:
    """Run one parsed API command; returns its exit status. Errors are one line on stderr, never a traceback."""
    try:
        outcome: CommandOutput = args.api_command(open_session(args, now), args)
    except HdError as error:
        return _report_failure(error)
    except (KeyError, TypeError, IndexError) as error:
        # An answer without the fields this version of hd reads: another API version, or not our API.
        return _report_failure(bad_response(f"the control API's answer is not what this hd expects ({error!r})"))
    try:
        print(json.dumps(outcome.data, indent=2) if getattr(args, "raw_json", False) else outcome.text, flush=True)
    except BrokenPipeError:
        # `hd ... | head` closed the pipe early: not an error worth a traceback. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again (the Python docs' recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if outcome.warning:
        print(outcome.warning, file=sys.stderr)
    return outcome.status


def _report_failure(error: HdError) -> int:
    print(error_line(error), file=sys.stderr)
    return 1
