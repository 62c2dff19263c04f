"""A shadow replay: the logic of the state machine's Lambdas and of the API that starts one.

The flow is `state_machine.definition()`; each of its Tasks calls one function here with the state's
input and the deployment's `ReplayServices`:

- `prepare`: read the replay's record and query set, pick the sampled statements and cut them into
  batches (`plan.json`, kept if there already is one); the Map gets only `{replay_id, batch}` per batch.
- `replay_batch`: each statement of the batch runs on the comparison PostgreSQL inside `BEGIN READ
  ONLY` with `SET LOCAL statement_timeout` (a server-side cursor, read `BATCH_ROWS` at a time), and
  on the engine host over the Postgres wire as the replay's ServiceAccount key, so the engine's
  governance and audit apply (rows streamed). Both sides are digested in this one process (a digest
  holds raw sample rows and is never stored), compared and timed; only the redacted comparison is
  stored, as `batches/<n>.json` in one write; a batch already stored is not run again (a retried or
  resumed execution), so each statement of a replay runs once per side however often its batch is called.
- `write_report`: the report from the plan and the batch results; a batch missing from them (it
  failed after its retries: the Map's Catch recorded it) reports its statements as `error`. Then, whether
  the report was stored or not, the replay is over: the secrets it created are deleted and its
  ServiceAccount key is revoked (an API_KEY_REVOKED IAM event); see `_release_secrets`.
- `end_replay`: a replay that will not reach WriteReport (a state failed after its retries: the
  definition's Catch; the execution timed out, was stopped or failed otherwise: `execution_ended`
  from the EventBridge rule in AWS, `hd dev`'s executions locally) ends the same way, with a report
  that keeps what was replayed and says why (`ended`). Idempotent.

Nothing raw leaves `replay_batch`: rows in a mismatch are rendered with the engine's mask rules where
`sample_masks` traces a result column to a base column (`hd_core.shadow.sample_masks`), and otherwise
through `redact_all` (NULL-ness and type only), so no raw value of a masked, PII or PHI column reaches a
stored artefact; error
messages are redacted by `compare`. The comparison DSN and the engine key live only in the secret
store (Secrets Manager, or sealed files locally); the execution input, the record and every
artefact hold secret references. Storage, secrets and starting an execution go through the small
ports below (`hd_core.adapters.local_shadow`, `hd_core.adapters.aws_shadow`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import re
import secrets as random_tokens
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hd_core import directory, key_admin
from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher
from hd_core.errors import Conflict, HdError, InvalidRequest, NotFound
from hd_core.iam_audit import IamAuditTrail
from hd_core.models import ChangeContext, Environment, Principal, Role, UserStatus, utc_now
from hd_core.ports import ControlStore
from hd_core.shadow import state_machine
from hd_core.shadow.compare import (
    UNORDERED,
    CompareOptions,
    Comparison,
    ErrorReport,
    Ordering,
    ResultColumns,
    ResultDigest,
    SideError,
    SideResult,
    compare_digests,
    digest_result,
    redact_all,
    result_order,
)
from hd_core.shadow.query_set import QuerySet, UploadFormat, parse_query_set
from hd_core.shadow.report import ReplayEnding, ShadowReport, StatementResult, build_report
from hd_core.shadow.sample_masks import MaskingSource, ReplayMasking
from hd_core.shadow.state_machine import UNFINISHED_STATUSES, ExecutionInput
from hd_core.text_redaction import redact_error_message

if TYPE_CHECKING:  # psycopg is imported where a replay runs: `hd dev` starts without it (it is not a base dependency)
    import psycopg

log = logging.getLogger(__name__)

BATCH_ROWS = 1000
MAX_BATCH_STATEMENTS = 25
BATCH_SECONDS_BUDGET = 600  # a batch must end well inside a Lambda's 15 minutes, each statement taking 2 timeouts
ENGINE_KEY_LIFETIME = timedelta(hours=24)
SERVICE_ACCOUNT_NAME = "Shadow replay"
ExecutionStatus = Literal["RUNNING", "SUCCEEDED", "FAILED"]
SECRET_PREFIX = "hd/shadow/"  # noqa: S105 - a name prefix, not a secret; cdk's SHADOW_SECRET_PREFIX, the one IAM grants
_ID_RE = re.compile(r"^(qs|rp)_[0-9a-f]{16,64}$")
_ERROR_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.]{0,79}$")  # Step Functions' error names: States.Timeout, ...


class ShadowArtefacts(Protocol):
    """JSON documents of query sets, replays and reports (the S3 data bucket, or the state folder)."""

    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        """Store `document` under `key`, replacing what was there."""

    def get_json(self, key: str) -> dict[str, Any] | None:
        """The document under `key`, or None."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, sorted."""


class ShadowSecrets(Protocol):
    """Where a replay's secrets live (Secrets Manager, or sealed files locally); callers keep references only."""

    def put_secret(self, name: str, value: str) -> str:
        """Store `value`; returns the reference (an ARN, or a local secret id)."""

    def get_secret(self, reference: str) -> str:
        """The value behind `reference`; raises `NotFound`."""

    def delete_secret(self, reference: str) -> None:
        """Delete the secret behind `reference` (Secrets Manager: after its recovery window); gone already is fine."""


class ReplayExecutions(Protocol):
    """Starts the state machine (Step Functions, or the local interpreter) and reports how it is doing."""

    def start(self, replay_id: str, execution_input: ExecutionInput) -> str:
        """Start an execution named after the replay; returns its id (an ARN locally too is not required)."""

    def status(self, execution_id: str) -> ExecutionStatus:
        """RUNNING, SUCCEEDED or FAILED."""


class ReplayKeyRevoker(Protocol):
    """Revokes a replay's ServiceAccount key when the replay ends (where its task functions reach the control store)."""

    def __call__(self, replay_id: str, org_id: str, key_id: str) -> None:
        """Revoke `key_id` of `org_id` (already revoked is fine)."""


def control_key_revoker(store: ControlStore, trail: IamAuditTrail,
                        authenticator: ApiKeyAuthenticator | None) -> ReplayKeyRevoker:
    """A `ReplayKeyRevoker` through `key_admin.revoke_key`, the API's path (API_KEY_REVOKED, the cache forgotten).

    The actor is the key's own ServiceAccount (a user may always revoke their own key), under request id
    `shadow-replay-<id>`, so the IAM event says which replay ended it. Only the key `start_replay` issued for
    that replay is revoked (its name says so): a record naming any other key (a replay's documents are
    writable by every replay function) raises `ReplayKeyMismatch` and revokes nothing.
    """

    def revoke(replay_id: str, org_id: str, key_id: str) -> None:
        key = store.get_api_key(key_id)
        if key is None or key.org_id != org_id or key.name != _engine_key_name(replay_id):
            raise ReplayKeyMismatch(f"replay {replay_id} names a key that is not the one issued for it")
        if key.revoked_at is not None:
            return
        actor = Principal(user_id=key.user_id, org_id=org_id, role=Role.SERVICE_ACCOUNT, key_id=key_id,
                          env=key.env, scopes=tuple(key.scopes), department=None, region=None)
        key_admin.revoke_key(store, trail, ChangeContext(actor, f"shadow-replay-{replay_id}"), org_id, key_id,
                             authenticator=authenticator)

    return revoke


class ReplayKeyMismatch(Exception):
    """A replay's record names a key other than the one issued for that replay: nothing is revoked."""


def _engine_key_name(replay_id: str) -> str:
    return f"shadow replay {replay_id}"


@dataclass(frozen=True)
class EngineEndpoint:
    """Where the replay reaches the engine host over the Postgres wire."""

    host: str
    port: int
    dbname: str = "hd"
    sslmode: str = "require"
    sslrootcert: str | None = None


@dataclass(frozen=True)
class ReplayServices:
    """What the replay's functions need; chosen in one place per deployment."""

    artefacts: ShadowArtefacts
    secrets: ShadowSecrets
    engine: EngineEndpoint
    executions: ReplayExecutions | None = None  # only the API starts executions
    # How WriteReport revokes the replay's key (`control_key_revoker`: `hd dev`, and WriteReport's Lambda in AWS).
    revoke_key: ReplayKeyRevoker | None = None
    # How ReplayBatch masks the rows a mismatch shows (`sample_masks.control_masking`: `hd dev`, and ReplayBatch's
    # Lambda with HD_SHADOW_SAMPLE_MASKS); without it every value is redacted to its type and NULL-ness.
    sample_masks: MaskingSource | None = None


class ComparisonDsnInvalid(InvalidRequest):
    """The comparison DSN does not parse as a libpq connection string or URI."""

    code = "HD_ERR_COMPARISON_DSN_INVALID"


class ComparisonSecretOutsidePrefix(InvalidRequest):
    """A `comparison_secret_arn` names a secret outside `hd/shadow/`, which no replay role may read."""

    code = "HD_ERR_COMPARISON_SECRET_OUTSIDE_PREFIX"


class QuerySetEmpty(Conflict):
    """The query set kept no statement (each was rejected at upload): the state of the set, not the request."""

    code = "HD_ERR_QUERY_SET_EMPTY"


class ReplayClientMissing(HdError):
    """This installation has no PostgreSQL client library to replay with."""

    code = "HD_ERR_SHADOW_UNAVAILABLE"


def _require_client() -> None:
    if importlib.util.find_spec("psycopg") is None:
        raise ReplayClientMissing("shadow replay needs the psycopg package: pip install 'psycopg[binary]'")


class ReplayBatchFailed(Exception):
    """A batch could not run (a side unreachable, its results not stored): the state machine retries it."""


# --- storage keys ---------------------------------------------------------------------------------


def _checked_id(value: str, what: str) -> str:
    if not _ID_RE.match(value):
        raise NotFound(f"{what} not found")
    return value


def query_set_key(env_id: str, query_set_id: str) -> str:
    return f"shadow/{env_id}/query-sets/{_checked_id(query_set_id, 'query set')}.json"


def replay_prefix(replay_id: str) -> str:
    return f"shadow/replays/{_checked_id(replay_id, 'replay')}/"


def _batch_key(replay_id: str, batch: int) -> str:
    return f"{replay_prefix(replay_id)}batches/{batch:06d}.json"


# --- the API's side: upload, start, status, report ------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    """What a replay request may choose."""

    sample_rate: float = 1.0
    timeout_seconds: float = 60.0
    concurrency: int = 4
    search_path: str | None = None  # the engine session's; the comparison database's comes from its DSN


def upload_query_set(services: ReplayServices, env: Environment, data: bytes,
                     source_format: UploadFormat | None) -> QuerySet:
    """Parse an upload and store it as the environment's query set (same bytes, same id)."""
    query_set = parse_query_set(data, source_format=source_format)
    services.artefacts.put_json(query_set_key(env.env_id, query_set.id),
                                {**query_set.to_dict(), "environment": env.env_id, "org_id": env.org_id})
    return query_set


def start_replay(services: ReplayServices, store: ControlStore, trail: IamAuditTrail, hasher: ApiKeyHasher,
                 ctx: ChangeContext, env: Environment, query_set_id: str, *, comparison_dsn: str | None,
                 comparison_secret_arn: str | None, options: ReplayOptions) -> str:
    """Record a replay, issue its ServiceAccount key, store the secrets and start the execution; returns its id."""
    if services.executions is None:
        raise RuntimeError("these replay services cannot start executions")
    _require_client()
    if (comparison_dsn is None) == (comparison_secret_arn is None):
        raise InvalidRequest("give exactly one of comparison_dsn and comparison_secret_arn")
    if comparison_secret_arn is not None:
        _check_secret_arn(comparison_secret_arn)
    document = services.artefacts.get_json(query_set_key(env.env_id, query_set_id))
    if document is None:
        raise NotFound("query set not found")
    if not document["statements"]:
        raise QuerySetEmpty("every statement of this query set was rejected at upload: there is nothing to replay")
    replay_id = "rp_" + random_tokens.token_hex(16)
    if comparison_dsn is not None:
        _check_dsn(comparison_dsn)
        comparison_ref = services.secrets.put_secret(f"hd/shadow/{replay_id}/comparison", comparison_dsn)
    else:
        assert comparison_secret_arn is not None
        comparison_ref = comparison_secret_arn
    user_id = _service_account(store, trail, ctx, env.org_id)
    key, record = key_admin.create_key(
        store, trail, ctx, hasher, org_id=env.org_id, user_id=user_id, env=env.key_env, scopes=["read_only"],
        name=_engine_key_name(replay_id), expires_at=utc_now() + ENGINE_KEY_LIFETIME)
    engine_ref = services.secrets.put_secret(f"hd/shadow/{replay_id}/engine-key", key)
    # The secrets this replay created, deleted when it ends; a customer's own secret (by ARN) is not one of them.
    owned = [engine_ref] if comparison_dsn is None else [comparison_ref, engine_ref]
    services.artefacts.put_json(f"{replay_prefix(replay_id)}replay.json", {
        "replay_id": replay_id, "environment": env.env_id, "org_id": env.org_id, "query_set_id": query_set_id,
        "comparison_secret": comparison_ref, "engine_key_secret": engine_ref, "engine_user": user_id,
        "engine_key_id": record.key_id, "owned_secrets": owned, "sample_rate": options.sample_rate,
        "timeout_seconds": options.timeout_seconds, "concurrency": options.concurrency,
        "search_path": options.search_path, "started_by": ctx.actor.user_id, "started_at": utc_now().isoformat(),
    })
    execution_input: ExecutionInput = {
        "replay_id": replay_id, "environment": env.env_id, "query_set_id": query_set_id,
        "sample_rate": options.sample_rate, "timeout_seconds": options.timeout_seconds,
        "concurrency": options.concurrency,
    }
    if comparison_ref.startswith("arn:"):
        execution_input["comparison_secret_arn"] = comparison_ref
    else:
        execution_input["comparison_secret_id"] = comparison_ref
    execution_id = services.executions.start(replay_id, execution_input)
    record_doc = services.artefacts.get_json(f"{replay_prefix(replay_id)}replay.json") or {}
    services.artefacts.put_json(f"{replay_prefix(replay_id)}replay.json", {**record_doc, "execution": execution_id})
    return replay_id


def _check_dsn(dsn: str) -> None:
    import psycopg

    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # The parser's message may quote the DSN, password included: none of it goes back.
        raise ComparisonDsnInvalid("comparison_dsn is not a PostgreSQL connection string or URI") from None


def _check_secret_arn(arn: str) -> None:
    """Refuse, before anything starts, a secret ReplayBatch could not read: its name must be under `hd/shadow/`."""
    parts = arn.split(":", 6)
    named = len(parts) == 7 and parts[2] == "secretsmanager" and parts[5] == "secret"
    if not named or not parts[6].startswith(SECRET_PREFIX):
        raise ComparisonSecretOutsidePrefix(
            f"comparison_secret_arn must name a Secrets Manager secret whose name starts with {SECRET_PREFIX} "
            f"(the only secrets a replay may read): store the DSN under that prefix, encrypted with the "
            f"deployment's data key, or pass comparison_dsn instead")
    if parts[6].startswith(f"{SECRET_PREFIX}rp_"):
        # hd/shadow/rp_<id>/... are the secrets replays create for themselves (another organisation's among them).
        raise ComparisonSecretOutsidePrefix(
            f"comparison_secret_arn names a secret a replay created for itself ({SECRET_PREFIX}rp_...): store "
            f"your DSN under another name below {SECRET_PREFIX}, or pass comparison_dsn instead")


def _service_account(store: ControlStore, trail: IamAuditTrail, ctx: ChangeContext, org_id: str) -> str:
    """The organisation's shadow-replay ServiceAccount, invited on first use."""
    email = f"shadow-replay@{org_id.replace('_', '-')}.hd.invalid"
    user = store.get_user_by_email(email)
    if user is None:
        try:
            user = directory.invite_user(store, trail, ctx, org_id, email, Role.SERVICE_ACCOUNT,
                                         name=SERVICE_ACCOUNT_NAME)
        except Conflict:  # another replay invited it meanwhile
            user = store.get_user_by_email(email)
    if user is None or user.org_id != org_id or user.role is not Role.SERVICE_ACCOUNT:
        raise Conflict(f"{email} is taken by a user that is not this organisation's shadow-replay ServiceAccount")
    if user.status != UserStatus.ACTIVE:
        raise Conflict("the shadow-replay ServiceAccount is not active; reactivate it to replay")
    return user.user_id


def replay_record(services: ReplayServices, env: Environment, replay_id: str) -> dict[str, Any]:
    """The replay's record, if it belongs to `env` (else `NotFound`, as for an unknown id)."""
    record = services.artefacts.get_json(f"{replay_prefix(replay_id)}replay.json")
    if record is None or record.get("environment") != env.env_id or record.get("org_id") != env.org_id:
        raise NotFound("replay not found")
    return record


@dataclass(frozen=True)
class ReplayProgress:
    """A replay's state and how many of its planned batches have stored results (totals None before Prepare)."""

    replay_id: str
    status: str  # RUNNING, SUCCEEDED, FAILED
    batches_done: int
    batches_total: int | None
    statements_total: int | None


def replay_progress(services: ReplayServices, env: Environment, replay_id: str) -> ReplayProgress:
    """How far a replay got: batches with stored results over the plan's batches."""
    record = replay_record(services, env, replay_id)
    plan = services.artefacts.get_json(f"{replay_prefix(replay_id)}plan.json")
    done = len(services.artefacts.list_keys(f"{replay_prefix(replay_id)}batches/"))
    status: str = "RUNNING"
    report = services.artefacts.get_json(f"{replay_prefix(replay_id)}report.json")
    if report is not None:
        status = "FAILED" if report.get("ended") else "SUCCEEDED"
    elif services.executions is not None and record.get("execution"):
        status = services.executions.status(record["execution"])
    return ReplayProgress(replay_id, status, done, None if plan is None else len(plan["batches"]),
                          None if plan is None else sum(len(b) for b in plan["batches"]))


def read_report(services: ReplayServices, env: Environment, replay_id: str) -> ShadowReport:
    """The replay's report; `NotFound` until WriteReport wrote it."""
    replay_record(services, env, replay_id)
    document = services.artefacts.get_json(f"{replay_prefix(replay_id)}report.json")
    if document is None:
        raise NotFound("the replay has no report yet")
    return report_from_dict(document)


# --- the state machine's tasks --------------------------------------------------------------------


def prepare(event: Mapping[str, Any], services: ReplayServices) -> dict[str, Any]:
    """Prepare: the plan (sampled statements in batches), stored; returns the Map's items."""
    replay_id = str(event["replay_id"])
    record = _record(services, replay_id)
    plan = services.artefacts.get_json(f"{replay_prefix(replay_id)}plan.json")
    if plan is None:  # else a resumed or retried execution: the batches already stored keep their numbers
        query_set = _query_set(services, record)
        rate = float(record["sample_rate"])
        chosen = [s.index for s in query_set.statements if _sampled(replay_id, s.index, rate)]
        size = batch_size(float(record["timeout_seconds"]))
        plan = {"batches": [chosen[i:i + size] for i in range(0, len(chosen), size)], "batch_size": size}
        services.artefacts.put_json(f"{replay_prefix(replay_id)}plan.json", plan)
    batches = plan["batches"]
    return {"batches": [{"replay_id": replay_id, "batch": n} for n in range(len(batches))],
            "statement_count": sum(len(batch) for batch in batches)}


def batch_size(timeout_seconds: float) -> int:
    """Statements per batch: as many as fit the batch's time budget with both sides at their timeout."""
    return max(1, min(MAX_BATCH_STATEMENTS, int(BATCH_SECONDS_BUDGET // (2 * max(timeout_seconds, 0.001)))))


def _sampled(replay_id: str, index: int, rate: float) -> bool:
    if rate >= 1:
        return True
    digest = hashlib.blake2b(f"{replay_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def replay_batch(event: Mapping[str, Any], services: ReplayServices) -> dict[str, Any]:
    """ReplayBatch: run, digest, compare and time each statement of one batch; store the redacted results."""
    replay_id = str(event["replay_id"])
    batch = int(event["batch"])
    record = _record(services, replay_id)
    plan = services.artefacts.get_json(f"{replay_prefix(replay_id)}plan.json")
    if plan is None or not 0 <= batch < len(plan["batches"]):
        raise ReplayBatchFailed(f"replay {replay_id} has no batch {batch}")
    done = services.artefacts.get_json(_batch_key(replay_id, batch))
    if done is not None:
        # Stored whole or not at all: a resumed execution (or a retry after the store) replays nothing twice,
        # and needs no secret, which WriteReport may have deleted already.
        return {"replay_id": replay_id, "batch": batch, "status": "done", "statements": len(done["results"])}
    statements = {s.index: s for s in _query_set(services, record).statements}
    dsn = _comparison_dsn(services.secrets.get_secret(record["comparison_secret"]))
    key = services.secrets.get_secret(record["engine_key_secret"])
    timeout = float(record["timeout_seconds"])
    masking = services.sample_masks(record) if services.sample_masks is not None else None
    results = []
    with _reference_connection(dsn) as reference, _engine_connection(services.engine, record, key, timeout) as engine:
        for index in plan["batches"][batch]:
            statement = statements[index]
            comparison, reference_ms, engine_ms = replay_statement(
                reference, engine, statement.sql, statement.params, timeout, masking=masking)
            results.append({"index": index, "comparison": comparison.to_dict(),
                            "reference_ms": reference_ms, "engine_ms": engine_ms})
    services.artefacts.put_json(_batch_key(replay_id, batch), {"batch": batch, "results": results})
    return {"replay_id": replay_id, "batch": batch, "status": "done", "statements": len(results)}


def write_report(event: Mapping[str, Any], services: ReplayServices) -> dict[str, Any]:
    """WriteReport: every planned statement's result, a failed batch's statements as errors; stored."""
    replay_id = str(event["replay_id"])
    record = _record(services, replay_id)
    plan = services.artefacts.get_json(f"{replay_prefix(replay_id)}plan.json")
    if plan is None:
        raise ReplayBatchFailed(f"replay {replay_id} has no plan")
    failures = {int(item["batch"]): str(item.get("error") or "unknown error")
                for item in event.get("batch_results") or () if item.get("status") == "error"}
    results = _statement_results(services, record, plan, lambda number: _batch_error(
        failures.get(number, "its results were not stored")), skip=set(failures))
    report = build_report(record["query_set_id"], results)
    document = report.to_dict()
    try:
        services.artefacts.put_json(f"{replay_prefix(replay_id)}report.json", document)
    finally:
        _release_secrets(services, record)
    return {"replay_id": replay_id, "query_count": document["query_count"],
            **{verdict: document[verdict] for verdict in ("exact", "semantic", "mismatch", "error")}}


def _statement_results(services: ReplayServices, record: Mapping[str, Any], plan: Mapping[str, Any],
                       missing: Callable[[int], Comparison], skip: set[int] | None = None) -> list[StatementResult]:
    """Each planned statement's stored result; a batch in `skip` or with no stored result gets `missing(batch)`."""
    replay_id = str(record["replay_id"])
    statements = {s.index: s for s in _query_set(services, record).statements}
    results: list[StatementResult] = []
    for number, indexes in enumerate(plan["batches"]):
        stored = None if number in (skip or ()) else services.artefacts.get_json(_batch_key(replay_id, number))
        if stored is None:
            comparison = missing(number)
            results += [StatementResult(i, statements[i].line, statements[i].sql, comparison, None, None)
                        for i in indexes]
            continue
        for item in stored["results"]:
            s = statements[item["index"]]
            results.append(StatementResult(s.index, s.line, s.sql, comparison_from_dict(item["comparison"]),
                                           item["reference_ms"], item["engine_ms"]))
    return results


def end_replay(event: Mapping[str, Any], services: ReplayServices) -> dict[str, Any]:
    """EndReplay: a replay that will not reach WriteReport (a state failed after its retries, the execution timed
    out, was stopped, or failed otherwise) still ends like one: its report, unless WriteReport stored one, holds
    the batches already replayed and the others as errors, and says why (`ended`); then its secrets are deleted
    and its key revoked exactly as WriteReport does (`_release_secrets`). Idempotent: the Catch path and the
    EventBridge rule (or `hd dev`'s executions) may both call it for the same run.

    `event`: `{replay_id, status (FAILED|TIMED_OUT|ABORTED), error}`; only the error's name is kept, never a
    cause's text (it could quote a statement's values)."""
    replay_id = str(event["replay_id"])
    status = str(event.get("status") or "FAILED")
    if status not in UNFINISHED_STATUSES:
        raise InvalidRequest(f"a replay ends early only as {', '.join(UNFINISHED_STATUSES)}, not {status!r}")
    ending = ReplayEnding(status, _error_name(event.get("error") or status))  # StopExecution may give none
    record = _record(services, replay_id)
    report_key = f"{replay_prefix(replay_id)}report.json"
    try:
        if services.artefacts.get_json(report_key) is None:
            plan = services.artefacts.get_json(f"{replay_prefix(replay_id)}plan.json") or {"batches": []}
            unreplayed = Comparison("error", False, None, None,
                                    notes=(f"not replayed: {ending.describe()}",))
            try:
                results = _statement_results(services, record, plan, lambda number: unreplayed)
            except ReplayBatchFailed:  # its query set is gone (what failed Prepare): no statement to list
                results = []
            services.artefacts.put_json(report_key, build_report(record["query_set_id"], results, ending).to_dict())
    finally:
        _release_secrets(services, record)
    return {"replay_id": replay_id, "status": ending.status, "error": ending.error}


class ReplayExecutionMismatch(Exception):
    """An execution-status event names an execution other than the one the replay's record started: nothing ends."""


def execution_ended(event: Mapping[str, Any], services: ReplayServices) -> dict[str, Any] | None:
    """The EventBridge side of `end_replay`: a Step Functions "Execution Status Change" event of the replay state
    machine. A status that does not end a replay early is ignored (None); an execution whose name is not a replay
    id, or that is not the execution the replay's record names, ends nothing (fail closed)."""
    detail = event.get("detail") or {}
    status = detail.get("status")
    if status not in UNFINISHED_STATUSES:
        return None
    replay_id = _checked_id(str(detail.get("name") or ""), "replay")
    record = _record(services, replay_id)
    if not detail.get("executionArn") or record.get("execution") != detail.get("executionArn"):
        raise ReplayExecutionMismatch(f"replay {replay_id} was not run by execution {detail.get('executionArn')}")
    return end_replay({"replay_id": replay_id, "status": status, "error": detail.get("error")}, services)


def _error_name(value: Any) -> str:
    text = str(value or "")
    return text if _ERROR_NAME_RE.match(text) else "unknown error"


def task_handlers(services: ReplayServices) -> dict[str, Callable[[Any], Any]]:
    """The definition's Task functions bound to `services`, keyed by `state_machine.FUNCTIONS` (the local
    interpreter's handlers; the Lambdas call the same functions)."""
    return {
        state_machine.PREPARE: lambda event: prepare(event, services),
        state_machine.REPLAY_BATCH: lambda event: replay_batch(event, services),
        state_machine.WRITE_REPORT: lambda event: write_report(event, services),
        state_machine.END_REPLAY: lambda event: end_replay(event, services),
    }


def _release_secrets(services: ReplayServices, record: Mapping[str, Any]) -> None:
    """The replay is over (its report written, or the write failed): delete the secrets it created and revoke
    its ServiceAccount key as the API would (`revoke_key`; services without one, Prepare's and ReplayBatch's,
    never end a replay).

    Each step is attempted; the first failure is raised after the rest were tried, so a retried WriteReport
    finishes the job (a secret already gone, a key already revoked, is no error). In AWS, WriteReport's role
    may do exactly this much of the control table: read and update API key items and append to IAM chains
    (cdk/hd_cdk/shadow.py), and `control_key_revoker` revokes only the key issued for this replay.
    """
    steps: list[Callable[[], None]] = [functools.partial(services.secrets.delete_secret, str(reference))
                                       for reference in record.get("owned_secrets") or ()]
    revoke = services.revoke_key
    if revoke is not None and record.get("engine_key_id"):
        steps.append(lambda: revoke(str(record["replay_id"]), str(record["org_id"]), str(record["engine_key_id"])))
    failure: Exception | None = None
    for step in steps:
        try:
            step()
        except Exception as error:  # noqa: BLE001 - each step is attempted; the first failure re-raised below
            log.warning("ending shadow replay %s: a clean-up step failed (%s)", record.get("replay_id"),
                        type(error).__name__)
            failure = failure or error
    if failure is not None:
        raise failure


def _batch_error(reason: str) -> Comparison:
    return Comparison("error", False, None, None,
                      notes=(f"the batch failed after its retries ({redact_error_message(reason)})",))


def _record(services: ReplayServices, replay_id: str) -> dict[str, Any]:
    record = services.artefacts.get_json(f"{replay_prefix(replay_id)}replay.json")
    if record is None:
        raise ReplayBatchFailed(f"replay {replay_id} has no record")
    return record


def _query_set(services: ReplayServices, record: Mapping[str, Any]) -> QuerySet:
    document = services.artefacts.get_json(query_set_key(record["environment"], record["query_set_id"]))
    if document is None:
        raise ReplayBatchFailed(f"query set {record['query_set_id']} is gone")
    return QuerySet.from_dict(document)


def _comparison_dsn(secret: str) -> str:
    """A DSN or URI as stored, or an RDS-style JSON secret ({host, port, username, password, dbname})."""
    import psycopg

    text = secret.strip()
    if not text.startswith("{"):
        return text
    fields = json.loads(text)
    params = {"host": fields.get("host"), "port": fields.get("port"), "user": fields.get("username"),
              "password": fields.get("password"), "dbname": fields.get("dbname") or fields.get("database")}
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


# --- running one statement on both sides ----------------------------------------------------------


class _Connection:
    """A context manager around a connection; a failure to connect is a `ReplayBatchFailed` without the DSN."""

    def __init__(self, side: str, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._side = side
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> psycopg.Connection[Any]:
        import psycopg

        try:
            self._conn = self._connect()
        except psycopg.Error as error:
            raise ReplayBatchFailed(f"the {self._side} could not be reached: "
                                    f"{redact_error_message(_first_line(error))}") from None
        return self._conn

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _reference_connection(dsn: str) -> _Connection:
    def connect() -> psycopg.Connection[Any]:
        import psycopg

        conn = psycopg.connect(dsn, connect_timeout=15)
        conn.read_only = True  # every transaction begins with BEGIN READ ONLY
        return conn

    return _Connection("comparison database", connect)


def _engine_connection(engine: EngineEndpoint, record: Mapping[str, Any], key: str, timeout: float) -> _Connection:
    def connect() -> psycopg.Connection[Any]:
        import psycopg
        from psycopg import sql as pgsql

        params: dict[str, Any] = {"host": engine.host, "port": engine.port, "dbname": engine.dbname,
                                  "user": record["engine_user"], "password": key, "sslmode": engine.sslmode,
                                  "connect_timeout": 15, "application_name": f"hd-shadow-{record['replay_id']}"}
        if engine.sslrootcert:
            params["sslrootcert"] = engine.sslrootcert
        conn = psycopg.connect(**params, autocommit=True)
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(pgsql.SQL("SET statement_timeout = {}").format(pgsql.Literal(f"{int(timeout * 1000)}ms")))
        if record.get("search_path"):
            conn.execute(pgsql.SQL("SET search_path = {}").format(
                pgsql.SQL(", ").join(pgsql.Identifier(p.strip()) for p in str(record["search_path"]).split(","))))
        return conn

    return _Connection("engine host", connect)


class _Clock:
    """Milliseconds spent executing a statement and reading its rows on one side."""

    def __init__(self) -> None:
        self.ms = 0.0

    def timed(self, fetch: Callable[[], list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
        started = time.perf_counter()
        try:
            return fetch()
        finally:
            self.ms += (time.perf_counter() - started) * 1000


def replay_statement(reference: psycopg.Connection[Any], engine: psycopg.Connection[Any], sql: str,
                     params: Sequence[Any], timeout_seconds: float, options: CompareOptions | None = None, *,
                     masking: ReplayMasking | None = None) -> tuple[Comparison, float, float]:
    """One statement on both sides, digested in turn (bounded memory) and compared: (comparison, ref ms, engine ms).
    The rows a mismatch shows are masked by `masking` (the engine's mask rules), else redacted."""
    options = options or CompareOptions()
    reference_clock, engine_clock = _Clock(), _Clock()
    decided: list[Ordering] = []  # fixed by the first side that answers, so both digests agree

    def ordering(names: Sequence[str]) -> Ordering:
        if not decided:
            decided.append(result_order(sql, names))
        return decided[0]

    reference_digest = _digest_reference(reference, sql, params, timeout_seconds, reference_clock, ordering, options)
    engine_digest = _digest_engine(engine, sql, params, engine_clock, ordering, options)
    final = decided[0] if decided else UNORDERED
    columns = reference_digest.columns or engine_digest.columns
    redact = redact_all if masking is None or columns is None else masking.for_statement(sql, columns.names)
    comparison = compare_digests(_with_ordering(reference_digest, final), _with_ordering(engine_digest, final),
                                 options=options, redact=redact)
    return comparison, reference_clock.ms, engine_clock.ms


def _with_ordering(digest: ResultDigest, ordering: Ordering) -> ResultDigest:
    if digest.ordering == ordering or digest.error is None:
        return digest
    return ResultDigest(columns=None, error=digest.error, ordering=ordering)


def _columns(cursor: psycopg.Cursor[Any]) -> ResultColumns:
    description = cursor.description or []
    return ResultColumns(tuple(c.name for c in description), tuple(c.type_code for c in description))


def _side_error(error: psycopg.Error) -> SideError:
    return SideError(error.sqlstate or "XX000", _first_line(error))


def _digest_reference(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any], timeout: float, clock: _Clock,
                      ordering: Callable[[Sequence[str]], Ordering], options: CompareOptions) -> ResultDigest:
    """The comparison database's result, read through a server-side cursor in a READ ONLY transaction."""
    import psycopg
    from psycopg import sql as pgsql

    try:
        conn.execute(pgsql.SQL("SET LOCAL statement_timeout = {}").format(pgsql.Literal(f"{int(timeout * 1000)}ms")))
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        cursor_class = psycopg.RawServerCursor if params else psycopg.ServerCursor
        with cursor_class(conn, "hd_shadow") as cursor:
            first = clock.timed(lambda: (cursor.execute(sql, tuple(params) or None), cursor.fetchmany(BATCH_ROWS))[1])
            columns = _columns(cursor)
            batches = _batches(first, lambda: cursor.fetchmany(BATCH_ROWS), clock)
            return digest_result(SideResult(columns, batches), ordering(columns.names), options)
    except psycopg.Error as error:
        return digest_result(_side_error(error), UNORDERED, options)
    finally:
        if not conn.closed:
            conn.rollback()


def _digest_engine(conn: psycopg.Connection[Any], sql: str, params: Sequence[Any], clock: _Clock,
                   ordering: Callable[[Sequence[str]], Ordering], options: CompareOptions) -> ResultDigest:
    """The engine's result, streamed row by row over the wire (the engine sees an ordinary client)."""
    import psycopg

    cursor = psycopg.RawCursor(conn) if params else conn.cursor()
    try:
        rows = cursor.stream(sql, tuple(params) or None)
        first = clock.timed(lambda: _take(rows, BATCH_ROWS))
        columns = _columns(cursor)
        batches = _batches(first, lambda: _take(rows, BATCH_ROWS), clock)
        return digest_result(SideResult(columns, batches), ordering(columns.names), options)
    except psycopg.Error as error:
        return digest_result(_side_error(error), UNORDERED, options)
    finally:
        cursor.close()


def _take(rows: Iterator[tuple[Any, ...]], count: int) -> list[tuple[Any, ...]]:
    taken = []
    for row in rows:
        taken.append(row)
        if len(taken) >= count:
            break
    return taken


def _batches(first: list[tuple[Any, ...]], fetch: Callable[[], list[tuple[Any, ...]]],
             clock: _Clock) -> Iterator[list[tuple[Any, ...]]]:
    batch = first
    while batch:
        yield batch
        if len(batch) < BATCH_ROWS:
            return
        batch = clock.timed(fetch)


# --- stored comparisons and reports ----------------------------------------------------------------


def comparison_from_dict(document: Mapping[str, Any]) -> Comparison:
    """The comparison `Comparison.to_dict` wrote."""
    return Comparison(
        verdict=document["verdict"], ordered=bool(document["ordered"]),
        reference_rows=document["reference_rows"], engine_rows=document["engine_rows"],
        notes=tuple(document.get("notes", ())),
        reference_only=tuple(dict(row) for row in document.get("reference_only", ())),
        engine_only=tuple(dict(row) for row in document.get("engine_only", ())),
        errors=tuple(ErrorReport(e["side"], e["sqlstate"], e["message"]) for e in document.get("errors", ())),
    )


def report_from_dict(document: Mapping[str, Any]) -> ShadowReport:
    """The report `ShadowReport.to_dict` wrote (statements keep their redacted SQL)."""
    results = [StatementResult(s["index"], s["line"], s["sql"], comparison_from_dict(s), s["reference_ms"],
                               s["engine_ms"]) for s in document["statements"]]
    ended = document.get("ended")
    return build_report(document["query_set_id"], results,
                        ReplayEnding(str(ended["status"]), str(ended["error"])) if ended else None)

