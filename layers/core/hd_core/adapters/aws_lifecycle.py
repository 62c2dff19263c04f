"""The wipe hook's AWS adapters: Auto Scaling lifecycle actions and SSM Run Command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.wipe import (
    CommandState,
    CommandStatus,
    InstanceControlFailed,
    LifecycleResult,
    erase_device,
    luks_erase_commands,
)

# Without a dedicated erase document (local runs, tests) the erase goes through AWS's any-shell document.
SHELL_DOCUMENT = "AWS-RunShellScript"
# The one parameter of the erase document the CDK deploys (cdk/hd_cdk/wipe_hook.py).
ERASE_DOCUMENT_DEVICE_PARAMETER = "device"
# SSM refuses execution timeouts outside this range.
_MIN_TIMEOUT_SECONDS = 30
_MAX_TIMEOUT_SECONDS = 2_592_000
# Right after send_command the invocation may not be registered yet: that is "not started", not a failure.
_NOT_YET_REGISTERED = "InvocationDoesNotExist"
# SSM's transient invocation states, mapped to the port's "not finished yet".
_STATE_ALIASES = {"Delayed": CommandState.PENDING, "Cancelling": CommandState.IN_PROGRESS}


class AutoScalingLifecycle:
    """`LifecycleActions` over an Auto Scaling client."""

    def __init__(self, autoscaling_client: Any) -> None:
        self._client = autoscaling_client

    def record_heartbeat(self, hook_name: str, asg_name: str, token: str, instance_id: str) -> None:
        """Restart the hook's heartbeat timeout; raises `InstanceControlFailed`."""
        with _translated("record_lifecycle_action_heartbeat"):
            self._client.record_lifecycle_action_heartbeat(
                LifecycleHookName=hook_name, AutoScalingGroupName=asg_name, LifecycleActionToken=token,
                InstanceId=instance_id,
            )

    def complete(self, hook_name: str, asg_name: str, token: str, instance_id: str, result: LifecycleResult) -> None:
        """Let the paused transition proceed; raises `InstanceControlFailed`."""
        with _translated("complete_lifecycle_action"):
            self._client.complete_lifecycle_action(
                LifecycleHookName=hook_name, AutoScalingGroupName=asg_name, LifecycleActionToken=token,
                InstanceId=instance_id, LifecycleActionResult=LifecycleResult(result).value,
            )


class SsmRunCommand:
    """`RemoteCommands` over an SSM client.

    With `erase_document` (the deployed erase document's name) the erase is that document with only the
    device as parameter, so the caller's role needs no right to run arbitrary shell; without it, the
    `cryptsetup luksErase` command line goes through `AWS-RunShellScript`.
    """

    def __init__(self, ssm_client: Any, erase_document: str | None = None) -> None:
        self._client = ssm_client
        self._erase_document = erase_document

    def send_erase(self, instance_id: str, device: str, timeout_seconds: int) -> str:
        """Start the erase of `device` on one instance; returns the command id.

        Raises `InvalidRequest` for a bad device path (nothing is sent) and `InstanceControlFailed` if SSM refuses.
        """
        timeout = max(_MIN_TIMEOUT_SECONDS, min(int(timeout_seconds), _MAX_TIMEOUT_SECONDS))
        if self._erase_document:
            # The document's allowedPattern checks the path again on the SSM side; its step sets its own
            # execution timeout, so `timeout` here only bounds how long SSM may wait to deliver the command.
            document = self._erase_document
            parameters = {ERASE_DOCUMENT_DEVICE_PARAMETER: [erase_device(device)]}
        else:
            document = SHELL_DOCUMENT
            parameters = {"commands": luks_erase_commands(device), "executionTimeout": [str(timeout)]}
        with _translated("send_command"):
            response = self._client.send_command(
                InstanceIds=[instance_id], DocumentName=document, Parameters=parameters, TimeoutSeconds=timeout,
            )
        return str(response["Command"]["CommandId"])

    def status(self, command_id: str, instance_id: str) -> CommandStatus:
        """The command's state on the instance and its output (stdout, then stderr)."""
        try:
            response = self._client.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == _NOT_YET_REGISTERED:
                return CommandStatus(CommandState.PENDING)
            raise InstanceControlFailed(f"get_command_invocation failed: {error}") from error
        except BotoCoreError as error:
            raise InstanceControlFailed(f"get_command_invocation failed: {error}") from error
        return CommandStatus(_state(str(response.get("Status", ""))), _output(response))


def _state(status: str) -> CommandState:
    if status in _STATE_ALIASES:
        return _STATE_ALIASES[status]
    try:
        return CommandState(status)
    except ValueError:
        # An unknown status (Undeliverable, Terminated, ...) is a final one that did not succeed.
        return CommandState.FAILED


def _output(response: dict[str, Any]) -> str:
    parts = [str(response.get(key) or "") for key in ("StandardOutputContent", "StandardErrorContent")]
    return "\n".join(part for part in parts if part)


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """Turn botocore failures of one call into `InstanceControlFailed`, naming the call."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise InstanceControlFailed(f"{operation} failed: {error}") from error
