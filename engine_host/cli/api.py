"""`hd keys|users|policies|audit`: administer an installation through its control API.

Unlike `hd local-policy`, which edits a local state directory offline, these commands speak HTTP to the
control API (locally the one `hd dev` serves on 127.0.0.1:8080), so every change passes the same
authentication, authorisation and IAM audit trail as any other client's. Output is a readable
table, or with `--json` the API's JSON as it came, for scripts.

Exit status: 0 on success, 1 on an error (one line on stderr), 2 on a usage error, 3 when
`hd audit verify-chain` finds the IAM audit chain broken.

This module registers the four command groups and runs the one asked for; each group is its own
module (keys.py, users.py, policies.py, audit.py) on the session and output of api_session.py.
"""


from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime

from engine_host.cli.api_client import bad_response
from engine_host.cli.api_session import CommandOutput, open_session
from engine_host.cli.audit import add_audit_commands
from engine_host.cli.forget import add_forget_command
from engine_host.cli.keys import add_keys_commands
from engine_host.cli.listing import printable
from engine_host.cli.policies import add_policies_commands
from engine_host.cli.shadow import add_shadow_commands
from engine_host.cli.users import add_users_commands
from hd_core.errors import HdError
from hd_core.models import utc_now

API_COMMANDS = frozenset({"keys", "users", "policies", "audit", "shadow", "forget"})


def error_line(error: HdError) -> str:
    """The one line an error is reported as: `hd: <message> (<code>, request <request_id>)`."""
    request_id = getattr(error, "request_id", None)
    where = f"{error.code}, request {request_id}" if request_id else error.code
    return f"hd: {printable(str(error))} ({where})"


def add_api_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd keys`, `hd users`, `hd policies` and `hd audit` on the top-level parser."""
    add_keys_commands(commands)
    add_users_commands(commands)
    add_policies_commands(commands)
    add_audit_commands(commands)
    add_shadow_commands(commands)
    add_forget_command(commands)


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
