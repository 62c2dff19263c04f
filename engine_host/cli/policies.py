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
    query = {"dry_run": "true"} if args.dry_run else None
    for number, document in enumerate(documents, start=1):
        _require_same_org(document, org_id, number)
        try:
            added.append(session.org_call("POST", "policies", body=document, query=query))
        except ControlApiError as error:
            done = "checked" if args.dry_run else "added"
            message = f"policy {number} of {len(documents)} refused ({len(added)} {done} before it): {error}"
            raise ControlApiError(message, code=error.code, request_id=error.request_id) from None
    if args.dry_run:
        return CommandOutput(added, "\n\n".join(render_dry_run(policy) for policy in added)
                             or "the document holds no policies")
    lines = [f"added {_policy_heading(policy)}" for policy in added]
    # Who each mask or row filter exempts goes to stderr with the warnings: stdout stays one line per policy.
    notes = [f"{policy['kind']} {policy['id']}:{_exemption_lines(policy)}"
             for policy in added if policy.get("exemption")]
    return CommandOutput(added, "\n".join(lines) or "the document holds no policies", warning="\n".join(notes) or None)


DRY_RUN_COLUMNS = (
    ListingColumn("ROLE", "role", 15),
    ListingColumn("ROWS BEFORE", "rows_before", 12),
    ListingColumn("ROWS AFTER", "rows_after", 12),
    ListingColumn("MASKED BEFORE", "masked_before", 30),
    ListingColumn("MASKED AFTER", "masked_after", 30),
)


def render_dry_run(policy: Mapping[str, Any]) -> str:
    """A dry run's answer as a person reads it: the policy, then one row per role, then who is exempt."""
    preview = policy.get("dry_run") or {}
    heading = f"dry run of {policy['kind']} {policy['id']} (nothing stored)"
    if preview.get("table") is None:
        return f"{heading}: it changes no table's rows or masks directly{_exemption_lines(policy)}"
    rows = [{**effect, "rows_before": _count(effect["rows_before"], preview),
             "rows_after": _count(effect["rows_after"], preview),
             "masked_before": ", ".join(effect["masked_before"]) or "-",
             "masked_after": ", ".join(effect["masked_after"]) or "-"}
            for effect in preview.get("effects", [])]
    lines = [f"{heading} on {preview['table']}, counted as {preview['counted_as']}",
             render_listing(DRY_RUN_COLUMNS, rows, empty="no roles")]
    if preview.get("row_counts") == "unavailable":
        lines.append("rows are not counted here: this control API has no engine beside it (counts need hd dev)")
    return "\n".join(lines) + _exemption_lines(policy)


def _count(value: int | None, preview: Mapping[str, Any]) -> str:
    if value is not None:
        return str(value)
    return "-" if preview.get("row_counts") == "unavailable" else "refused"


def _exemption_lines(policy: Mapping[str, Any]) -> str:
    exemption = policy.get("exemption")
    if not exemption:
        return ""
    return "".join(f"\n  {line}" for line in (exemption["note"], *(f"warning: {w}" for w in exemption["warnings"])))


def policies_explain(session: ApiSession, args: argparse.Namespace) -> CommandOutput:
    """`hd policies explain --user U --sql SQL`: the governed plan of a statement for a user."""
    explanation = session.org_call("POST", "policies", "explain", body={"user_id": args.user, "sql": args.sql})
    return CommandOutput(explanation, render_explanation(explanation))


def render_explanation(explanation: Mapping[str, Any]) -> str:
    """Which filters and masks apply to each table, or which stage and rule refuse the statement."""
    lines = [f"user {explanation['user_id']} (role {explanation['role']}): {explanation['verdict'].upper()}"]
    refusal = explanation.get("refusal")
    if refusal:
        lines.append(f"  refused at the {refusal['stage']} stage: {refusal['sqlstate']} {refusal['code']}: "
                     f"{refusal['message']}")
        if refusal.get("hint"):
            lines.append(f"  hint: {refusal['hint']}")
        return "\n".join(lines)
    for table in explanation["tables"]:
        lines.append(f"  {table['table']} ({table['action']})")
        for row_filter in table["row_filters"] or [{"rule_id": "-", "filter": "none: every row"}]:
            lines.append(f"    rows:  {row_filter['filter']}  [{row_filter['rule_id']}]")
        for mask in table["masks"]:
            extra = f" {mask['visible_chars']}" if "visible_chars" in mask else ""
            lines.append(f"    mask:  {mask['column']} -> {mask['function']}{extra}  [{mask['rule_id']}]")
    read = ", ".join(explanation["masked_columns"]) or "none"
    lines.append(f"  masked columns this statement reads: {read}")
    lines.append(f"  governed SQL: {explanation['governed_sql']}")
    return "\n".join(lines)


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
    add.add_argument("--dry-run", action="store_true",
                     help="check each policy and show, per role, the rows visible and columns masked before and "
                          "after it; store nothing")
    explain = command_action(actions, "explain", policies_explain,
                             "show how a statement is governed for a user: row filters, masks, or what refuses it")
    explain.add_argument("--user", required=True, help="the user id whose session to explain")
    explain.add_argument("--sql", required=True, help="the statement, as that user would send it")
    for name, command, help_text in (
        ("get", policies_get, "show one policy document"),
        ("remove", policies_remove, "remove one policy"),
    ):
        parser = command_action(actions, name, command, help_text)
        parser.add_argument("kind", choices=kinds)
        parser.add_argument("policy_id")
