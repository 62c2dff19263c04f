"""An in-process interpreter of the Amazon States Language subset the shadow replay's definition uses.

`hd dev` runs `state_machine.definition()` here, with the same handler functions the Lambdas call, so
the local flow is the AWS one and not a second hand-written flow. Supported, with Step Functions'
semantics: `Task` (Resource looked up in `handlers`; Parameters, ResultPath, Retry, Catch), `Map`
(ItemsPath, MaxConcurrency / MaxConcurrencyPath, an INLINE ItemProcessor, ResultPath, Catch), `Pass`
(Parameters, Result, ResultPath), `Succeed` and `Fail` (Error, Cause); the machine's `TimeoutSeconds`
fails the execution with `States.Timeout` at the first state that starts after it has passed (a
running task is not interrupted, where Step Functions would stop waiting for it). The check runs
before a state, outside any state's Retry and Catch, so nothing can catch it. `should_stop`
(the host shutting down) is checked at the same place and ends the run with `ExecutionStopped`,
which no Catch sees either: the execution is not over, and `run` again with the same input (and the
time it already ran, so the timeout still counts from its start) resumes it, the tasks being
idempotent. Paths are reference paths (`$` or `$.a.b`).
Anything else (another state type, a field not listed, a context path `$$`, intrinsic functions) is
refused when the interpreter is built, so a definition that drifts from this subset fails at once
instead of being run differently than Step Functions would run it.

A Task's input and output go through JSON, as they would between Step Functions and a Lambda. An
exception's error name is its class name and its cause its message, as the Lambda runtime reports
an unhandled exception; `States.ALL` and `States.TaskFailed` match every task error.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Handler = Callable[[Any], Any]
ProgressListener = Callable[[int, int], None]

_PATH_RE = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_COMMON = {"Type", "Comment", "Next", "End"}
_ALLOWED_FIELDS: dict[str, set[str]] = {
    "Task": _COMMON | {"Resource", "Parameters", "ResultPath", "Retry", "Catch"},
    "Map": _COMMON | {"ItemsPath", "MaxConcurrency", "MaxConcurrencyPath", "ItemProcessor", "ResultPath", "Catch"},
    "Pass": _COMMON | {"Parameters", "Result", "ResultPath"},
    "Succeed": {"Type", "Comment"},
    "Fail": {"Type", "Comment", "Error", "Cause"},
}
_RETRY_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate"}
_CATCH_FIELDS = {"ErrorEquals", "ResultPath", "Next"}


class AslUnsupported(ValueError):
    """The definition uses something outside the interpreted subset."""


class ExecutionFailed(Exception):
    """A state failed with no Catch for its error: the execution fails (as Step Functions' FAILED)."""

    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


class ExecutionStopped(Exception):
    """`should_stop` said so before a state: the execution is interrupted, neither succeeded nor failed."""


class LocalStateMachine:
    """One ASL document bound to local handlers; `run(input)` executes it to the end."""

    def __init__(self, definition: Mapping[str, Any], handlers: Mapping[str, Handler], *,
                 sleep: Callable[[float], None] = time.sleep, on_progress: ProgressListener | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self._definition = copy.deepcopy(dict(definition))
        self._should_stop = should_stop
        self._handlers = dict(handlers)
        self._sleep = sleep
        self._clock = clock
        self._deadline: float | None = None
        self._on_progress = on_progress
        self._check_machine(self._definition, top_level=True)

    def run(self, execution_input: Any, *, elapsed_seconds: float = 0.0) -> Any:
        """The execution's output; raises `ExecutionFailed` when the execution fails, `ExecutionStopped` when
        `should_stop` interrupted it. `elapsed_seconds`: how long the execution already ran before (a resumed
        one), counted against its TimeoutSeconds."""
        timeout = self._definition.get("TimeoutSeconds")
        self._deadline = None if timeout is None else self._clock() + float(timeout) - max(0.0, elapsed_seconds)
        return self._run_machine(self._definition, _json_copy(execution_input))

    # --- checking the document --------------------------------------------------------------------

    def _check_machine(self, machine: Mapping[str, Any], *, top_level: bool) -> None:
        allowed = {"StartAt", "States", "Comment"} | ({"TimeoutSeconds"} if top_level else {"ProcessorConfig"})
        extra = set(machine) - allowed
        if extra:
            raise AslUnsupported(f"unsupported state machine fields: {sorted(extra)}")
        timeout = machine.get("TimeoutSeconds", 1)
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            raise AslUnsupported("TimeoutSeconds must be a positive integer")
        if not top_level and machine.get("ProcessorConfig", {"Mode": "INLINE"}) != {"Mode": "INLINE"}:
            raise AslUnsupported("only INLINE Map processors are interpreted")
        states = machine.get("States")
        if not isinstance(states, dict) or machine.get("StartAt") not in states:
            raise AslUnsupported("StartAt must name one of States")
        for name, state in states.items():
            self._check_state(name, state, states)

    def _check_state(self, name: str, state: Mapping[str, Any], states: Mapping[str, Any]) -> None:
        kind = state.get("Type")
        if kind not in _ALLOWED_FIELDS:
            raise AslUnsupported(f"state {name}: type {kind!r} is not interpreted")
        extra = set(state) - _ALLOWED_FIELDS[kind]
        if extra:
            raise AslUnsupported(f"state {name}: unsupported fields {sorted(extra)}")
        if kind not in ("Succeed", "Fail") and bool(state.get("End")) == ("Next" in state):
            raise AslUnsupported(f"state {name}: exactly one of Next and End")
        if "Next" in state and state["Next"] not in states:
            raise AslUnsupported(f"state {name}: Next names no state")
        for field in ("ItemsPath", "MaxConcurrencyPath", "ResultPath"):
            if field in state:
                _check_path(state[field], f"state {name}: {field}")
        if "Parameters" in state:
            _check_parameters(state["Parameters"], f"state {name}")
        if kind == "Task" and state.get("Resource") not in self._handlers:
            raise AslUnsupported(f"state {name}: no local handler for {state.get('Resource')!r}")
        for retrier in state.get("Retry", ()):
            if set(retrier) - _RETRY_FIELDS or "ErrorEquals" not in retrier:
                raise AslUnsupported(f"state {name}: unsupported Retry fields")
        for catcher in state.get("Catch", ()):
            if set(catcher) - _CATCH_FIELDS or catcher.get("Next") not in states:
                raise AslUnsupported(f"state {name}: unsupported Catch")
            _check_path(catcher.get("ResultPath", "$"), f"state {name}: Catch ResultPath")
        if kind == "Map":
            self._check_machine(state["ItemProcessor"], top_level=False)

    # --- running ----------------------------------------------------------------------------------

    def _run_machine(self, machine: Mapping[str, Any], data: Any) -> Any:
        name = machine["StartAt"]
        while True:
            if self._should_stop is not None and self._should_stop():
                raise ExecutionStopped(f"stopped before state {name}")
            if self._deadline is not None and self._clock() >= self._deadline:
                raise ExecutionFailed("States.Timeout", f"the execution ran past its TimeoutSeconds (state {name})")
            state = machine["States"][name]
            kind = state["Type"]
            if kind == "Succeed":
                return data
            if kind == "Fail":
                raise ExecutionFailed(str(state.get("Error", "States.Fail")), str(state.get("Cause", "")))
            if kind == "Pass":
                result = _parameters(state["Parameters"], data) if "Parameters" in state else state.get("Result", data)
                data = _apply_result(data, result, state.get("ResultPath", "$"))
                following = state.get("Next")
            else:
                data, following = self._run_with_retries(name, state, data)
            if following is None:
                return data
            name = following

    def _run_with_retries(self, name: str, state: Mapping[str, Any], data: Any) -> tuple[Any, str | None]:
        attempts: dict[int, int] = {}
        while True:
            try:
                effective = _parameters(state["Parameters"], data) if "Parameters" in state else data
                result = self._task(state, effective) if state["Type"] == "Task" else self._map(state, effective)
                return _apply_result(data, result, state.get("ResultPath", "$")), state.get("Next")
            except ExecutionStopped:
                raise  # an interruption, not a task error: no Retry or Catch applies
            except Exception as failure:  # noqa: BLE001 - any handler exception is a task error, as in Lambda
                error, cause = _error_of(failure)
            delay = _retry_delay(state.get("Retry", ()), error, attempts)
            if delay is not None:
                self._sleep(delay)
                continue
            for catcher in state.get("Catch", ()):
                if _matches(catcher["ErrorEquals"], error):
                    caught = _apply_result(data, {"Error": error, "Cause": cause}, catcher.get("ResultPath", "$"))
                    return caught, catcher["Next"]
            raise ExecutionFailed(error, cause)

    def _task(self, state: Mapping[str, Any], payload: Any) -> Any:
        return _json_copy(self._handlers[state["Resource"]](_json_copy(payload)))

    def _map(self, state: Mapping[str, Any], data: Any) -> list[Any]:
        items = _read_path(data, state.get("ItemsPath", "$"))
        if not isinstance(items, list):
            raise ExecutionFailed("States.Runtime", "the Map's ItemsPath does not select an array")
        limit = int(_read_path(data, state["MaxConcurrencyPath"]) if "MaxConcurrencyPath" in state
                    else state.get("MaxConcurrency", 0))
        processor = state["ItemProcessor"]
        done = 0
        lock = threading.Lock()
        if self._on_progress is not None:
            self._on_progress(0, len(items))

        def iteration(item: Any) -> Any:
            nonlocal done
            output = self._run_machine(processor, _json_copy(item))
            with lock:
                done += 1
                if self._on_progress is not None:
                    self._on_progress(done, len(items))
            return output

        if not items:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(limit or len(items), len(items))),
                                thread_name_prefix="asl-map") as pool:
            return list(pool.map(iteration, items))


def _retry_delay(retriers: list[dict[str, Any]], error: str, attempts: dict[int, int]) -> float | None:
    """The wait before the next attempt, or None when the first retrier matching `error` is spent (or none does)."""
    for number, retrier in enumerate(retriers):
        if _matches(retrier["ErrorEquals"], error):
            done = attempts.get(number, 0)
            if done >= int(retrier.get("MaxAttempts", 3)):
                return None
            attempts[number] = done + 1
            return float(retrier.get("IntervalSeconds", 1)) * float(retrier.get("BackoffRate", 2.0)) ** done
    return None


def _error_of(failure: Exception) -> tuple[str, str]:
    if isinstance(failure, ExecutionFailed):
        return failure.error, failure.cause
    return type(failure).__name__, str(failure)


def _matches(names: list[str], error: str) -> bool:
    return "States.ALL" in names or error in names or (
        "States.TaskFailed" in names and not error.startswith("States."))


def _check_path(path: Any, where: str) -> None:
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise AslUnsupported(f"{where}: only reference paths like $.a.b are interpreted, not {path!r}")


def _check_parameters(template: Any, where: str) -> None:
    if isinstance(template, dict):
        for key, value in template.items():
            if key.endswith(".$"):
                _check_path(value, f"{where}: {key}")
            else:
                _check_parameters(value, where)
    elif isinstance(template, list):
        for value in template:
            _check_parameters(value, where)


def _parameters(template: Any, data: Any) -> Any:
    if isinstance(template, dict):
        return {(key[:-2] if key.endswith(".$") else key):
                (_read_path(data, value) if key.endswith(".$") else _parameters(value, data))
                for key, value in template.items()}
    if isinstance(template, list):
        return [_parameters(value, data) for value in template]
    return template


def _read_path(data: Any, path: str) -> Any:
    value = data
    for part in path.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            raise ExecutionFailed("States.Runtime", f"the path {path} selects nothing in the state's input")
        value = value[part]
    return value


def _apply_result(data: Any, result: Any, path: str) -> Any:
    parts = path.split(".")[1:]
    if not parts:
        return result
    output = copy.deepcopy(data) if isinstance(data, dict) else {}
    target = output
    for part in parts[:-1]:
        nested = target.get(part)
        target[part] = nested = nested if isinstance(nested, dict) else {}
        target = nested
    target[parts[-1]] = result
    return output


def _json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))
