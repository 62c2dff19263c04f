"""The `hd` command line: the parser of every command group, and dispatch to the one asked for.

Nothing here imports engine code (DuckDB, pyarrow, sqlglot, Powertools): `hd --help` and the API
commands stay fast, and a command that needs the engine imports it when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engine_host.cli.api import API_COMMANDS, add_api_commands, run_api_command
from engine_host.cli.engine import add_engine_commands, run_engine_command
from engine_host.cli.local_policy import COMMAND as LOCAL_POLICY
from engine_host.cli.local_policy import DEPRECATED_ALIAS as LOCAL_POLICY_ALIAS
from engine_host.cli.local_policy import add_policy_commands, run_policy_command
from engine_host.cli.owner_key import add_reissue_owner_key_command, run_reissue_owner_key
from engine_host.cli.owner_password import add_set_owner_password_command, run_set_owner_password
from engine_host.engine.memory import DEFAULT_MAX_RESULT_BYTES, DEFAULT_MAX_VALUE_BYTES
from engine_host.runtime.state_dir import default_state_dir
from engine_host.wire.limits import ConnectionLimits
from hd_core.errors import HdError

if TYPE_CHECKING:
    from engine_host.runtime.local import LocalConfig

STATE_DIR_HELP = "where control state, keys, TLS files and data live (default $HD_STATE_DIR or ~/.hd)"


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("port must be between 0 and 65535 (0 picks a free port)")
    return port


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds (0 or more), got {text!r}")
    return value


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(text: str) -> int:
    """`500M`, `2GiB`, `1g` or a byte count."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 500MiB or 20GiB, got {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def _cap(text: str) -> int:
    """A size as `_size` reads it, or 0 for no cap."""
    return 0 if text.strip() == "0" else _size(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hd", description="Hardened Duck: a governed SQL warehouse.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run the engine host locally on embedded defaults")
    dev.add_argument("--state-dir", type=Path, default=None, help=STATE_DIR_HELP)
    dev.add_argument("--port", type=_port, default=5439, help="port to listen on (default 5439; 0 = any free)")
    dev.add_argument("--demo", action="store_true", help="load the demo dataset (two organisations, PII columns)")
    dev.add_argument("--shutdown-grace", type=float, default=10.0, metavar="SECONDS",
                     help="on Ctrl-C/SIGTERM, how long running statements may finish before being cancelled")
    dev.add_argument("--insecure-plaintext", action="store_true",
                     help="also accept unencrypted connections from loopback (TLS stays available)")
    dev.add_argument("--max-concurrent-statements", type=int, default=100, metavar="N",
                     help="statements running at once on this host before new ones queue (default 100)")
    dev.add_argument("--max-queued-statements", type=int, default=200, metavar="N",
                     help="statements that may wait for a slot; beyond that clients get 'server busy' (default 200)")
    dev.add_argument("--queue-wait", type=_seconds, default=5.0, metavar="SECONDS",
                     help="longest a queued statement waits for a slot before 'server busy' (default 5)")
    dev.add_argument("--max-connections", type=_count(1), default=500, metavar="N",
                     help="connections open at once; beyond it 'sorry, too many clients already' (default 500)")
    dev.add_argument("--max-connections-per-org", type=_count(1), default=None, metavar="N",
                     help="connections one organisation may hold at once (default: --max-connections)")
    dev.add_argument("--idle-session-timeout", type=_seconds, default=3600.0, metavar="SECONDS",
                     help="end a session idle this long outside a transaction, FATAL 57P05 (default 3600; 0 = never)")
    dev.add_argument("--auth-threads", type=_count(1), default=ConnectionLimits.auth_threads, metavar="N",
                     help="threads checking passwords (Argon2, JWT), apart from statements' (default min(4, cores))")
    dev.add_argument("--auth-queue", type=_count(0), default=64, metavar="N",
                     help="logins that may wait for a check; beyond it they get 53300 at once (default 64)")
    dev.add_argument("--max-startups-per-address", type=_count(1), default=128, metavar="N",
                     help="connections from one address still authenticating (default 128)")
    dev.add_argument("--auth-failures-per-address", type=_count(0), default=100, metavar="N",
                     help="failed logins from one address per minute before it is refused (default 100; 0 = no limit)")
    dev.add_argument("--statement-timeout", type=float, default=300.0, metavar="SECONDS",
                     help="longest a statement may run; a session's statement_timeout can only lower it")
    dev.add_argument("--api-port", type=_port, default=8080,
                     help="port of the local control API on 127.0.0.1 (default 8080; 0 = any free)")
    dev.add_argument("--no-api", action="store_true", help="do not serve the control API")
    dev.add_argument("--metrics-port", type=_port, default=None,
                     help="serve Prometheus /metrics, /healthz and /readyz on 127.0.0.1 at this port (0 = any free)")
    dev.add_argument("--data-source", metavar="s3://BUCKET/PREFIX/",
                     help="serve the Parquet tables under this S3 prefix (<schema>/<table>/*.parquet) through a "
                          "local cache instead of STATE_DIR/data; AWS credentials come from the usual places")
    dev.add_argument("--cache-capacity", type=_size, default=None, metavar="SIZE",
                     help="with --data-source: the cache's size, e.g. 20GiB (default: half the free disk space)")
    dev.add_argument("--memory-limit", type=_size, default=None, metavar="SIZE",
                     help="memory DuckDB may use; a statement needing more spills, then gets 53200 "
                          "(default: half the machine's memory)")
    dev.add_argument("--temp-directory", type=Path, default=None, metavar="DIR",
                     help="where DuckDB spills what does not fit its memory limit (default STATE_DIR/duckdb-tmp)")
    dev.add_argument("--max-result-size", type=_cap, default=DEFAULT_MAX_RESULT_BYTES, metavar="SIZE",
                     help="largest result one statement may return, 54000 beyond it (default 1GiB; 0 = no cap)")
    dev.add_argument("--max-value-size", type=_cap, default=DEFAULT_MAX_VALUE_BYTES, metavar="SIZE",
                     help="largest single value a result may hold, 54000 beyond it (default 256MiB; 0 = no cap)")
    add_policy_commands(commands, STATE_DIR_HELP)
    add_reissue_owner_key_command(commands, STATE_DIR_HELP)
    add_set_owner_password_command(commands, STATE_DIR_HELP)
    add_api_commands(commands)
    add_engine_commands(commands)
    return parser


def _run_dev(config: LocalConfig, announce: Callable[[str], None]) -> int:
    """Run `hd dev`; a failure is one line on stderr (what failed and what to do) and an exit code, no traceback."""
    from engine_host.runtime.local import run_local

    try:
        asyncio.run(run_local(config, announce))
    except HdError as exc:
        # 3: the state folder is refused as it is; 4: its TLS files are; 1: anything else.
        print(f"hd dev: cannot start: {_one_line(exc)} ({exc.code})", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except OSError as exc:
        print(f"hd dev: cannot start: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Unforeseen: still one line, with the traceback for whoever asks for it.
        logging.getLogger("engine_host.cli").debug("hd dev failed", exc_info=True)
        print(f"hd dev: stopped by an unexpected {type(exc).__name__}: {_one_line(exc)} (run with --log-level DEBUG "
              "for the traceback, and report it)", file=sys.stderr)
        return 1
    return 0


def _dev_config(args: argparse.Namespace) -> LocalConfig:
    """`hd dev`'s options as the local host's configuration (the engine's modules load here, not at `hd --help`)."""
    from engine_host.engine.memory import EngineMemory
    from engine_host.pipeline.governor import HostLimits
    from engine_host.runtime.local import LocalConfig

    return LocalConfig(
        state_dir=args.state_dir or default_state_dir(),
        port=args.port,
        demo=args.demo,
        insecure_plaintext=args.insecure_plaintext,
        shutdown_grace_seconds=args.shutdown_grace,
        limits=HostLimits(max_concurrent_statements=args.max_concurrent_statements,
                          max_queued_statements=args.max_queued_statements,
                          queue_wait_seconds=args.queue_wait,
                          statement_timeout_seconds=args.statement_timeout),
        connections=ConnectionLimits(
            max_connections=args.max_connections, max_connections_per_org=args.max_connections_per_org,
            idle_session_timeout_seconds=args.idle_session_timeout, auth_threads=args.auth_threads,
            auth_queue=args.auth_queue, max_startups_per_address=args.max_startups_per_address,
            auth_failures_per_address=args.auth_failures_per_address),
        api_port=None if args.no_api else args.api_port,
        data_source=args.data_source,
        cache_capacity_bytes=args.cache_capacity,
        memory=EngineMemory(memory_limit_bytes=args.memory_limit, temp_directory=args.temp_directory,
                            max_result_bytes=args.max_result_size, max_value_bytes=args.max_value_size),
        metrics_port=args.metrics_port,
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if args.command == "dev":
        config = _dev_config(args)

        def announce(text: str) -> None:
            print(text, flush=True)

        return _run_dev(config, announce)
    if args.command == "reissue-owner-key":
        return run_reissue_owner_key(args.state_dir or default_state_dir())
    if args.command == "set-owner-password":
        return run_set_owner_password(args.state_dir or default_state_dir(), replace=args.replace)
    if args.command in (LOCAL_POLICY, LOCAL_POLICY_ALIAS):
        return run_policy_command(args, args.state_dir or default_state_dir())
    if args.command in API_COMMANDS:
        return run_api_command(args)
    if args.command == "engine":
        return run_engine_command(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
