"""What every `hd keys|users|policies|audit` command shares: its connection options, the control-API
session they open, and the output a command hands back."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine_host.cli.api_client import (
    DEFAULT_API_URL,
    ControlApiClient,
    api_base_url,
    api_path,
    resolve_credential,
    text_field,
)
from hd_core.errors import NotFound
from hd_core.models import utc_now


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


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def connection_options(parser: argparse.ArgumentParser, *, output_flag: bool = True) -> None:
    """Add the options `open_session` reads (and `--json`, unless the action gives that flag a meaning of its own)."""
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


def command_group(commands: argparse._SubParsersAction, name: str, help_text: str) -> argparse._SubParsersAction:
    """Register command group NAME with the connection options; returns where its actions go."""
    parser = commands.add_parser(name, help=help_text, description=help_text)
    connection_options(parser)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def command_action(actions: argparse._SubParsersAction, name: str, command: Command, help_text: str,
                   *, output_flag: bool = True) -> argparse.ArgumentParser:
    """Register action NAME of a group, run by COMMAND; returns its parser for the action's own arguments."""
    parser = actions.add_parser(name, help=help_text, description=help_text)
    connection_options(parser, output_flag=output_flag)
    parser.set_defaults(api_command=command)
    return parser
