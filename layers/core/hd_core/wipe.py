"""Cryptographic erase of an engine host's NVMe cache before the Auto Scaling Group terminates it.

A termination lifecycle hook pauses the instance; EventBridge hands its event to the wipe hook Lambda,
which runs `cryptsetup luksErase` on the instance through a remote command (in AWS, a dedicated SSM
document that can run nothing else). Erasing the LUKS key slots makes the cache unreadable even if the
volume's blocks survive.

Failure policy: a failed wipe never completes the hook with CONTINUE. The hook stays pending (kept
alive by heartbeats while we poll) so that the Lambda's retry can run the wipe again; if every retry
fails, the hook times out and its configured default result (ABANDON) applies. For a termination hook
AWS terminates the instance either way, so what the failure path buys is the alarm: an
INSTANCE_WIPE_FAILED event in the IAM trail, a raised `WipeFailed` and the WipeFailed metric.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from hd_core.errors import HdError, InvalidRequest
from hd_core.iam_audit import IamAuditTrail, format_audit_time, parse_audit_time
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import IamEvent, utc_now
from hd_core.ports import SettingsStore

DEPLOYMENT_CHAIN_ID = "deployment"
_log = logging.getLogger(__name__)
DEFAULT_DEVICE = "/dev/nvme1n1"
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 300
DEFAULT_COMMAND_TIMEOUT_SECONDS = 120
TERMINATING_TRANSITION = "autoscaling:EC2_INSTANCE_TERMINATING"

# Dots are excluded, so `..` can never walk out of /dev; no shell metacharacter can pass either. The CDK's
# erase document repeats this pattern as its `device` parameter's allowedPattern (a test keeps them equal).
DEVICE_PATTERN = r"^/dev/[A-Za-z0-9/_-]+$"
_DEVICE_PATH = re.compile(DEVICE_PATTERN)
# A claim older than the longest a Lambda can run belongs to an invocation that died mid-wipe.
_CLAIM_LEASE = timedelta(minutes=15)
_FIRST_POLL_DELAY_SECONDS = 1.0
_MAX_POLL_DELAY_SECONDS = 10.0
# Slack past the command's own timeout for SSM to report the final state.
_STATUS_GRACE_SECONDS = 60.0
_MAX_RECORDED_OUTPUT = 1000


class WipeFailed(HdError):
    """The cache of an instance could not be erased; the lifecycle hook was left pending."""

    code = "HD_ERR_WIPE_FAILED"


class InstanceControlFailed(HdError):
    """An AWS call to control an instance (remote command, lifecycle action) was refused or failed."""

    code = "HD_ERR_INSTANCE_CONTROL_FAILED"


class LifecycleResult(StrEnum):
    """How a lifecycle action is completed."""

    CONTINUE = "CONTINUE"
    ABANDON = "ABANDON"


class CommandState(StrEnum):
    """The states of a remote command invocation, spelled as SSM reports them."""

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"

    @property
    def finished(self) -> bool:
        """Whether the command will not change state any more."""
        return self not in (CommandState.PENDING, CommandState.IN_PROGRESS)


@dataclass(frozen=True)
class CommandStatus:
    """Where a remote command stands on one instance, and what it printed so far."""

    state: CommandState
    output: str = ""


class LifecycleActions(Protocol):
    """The Auto Scaling lifecycle-action calls the wipe needs."""

    def record_heartbeat(self, hook_name: str, asg_name: str, token: str, instance_id: str) -> None:
        """Restart the hook's heartbeat timeout so the instance stays paused."""
        ...

    def complete(self, hook_name: str, asg_name: str, token: str, instance_id: str, result: LifecycleResult) -> None:
        """Let the paused lifecycle transition proceed with `result`."""
        ...


class RemoteCommands(Protocol):
    """The cache erase run on an instance (SSM Run Command in AWS)."""

    def send_erase(self, instance_id: str, device: str, timeout_seconds: int) -> str:
        """Start `cryptsetup luksErase` of `device` (already validated) on the instance; returns the command id."""
        ...

    def status(self, command_id: str, instance_id: str) -> CommandStatus:
        """Where the command stands on the instance."""
        ...


@dataclass(frozen=True)
class LifecycleAction:
    """The facts of one paused termination, taken from its EventBridge event."""

    hook_name: str
    asg_name: str
    token: str
    instance_id: str
    started_at: datetime | None  # when the hook paused the instance (the event's time), if known
    heartbeat_timeout_seconds: int | None  # from the hook's notification metadata, if it says


@dataclass(frozen=True)
class WipeOutcome:
    """What one delivery of a lifecycle event did: `wiped`, `already_wiped` or `in_progress` elsewhere."""

    status: str
    instance_id: str
    command_id: str | None = None


def parse_lifecycle_event(event: Mapping[str, Any]) -> LifecycleAction:
    """The lifecycle action an EventBridge termination event names; raises `InvalidRequest` if malformed."""
    detail = event.get("detail") if isinstance(event, Mapping) else None
    if not isinstance(detail, Mapping):
        raise InvalidRequest("lifecycle event has no detail object")
    transition = detail.get("LifecycleTransition", TERMINATING_TRANSITION)
    if transition != TERMINATING_TRANSITION:
        raise InvalidRequest(f"lifecycle event is for {transition!r}, not {TERMINATING_TRANSITION}")
    values = {}
    for name in ("LifecycleHookName", "AutoScalingGroupName", "LifecycleActionToken", "EC2InstanceId"):
        value = detail.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequest(f"lifecycle event detail lacks {name}")
        values[name] = value
    return LifecycleAction(
        hook_name=values["LifecycleHookName"],
        asg_name=values["AutoScalingGroupName"],
        token=values["LifecycleActionToken"],
        instance_id=values["EC2InstanceId"],
        started_at=_event_time(event.get("time")),
        heartbeat_timeout_seconds=_metadata_heartbeat_timeout(detail.get("NotificationMetadata")),
    )


def _event_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_audit_time(value)
    except ValueError:
        return None


def _metadata_heartbeat_timeout(metadata: object) -> int | None:
    """The `heartbeat_timeout_seconds` our CDK construct puts in the hook's notification metadata."""
    if not isinstance(metadata, str):
        return None
    try:
        parsed = json.loads(metadata)
    except ValueError:
        return None
    value = parsed.get("heartbeat_timeout_seconds") if isinstance(parsed, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def erase_device(device: str) -> str:
    """`device` if it is a path the erase may name; raises `InvalidRequest` otherwise."""
    if not isinstance(device, str) or not _DEVICE_PATH.fullmatch(device):
        raise InvalidRequest(f"device must be a path matching {DEVICE_PATTERN}, got {device!r}")
    return device


def luks_erase_commands(device: str) -> list[str]:
    """The one shell command that erases every LUKS key slot of `device`; raises `InvalidRequest` for a bad path."""
    return [shlex.join(["cryptsetup", "luksErase", "--batch-mode", erase_device(device)])]


def wipe_instance(
    event: Mapping[str, Any],
    *,
    commands: RemoteCommands,
    lifecycle: LifecycleActions,
    trail: IamAuditTrail,
    store: SettingsStore,
    device: str = DEFAULT_DEVICE,
    request_id: str | None = None,
    heartbeat_timeout_seconds: int | None = None,
    command_timeout_seconds: int = DEFAULT_COMMAND_TIMEOUT_SECONDS,
    now: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    announce: Callable[[IamEvent], object] | None = None,
) -> WipeOutcome:
    """Erase the instance's cache, then let its termination continue; raises `WipeFailed` if the erase failed.

    `announce` hears of each IAM event recorded (the webhook events); its failure is logged, never fails the wipe.

    Idempotent per lifecycle action token: a duplicate delivery of a finished wipe does nothing.
    """
    erase_device(device)  # a bad path is refused before any claim or send
    action = parse_lifecycle_event(event)
    timeout = heartbeat_timeout_seconds or action.heartbeat_timeout_seconds or DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
    audit_request_id = request_id or str(event.get("id") or action.token)
    claim = WipeClaim(store, action.token, now)
    if not claim.acquire():
        status = "already_wiped" if claim.finished() else "in_progress"
        return WipeOutcome(status, action.instance_id, claim.command_id())
    try:
        command_id, result = _run_erase(
            commands, lifecycle, action, device, timeout, command_timeout_seconds, now=now, sleep=sleep
        )
        if result.state is CommandState.SUCCESS:
            _announce(announce, trail.record(
                DEPLOYMENT_CHAIN_ID, IamEventType.INSTANCE_WIPED, actor=SYSTEM_ACTOR, target=action.instance_id,
                before=None, after={"command_id": command_id, "device": device}, request_id=audit_request_id,
            ))
    except Exception:
        claim.release()  # whatever broke (even the audit write), a retry must be able to run the wipe
        raise
    if result.state is not CommandState.SUCCESS:
        _announce(announce, _record_failure(trail, claim, action, device, command_id, result, audit_request_id))
        raise WipeFailed(
            f"cache wipe of {action.instance_id} ended {result.state.value}; its lifecycle hook is left pending"
        )
    claim.finish(command_id or "")
    lifecycle.complete(action.hook_name, action.asg_name, action.token, action.instance_id, LifecycleResult.CONTINUE)
    return WipeOutcome("wiped", action.instance_id, command_id)


def _run_erase(
    commands: RemoteCommands,
    lifecycle: LifecycleActions,
    action: LifecycleAction,
    device: str,
    heartbeat_timeout_seconds: int,
    command_timeout_seconds: int,
    *,
    now: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> tuple[str | None, CommandStatus]:
    """Send the erase and wait for it; an AWS failure on the way is a Failed command, not an exception."""
    command_id: str | None = None
    try:
        command_id = commands.send_erase(action.instance_id, device, command_timeout_seconds)
        status = _await_command(
            commands, lifecycle, action, command_id, heartbeat_timeout_seconds, command_timeout_seconds,
            now=now, sleep=sleep,
        )
    except HdError as error:
        status = CommandStatus(CommandState.FAILED, f"{error.code}: {error}")
    return command_id, status


def _record_failure(
    trail: IamAuditTrail,
    claim: WipeClaim,
    action: LifecycleAction,
    device: str,
    command_id: str | None,
    result: CommandStatus,
    request_id: str,
) -> IamEvent:
    # Release first: if the audit write itself fails, a retry must still be able to run the wipe.
    claim.release()
    return trail.record(
        DEPLOYMENT_CHAIN_ID, IamEventType.INSTANCE_WIPE_FAILED, actor=SYSTEM_ACTOR, target=action.instance_id,
        before=None,
        after={"command_id": command_id, "device": device, "state": result.state.value,
               "output": result.output[-_MAX_RECORDED_OUTPUT:]},
        request_id=request_id,
    )


def _announce(announce: Callable[[IamEvent], object] | None, event: IamEvent) -> None:
    if announce is None:
        return
    try:
        announce(event)
    except Exception:  # noqa: BLE001 - the wipe and its IAM event stand; a lost announcement must not undo them
        _log.exception("webhook events of IAM event %s could not be recorded", event.event_id)


def _await_command(
    commands: RemoteCommands,
    lifecycle: LifecycleActions,
    action: LifecycleAction,
    command_id: str,
    heartbeat_timeout_seconds: int,
    command_timeout_seconds: int,
    *,
    now: Callable[[], datetime],
    sleep: Callable[[float], None],
) -> CommandStatus:
    """Poll until the command finishes, heartbeating the hook well before half its timeout is spent."""
    start = now()
    last_beat = min(action.started_at, start) if action.started_at else start
    # Beat at a quarter of the timeout and never sleep more than an eighth: the gap stays under half.
    beat_every = heartbeat_timeout_seconds / 4
    longest_sleep = min(_MAX_POLL_DELAY_SECONDS, heartbeat_timeout_seconds / 8)
    give_up_at = start + timedelta(seconds=command_timeout_seconds + _STATUS_GRACE_SECONDS)
    delay = _FIRST_POLL_DELAY_SECONDS
    while True:
        if (now() - last_beat).total_seconds() >= beat_every:
            lifecycle.record_heartbeat(action.hook_name, action.asg_name, action.token, action.instance_id)
            last_beat = now()
        status = commands.status(command_id, action.instance_id)
        if status.state.finished:
            return status
        if now() >= give_up_at:
            return CommandStatus(CommandState.TIMED_OUT, status.output)
        sleep(min(delay, longest_sleep))
        delay = min(delay * 2, _MAX_POLL_DELAY_SECONDS)


class WipeClaim:
    """The `wipe.<token>` setting that makes one lifecycle action's wipe run once.

    Values: `running|<claimed at>|<nonce>`, `done|<command id>` or `released|<released at>`. Settings are
    never deleted, so a released or stale claim is taken over by overwriting it: two retries racing
    in that window could both erase, which is harmless (erasing twice leaves the cache erased).
    """

    def __init__(self, store: SettingsStore, token: str, now: Callable[[], datetime]) -> None:
        self._store = store
        self._name = f"wipe.{token}"
        self._now = now
        self._value = ""

    def acquire(self) -> bool:
        """True if this invocation now owns the wipe."""
        # The nonce tells this invocation's claim from another's made in the same microsecond.
        mine = f"running|{format_audit_time(self._now())}|{secrets.token_hex(8)}"
        self._value = self._store.put_setting_if_absent(self._name, mine)
        if self._value == mine:
            return True
        if self.finished() or not self._takeover_allowed():
            return False
        self._store.put_setting(self._name, mine)
        self._value = mine
        return True

    def finished(self) -> bool:
        """Whether the wipe this claim guards completed."""
        return self._value.startswith("done|")

    def command_id(self) -> str | None:
        """The command id of a completed wipe."""
        return self._value.partition("|")[2] if self.finished() else None

    def finish(self, command_id: str) -> None:
        """Mark the wipe done, so duplicate deliveries do nothing."""
        self._value = f"done|{command_id}"
        self._store.put_setting(self._name, self._value)

    def release(self) -> None:
        """Give the wipe back so a retry can run it."""
        self._value = f"released|{format_audit_time(self._now())}"
        self._store.put_setting(self._name, self._value)

    def _takeover_allowed(self) -> bool:
        kind, _, rest = self._value.partition("|")
        stamp = rest.partition("|")[0]
        if kind == "released":
            return True
        try:
            claimed_at = parse_audit_time(stamp)
        except ValueError:
            return True  # unreadable claims cannot block a wipe forever
        return self._now() - claimed_at >= _CLAIM_LEASE
