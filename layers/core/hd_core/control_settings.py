"""The control API's configuration, read once from `HD_*` environment variables into a Pydantic model."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hd_core.auth_throttle import ThrottlePolicy

_THROTTLE = ThrottlePolicy()


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
    # JWT signing-key rotation (hd_core.signing_keys): a new key every N days; the ring is re-read this often;
    # keys made by the rotation in AWS carry the tag hd:deployment=<this> (the deployment's IAM grants name it).
    jwt_key_rotate_days: int = Field(default=90, ge=1, le=3650)
    jwt_key_ring_refresh_seconds: float = Field(default=30.0, ge=0, le=3600)
    kms_key_deployment_tag: str = ""

    audit: Literal["local", "s3"] = "local"
    audit_dir: Path = Path(".hd")
    audit_bucket: str = ""

    jwt_issuer: str = "https://hardened-duck.local"
    jwt_audience: str = "hardened-duck"
    # JSON list of {"name", "issuer", "audience", "jwks_uri"} objects trusted for federated sign-in.
    federation_issuers: str = "[]"
    # Verify federated tokens with the keys the refresh job pinned in the control store (hd_core.federation_keys),
    # never fetching at sign-in: the control API's Lambdas have no internet route.
    federation_pinned_keys: bool = False

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

    # Brute-force limits per email tried and per API key id, on the API and on the wire (the engine
    # hosts read the same HD_AUTH_* variables). Defaults, explained in hd_core.auth_throttle: 5 free
    # failures, then 1-2-4-8 s backoff, locked 15 min at the 10th, forgotten after 1 h without one.
    auth_free_failures: int = Field(default=_THROTTLE.free_failures, ge=0)
    auth_backoff_base_seconds: float = Field(default=_THROTTLE.base_delay.total_seconds(), gt=0)
    auth_backoff_max_seconds: float = Field(default=_THROTTLE.max_delay.total_seconds(), gt=0)
    auth_lockout_after: int = Field(default=_THROTTLE.lockout_after, ge=1)
    auth_lockout_seconds: float = Field(default=_THROTTLE.lockout.total_seconds(), gt=0)
    auth_forget_after_seconds: float = Field(default=_THROTTLE.forget_after.total_seconds(), gt=0)

    def throttle_policy(self) -> ThrottlePolicy:
        """The brute-force policy these settings describe; raises `ValueError` for an inconsistent one."""
        return ThrottlePolicy(
            free_failures=self.auth_free_failures,
            base_delay=timedelta(seconds=self.auth_backoff_base_seconds),
            max_delay=timedelta(seconds=self.auth_backoff_max_seconds),
            lockout_after=self.auth_lockout_after,
            lockout=timedelta(seconds=self.auth_lockout_seconds),
            forget_after=timedelta(seconds=self.auth_forget_after_seconds),
        )


@lru_cache(maxsize=1)
def settings() -> ControlApiSettings:
    """The settings of this process, read from the environment on first use."""
    return ControlApiSettings()
