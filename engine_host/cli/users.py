"""`hd users`: invite, list, suspend and remove users through the control API."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from engine_host.cli.api_session import ApiSession, CommandOutput, command_action, command_group
from engine_host.cli.listing import ListingColumn, render_listing, render_record
from hd_core.models import Role, UserStatus

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


def add_users_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd users` and its actions."""
    roles = [role.value for role in Role]
    actions = command_group(commands, "users", "invite, list, suspend and remove users through the control API")
    listing = command_action(actions, "list", users_list, "list the organization's users")
    listing.add_argument("--role", choices=roles)
    listing.add_argument("--status", choices=[status.value for status in UserStatus])
    listing.add_argument("--email-contains", metavar="TEXT")
    listing.add_argument("--department")
    invite = command_action(actions, "invite", users_invite, "invite a user")
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
        command_action(actions, name, command, help_text).add_argument("user_id")
    role = command_action(actions, "role", users_role, "change a user's role")
    role.add_argument("user_id")
    role.add_argument("role", choices=roles)
