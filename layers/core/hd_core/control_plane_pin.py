"""The control plane's region pin: which of its resources are pinned, and to which region.

A Lambda container checks once (functions/shared/wiring.py) and refuses every request while any is
outside; local adapters (`hd dev`) have nothing to pin.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hd_core.control_settings import ControlApiSettings
from hd_core.region_pinning import PinnedResource, ResourceKind


class PinnedRegionSettings(BaseSettings):
    """`HD_REGION`, the region the deployment is pinned to; the function's own `AWS_REGION` when unset."""

    model_config = SettingsConfigDict(extra="ignore")

    region: str = Field(default="", validation_alias=AliasChoices("HD_REGION", "AWS_REGION"))


def control_plane_resources(config: ControlApiSettings) -> list[PinnedResource]:
    """The AWS resources `config` names (none with the local adapters)."""
    resources: list[PinnedResource] = []
    if config.store == "dynamodb":
        resources.append(PinnedResource(ResourceKind.TABLE, config.dynamodb_table, "control table"))
    if config.audit == "s3":
        resources.append(PinnedResource(ResourceKind.BUCKET, config.audit_bucket, "audit bucket"))
    if config.keys == "kms":
        keys = [("token signing key", key.strip()) for key in config.kms_jwt_key_ids.split(",")]
        keys += [("checkpoint signing key", config.kms_checkpoint_key_id), ("data key", config.kms_data_key_id)]
        resources.extend(PinnedResource(ResourceKind.KEY, key, role) for role, key in keys if key)
    return resources
