"""wipe_instance: the termination wipe, over recording fakes of the lifecycle and remote-command ports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.errors import AuditWriteFailed, InvalidRequest
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import IamEventType
from hd_core.wipe import (
    DEPLOYMENT_CHAIN_ID,
    CommandState,
    CommandStatus,
    InstanceControlFailed,
    LifecycleResult,
    WipeFailed,
    erase_device,
    luks_erase_commands,
    parse_lifecycle_event,
    wipe_instance,
)

T0 = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
TOKEN = "c613620e-07e2-4ed2-a9e2-ef8258911ade"
INSTANCE = "i-0123456789abcdef0"


def lifecycle_event(**detail_overrides: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "LifecycleActionToken": TOKEN,
        "AutoScalingGroupName": "hd-engine-fleet",
        "LifecycleHookName": "hd-wipe-cache",
        "EC2InstanceId": INSTANCE,
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
    }
    detail.update(detail_overrides)
    return {"id": "evt-1", "detail-type": "EC2 Instance-terminate Lifecycle Action", "source": "aws.autoscaling",
            "time": "2026-11-23T17:00:00Z", "detail": {k: v for k, v in detail.items() if v is not None}}


class ManualClock:
    """Time that moves only when the code under test sleeps (or a fake command takes time)."""

    def __init__(self) -> None:
        self.current = T0
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += timedelta(seconds=seconds)


@dataclass
class RecordingCommands:
    """A remote-command fake answering from a script of states, one per status call (the last one repeats)."""

    states: list[CommandState]
    output: str = ""
    sent: list[tuple[str, str, int]] = field(default_factory=list)
    polls: int = 0

    def send_erase(self, instance_id: str, device: str, timeout_seconds: int) -> str:
        self.sent.append((instance_id, device, timeout_seconds))
        return f"cmd-{len(self.sent)}"

    def status(self, command_id: str, instance_id: str) -> CommandStatus:
        state = self.states[min(self.polls, len(self.states) - 1)]
        self.polls += 1
        return CommandStatus(state, self.output)


@dataclass
class RecordingLifecycle:
    """A lifecycle-actions fake that notes every call and when it happened."""

    clock: ManualClock
    heartbeats: list[datetime] = field(default_factory=list)
    completions: list[tuple[str, str, str, str, LifecycleResult]] = field(default_factory=list)

    def record_heartbeat(self, hook_name: str, asg_name: str, token: str, instance_id: str) -> None:
        self.heartbeats.append(self.clock.now())

    def complete(self, hook_name: str, asg_name: str, token: str, instance_id: str, result: LifecycleResult) -> None:
        self.completions.append((hook_name, asg_name, token, instance_id, result))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> LocalKeyFile:
    return LocalKeyFile(tmp_path_factory.mktemp("keys") / "local-keys.json")


@dataclass
class WipeWorld:
    store: SqliteControlStore
    trail: IamAuditTrail
    clock: ManualClock
    lifecycle: RecordingLifecycle

    def wipe(self, commands: RecordingCommands, event: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return wipe_instance(
            lifecycle_event() if event is None else event, commands=commands, lifecycle=self.lifecycle,
            trail=self.trail, store=self.store, now=self.clock.now, sleep=self.clock.sleep, **kwargs,
        )

    def events(self) -> list[tuple[str, str, dict[str, object] | None]]:
        return [(e.event_type, e.target, e.after) for e in self.store.list_iam_events(DEPLOYMENT_CHAIN_ID)]


@pytest.fixture
def world(tmp_path: Path, keys: LocalKeyFile) -> Iterator[WipeWorld]:
    clock = ManualClock()
    store = SqliteControlStore(tmp_path / "control.sqlite3")
    trail = IamAuditTrail(store, LocalFolderCheckpointStore(tmp_path), keys, now=clock.now)
    yield WipeWorld(store, trail, clock, RecordingLifecycle(clock))


def test_the_erase_is_sent_for_the_configured_device_with_the_command_timeout(world: WipeWorld) -> None:
    commands = RecordingCommands([CommandState.SUCCESS])
    world.wipe(commands, device="/dev/nvme2n1", command_timeout_seconds=90)
    assert commands.sent == [(INSTANCE, "/dev/nvme2n1", 90)]


def test_the_default_device_is_the_first_instance_store_volume(world: WipeWorld) -> None:
    commands = RecordingCommands([CommandState.SUCCESS])
    world.wipe(commands)
    assert [device for _, device, _ in commands.sent] == ["/dev/nvme1n1"]


def test_the_shell_erase_is_exactly_cryptsetup_lukserase_in_batch_mode() -> None:
    assert luks_erase_commands("/dev/nvme1n1") == ["cryptsetup luksErase --batch-mode /dev/nvme1n1"]


@pytest.mark.parametrize("device", ["/dev/nvme1n1", "/dev/disk/by-id/nvme-Amazon_EC2_NVMe_1", "/dev/xvd_b-1"])
def test_a_dev_path_of_letters_digits_slashes_underscores_and_dashes_may_be_erased(device: str) -> None:
    assert erase_device(device) == device


@pytest.mark.parametrize("device", ["/dev/nvme1n1\n", "/dev/nvme1n1\nreboot", "/dev/nvme1n1|x", "/dev/a`b`", 7])
def test_erase_device_refuses_newlines_pipes_backquotes_and_non_strings(device: Any) -> None:
    with pytest.raises(InvalidRequest) as raised:
        erase_device(device)
    assert raised.value.code == "HD_ERR_INVALID_REQUEST"


@pytest.mark.parametrize(
    "device", ["/dev/nvme1n1; reboot", "/dev/../etc/passwd", "nvme1n1", "/dev/", "/dev/nvme1n1 --force", "/dev/$(x)"]
)
def test_a_device_outside_dev_or_with_shell_syntax_is_refused_before_anything_runs(
    world: WipeWorld, device: str
) -> None:
    commands = RecordingCommands([CommandState.SUCCESS])
    with pytest.raises(InvalidRequest):
        world.wipe(commands, device=device)
    assert commands.sent == []
    assert world.store.get_setting(f"wipe.{TOKEN}") is None


def test_success_continues_the_termination_and_records_instance_wiped(world: WipeWorld) -> None:
    commands = RecordingCommands([CommandState.PENDING, CommandState.IN_PROGRESS, CommandState.SUCCESS])
    outcome = world.wipe(commands)
    assert (outcome.status, outcome.instance_id, outcome.command_id) == ("wiped", INSTANCE, "cmd-1")
    assert world.lifecycle.completions == [
        ("hd-wipe-cache", "hd-engine-fleet", TOKEN, INSTANCE, LifecycleResult.CONTINUE)
    ]
    assert world.events() == [
        (IamEventType.INSTANCE_WIPED.value, INSTANCE, {"command_id": "cmd-1", "device": "/dev/nvme1n1"})
    ]
    event = world.store.list_iam_events(DEPLOYMENT_CHAIN_ID)[0]
    assert (event.actor, event.request_id) == ("system", "evt-1")


def test_polling_backs_off_and_stays_bounded(world: WipeWorld) -> None:
    commands = RecordingCommands([CommandState.IN_PROGRESS] * 8 + [CommandState.SUCCESS])
    world.wipe(commands, heartbeat_timeout_seconds=600)
    assert world.clock.sleeps == [1, 2, 4, 8, 10, 10, 10, 10]


def test_a_heartbeat_is_recorded_before_half_the_heartbeat_timeout_is_spent(world: WipeWorld) -> None:
    commands = RecordingCommands([CommandState.IN_PROGRESS] * 40 + [CommandState.SUCCESS])
    world.wipe(commands, heartbeat_timeout_seconds=60, command_timeout_seconds=300)
    beats = [T0, *world.lifecycle.heartbeats, world.clock.now()]
    assert len(world.lifecycle.heartbeats) >= 3
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(beats)]
    assert max(gaps) < 30


def test_the_hook_clock_starts_at_the_event_time_not_at_delivery(world: WipeWorld) -> None:
    world.clock.current = T0 + timedelta(seconds=100)  # a retried delivery, 100 s into a 300 s hook
    world.wipe(RecordingCommands([CommandState.SUCCESS]))
    assert world.lifecycle.heartbeats == [world.clock.now()]


def test_heartbeat_timeout_comes_from_the_hook_notification_metadata(world: WipeWorld) -> None:
    event = lifecycle_event(NotificationMetadata='{"heartbeat_timeout_seconds": 40}')
    commands = RecordingCommands([CommandState.IN_PROGRESS] * 6 + [CommandState.SUCCESS])
    world.wipe(commands, event=event)
    assert world.lifecycle.heartbeats  # a 300 s default would not have needed one within ~25 s
    assert all(delay <= 5 for delay in world.clock.sleeps)


@pytest.mark.parametrize("final", [CommandState.FAILED, CommandState.TIMED_OUT, CommandState.CANCELLED])
def test_failure_never_continues_records_wipe_failed_and_raises(world: WipeWorld, final: CommandState) -> None:
    commands = RecordingCommands([CommandState.IN_PROGRESS, final], output="Device /dev/nvme1n1 is not LUKS")
    with pytest.raises(WipeFailed) as raised:
        world.wipe(commands)
    assert raised.value.code == "HD_ERR_WIPE_FAILED"
    assert world.lifecycle.completions == []
    assert world.events() == [
        (IamEventType.INSTANCE_WIPE_FAILED.value, INSTANCE,
         {"command_id": "cmd-1", "device": "/dev/nvme1n1", "state": final.value,
          "output": "Device /dev/nvme1n1 is not LUKS"})
    ]


def test_a_command_that_never_finishes_is_a_timed_out_failure(world: WipeWorld) -> None:
    commands = RecordingCommands([CommandState.IN_PROGRESS])
    with pytest.raises(WipeFailed):
        world.wipe(commands, command_timeout_seconds=30)
    assert world.events()[0][2]["state"] == "TimedOut"  # type: ignore[index]
    assert world.clock.now() - T0 < timedelta(seconds=30 + 60 + 11)
    assert world.lifecycle.completions == []


def test_an_aws_failure_while_sending_is_a_recorded_wipe_failure(world: WipeWorld) -> None:
    class RefusingCommands(RecordingCommands):
        def send_erase(self, instance_id: str, device: str, timeout_seconds: int) -> str:
            raise InstanceControlFailed("send_command failed: InvalidInstanceId")

    with pytest.raises(WipeFailed):
        world.wipe(RefusingCommands([CommandState.SUCCESS]))
    assert world.events()[0][2] == {
        "command_id": None, "device": "/dev/nvme1n1", "state": "Failed",
        "output": "HD_ERR_INSTANCE_CONTROL_FAILED: send_command failed: InvalidInstanceId",
    }
    assert world.lifecycle.completions == []


def test_a_failed_wipe_releases_its_claim_so_the_retry_runs_it_again(world: WipeWorld) -> None:
    with pytest.raises(WipeFailed):
        world.wipe(RecordingCommands([CommandState.FAILED]))
    retry = RecordingCommands([CommandState.SUCCESS])
    assert world.wipe(retry).status == "wiped"
    assert len(retry.sent) == 1
    assert [event_type for event_type, _, _ in world.events()] == ["instance.wipe_failed", "instance.wiped"]


def test_a_duplicate_delivery_of_a_finished_wipe_does_nothing(world: WipeWorld) -> None:
    world.wipe(RecordingCommands([CommandState.SUCCESS]))
    duplicate = RecordingCommands([CommandState.SUCCESS])
    outcome = world.wipe(duplicate)
    assert (outcome.status, outcome.command_id) == ("already_wiped", "cmd-1")
    assert duplicate.sent == []
    assert len(world.lifecycle.completions) == 1
    assert len(world.events()) == 1


def test_a_delivery_while_another_is_wiping_does_nothing_until_that_claim_goes_stale(world: WipeWorld) -> None:
    world.store.put_setting(f"wipe.{TOKEN}", "running|2026-11-23T17:00:00.000000Z")
    concurrent = RecordingCommands([CommandState.SUCCESS])
    assert world.wipe(concurrent).status == "in_progress"
    assert concurrent.sent == []
    world.clock.current = T0 + timedelta(minutes=16)  # that invocation died: Lambda runs 15 minutes at most
    assert world.wipe(concurrent).status == "wiped"
    assert len(concurrent.sent) == 1


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"detail": "not an object"},
        lifecycle_event(EC2InstanceId=None),
        lifecycle_event(LifecycleActionToken=""),
        lifecycle_event(LifecycleHookName=7),
        lifecycle_event(AutoScalingGroupName=None),
        lifecycle_event(LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING"),
    ],
)
def test_a_malformed_event_is_refused_and_nothing_runs(world: WipeWorld, event: dict[str, Any]) -> None:
    commands = RecordingCommands([CommandState.SUCCESS])
    with pytest.raises(InvalidRequest):
        world.wipe(commands, event=event)
    assert commands.sent == []
    assert world.lifecycle.completions == []


def test_the_event_parser_reads_the_four_facts_the_lifecycle_api_needs() -> None:
    action = parse_lifecycle_event(lifecycle_event())
    assert (action.hook_name, action.asg_name, action.token, action.instance_id) == (
        "hd-wipe-cache", "hd-engine-fleet", TOKEN, INSTANCE
    )
    assert action.started_at == T0
    assert action.heartbeat_timeout_seconds is None


def test_a_wipe_whose_success_cannot_be_audited_is_not_continued_and_can_be_retried(world: WipeWorld) -> None:
    class BrokenTrail:
        def record(self, *args: Any, **kwargs: Any) -> Any:
            raise AuditWriteFailed("audit chain unavailable")

    with pytest.raises(AuditWriteFailed):
        wipe_instance(lifecycle_event(), commands=RecordingCommands([CommandState.SUCCESS]),
                      lifecycle=world.lifecycle, trail=BrokenTrail(),  # type: ignore[arg-type]
                      store=world.store, now=world.clock.now, sleep=world.clock.sleep)
    assert world.lifecycle.completions == []
    assert world.wipe(RecordingCommands([CommandState.SUCCESS])).status == "wiped"
