"""`hd keys`: list, create, rotate and revoke API keys through the control API; rotation policies, `hd keys status`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from engine_host.cli.api_session import ApiSession, CommandOutput, command_action, command_group, positive_int
from engine_host.cli.listing import ListingColumn, cell_text, render_listing, render_record
from hd_core.errors import InvalidRequest
from hd_core.models import KeyEnv

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
    ("rotate every", "rotate_every_days"), ("rotation due", "rotation_due_at"), ("delivered to", "delivery_secret"),
)
STATUS_COLUMNS = (
    ListingColumn("STATE", "state", 12),
    ListingColumn("WHEN", "at", 20),
    ListingColumn("IN", "in", 9),
    ListingColumn("KEY_ID", "key_id", 30),
    ListingColumn("USER_ID", "user_id", 30),
    ListingColumn("NAME", "name", 20),
    ListingColumn("NEXT", "next", 30),
)
STATE_TEXT = {"rotation_due": "rotation due", "expiring": "expiring", "in_grace": "in grace"}
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
    if args.no_rotation:
        body["rotate_every_days"] = None
    elif args.rotate_every_days is not None:
        body["rotate_every_days"] = args.rotate_every_days
    if args.delivery_secret:
        body["delivery_secret"] = args.delivery_secret
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


def keys_policy(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys policy KEY_ID`: set or clear a key's rotation policy and delivery target."""
    body: dict[str, object] = {}
    if args.no_rotation:
        body["rotate_every_days"] = None
    elif args.rotate_every_days is not None:
        body["rotate_every_days"] = args.rotate_every_days
    if args.no_delivery:
        body["delivery_secret"] = None
    elif args.delivery_secret:
        body["delivery_secret"] = args.delivery_secret
    if not body:
        raise InvalidRequest("name a change: --rotate-every-days, --no-rotation, --delivery-secret or --no-delivery")
    key = session.org_call("PATCH", "api-keys", args.key_id, body=body)
    return CommandOutput(key, render_record(KEY_FIELDS, key))


def _in(moment: datetime | None, now: datetime) -> str:
    """How far off a moment is, roughly: `3d 4h`, `5h`, `overdue`."""
    if moment is None:
        return ""
    left = moment - now
    if left <= timedelta(0):
        return "overdue"
    days, hours = left.days, left.seconds // 3600
    return f"{days}d {hours}h" if days else f"{max(hours, 1)}h" if hours else "<1h"


def _next_step(state: str, key: Mapping[str, Any]) -> str:
    """What happens next to a key in the status listing."""
    if state == "in_grace":
        return f"successor {key.get('rotated_to')}"
    if state == "rotation_due":
        return f"to {key['delivery_secret']}" if key.get("delivery_secret") else "rotate it yourself"
    return "renew before it expires"


def keys_status(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys status`: keys due for rotation, expiring within 7 days, and in their rotation grace."""
    entries = session.org_call("GET", "keys", "status")
    now = session.now()
    rows = []
    for entry in entries:
        key = entry["key"]
        rows.append({
            "state": STATE_TEXT.get(entry["state"], entry["state"]), "at": entry["at"],
            "in": _in(_parse_time(entry["at"]), now), "key_id": key["key_id"], "user_id": key["user_id"],
            "name": key["name"], "next": _next_step(entry["state"], key),
        })
    return CommandOutput(entries, render_listing(STATUS_COLUMNS, rows, empty="nothing due, expiring or in grace"))


def keys_revoke(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd keys revoke KEY_ID`: refused from now on, by the API and the engine."""
    key = session.org_call("DELETE", "api-keys", args.key_id)
    return CommandOutput(key, f"revoked {key['key_id']}\n\n{render_record(KEY_FIELDS, key)}")


def add_keys_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd keys` and its actions."""
    actions = command_group(commands, "keys", "list, create, rotate and revoke API keys through the control API")
    listing = command_action(actions, "list", keys_list, "list the organization's API keys")
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--active", action="store_true", help="leave out revoked keys")
    create = command_action(actions, "create", keys_create, "create a key; its plaintext is shown this once")
    create.add_argument("--user", help="whose key (default: your own)")
    create.add_argument("--env", choices=[env.value for env in KeyEnv], default=KeyEnv.LIVE.value,
                        help="hd_live_ or hd_test_ key (default live)")
    create.add_argument("--scope", dest="scopes", action="append", metavar="SCOPE",
                        help="a scope (query:read) or bundle (read_only, agent, developer, admin); repeatable "
                             "or comma-separated; default read_only")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--cidr", dest="cidrs", action="append", metavar="CIDR",
                        help="only accept the key from this network; repeatable (default: any address)")
    create.add_argument("--expires-in-days", type=positive_int, metavar="DAYS", help="default: never")
    _policy_arguments(create, creating=True)
    command_action(actions, "status", keys_status,
                   "keys due for rotation, expiring within 7 days, and in their rotation grace")
    policy = command_action(actions, "policy", keys_policy, "set or clear a key's rotation policy and delivery target")
    policy.add_argument("key_id")
    _policy_arguments(policy, creating=False)
    for name, command, help_text in (
        ("get", keys_get, "show one key"),
        ("rotate", keys_rotate, "issue a replacement; the old key keeps working for its grace period"),
        ("revoke", keys_revoke, "revoke a key at once"),
    ):
        command_action(actions, name, command, help_text).add_argument("key_id")


def _policy_arguments(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    rotation = parser.add_mutually_exclusive_group()
    rotation.add_argument(
        "--rotate-every-days", type=positive_int, metavar="DAYS",
        help="give the key a successor this many days after its creation"
             + (" (default: 90 for a ServiceAccount's key, else never)" if creating else ""),
    )
    rotation.add_argument("--no-rotation", action="store_true", help="no scheduled rotation")
    delivery = parser.add_mutually_exclusive_group()
    delivery.add_argument(
        "--delivery-secret", metavar="SECRET",
        help="Secrets Manager secret (name or ARN, named hd/keys/<org_id>/...) a scheduled successor is written to; "
             "without one you are notified and rotate the key yourself",
    )
    if not creating:
        delivery.add_argument("--no-delivery", action="store_true", help="clear the delivery target")
