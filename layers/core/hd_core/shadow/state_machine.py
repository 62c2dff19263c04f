"""The one Amazon States Language definition of a shadow replay.

Step Functions runs it in AWS (the CDK construct renders it with the Lambdas' ARNs) and
`asl_local` interprets the same document in `hd dev` with the same handlers, so the flow is
written once:

    Prepare -> ReplayBatches (Map over batches, each: ReplayBatch, retried, caught as an error
    record) -> WriteReport

A top-level state that still fails after its retries is caught and goes to EndReplay (the same
clean-up WriteReport ends with, and a report that says why), then to ReplayFailed, so the execution
still ends FAILED and the deployment's alarm sees it. What no Catch can see (the machine's
TimeoutSeconds, StopExecution, EndReplay failing itself) ends the execution TIMED_OUT, ABORTED or
FAILED; in AWS an EventBridge rule on those statuses invokes the same EndReplay function, and
`hd dev`'s executions call it when a local run ends so. Ending a replay is idempotent.

The execution input (`ExecutionInput`) never holds a password: the comparison database is named
by `comparison_secret_arn` (Secrets Manager) or, locally, `comparison_secret_id` (the local secret
store). Prepare stores the replay's plan (which statements go in which batch) under the replay id,
so a Map item is only `{replay_id, batch}` and the state payloads stay small whatever the query
set's size. A batch that still fails after its retries becomes `{batch, status: "error", ...}` in
the Map's result; WriteReport reports its statements as errors and the run completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

PREPARE = "Prepare"
REPLAY_BATCH = "ReplayBatch"
WRITE_REPORT = "WriteReport"
END_REPLAY = "EndReplay"
FUNCTIONS = (PREPARE, REPLAY_BATCH, WRITE_REPORT, END_REPLAY)
"""Logical names of the Lambdas the definition calls; `definition()` maps each to an ARN/name."""

BATCH_FAILED = "BatchFailed"
REPLAY_BATCHES = "ReplayBatches"
DONE = "Done"
REPLAY_FAILED = "ReplayFailed"
REPLAY_FAILED_ERROR = "HD.ShadowReplayFailed"
# The execution statuses that end a replay without WriteReport (Step Functions' "Execution Status Change").
UNFINISHED_STATUSES = ("FAILED", "TIMED_OUT", "ABORTED")

RETRY_INTERVAL_SECONDS = 1
RETRY_MAX_ATTEMPTS = 2
RETRY_BACKOFF_RATE = 2.0
MAX_CONCURRENCY = 40
# A replay that has not finished in a day has stopped making progress: Step Functions ends it as
# TIMED_OUT (the deployment alarms on it) instead of letting it hold its key and secrets for a year.
EXECUTION_TIMEOUT_SECONDS = 86_400
"""Upper bound the API accepts for `concurrency` (the Map's MaxConcurrencyPath reads the input)."""


class ExecutionInput(TypedDict, total=False):
    """What StartExecution (or the local interpreter) is given; no password, ever."""

    replay_id: str
    environment: str
    query_set_id: str
    comparison_secret_arn: str
    comparison_secret_id: str
    sample_rate: float
    timeout_seconds: float
    concurrency: int


def _retry() -> list[dict[str, Any]]:
    return [
        {
            "ErrorEquals": ["States.ALL"],
            "IntervalSeconds": RETRY_INTERVAL_SECONDS,
            "MaxAttempts": RETRY_MAX_ATTEMPTS,
            "BackoffRate": RETRY_BACKOFF_RATE,
        }
    ]


def _to_end_replay() -> list[dict[str, Any]]:
    """A top-level state's failure, after its retries, ends the replay (its Error and Cause in $.failure)."""
    return [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": END_REPLAY}]


def definition(functions: Mapping[str, str]) -> dict[str, Any]:
    """The state machine for a shadow replay, calling `functions[name]` for each of FUNCTIONS."""
    missing = [name for name in FUNCTIONS if name not in functions]
    if missing:
        raise ValueError(f"no function given for {', '.join(missing)}")
    return {
        "Comment": "Hardened Duck shadow replay: a query set on the comparison PostgreSQL and the engine",
        "StartAt": PREPARE,
        "TimeoutSeconds": EXECUTION_TIMEOUT_SECONDS,
        "States": {
            PREPARE: {
                "Type": "Task",
                "Resource": functions[PREPARE],
                "ResultPath": "$.prepared",
                "Retry": _retry(),
                "Catch": _to_end_replay(),
                "Next": REPLAY_BATCHES,
            },
            REPLAY_BATCHES: {
                "Type": "Map",
                "ItemsPath": "$.prepared.batches",
                "MaxConcurrencyPath": "$.concurrency",
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": REPLAY_BATCH,
                    "States": {
                        REPLAY_BATCH: {
                            "Type": "Task",
                            "Resource": functions[REPLAY_BATCH],
                            "Retry": _retry(),
                            "Catch": [
                                {
                                    "ErrorEquals": ["States.ALL"],
                                    "ResultPath": "$.failure",
                                    "Next": BATCH_FAILED,
                                }
                            ],
                            "End": True,
                        },
                        BATCH_FAILED: {
                            "Type": "Pass",
                            "Parameters": {
                                "replay_id.$": "$.replay_id",
                                "batch.$": "$.batch",
                                "status": "error",
                                "error.$": "$.failure.Error",
                            },
                            "End": True,
                        },
                    },
                },
                "ResultPath": "$.batch_results",
                "Catch": _to_end_replay(),
                "Next": WRITE_REPORT,
            },
            WRITE_REPORT: {
                "Type": "Task",
                "Resource": functions[WRITE_REPORT],
                "Parameters": {
                    "replay_id.$": "$.replay_id",
                    "batch_results.$": "$.batch_results",
                },
                "ResultPath": "$.report",
                "Retry": _retry(),
                "Catch": _to_end_replay(),
                "Next": DONE,
            },
            DONE: {"Type": "Succeed"},
            END_REPLAY: {
                "Type": "Task",
                "Resource": functions[END_REPLAY],
                "Parameters": {
                    "replay_id.$": "$.replay_id",
                    "status": "FAILED",
                    "error.$": "$.failure.Error",
                },
                "ResultPath": "$.ended",
                "Retry": _retry(),
                "Next": REPLAY_FAILED,
            },
            REPLAY_FAILED: {
                "Type": "Fail",
                "Error": REPLAY_FAILED_ERROR,
                "Cause": "a state of the replay failed after its retries; its report says which error",
            },
        },
    }
