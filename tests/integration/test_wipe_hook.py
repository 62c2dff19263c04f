"""The wipe hook's AWS adapters and Lambda, against moto and botocore's request validation.

moto 5.2 implements SSM `send_command` / `get_command_invocation` (it reports Success and runs nothing,
so these tests prove the calls and their translation, not that cryptsetup ran) and `create_document`: the
erase document is created in moto with the content the CDK deploys (`ERASE_DOCUMENT`, which
tests/cdk/test_wipe_hook.py compares with the synthesized template). moto does not check parameters against
a document's allowedPattern, so the device check tested here is our own, before anything is sent. It implements neither
`complete_lifecycle_action` nor `record_lifecycle_action_heartbeat` (both raise NotImplementedError),
so `AutoScalingLifecycle` is tested against a real boto3 Auto Scaling client wrapped in botocore's
`Stubber`: a recording fake that still validates every request against the service model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from functions.shared.wiring import install_services
from hd_core.adapters.aws_lifecycle import SHELL_DOCUMENT, AutoScalingLifecycle, SsmRunCommand
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.control_settings import ControlApiSettings
from hd_core.errors import InvalidRequest
from hd_core.services import ControlServices, assemble_services
from hd_core.wipe import (
    DEPLOYMENT_CHAIN_ID,
    CommandState,
    InstanceControlFailed,
    LifecycleResult,
    WipeFailed,
)

INSTANCE = "i-0123456789abcdef0"
TOKEN = "c613620e-07e2-4ed2-a9e2-ef8258911ade"
HOOK = {"LifecycleHookName": "hd-wipe-cache", "AutoScalingGroupName": "hd-engine-fleet",
        "LifecycleActionToken": TOKEN, "InstanceId": INSTANCE}
ERASE_DOCUMENT_NAME = "HardenedDuck-WipeEraseDocument-Ab12Cd34"
# The erase document as cdk/hd_cdk/wipe_hook.py deploys it (asserted there against the synthesized template).
ERASE_DOCUMENT: dict[str, Any] = {
    "schemaVersion": "2.2",
    "description": "Hardened Duck: erase every LUKS key slot of an engine host's cache device",
    "parameters": {
        "device": {"type": "String", "description": "The LUKS cache device to erase, a /dev path",
                   "allowedPattern": "^/dev/[A-Za-z0-9/_-]+$"},
    },
    "mainSteps": [{
        "action": "aws:runShellScript", "name": "luksErase",
        "inputs": {"runCommand": ["systemctl stop hd-engine.service || true",
                                  "cryptsetup luksErase --batch-mode {{ device }}"], "timeoutSeconds": 210},
    }],
}


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[None]:
    with mock_aws():
        yield


def create_erase_document(ssm: Any) -> str:
    ssm.create_document(Content=json.dumps(ERASE_DOCUMENT), Name=ERASE_DOCUMENT_NAME, DocumentType="Command",
                        DocumentFormat="JSON", TargetType="/AWS::EC2::Instance")
    return ERASE_DOCUMENT_NAME


# --- SsmRunCommand (moto) -------------------------------------------------------------------------


def test_with_the_erase_document_only_the_device_is_sent(aws: None) -> None:
    ssm = boto3.client("ssm")
    document = create_erase_document(ssm)
    command_id = SsmRunCommand(ssm, erase_document=document).send_erase(INSTANCE, "/dev/nvme1n1", 120)
    (sent,) = ssm.list_commands(CommandId=command_id)["Commands"]
    assert (sent["DocumentName"], sent["InstanceIds"]) == (document, [INSTANCE])
    assert sent["Parameters"] == {"device": ["/dev/nvme1n1"]}
    assert sent["TimeoutSeconds"] == 120


def test_without_an_erase_document_the_shell_document_runs_exactly_the_lukserase_line(aws: None) -> None:
    ssm = boto3.client("ssm")
    command_id = SsmRunCommand(ssm).send_erase(INSTANCE, "/dev/nvme1n1", 120)
    (sent,) = ssm.list_commands(CommandId=command_id)["Commands"]
    assert (sent["DocumentName"], sent["InstanceIds"]) == (SHELL_DOCUMENT, [INSTANCE])
    assert sent["Parameters"] == {"commands": ["cryptsetup luksErase --batch-mode /dev/nvme1n1"],
                                  "executionTimeout": ["120"]}


@pytest.mark.parametrize("document", [ERASE_DOCUMENT_NAME, None])
@pytest.mark.parametrize("device", ["/dev/nvme1n1; reboot", "/dev/../etc/passwd", "/dev/nvme1n1\n"])
def test_a_bad_device_is_refused_before_anything_is_sent(aws: None, document: str | None, device: str) -> None:
    ssm = boto3.client("ssm")
    create_erase_document(ssm)
    with pytest.raises(InvalidRequest):
        SsmRunCommand(ssm, erase_document=document).send_erase(INSTANCE, device, 120)
    assert ssm.list_commands()["Commands"] == []


def test_status_reads_the_invocation_of_the_command_on_that_instance(aws: None) -> None:
    ssm = boto3.client("ssm")
    commands = SsmRunCommand(ssm, erase_document=create_erase_document(ssm))
    command_id = commands.send_erase(INSTANCE, "/dev/nvme1n1", 60)
    assert commands.status(command_id, INSTANCE).state is CommandState.SUCCESS  # moto: Success, nothing ran


def test_status_of_an_invocation_not_registered_yet_is_pending(aws: None) -> None:
    ssm = boto3.client("ssm")
    commands = SsmRunCommand(ssm, erase_document=create_erase_document(ssm))
    command_id = commands.send_erase(INSTANCE, "/dev/nvme1n1", 60)
    assert commands.status(command_id, "i-00000000000000000").state is CommandState.PENDING


def test_a_refused_send_is_an_instance_control_failure(aws: None) -> None:
    ssm = boto3.client("ssm")
    with Stubber(ssm) as stub, pytest.raises(InstanceControlFailed, match="send_command"):
        stub.add_client_error("send_command", service_error_code="AccessDeniedException")
        SsmRunCommand(ssm, erase_document=ERASE_DOCUMENT_NAME).send_erase(INSTANCE, "/dev/nvme1n1", 60)


@pytest.mark.parametrize(
    ("reported", "state"),
    [("Pending", CommandState.PENDING), ("Delayed", CommandState.PENDING), ("InProgress", CommandState.IN_PROGRESS),
     ("Cancelling", CommandState.IN_PROGRESS), ("Success", CommandState.SUCCESS), ("Failed", CommandState.FAILED),
     ("TimedOut", CommandState.TIMED_OUT), ("Cancelled", CommandState.CANCELLED),
     ("Undeliverable", CommandState.FAILED)],
)
def test_every_ssm_invocation_status_maps_to_a_command_state(aws: None, reported: str, state: CommandState) -> None:
    ssm = boto3.client("ssm")
    with Stubber(ssm) as stub:
        stub.add_response(
            "get_command_invocation",
            {"Status": reported, "StandardOutputContent": "out", "StandardErrorContent": "err"},
            {"CommandId": "0b1e4f52-3a6c-4a6b-9a3e-0c5a4f2e8d11", "InstanceId": INSTANCE},
        )
        status = SsmRunCommand(ssm).status("0b1e4f52-3a6c-4a6b-9a3e-0c5a4f2e8d11", INSTANCE)
    assert (status.state, status.output) == (state, "out\nerr")


def test_another_status_error_is_an_instance_control_failure(aws: None) -> None:
    ssm = boto3.client("ssm")
    with Stubber(ssm) as stub, pytest.raises(InstanceControlFailed, match="get_command_invocation"):
        stub.add_client_error("get_command_invocation", service_error_code="AccessDeniedException")
        SsmRunCommand(ssm).status("0b1e4f52-3a6c-4a6b-9a3e-0c5a4f2e8d11", INSTANCE)


# --- AutoScalingLifecycle (Stubber: moto has neither lifecycle action call) ------------------------


def test_record_heartbeat_names_the_paused_lifecycle_action(aws: None) -> None:
    client = boto3.client("autoscaling")
    with Stubber(client) as stub:
        stub.add_response("record_lifecycle_action_heartbeat", {}, HOOK)
        AutoScalingLifecycle(client).record_heartbeat("hd-wipe-cache", "hd-engine-fleet", TOKEN, INSTANCE)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("result", list(LifecycleResult))
def test_complete_sends_the_lifecycle_action_result(aws: None, result: LifecycleResult) -> None:
    client = boto3.client("autoscaling")
    with Stubber(client) as stub:
        stub.add_response("complete_lifecycle_action", {}, {**HOOK, "LifecycleActionResult": result.value})
        AutoScalingLifecycle(client).complete("hd-wipe-cache", "hd-engine-fleet", TOKEN, INSTANCE, result)
        stub.assert_no_pending_responses()


def test_a_refused_lifecycle_call_is_an_instance_control_failure(aws: None) -> None:
    client = boto3.client("autoscaling")
    with Stubber(client) as stub, pytest.raises(InstanceControlFailed, match="record_lifecycle_action_heartbeat"):
        stub.add_client_error("record_lifecycle_action_heartbeat", service_error_code="ValidationError",
                              service_message="No active Lifecycle Action found")
        AutoScalingLifecycle(client).record_heartbeat("hd-wipe-cache", "hd-engine-fleet", TOKEN, INSTANCE)


# --- the Lambda, end to end: moto SSM, stubbed Auto Scaling, local control store ---------------------


class FakeContext:
    function_name = "hd-wipe-hook"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:hd-wipe-hook"
    aws_request_id = "req-wipe-1"


def lifecycle_event() -> dict[str, Any]:
    return {
        "id": "evt-1", "source": "aws.autoscaling", "detail-type": "EC2 Instance-terminate Lifecycle Action",
        "time": "2026-11-23T17:00:00Z",
        "detail": {"LifecycleActionToken": TOKEN, "AutoScalingGroupName": "hd-engine-fleet",
                   "LifecycleHookName": "hd-wipe-cache", "EC2InstanceId": INSTANCE,
                   "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"},
    }


@pytest.fixture
def control(tmp_path: Path, aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlServices]:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    svc = assemble_services(
        ControlApiSettings(),
        store=SqliteControlStore(tmp_path / "control.sqlite3"),
        keys=LocalKeyFile(tmp_path / "keys" / "local-keys.json"),
        checkpoints=LocalFolderCheckpointStore(tmp_path),
        query_audit=LocalFolderAuditArchive(tmp_path),
    )
    install_services(svc)
    yield svc
    install_services(None)


def emitted_metrics(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("{") and "_aws" in line:
            document = json.loads(line)
            for directive in document["_aws"]["CloudWatchMetrics"]:
                names.update(metric["Name"] for metric in directive["Metrics"])
    return names


def test_the_lambda_wipes_continues_and_counts_success(
    control: ControlServices, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.wipe_hook import handler

    autoscaling = boto3.client("autoscaling")
    ssm = boto3.client("ssm")
    commands = SsmRunCommand(ssm, erase_document=create_erase_document(ssm))
    monkeypatch.setattr(handler, "instance_control", lambda: (commands, AutoScalingLifecycle(autoscaling)))
    with Stubber(autoscaling) as stub:
        stub.add_response("record_lifecycle_action_heartbeat", {}, HOOK)  # the event is minutes old by now
        stub.add_response("complete_lifecycle_action", {}, {**HOOK, "LifecycleActionResult": "CONTINUE"})
        result = handler.lambda_handler(lifecycle_event(), FakeContext())
        stub.assert_no_pending_responses()
    assert result["status"] == "wiped"
    (sent,) = ssm.list_commands(CommandId=result["command_id"])["Commands"]
    assert (sent["DocumentName"], sent["Parameters"]) == (ERASE_DOCUMENT_NAME, {"device": ["/dev/nvme1n1"]})
    [event] = control.store.list_iam_events(DEPLOYMENT_CHAIN_ID)
    assert (event.event_type, event.target, event.request_id) == ("instance.wiped", INSTANCE, "req-wipe-1")
    assert "WipeSucceeded" in emitted_metrics(capsys.readouterr().out)


def test_the_lambda_raises_and_counts_a_failure_without_continuing(
    control: ControlServices, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from functions.wipe_hook import handler

    autoscaling = boto3.client("autoscaling")
    ssm = boto3.client("ssm")
    monkeypatch.setattr(handler, "instance_control", lambda: (SsmRunCommand(ssm), AutoScalingLifecycle(autoscaling)))
    with Stubber(autoscaling) as stub, Stubber(ssm) as ssm_stub, pytest.raises(WipeFailed):
        ssm_stub.add_client_error("send_command", service_error_code="InvalidInstanceId")
        handler.lambda_handler(lifecycle_event(), FakeContext())
    stub.assert_no_pending_responses()  # nothing was queued: any lifecycle call would have failed the stub
    [event] = control.store.list_iam_events(DEPLOYMENT_CHAIN_ID)
    assert event.event_type == "instance.wipe_failed"
    assert "WipeFailed" in emitted_metrics(capsys.readouterr().out)


@pytest.fixture
def fresh_wiring(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The handler's once-per-container settings and adapters, rebuilt from this test's environment."""
    from functions.wipe_hook import handler

    handler.wipe_settings.cache_clear()
    handler.instance_control.cache_clear()
    yield monkeypatch
    handler.wipe_settings.cache_clear()
    handler.instance_control.cache_clear()


def test_the_lambda_sends_the_erase_through_the_document_named_in_hd_wipe_document(
    aws: None, fresh_wiring: pytest.MonkeyPatch
) -> None:
    from functions.wipe_hook import handler

    ssm = boto3.client("ssm")
    fresh_wiring.setenv("HD_WIPE_DOCUMENT", create_erase_document(ssm))
    fresh_wiring.setenv("HD_WIPE_DEVICE", "/dev/nvme2n1")
    commands, _ = handler.instance_control()
    command_id = commands.send_erase(INSTANCE, handler.wipe_settings().device, 120)
    (sent,) = ssm.list_commands(CommandId=command_id)["Commands"]
    assert (sent["DocumentName"], sent["Parameters"]) == (ERASE_DOCUMENT_NAME, {"device": ["/dev/nvme2n1"]})


@pytest.mark.parametrize("name", ["", "x", "AWS-RunShellScript; reboot"])
def test_a_malformed_hd_wipe_document_is_refused_by_the_settings(fresh_wiring: pytest.MonkeyPatch, name: str) -> None:
    from pydantic import ValidationError

    from functions.wipe_hook.handler import WipeHookSettings

    fresh_wiring.setenv("HD_WIPE_DOCUMENT", name)
    with pytest.raises(ValidationError, match="document"):
        WipeHookSettings()
