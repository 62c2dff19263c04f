"""The control plane's region pin: which of its resources are pinned, and to which region.

A Lambda container checks once (functions/shared/wiring.py) and refuses every request while any is
outside; local adapters (`hd dev`) have nothing to pin. Beside the control settings, shadow replay's
functions name the data bucket their query sets, results and reports go to (`HD_SHADOW_BUCKET`) and
the key their secrets are sealed with (`HD_SHADOW_SECRETS_KMS_KEY_ID`), and the functions that enqueue
webhook deliveries their queue (`HD_WEBHOOK_QUEUE_URL`, placed by its URL): pinned like the rest.
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


class WebhookQueuePinSettings(BaseSettings):
    """The webhook retry queue (`HD_WEBHOOK_QUEUE_URL`, hd_core.webhook_sqs): its messages name deliveries only,
    but a queue outside the region would still be a deployment resource living elsewhere."""

    model_config = SettingsConfigDict(extra="ignore")

    queue_url: str = Field(default="", validation_alias=AliasChoices("HD_WEBHOOK_QUEUE_URL"))


class ShadowPinSettings(BaseSettings):
    """What shadow replay keeps data in (functions/shadow/wiring.py reads the same variables)."""

    model_config = SettingsConfigDict(env_prefix="HD_SHADOW_", extra="ignore")

    bucket: str = ""
    secrets_kms_key_id: str = ""


def control_plane_resources(config: ControlApiSettings, shadow: ShadowPinSettings | None = None,
                            webhooks: WebhookQueuePinSettings | None = None) -> list[PinnedResource]:
    """The AWS resources `config`, the shadow settings and the webhook queue (default: the environment's) name;
    none in `hd dev`."""
    shadow = shadow if shadow is not None else ShadowPinSettings()
    webhooks = webhooks if webhooks is not None else WebhookQueuePinSettings()
    resources: list[PinnedResource] = []
    if webhooks.queue_url.strip():
        resources.append(PinnedResource(ResourceKind.QUEUE, webhooks.queue_url.strip(), "webhook queue"))
    if shadow.bucket:
        resources.append(PinnedResource(ResourceKind.BUCKET, shadow.bucket, "shadow data bucket"))
    if shadow.secrets_kms_key_id:
        resources.append(PinnedResource(ResourceKind.KEY, shadow.secrets_kms_key_id, "shadow secrets key"))
    if config.store == "dynamodb":
        resources.append(PinnedResource(ResourceKind.TABLE, config.dynamodb_table, "control table"))
    if config.audit == "s3":
        resources.append(PinnedResource(ResourceKind.BUCKET, config.audit_bucket, "audit bucket"))
    if config.keys == "kms":
        keys = [("token signing key", key.strip()) for key in config.kms_jwt_key_ids.split(",")]
        keys += [("checkpoint signing key", config.kms_checkpoint_key_id), ("data key", config.kms_data_key_id)]
        resources.extend(PinnedResource(ResourceKind.KEY, key, role) for role, key in keys if key)
    return resources
