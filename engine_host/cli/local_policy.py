"""`hd local-policy`: add, list and remove governance policies of a local install before the control API exists.

Policies are written straight to the local control store (`<state>/control.sqlite3`), validated
by the same validator the engine and the control API use; a running `hd dev` picks each change
up within about a second. Documents are JSON in the format of `hd_core/policy_codec.py`.

It was `hd policy`, one letter from `hd policies` (the control API's, online and audited); that name
still works, says it is deprecated, and will be removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import HdError
from hd_core.policies import PolicyKind
from hd_core.policy_codec import from_document, load_policy_file, to_document
from hd_core.policy_validation import validate_policy

COMMAND = "local-policy"
DEPRECATED_ALIAS = "policy"


def add_policy_commands(commands: argparse._SubParsersAction, state_dir_help: str) -> None:
    """Register `hd local-policy add|list|remove` on the top-level parser."""
    policy = commands.add_parser(COMMAND, aliases=[DEPRECATED_ALIAS],
                                 help="add, list and remove governance policies of the local install, offline "
                                      f"(`{DEPRECATED_ALIAS}`: deprecated name)")
    policy.add_argument("--state-dir", type=Path, default=None, help=state_dir_help)
    actions = policy.add_subparsers(dest="policy_command", required=True)
    add = actions.add_parser("add", help="add or replace policies from a JSON document or policy file")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help='a policy file: {"version": 1, "policies": [...]}')
    source.add_argument("--json", dest="document", help="one policy document as JSON")
    listing = actions.add_parser("list", help="list policies as JSON lines")
    listing.add_argument("--org", default=None, help="only this organisation's policies")
    listing.add_argument("--kind", choices=[k.value for k in PolicyKind], default=None)
    remove = actions.add_parser("remove", help="remove one policy")
    remove.add_argument("kind", choices=[k.value for k in PolicyKind])
    remove.add_argument("policy_id")


def run_policy_command(args: argparse.Namespace, state_dir: Path) -> int:
    """Run one `hd local-policy` sub-command; returns the exit status (errors are one line on stderr)."""
    if args.command == DEPRECATED_ALIAS:
        print(f"hd {DEPRECATED_ALIAS}: deprecated, use `hd {COMMAND}` (the same command; `hd policies` is the control "
              "API's)", file=sys.stderr)
    path = state_dir.expanduser() / "control.sqlite3"
    if not path.exists():
        print(f"hd local-policy: no local install at {state_dir} (run `hd dev` once first)", file=sys.stderr)
        return 1
    with SqliteControlStore(path) as store:
        try:
            if args.policy_command == "add":
                objects = (load_policy_file(args.file) if args.file is not None
                           else [from_document(json.loads(args.document))])
                for obj in objects:
                    validate_policy(obj, store.policy_snapshot())
                    version = store.put_policy(obj)
                    print(json.dumps({"added": to_document(obj), "policy_version": version}, sort_keys=True))
            elif args.policy_command == "list":
                kind = PolicyKind(args.kind) if args.kind else None
                for obj in store.list_policies(args.org, kind):
                    print(json.dumps(to_document(obj), sort_keys=True))
            else:
                version = store.delete_policy(PolicyKind(args.kind), args.policy_id)
                print(json.dumps({"removed": args.policy_id, "policy_version": version}))
        except json.JSONDecodeError as exc:
            print(f"hd local-policy: not valid JSON: {exc}", file=sys.stderr)
            return 2
        except (HdError, OSError) as exc:
            code = getattr(exc, "code", "HD_ERR_IO")
            print(f"hd local-policy: {code}: {exc}", file=sys.stderr)
            return 2
    return 0
