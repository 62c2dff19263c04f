"""The API contract: the checked-in OpenAPI document matches the code, is served, and the API keeps it.

Two schemathesis runs against a real local server, authenticated as the Owner of its organisation:
a stateless one (a few generated requests per operation) and a stateful one (chains of calls that
feed ids from one response into the next request, links inferred from the document). Both fail on a
5xx, on a response that does not match the document, and on a schema-valid request refused for its
shape (400/422): the document must say exactly what the API accepts. Refusals for state or rights
(401/403/404/409/429) are answers, not mismatches.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance, response_schema_conformance

from engine_host.devmode.control_server import ControlApiServer
from functions.jit.handler import ElevatableRole
from functions.openapi import DOCUMENT_PATH, openapi_document, render
from functions.policies.handler import ManagedKind
from functions.shared.wiring import install_services
from hd_core.adapters.local_audit import LocalFolderAuditArchive
from hd_core.adapters.local_audit_exports import LocalFolderAuditExports
from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.adapters.local_shadow import local_replay_services
from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.audit_search import MAX_RANGE_DAYS
from hd_core.bootstrap import bootstrap_local_owner, ensure_environments
from hd_core.control_settings import ControlApiSettings
from hd_core.models import Role
from hd_core.policy_admin import MANAGED_KINDS
from hd_core.services import assemble_services
from hd_core.shadow.replay import EngineEndpoint

schema = schemathesis.openapi.from_dict(json.loads(DOCUMENT_PATH.read_text(encoding="utf-8")))

# The stateful run's budget: at least this many steps, in at most this many Hypothesis runs.
STATEFUL_STEPS = 200
MAX_STATEFUL_RUNS = 6
POLICY_WRITES = {("POST", "/v1/organizations/{org_id}/policies"),
                 ("PUT", "/v1/organizations/{org_id}/policies/{kind}/{object_id}")}
SHADOW_CONTENT_CODES = {"HD_ERR_QUERY_SET_UNREADABLE", "HD_ERR_QUERY_SET_TOO_LARGE", "HD_ERR_COMPARISON_DSN_INVALID",
                        "HD_ERR_COMPARISON_SECRET_OUTSIDE_PREFIX"}
# Whether a key's delivery secret is named under its own organisation (hd/keys/<org_id>/) depends on the path's org.
KEY_CONTENT_CODES = {"HD_ERR_DELIVERY_SECRET_INVALID"}


def schema_valid_requests_are_accepted(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """positive_data_acceptance, less the policy validator's content rules that no JSON Schema can state.

    Whether a row filter parses as SQL, a timezone exists, a time window is empty, a network has
    host bits set or a PHI grant has already ended is the validator's to say (400
    HD_ERR_POLICY_INVALID, listed in functions/policies/documents.py); any other refusal of a
    schema-valid request (400/422) is a mismatch between the document and the API.
    """
    if (case.method.upper(), case.operation.path) in POLICY_WRITES and response.status_code == 400:
        if response.json()["error"]["code"] == "HD_ERR_POLICY_INVALID":
            return None
    # Whether a policy's table and columns exist is the live catalog's to say (422, naming them; issue 22).
    if (case.method.upper(), case.operation.path) in POLICY_WRITES and response.status_code == 422:
        if response.json()["error"]["code"] in ("HD_ERR_UNKNOWN_TABLE", "HD_ERR_UNKNOWN_COLUMN"):
            return None
    # Whether an upload holds a statement at all, and whether a DSN parses, are libpq's and sqlglot's to say;
    # a comparison secret outside hd/shadow/ is refused with what to do rather than by an opaque pattern.
    if response.status_code == 400 and response.json()["error"]["code"] in SHADOW_CONTENT_CODES | KEY_CONTENT_CODES:
        return None
    # Whether a webhook URL's host resolves, and only to public addresses, is DNS's to say (the SSRF guard).
    if response.status_code == 400 and response.json()["error"]["code"] == "HD_ERR_WEBHOOK_TARGET_REFUSED":
        return None
    return positive_data_acceptance(ctx, response, case)


# What every generated request is held to. positive_data_acceptance's default accepted statuses are
# 2xx/3xx and 401/403/404/409/429 (and 5xx, which not_a_server_error refuses on its own).
CHECKS = [not_a_server_error, response_schema_conformance, schema_valid_requests_are_accepted]
# The credentials the security schemes make schemathesis generate; the Owner's key replaces them
# (two credentials on one request are a 401 by design).
GENERATED_CREDENTIALS = ("Authorization", "X-API-Key")


@dataclass
class LiveApi:
    """A local control API server and the Owner of its one organisation."""

    base_url: str
    owner_key: str
    owner_key_id: str
    org_id: str
    env_id: str
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def aim(self, case: schemathesis.Case) -> None:
        """Make `case` the Owner's request about the Owner's organisation and environment.

        Made-up organisation and environment ids only ever reach the 404 of the caller check; pinned,
        the generated request reaches the route's own validation and domain code.
        """
        for name in GENERATED_CREDENTIALS:
            case.headers.pop(name, None)
        parameters = case.path_parameters or {}
        if "org_id" in parameters:
            parameters["org_id"] = self.org_id
        if "env_id" in parameters:
            parameters["env_id"] = self.env_id
        # Revoking the key the run authenticates with would turn the rest of it into 401s.
        if case.method == "DELETE" and parameters.get("key_id") == self.owner_key_id:
            parameters["key_id"] = "key_not_the_runs_own"
        if case.query:
            keep_documented_cross_field_rules(case.query, case.operation.path)
        if isinstance(case.body, dict):
            keep_expiry_in_the_future(case.body)
            # A replaced policy keeps its kind: the document's `kind` names the one in the path.
            if "kind" in parameters and isinstance(case.body.get("kind"), str):
                parameters["kind"] = case.body["kind"]

    def call_kwargs(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "headers": {"X-API-Key": self.owner_key}}

    def record(self, case: schemathesis.Case, status: int) -> None:
        self.statuses[(f"{case.method.upper()} {case.operation.path}", status)] += 1


def keep_documented_cross_field_rules(query: dict[str, Any], path: str = "") -> None:
    """Bring a generated query within the rules its parameters state in words, which JSON Schema cannot.

    A report or search range runs from `start` to `end` (not before it) over at most 366 days; a
    `cursor` is only ever the `next_cursor` of the previous page (a made-up one is refused like a
    forged token), so the stateless run leaves it out.
    """
    query.pop("cursor", None)
    if "/audit/queries" in path:
        keep_audit_window(query)
        return
    try:
        first, last = sorted((date.fromisoformat(query["start"]), date.fromisoformat(query["end"])))
    except (KeyError, TypeError, ValueError):
        return  # not a range (a negative case's garbage is the server's to refuse)
    last = min(last, first + timedelta(days=MAX_RANGE_DAYS - 1))
    query["start"], query["end"] = first.isoformat(), last.isoformat()


def keep_audit_window(query: dict[str, Any]) -> None:
    """An audit window's bounds keep their generated form (a date or a time) but move into the last two days.

    Without a start the window reaches back from its end (or now), so any pair must also fit an export's
    31 days and the calendar: the bounds' values are the server's to refuse, in words, not their shapes.
    """
    now = datetime.now(UTC)
    for name, moment in (("start", now - timedelta(days=2)), ("end", now)):
        value = query.get(name)
        if isinstance(value, str) and len(value) == 10:
            query[name] = moment.date().isoformat()
        elif isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                continue  # not a time: garbage is the server's to refuse
            query[name] = moment.isoformat()


def keep_expiry_in_the_future(body: Any) -> None:
    """A new key's or grant's `expires_at` must lie ahead, as its description says; JSON Schema has no clock."""
    try:
        expires = datetime.fromisoformat(body["expires_at"])
    except (KeyError, TypeError, ValueError):
        return
    now = datetime.now(expires.tzinfo or UTC)
    if expires <= now + timedelta(minutes=1):
        body["expires_at"] = (now + timedelta(days=1)).isoformat()


def test_the_checked_in_document_matches_the_resolvers() -> None:
    assert DOCUMENT_PATH.read_text(encoding="utf-8") == render(openapi_document()), (
        "functions/openapi.json is stale: run `python -m functions.openapi --write`"
    )


def test_the_documents_fixed_choices_follow_the_domain() -> None:
    assert set(get_args(ElevatableRole)) == {role.value for role in Role} - {Role.OWNER.value}
    assert set(get_args(ManagedKind)) == {kind.value for kind in MANAGED_KINDS}


def test_every_operation_names_its_function_and_documents_the_error_shape() -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["x-hd-function"], (method, path)
            error = operation["responses"]["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    root: Path = tmp_path_factory.mktemp("api")
    store = SqliteControlStore(root / "control.sqlite3")
    owner = bootstrap_local_owner(store, ApiKeyHasher(), org_name="Fuzz Org", email="owner@example.com")
    environments = ensure_environments(store, owner.org.org_id)
    install_services(assemble_services(
        ControlApiSettings(jwt_issuer="https://hd.test"),
        store=store,
        keys=LocalKeyFile(root / "keys" / "local-keys.json"),
        checkpoints=LocalFolderCheckpointStore(root),
        query_audit=LocalFolderAuditArchive(root),
        audit_exports=LocalFolderAuditExports(root),
    ))
    server = ControlApiServer("127.0.0.1", 0)
    # Shadow replays started by the run find no engine there: their batches end as errors, in the background.
    server.start(shadow=local_replay_services(root, LocalKeyFile(root / "keys" / "local-keys.json"),
                                              EngineEndpoint("127.0.0.1", 9, sslmode="disable")))
    assert owner.api_key_plaintext is not None
    base_url = f"http://127.0.0.1:{server.port}"
    try:
        whoami = requests.get(f"{base_url}/v1/auth/whoami", headers={"X-API-Key": owner.api_key_plaintext}, timeout=10)
        assert whoami.status_code == 200, whoami.text
        yield LiveApi(
            base_url=base_url,
            owner_key=owner.api_key_plaintext,
            owner_key_id=whoami.json()["key_id"],
            org_id=owner.org.org_id,
            env_id=environments[0].env_id,
        )
    finally:
        server.stop()
        install_services(None)
        store.close()


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_the_api_never_fails_and_always_matches_its_document(case: schemathesis.Case, live_api: LiveApi) -> None:
    live_api.aim(case)
    case.call_and_validate(**live_api.call_kwargs(), checks=CHECKS)


@pytest.mark.slow  # a stateful property run (30 chains): CI runs it (`pytest -m slow`)
def test_chains_of_calls_never_fail_and_always_match_the_document(live_api: LiveApi) -> None:
    class OwnerWorkflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: schemathesis.Case) -> None:
            live_api.aim(case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return live_api.call_kwargs()

        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            super().after_call(response, case)
            live_api.record(case, response.status_code)

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None,
                                       recorder=self.recorder)
            except FailureGroup as failures:
                live_api.failures.append(str(failures))

    # One worker, the generate phase only (schemathesis's own default): the server's state moves on
    # with every step, so a replay or a shrink would not meet the same server. For the same reason
    # Hypothesis may stop the run as "flaky" when a choice it made before now meets another answer
    # (a bundle that filled differently); every step taken until then was checked as it ran.
    # So a run cut short that way is followed by another, with another seed, until enough steps ran.
    for run in range(MAX_STATEFUL_RUNS):
        try:
            hypothesis.seed(run)(OwnerWorkflow).run(settings=settings(
                max_examples=30,
                stateful_step_count=10,
                phases=[Phase.generate],
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ))
        except Flaky:
            pass
        if sum(live_api.statuses.values()) >= STATEFUL_STEPS:
            break
    assert not live_api.failures, "\n\n".join(live_api.failures[:5])
    answered = {operation for operation, status in live_api.statuses if status < 300}
    assert sum(live_api.statuses.values()) >= STATEFUL_STEPS and len(answered) >= 15, live_api.statuses

