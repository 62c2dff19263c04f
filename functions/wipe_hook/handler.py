"""Termination wipe hook Lambda: erase an engine host's NVMe cache when its Auto Scaling lifecycle hook fires.

EventBridge delivers the "EC2 Instance-terminate Lifecycle Action" event; the wipe itself is
`hd_core.wipe.wipe_instance`. A failed wipe raises, so the asynchronous invocation is retried and the
WipeFailed metric (alarmed on) fires; the lifecycle hook is then left pending, never continued.

The outcome is announced as `instance.wiped` / `instance.wipe_failed` webhooks: the deliveries are recorded
in the control store and, where the deployment hands this function the webhook queue (HD_WEBHOOK_QUEUE_URL,
cdk/hd_cdk/wipe_hook.py `announce_on`), enqueued at once by `hd_core.webhooks.emit`'s SQS dispatcher.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from functions.shared.lambda_entry import METRICS_NAMESPACE, function_logger, scheduled_entry
from functions.shared.wiring import services
from hd_core import webhook_events
from hd_core.control_settings import settings
from hd_core.errors import HdError
from hd_core.ports import ControlStore
from hd_core.wipe import (
    DEFAULT_COMMAND_TIMEOUT_SECONDS,
    DEFAULT_DEVICE,
    LifecycleActions,
    RemoteCommands,
    wipe_instance,
)

SERVICE = "hd-wipe-hook"

logger = function_logger(SERVICE)
# Metrics of one namespace and service share their set: `scheduled_entry`'s flush publishes these too.
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)


class WipeHookSettings(BaseSettings):
    """The wipe hook's configuration, from `HD_WIPE_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="HD_WIPE_", extra="ignore")

    device: str = DEFAULT_DEVICE
    # The deployed erase document (cdk/hd_cdk/wipe_hook.py); None: AWS-RunShellScript, for local runs only.
    document: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:/-]{3,128}$")
    command_timeout_seconds: int = Field(default=DEFAULT_COMMAND_TIMEOUT_SECONDS, ge=30, le=600)
    # None: take it from the hook's notification metadata, else the wipe's default.
    heartbeat_timeout_seconds: int | None = Field(default=None, ge=30, le=7200)


@lru_cache(maxsize=1)
def wipe_settings() -> WipeHookSettings:
    """The settings, read once per container."""
    return WipeHookSettings()


@lru_cache(maxsize=1)
def instance_control() -> tuple[RemoteCommands, LifecycleActions]:
    """SSM Run Command (through the configured erase document) and Auto Scaling lifecycle adapters, built once."""
    # boto3 is imported only here, on first use, like the rest of the AWS wiring.
    import boto3

    from hd_core.adapters.aws_lifecycle import AutoScalingLifecycle, SsmRunCommand

    commands = SsmRunCommand(boto3.client("ssm"), erase_document=wipe_settings().document)
    return commands, AutoScalingLifecycle(boto3.client("autoscaling"))


def served_orgs(store: ControlStore) -> list[str]:
    """The organisations the fleet's instances serve: HD_FLEET_ORG_ID's, or without it every one of the deployment."""
    configured = settings().fleet_org_id
    return [configured] if configured else [org.org_id for org in store.list_orgs()]


def wipe(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """An EventBridge termination lifecycle event: wipe the instance's cache, then let the termination continue."""
    config = wipe_settings()
    svc = services()
    commands, lifecycle = instance_control()
    try:
        outcome = wipe_instance(
            event, commands=commands, lifecycle=lifecycle, trail=svc.trail, store=svc.store, device=config.device,
            request_id=getattr(context, "aws_request_id", None),
            heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
            command_timeout_seconds=config.command_timeout_seconds,
            announce=lambda recorded: webhook_events.instance_wipe(svc.store, served_orgs(svc.store), recorded),
        )
    except HdError:
        metrics.add_metric(name="WipeFailed", unit=MetricUnit.Count, value=1)
        raise  # logged, with the request and event ids, by scheduled_entry
    if outcome.status == "wiped":
        metrics.add_metric(name="WipeSucceeded", unit=MetricUnit.Count, value=1)
    logger.info("cache wipe handled", extra={"status": outcome.status, "instance_id": outcome.instance_id,
                                             "command_id": outcome.command_id})
    return {"status": outcome.status, "instance_id": outcome.instance_id, "command_id": outcome.command_id}


# Not region-pinned: a wipe only destroys data, and refusing it would leave a terminated host's cache intact.
lambda_handler = scheduled_entry(wipe, SERVICE, region_pinned=False)
