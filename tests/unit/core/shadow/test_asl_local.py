"""The local ASL interpreter runs the replay's one definition as Step Functions would, and refuses anything else."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from hd_core.shadow import state_machine
from hd_core.shadow.asl_local import AslUnsupported, ExecutionFailed, ExecutionStopped, LocalStateMachine

DEFINITION = state_machine.definition({name: name for name in state_machine.FUNCTIONS})


class Flaky(Exception):
    pass


def handlers(replay_batch: Any, calls: list[Any]) -> dict[str, Any]:
    def prepare(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(("prepare", event))
        return {"batches": [{"replay_id": event["replay_id"], "batch": n} for n in range(6)]}

    def write_report(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(("write_report", event))
        return {"batches": len(event["batch_results"])}

    def end_replay(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(("end_replay", event))
        return {"ended": event["status"]}

    return {state_machine.PREPARE: prepare, state_machine.REPLAY_BATCH: replay_batch,
            state_machine.WRITE_REPORT: write_report, state_machine.END_REPLAY: end_replay}


def test_every_batch_runs_once_with_the_inputs_concurrency_and_write_report_gets_every_result() -> None:
    calls: list[Any] = []
    lock, running, peak = threading.Lock(), [0], [0]
    together = threading.Barrier(2, timeout=10)  # breaks (failing the batch) unless two run at once
    progress: list[tuple[int, int]] = []

    def replay_batch(event: dict[str, Any]) -> dict[str, Any]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1
        return {"replay_id": event["replay_id"], "batch": event["batch"], "status": "done"}

    machine = LocalStateMachine(DEFINITION, handlers(replay_batch, calls),
                                on_progress=lambda done, total: progress.append((done, total)))
    output = machine.run({"replay_id": "rp_1", "concurrency": 2, "comparison_secret_id": "shsec_x"})

    assert peak[0] == 2
    assert progress[0] == (0, 6) and progress[-1] == (6, 6)
    assert output["report"] == {"batches": 6}
    write_report = next(event for name, event in calls if name == "write_report")
    assert write_report == {"replay_id": "rp_1", "batch_results": [
        {"replay_id": "rp_1", "batch": n, "status": "done"} for n in range(6)]}
    assert output["comparison_secret_id"] == "shsec_x" and output["prepared"]["batches"][5]["batch"] == 5


def test_a_batch_is_retried_with_backoff_and_succeeds_on_its_last_attempt() -> None:
    attempts: list[int] = []
    waits: list[float] = []

    def replay_batch(event: dict[str, Any]) -> dict[str, Any]:
        if event["batch"] == 3 and len(attempts) < state_machine.RETRY_MAX_ATTEMPTS:
            attempts.append(1)
            raise Flaky("try again")
        return {"replay_id": event["replay_id"], "batch": event["batch"], "status": "done"}

    output = LocalStateMachine(DEFINITION, handlers(replay_batch, []), sleep=waits.append).run(
        {"replay_id": "rp_1", "concurrency": 1})
    assert waits == [1.0, 2.0] and output["report"] == {"batches": 6}
    assert all(item["status"] == "done" for item in output["batch_results"])


def test_a_batch_failing_every_attempt_is_caught_as_an_error_record_and_the_run_goes_on() -> None:
    def replay_batch(event: dict[str, Any]) -> dict[str, Any]:
        if event["batch"] == 4:
            raise Flaky("the comparison database is down")
        return {"replay_id": event["replay_id"], "batch": event["batch"], "status": "done"}

    output = LocalStateMachine(DEFINITION, handlers(replay_batch, []), sleep=lambda _: None).run(
        {"replay_id": "rp_1", "concurrency": 3})
    assert output["batch_results"][4] == {"replay_id": "rp_1", "batch": 4, "status": "error", "error": "Flaky"}
    assert [item["status"] for item in output["batch_results"]].count("done") == 5


def test_a_failing_prepare_ends_the_replay_then_fails_the_execution_after_its_retries() -> None:
    attempts: list[int] = []

    def failing(event: dict[str, Any]) -> dict[str, Any]:
        attempts.append(1)
        raise Flaky("no query set")

    calls: list[Any] = []
    machine = LocalStateMachine(DEFINITION, {**handlers(lambda e: e, calls), state_machine.PREPARE: failing},
                                sleep=lambda _: None)
    with pytest.raises(ExecutionFailed) as failed:
        machine.run({"replay_id": "rp_1", "concurrency": 1})
    assert len(attempts) == 1 + state_machine.RETRY_MAX_ATTEMPTS
    # The Catch ran EndReplay with the error's name (never its cause), and the execution still ends FAILED.
    assert calls == [("end_replay", {"replay_id": "rp_1", "status": "FAILED", "error": "Flaky"})]
    assert failed.value.error == state_machine.REPLAY_FAILED_ERROR


@pytest.mark.parametrize("failing_state", [state_machine.WRITE_REPORT, state_machine.REPLAY_BATCHES])
def test_every_later_top_level_state_that_fails_ends_the_replay_too(failing_state: str) -> None:
    calls: list[Any] = []
    definition = copy.deepcopy(DEFINITION)
    if failing_state == state_machine.REPLAY_BATCHES:  # the Map itself fails (its items are not an array)
        definition["States"][failing_state]["ItemsPath"] = "$.replay_id"
    table = handlers(lambda e: {**e, "status": "done"}, calls)
    if failing_state == state_machine.WRITE_REPORT:
        table[state_machine.WRITE_REPORT] = lambda event: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(ExecutionFailed):
        LocalStateMachine(definition, table, sleep=lambda _: None).run({"replay_id": "rp_1", "concurrency": 1})
    ended = [event for name, event in calls if name == "end_replay"]
    assert ended == [{"replay_id": "rp_1", "status": "FAILED",
                      "error": "OSError" if failing_state == state_machine.WRITE_REPORT else "States.Runtime"}]


def test_a_timeout_is_not_caught_so_end_replay_is_left_to_whoever_sees_the_status() -> None:
    calls: list[Any] = []
    now = [0.0]

    def slow_prepare(event: dict[str, Any]) -> dict[str, Any]:
        now[0] += state_machine.EXECUTION_TIMEOUT_SECONDS + 1
        return {"batches": []}

    machine = LocalStateMachine(DEFINITION, {**handlers(lambda e: e, calls), state_machine.PREPARE: slow_prepare},
                                sleep=lambda _: None, clock=lambda: now[0])
    with pytest.raises(ExecutionFailed) as failed:
        machine.run({"replay_id": "rp_1", "concurrency": 1})
    assert failed.value.error == "States.Timeout" and calls == []


@pytest.mark.parametrize("change", [
    lambda d: d["States"]["Prepare"].update(TimeoutSeconds=30),
    lambda d: d["States"].update(Wait={"Type": "Wait", "Seconds": 1, "Next": "Done"}),
    lambda d: d["States"]["WriteReport"]["Parameters"].update({"x.$": "States.Format('{}', $.a)"}),
    lambda d: d["States"]["WriteReport"]["Parameters"].update({"x.$": "$$.Execution.Id"}),
    lambda d: d["States"]["ReplayBatches"]["ItemProcessor"]["ProcessorConfig"].update(Mode="DISTRIBUTED"),
    lambda d: d["States"]["ReplayBatches"].update(ItemSelector={"a.$": "$.b"}),
    lambda d: d["States"]["Prepare"].update(Resource="arn:aws:lambda:eu-west-1:1:function:other"),
])
def test_anything_outside_the_interpreted_subset_is_refused_up_front(change: Any) -> None:
    definition = copy.deepcopy(DEFINITION)
    change(definition)
    with pytest.raises(AslUnsupported):
        LocalStateMachine(definition, handlers(lambda e: e, []))


def test_the_definition_needs_every_function() -> None:
    with pytest.raises(ValueError, match="WriteReport"):
        state_machine.definition({state_machine.PREPARE: "a", state_machine.REPLAY_BATCH: "b"})


def test_an_execution_past_its_timeout_fails_as_step_functions_times_it_out() -> None:
    assert DEFINITION["TimeoutSeconds"] == state_machine.EXECUTION_TIMEOUT_SECONDS
    now = [0.0]
    reports: list[Any] = []

    def replay_batch(event: dict[str, Any]) -> dict[str, Any]:
        now[0] += state_machine.EXECUTION_TIMEOUT_SECONDS / 3  # each batch takes a third of a day
        return {"replay_id": event["replay_id"], "batch": event["batch"], "status": "done"}

    machine = LocalStateMachine(DEFINITION, handlers(replay_batch, reports), clock=lambda: now[0])
    with pytest.raises(ExecutionFailed) as failed:
        machine.run({"replay_id": "rp_1", "concurrency": 1})
    assert failed.value.error == "States.Timeout"
    assert not [call for call in reports if call[0] == "write_report"]


def test_a_timeout_that_is_not_a_positive_integer_is_refused() -> None:
    for timeout in (0, -5, 1.5, "60", True):
        with pytest.raises(AslUnsupported):
            LocalStateMachine({**DEFINITION, "TimeoutSeconds": timeout}, handlers(lambda e: e, []))



def test_a_stop_interrupts_the_run_before_its_next_state_and_no_catch_turns_it_into_an_error_record() -> None:
    calls: list[Any] = []
    stop = threading.Event()
    ran: list[int] = []

    def replay_batch(event: dict[str, Any]) -> dict[str, Any]:
        ran.append(event["batch"])
        if len(ran) == 2:
            stop.set()  # the host shuts down while this batch runs: it finishes, nothing after it starts
        return {"replay_id": event["replay_id"], "batch": event["batch"], "status": "done"}

    machine = LocalStateMachine(DEFINITION, handlers(replay_batch, calls), should_stop=stop.is_set)
    with pytest.raises(ExecutionStopped):
        machine.run({"replay_id": "rp_1", "concurrency": 1})
    assert ran == [0, 1]
    assert not [call for call in calls if call[0] == "write_report"]  # not caught as BatchFailed, not reported


def test_a_resumed_execution_counts_the_time_it_already_ran_against_its_timeout() -> None:
    reports: list[Any] = []
    done = lambda event: {"replay_id": event["replay_id"], "batch": event["batch"], "status": "done"}  # noqa: E731
    machine = LocalStateMachine(DEFINITION, handlers(done, reports), clock=lambda: 0.0)
    with pytest.raises(ExecutionFailed) as failed:
        machine.run({"replay_id": "rp_1", "concurrency": 1}, elapsed_seconds=state_machine.EXECUTION_TIMEOUT_SECONDS)
    assert failed.value.error == "States.Timeout" and reports == []
    assert LocalStateMachine(DEFINITION, handlers(done, reports)).run(
        {"replay_id": "rp_1", "concurrency": 1}, elapsed_seconds=60)["report"] == {"batches": 6}
