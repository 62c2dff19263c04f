"""`hd engine`: what an engine fleet member on EC2 runs (boot, serve, bootstrap-owner); boto3 and the host load
only when one of them runs."""

from __future__ import annotations

import argparse

from engine_host.boot.options import add_boot_arguments
from engine_host.cli.owner_bootstrap import add_bootstrap_arguments


def add_engine_commands(commands: argparse._SubParsersAction) -> None:
    """Register `hd engine boot|serve|bootstrap-owner` on the top-level parser."""
    engine = commands.add_parser("engine", help="run as an engine fleet member on EC2 (boot, then serve)")
    engine_commands = engine.add_subparsers(dest="engine_command", required=True)
    add_boot_arguments(engine_commands.add_parser(
        "boot", help="check this instance against its provisioned environment and unlock the encrypted NVMe cache"))
    add_boot_arguments(engine_commands.add_parser(
        "serve", help="serve governed SQL on 5439 and metrics on 9090 (after `hd engine boot`)"))
    add_bootstrap_arguments(engine_commands.add_parser(
        "bootstrap-owner", help="create a fresh deployment's first organisation, Owner and API key (once)"))


def run_engine_command(args: argparse.Namespace) -> int:
    """Run the `hd engine` subcommand in `args`; returns the exit code."""
    if args.engine_command == "bootstrap-owner":
        from engine_host.cli.owner_bootstrap import run_bootstrap

        return run_bootstrap(args)
    if args.engine_command == "boot":
        from engine_host.boot.cli import run_boot

        return run_boot(args)
    from engine_host.runtime.fleet import run_serve

    return run_serve(args)
