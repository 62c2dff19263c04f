"""The options of `hd engine boot` and `hd engine serve`, importable without boto3 (`hd --help` shows them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine_host.boot.imds import DEFAULT_IMDS_URL

CONFIG_PARAMETER_ENV = "HD_ENGINE_CONFIG_PARAMETER"


def add_boot_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `hd engine boot`."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config-file", type=Path, default=None,
                        help="the provisioned engine configuration as a JSON file")
    source.add_argument("--config-parameter", default=None, metavar="NAME",
                        help=f"SSM parameter holding the configuration JSON (default ${CONFIG_PARAMETER_ENV})")
    parser.add_argument("--imds-url", default=DEFAULT_IMDS_URL, help="instance metadata service (IMDSv2 only)")
    parser.add_argument("--region", default=None,
                        help="region of the SSM parameter (default: this instance's region)")
