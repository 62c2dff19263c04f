"""The control API's configuration, read once from `HD_*` environment variables into a Pydantic model."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ControlApiSettings(BaseSettings):
    """Which adapters to use and how tokens are named. Defaults are the local `hd dev` ones."""

    model_config = SettingsConfigDict(env_prefix="HD_", extra="ignore")

    store: Literal["sqlite", "dynamodb"] = "sqlite"
    sqlite_path: Path = Path(".hd/control.db")
    dynamodb_table: str = "hardened-duck-control"

    keys: Literal["local", "kms"] = "local"
    local_key_file: Path = Path(".hd/keys/local-keys.json")
    kms_jwt_key_ids: str = ""  # comma-separated, current first: the JWKS serves all of them
    kms_checkpoint_key_id: str = ""
    kms_data_key_id: str = ""

    audit: Literal["local", "s3"] = "local"
    audit_dir: Path = Path(".hd")
    audit_bucket: str = ""

    jwt_issuer: str = "https://hardened-duck.local"
    jwt_audience: str = "hardened-duck"
    # JSON list of {"name", "issuer", "audience", "jwks_uri"} objects trusted for federated sign-in.
    federation_issuers: str = "[]"

    # IAM chain checkpoints. Every event is signed as it is recorded (1): events after the latest
    # checkpoint can be cut off the chain's tail without a trace, and admin changes are rare enough
    # that a signature each costs little (bench/iam_checkpoints.py). A larger value trades that
    # exposure for fewer signatures. The interval is then the longest an unsigned head waits for
    # the next append to sign it, and always the period of the schedule that signs heads whose
    # checkpoint could not be written when their event was.
    checkpoint_every: int = Field(default=1, ge=1)
    checkpoint_interval_minutes: float = Field(default=15.0, gt=0)

    # Engine-host heartbeat (functions/fleet). Empty values admit no host at all: the check fails closed.
    fleet_role_arn: str = ""  # the engine hosts' IAM role, arn:aws:iam::<account>:role/<name>
    fleet_asg_name: str = ""  # the Auto Scaling group every engine host must belong to
    fleet_org_id: str = ""  # the organisation the fleet serves; hosts reporting another one are not allowed
    allowed_code_hashes: str = ""  # comma-separated SHA-256 hex of the approved engine code packages
    heartbeat_interval_seconds: int = Field(default=900, ge=60, le=86_400)


@lru_cache(maxsize=1)
def settings() -> ControlApiSettings:
    """The settings of this process, read from the environment on first use."""
    return ControlApiSettings()
