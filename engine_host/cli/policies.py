"""`hd policies`: add, list and remove governance policies through the control API."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine_host.cli.api_client import ControlApiError
from engine_host.cli.api_session import ApiSession, CommandOutput, command_action, command_group
from engine_host.cli.listing import ListingColumn, render_listing
from hd_core.errors import PolicyInvalid
from hd_core.policies import PolicyKind

POLICY_FILE_VERSION = 1

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


def add_policies_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd policies` and its actions."""
    kinds = [kind.value for kind in PolicyKind]
    actions = command_group(commands, "policies", "add, list and remove governance policies through the control API")
    listing = command_action(actions, "list", policies_list, "list the organization's policies")
    listing.add_argument("--kind", choices=kinds)
    # Here --json takes the document, so the raw-output flag goes before the action: `hd policies --json add`.
    add = command_action(actions, "add", policies_add, "add policies from one document or a policy file",
                  output_flag=False)
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", dest="document", metavar="DOCUMENT", help="one policy document as JSON")
    source.add_argument("--file", type=Path, help='one document, or a policy file {"version": 1, "policies": [...]}')
    for name, command, help_text in (
        ("get", policies_get, "show one policy document"),
        ("remove", policies_remove, "remove one policy"),
    ):
        parser = command_action(actions, name, command, help_text)
        parser.add_argument("kind", choices=kinds)
        parser.add_argument("policy_id")
