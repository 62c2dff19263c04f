"""The `hd` command line: one module per command group; engine code loads only when a command that needs it runs."""

from engine_host.cli.app import main

__all__ = ["main"]
