"""Policy previews in AWS (issue 22): the policies Lambda asks the fleet, a fleet host answers.

A real `hd engine serve` host on moto (DynamoDB, KMS, S3) runs its preview worker; the control API's
handlers run in-process against the same DynamoDB table with `HD_POLICY_PREVIEWS=fleet` and no engine
of their own, exactly like the Lambda. The host counts rows and plans statements with the engine's own
preview code, always as the organisation that asked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from engine_host.devmode.control_server import ControlApiDispatcher, HttpReply
from engine_host.runtime.fleet import FleetEngineHost
from functions.shared.wiring import install_services
from hd_core import policy_previews
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.s3_audit import S3AuditArchive
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.control_settings import ControlApiSettings
from hd_core.models import utc_now
from hd_core.policies import PolicyKind, RowFilter
from hd_core.policy_previews import DRY_RUN, PreviewRequest
from hd_core.services import assemble_services
from tests.harness import BackgroundLoop
from tests.integration.test_fleet_host import ORG, Account

FILTER = {"kind": "row_filter", "rule_id": "eu_only", "table": "sales.orders", "filter": "region = 'eu'",
          "exempt_roles": ["Owner"]}


class Lambda:
    """The policies routes as the Lambda runs them: no engine here, previews through the control store."""

    def __init__(self, account: Account) -> None:
        clients = account.clients
        document = account.config_document
        keys = KmsKeyProvider(clients.kms, jwt_key_ids=[account.signing_key],
                              checkpoint_key_id=document["checkpoint_key_arn"], data_key_id=document["kms_key_arn"])
        install_services(assemble_services(
            ControlApiSettings(jwt_issuer="https://control.example.com", jwt_audience="hd-fleet-test"),
            store=account.store, keys=keys, checkpoints=S3CheckpointStore(clients.s3, "hd-audit-fleet"),
            query_audit=S3AuditArchive(clients.s3, "hd-audit-fleet")))
        self.dispatcher = ControlApiDispatcher()
        self.key = account.key

    def call(self, method: str, url: str, body: Any = None) -> HttpReply:
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        return self.dispatcher.invoke(method, f"/v1/organizations/{ORG}{url}", headers=headers,
                                      body=None if body is None else json.dumps(body).encode(), source_ip="10.0.0.9")


@pytest.fixture
def control(account: Account, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lambda]:
    monkeypatch.setenv(policy_previews.PREVIEWS_ENV, policy_previews.FLEET)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    try:
        yield Lambda(account)
    finally:
        install_services(None)


@pytest.fixture
def host(account: Account, loop: BackgroundLoop) -> Iterator[FleetEngineHost]:
    serving = account.host()
    loop.run(serving.start())
    try:
        yield serving
    finally:
        loop.run(serving.stop())


def _rows(reply: HttpReply) -> dict[str, tuple[int | None, int | None]]:
    assert reply.status == 200, reply.body
    dry_run = reply.json()["dry_run"]
    assert dry_run["row_counts"] == "counted"
    return {effect["role"]: (effect["rows_before"], effect["rows_after"]) for effect in dry_run["effects"]}


def test_a_dry_run_in_aws_is_counted_by_a_fleet_host_and_stores_nothing(host: FleetEngineHost, control: Lambda,
                                                                        account: Account) -> None:
    before = account.store.policy_version()
    rows = _rows(control.call("POST", "/policies?dry_run=true", {**FILTER, "pending": True}))

    assert rows["Owner"] == (40, 40)  # exempt
    assert rows["Analyst"] == (40, 20) and rows["Admin"] == (40, 20)
    assert account.store.policy_version() == before
    assert account.store.list_policies(org_id=ORG, kind=PolicyKind.ROW_FILTER) == []
    answered = account.store.pending_preview_requests(utc_now())
    assert answered == []  # claimed and answered, not left for another host


def test_a_replace_dry_run_compares_the_stored_version_with_the_new_one(host: FleetEngineHost, control: Lambda,
                                                                        account: Account) -> None:
    assert control.call("POST", "/policies", {**FILTER, "pending": True}).status == 201
    stored = account.store.policy_version()
    reply = control.call("PUT", "/policies/row_filter/eu_only?dry_run=true",
                         {**FILTER, "filter": "region = 'us' AND id < 10", "pending": True})

    rows = _rows(reply)
    assert rows["Analyst"] == (20, 5) and rows["Owner"] == (40, 40)
    assert reply.json()["stored"] is False and account.store.policy_version() == stored
    stored_filter = account.store.get_policy(PolicyKind.ROW_FILTER, "eu_only")
    assert isinstance(stored_filter, RowFilter) and stored_filter.filter == "region = 'eu'"


def test_explain_in_aws_is_planned_by_a_fleet_host(host: FleetEngineHost, control: Lambda,
                                                   account: Account) -> None:
    assert control.call("POST", "/policies", {**FILTER, "exempt_roles": [], "pending": True}).status == 201
    reply = control.call("POST", "/policies/explain", {"user_id": account.user, "sql": "SELECT id FROM sales.orders"})

    assert reply.status == 200, reply.body
    explained = reply.json()
    assert explained["verdict"] == "allowed" and explained["role"] == "Owner"
    assert [t["table"] for t in explained["tables"]] == ["sales.orders"]
    assert {"rule_id": "eu_only", "filter": "region = 'eu'"} in explained["tables"][0]["row_filters"]
    refused = control.call("POST", "/policies/explain", {"user_id": account.user, "sql": "SELECT * FROM sales.nope"})
    assert refused.status == 200 and refused.json()["verdict"] == "refused", refused.body
    assert refused.json()["refusal"]["sqlstate"] == "42P01" and refused.json()["tables"] == []


def test_the_host_answers_as_the_organisation_that_asked(host: FleetEngineHost, account: Account) -> None:
    """A request of another organisation is counted as that organisation: the fleet org's table is not its own."""
    now = utc_now()
    document = {**FILTER, "org_id": "org_other", "pending": True}
    account.store.put_preview_request(PreviewRequest(
        request_id="prv_other", org_id="org_other", kind=DRY_RUN, requested_by="usr_other",
        question={"document": document, "table": "sales.orders", "user_id": "usr_other", "department": None,
                  "region": None, "source_ip": None},
        created_at=now, expires_at=now + policy_previews.TTL))
    answer = _answer_of(account, "prv_other")

    assert answer.status == policy_previews.ANSWERED
    assert answer.answer["rows"]["Owner"] == [None, None]  # refused for org_other, never the 40 rows of ORG


def _answer_of(account: Account, request_id: str) -> PreviewRequest:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stored = account.store.get_preview_request(request_id)
        assert stored is not None
        if stored.status not in (policy_previews.PENDING, policy_previews.CLAIMED):
            return stored
        time.sleep(0.1)
    raise AssertionError(f"no host answered {request_id}")


def test_without_a_host_a_preview_is_a_clear_503_after_the_wait(control: Lambda, account: Account,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_previews, "WAIT_SECONDS", 0.5)
    started = time.monotonic()
    reply = control.call("POST", "/policies?dry_run=true", {**FILTER, "pending": True})

    assert reply.status == 503, reply.body
    error = reply.json()["error"]
    assert error["code"] == "HD_ERR_PREVIEW_TIMEOUT" and "no engine host answered" in error["message"]
    assert 0.5 <= time.monotonic() - started < 5
    assert account.store.list_policies(org_id=ORG, kind=PolicyKind.ROW_FILTER) == []
    explain = control.call("POST", "/policies/explain", {"user_id": account.user, "sql": "SELECT 1"})
    assert explain.status == 503 and explain.json()["error"]["code"] == "HD_ERR_PREVIEW_TIMEOUT"
