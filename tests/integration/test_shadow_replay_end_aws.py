"""A shadow replay's end in AWS (moto): WriteReport revokes the replay's ServiceAccount key as an IAM event.

An execution stopped with StopExecution (no Catch sees it) ends its replay the same way through the
"Execution Status Change" event the ExecutionEnded rule hands WriteReport's function; an event naming another
execution, or a status that is not an ending, ends nothing.

The control plane is the DynamoDB table, KMS keys and the object-locked audit bucket; the replay is started
as the API does (its key issued, its secrets in Secrets Manager, one StartExecution). WriteReport then runs
with the services its Lambda builds from its environment (`functions.shadow.wiring`, HD_SHADOW_REVOKE_KEYS
and the control plane's HD_* settings, as cdk/hd_cdk/shadow.py sets them): the key is revoked in the table,
API_KEY_REVOKED is appended to the organisation's chain under the replay's request id and signed in a
checkpoint, and the secrets are scheduled for deletion. A retried WriteReport adds no event. A record that
names another key (a replay's documents are writable by every replay function) revokes nothing.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from functions.shadow import wiring
from hd_core.adapters.aws_shadow import (
    KEY_REVOCATION_TABLE_ACCESS,
    SAMPLE_MASK_TABLE_ACCESS,
    S3ShadowArtefacts,
    SecretsManagerShadowSecrets,
    StepFunctionsExecutions,
)
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.adapters.dynamodb_store import DynamoDbControlStore
from hd_core.adapters.kms_keys import KmsKeyProvider
from hd_core.adapters.s3_checkpoints import DEFAULT_PREFIX as CHECKPOINT_PREFIX
from hd_core.adapters.s3_checkpoints import S3CheckpointStore
from hd_core.api_keys import ApiKeyHasher
from hd_core.bootstrap import bootstrap_local_owner, ensure_environments
from hd_core.control_settings import ControlApiSettings
from hd_core.iam_events import IamEventType
from hd_core.models import ChangeContext, Environment, Principal, Role
from hd_core.permissions import ROLE_SCOPES
from hd_core.services import ControlServices, assemble_services
from hd_core.shadow import replay, state_machine
from hd_core.shadow.replay import EngineEndpoint, ReplayOptions, ReplayServices

REGION = "us-east-1"
TABLE = "hd-control-shadow"
DATA_BUCKET = "hd-data-shadow"
AUDIT_BUCKET = "hd-audit-shadow"
DSN = "host=db.internal port=5432 dbname=warehouse user=reader password=pw-revoked-at-the-end-91c2"


@dataclass
class Deployment:
    control: ControlServices
    api: ReplayServices
    owner: Principal
    env: Environment
    s3: Any
    secrets: Any


@pytest.fixture
def deployment(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    with mock_aws():
        boto3.client("dynamodb").create_table(**create_table_kwargs(TABLE))
        kms = boto3.client("kms")
        jwt_key = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        checkpoint_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        data_key = kms.create_key()["KeyMetadata"]["Arn"]
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=DATA_BUCKET)
        s3.create_bucket(Bucket=AUDIT_BUCKET, ObjectLockEnabledForBucket=True)
        sfn = boto3.client("stepfunctions")
        machine = sfn.create_state_machine(
            name="hd-shadow-replay", roleArn="arn:aws:iam::123456789012:role/hd-shadow-replay",
            definition=json.dumps(state_machine.definition({name: f"arn:aws:lambda:{REGION}:123456789012:function:"
                                                            f"{name}" for name in state_machine.FUNCTIONS})))
        store = DynamoDbControlStore(TABLE)
        control = assemble_services(
            ControlApiSettings(), store=store,
            keys=KmsKeyProvider(kms, jwt_key_ids=[jwt_key], checkpoint_key_id=checkpoint_key, data_key_id=data_key),
            checkpoints=S3CheckpointStore(s3, AUDIT_BUCKET), query_audit=None)  # type: ignore[arg-type]
        owner = bootstrap_local_owner(store, ApiKeyHasher(), org_name="Shadow Org", email="owner@example.com")
        env = ensure_environments(store, owner.org.org_id)[0]
        secrets = boto3.client("secretsmanager")
        api = ReplayServices(S3ShadowArtefacts(s3, DATA_BUCKET), SecretsManagerShadowSecrets(secrets),
                             EngineEndpoint("engine.internal", 5439),
                             StepFunctionsExecutions(sfn, machine["stateMachineArn"]))
        # WriteReport's environment, as cdk/hd_cdk/shadow.py sets it.
        for name, value in {"HD_SHADOW_BUCKET": DATA_BUCKET, "HD_SHADOW_ENGINE_HOST": "engine.internal",
                            "HD_SHADOW_REVOKE_KEYS": "true", "HD_STORE": "dynamodb", "HD_KEYS": "kms",
                            "HD_AUDIT": "s3", "HD_DYNAMODB_TABLE": TABLE, "HD_AUDIT_BUCKET": AUDIT_BUCKET,
                            "HD_KMS_JWT_KEY_IDS": jwt_key, "HD_KMS_CHECKPOINT_KEY_ID": checkpoint_key,
                            "HD_KMS_DATA_KEY_ID": data_key}.items():
            monkeypatch.setenv(name, value)
        wiring.shadow_settings.cache_clear()
        wiring.install_shadow_services(None)
        principal = Principal(user_id=owner.user.user_id, org_id=owner.org.org_id, role=Role.OWNER, key_id="",
                              env=env.key_env, scopes=tuple(sorted(ROLE_SCOPES[Role.OWNER])), department=None,
                              region=None, auth_method="jwt")
        try:
            yield Deployment(control, api, principal, env, s3, secrets)
        finally:
            wiring.install_shadow_services(None)
            wiring.shadow_settings.cache_clear()


def _start(deployment: Deployment) -> dict[str, Any]:
    d = deployment
    query_set = replay.upload_query_set(d.api, d.env, b"select 1;\n", "sql")
    replay_id = replay.start_replay(d.api, d.control.store, d.control.trail, d.control.hasher,
                                    ChangeContext(d.owner, "req-start"), d.env, query_set.id, comparison_dsn=DSN,
                                    comparison_secret_arn=None, options=ReplayOptions())
    record = d.api.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
    assert record is not None
    return record


def _revocations(deployment: Deployment) -> list[Any]:
    return [e for e in deployment.control.trail.events(deployment.owner.org_id, limit=1000)
            if e.event_type == IamEventType.API_KEY_REVOKED.value]


def test_write_report_revokes_the_replays_key_in_the_control_table_as_a_signed_iam_event(
        deployment: Deployment) -> None:
    record = _start(deployment)
    replay_id = record["replay_id"]
    calls: list[tuple[str, str, dict[str, Any]]] = []
    events = boto3._get_default_session().events  # clients made from here on report each call's parameters
    events.register("before-parameter-build", lambda params, model, **_: calls.append(
        (model.service_model.service_name, model.name, params)), unique_id="shadow-revocation-calls")
    try:
        task = wiring.shadow_services()  # what WriteReport's Lambda builds from its environment
        assert task.revoke_key is not None and task.executions is None
        replay.prepare({"replay_id": replay_id}, task)
        calls.clear()

        output = replay.write_report({"replay_id": replay_id, "batch_results": [
            {"batch": 0, "status": "error", "error": "unreachable"}]}, task)
    finally:
        events.unregister("before-parameter-build", unique_id="shadow-revocation-calls")
    _assert_within_write_reports_grants(calls)

    assert output["error"] == 1
    key = deployment.control.store.get_api_key(record["engine_key_id"])
    assert key is not None and key.revoked_at is not None
    (event,) = _revocations(deployment)
    assert (event.target, event.actor, event.request_id) == (
        record["engine_key_id"], record["engine_user"], f"shadow-replay-{replay_id}")
    # Signed like every IAM event: the chain's checkpoint covers the revocation.
    verified = deployment.control.trail.verify_chain(deployment.owner.org_id)
    assert verified.chain_valid and verified.checkpoint_size == event.seq
    for arn in record["owned_secrets"]:
        assert "DeletedDate" in deployment.secrets.describe_secret(SecretId=arn)
    # A retried WriteReport finds the key revoked already: no second event.
    replay.write_report({"replay_id": replay_id, "batch_results": []}, task)
    assert len(_revocations(deployment)) == 1


def _assert_within_write_reports_grants(calls: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Every control-plane call the revocation made is one cdk/hd_cdk/shadow.py grants WriteReport (the table
    access from `KEY_REVOCATION_TABLE_ACCESS`, Sign with the checkpoint key, PutObject of IAM checkpoints)."""
    table_calls = [(operation, params) for service, operation, params in calls if service == "dynamodb"]
    assert {operation for operation, _ in table_calls} >= {"GetItem", "UpdateItem", "Query", "PutItem"}
    for operation, params in table_calls:
        assert params["TableName"] == TABLE
        on_index = "IndexName" in params
        partition = (params.get("Key") or params.get("Item") or {}).get("PK", {}).get("S") or params[
            "ExpressionAttributeValues"][":pk"]["S"]
        assert any(f"dynamodb:{operation}" in actions and on_index == index and fnmatch.fnmatchcase(partition, keys)
                   for actions, index, keys in KEY_REVOCATION_TABLE_ACCESS), (operation, on_index, partition)
    assert {operation for service, operation, _ in calls if service == "kms"} == {"Sign"}
    audit = [(operation, params["Key"]) for service, operation, params in calls
             if service == "s3" and params.get("Bucket") == AUDIT_BUCKET]
    assert audit and all(operation == "PutObject" and key.startswith(CHECKPOINT_PREFIX)
                         for operation, key in audit), audit


def test_a_record_naming_another_key_revokes_nothing_and_the_replay_ends_in_error(deployment: Deployment) -> None:
    record = _start(deployment)
    replay_id = record["replay_id"]
    owners_key = next(k for k in deployment.control.store.list_api_keys(deployment.owner.org_id)
                      if k.user_id == deployment.owner.user_id)
    # Anything that can write the replay's documents could point WriteReport at another key of the organisation.
    deployment.api.artefacts.put_json(f"{replay.replay_prefix(replay_id)}replay.json",
                                      {**record, "engine_key_id": owners_key.key_id})
    task = wiring.shadow_services()
    replay.prepare({"replay_id": replay_id}, task)

    with pytest.raises(replay.ReplayKeyMismatch):
        replay.write_report({"replay_id": replay_id, "batch_results": []}, task)

    untouched = deployment.control.store.get_api_key(owners_key.key_id)
    assert untouched is not None and untouched.revoked_at is None
    assert _revocations(deployment) == []
    for arn in record["owned_secrets"]:  # the other steps still ran
        assert "DeletedDate" in deployment.secrets.describe_secret(SecretId=arn)


def test_prepare_and_replay_batch_build_no_revoker(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HD_SHADOW_REVOKE_KEYS")
    wiring.shadow_settings.cache_clear()
    wiring.install_shadow_services(None)
    assert wiring.shadow_services().revoke_key is None


def _status_change(deployment: Deployment, execution_arn: str) -> dict[str, Any]:
    """The EventBridge event Step Functions sends when an execution's status changes (its detail from
    DescribeExecution, as the service fills it)."""
    described = boto3.client("stepfunctions").describe_execution(executionArn=execution_arn)
    return {"version": "0", "id": "event-1", "source": "aws.states",
            "detail-type": "Step Functions Execution Status Change",
            "detail": {key: described.get(key) for key in ("executionArn", "stateMachineArn", "name", "status",
                                                           "error")}}


def test_a_stopped_execution_ends_its_replay_through_the_execution_status_event(deployment: Deployment) -> None:
    from functions.shadow import tasks

    record = _start(deployment)
    replay_id = record["replay_id"]
    boto3.client("stepfunctions").stop_execution(executionArn=record["execution"])
    event = _status_change(deployment, record["execution"])
    assert event["detail"]["status"] == "ABORTED" and event["detail"]["name"] == replay_id

    # The rule's target is WriteReport's function; the handler hands the event to execution_ended.
    ended = tasks._write_report(event, None)

    assert ended == {"replay_id": replay_id, "status": "ABORTED", "error": "ABORTED"}  # StopExecution gave no error
    key = deployment.control.store.get_api_key(record["engine_key_id"])
    assert key is not None and key.revoked_at is not None
    assert [(e.target, e.request_id) for e in _revocations(deployment)] == [
        (record["engine_key_id"], f"shadow-replay-{replay_id}")]
    for arn in record["owned_secrets"]:
        assert "DeletedDate" in deployment.secrets.describe_secret(SecretId=arn)
    report = replay.read_report(deployment.api, deployment.env, replay_id).to_dict()
    assert report["ended"]["status"] == "ABORTED" and report["query_count"] == 0  # stopped before Prepare
    stored = [deployment.s3.get_object(Bucket=DATA_BUCKET, Key=item["Key"])["Body"].read()
              for item in deployment.s3.list_objects_v2(Bucket=DATA_BUCKET)["Contents"]]
    assert not any(b"pw-revoked-at-the-end" in body for body in stored)
    # The Catch path and the rule may both end it: a second event changes nothing.
    assert tasks._write_report(event, None) == ended
    assert len(_revocations(deployment)) == 1


def test_a_status_event_of_another_execution_or_a_finished_one_ends_nothing(deployment: Deployment) -> None:
    from functions.shadow import tasks

    record = _start(deployment)
    event = _status_change(deployment, record["execution"])
    assert tasks._write_report(event, None) == {"ignored": True}  # RUNNING: not an ending
    forged = {**event, "detail": {**event["detail"], "status": "FAILED",
                                  "executionArn": record["execution"].replace(record["replay_id"], "other")}}
    with pytest.raises(replay.ReplayExecutionMismatch):
        tasks._write_report(forged, None)
    with pytest.raises(replay.NotFound):
        tasks._write_report({**forged, "detail": {**forged["detail"], "name": "../rp_x"}}, None)
    key = deployment.control.store.get_api_key(record["engine_key_id"])
    assert key is not None and key.revoked_at is None and _revocations(deployment) == []
    for arn in record["owned_secrets"]:
        assert "DeletedDate" not in deployment.secrets.describe_secret(SecretId=arn)


def test_replay_batch_masks_with_the_engines_rules_and_key_read_within_its_grants(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """ReplayBatch's environment (HD_SHADOW_SAMPLE_MASKS, as cdk/hd_cdk/shadow.py sets it) builds the masking from
    the control table and the data key: the rules stored there, the catalog a host recorded, the mask key the
    engine made (`ensure_mask_keys` through KMS); every call it makes is one of `SAMPLE_MASK_TABLE_ACCESS` or a
    Decrypt with the mask-key purpose."""
    from engine_host.engine.masking import ensure_mask_keys, mask_hash
    from hd_core.bootstrap import DEFAULT_ORG_SETTING
    from hd_core.catalog_schemas import CatalogRecorder
    from hd_core.policies import MaskFunction, MaskRule
    from hd_core.shadow.sample_masks import MASK_KEY_PURPOSE

    store, org = deployment.control.store, deployment.owner.org_id
    store.put_setting(DEFAULT_ORG_SETTING, org)
    CatalogRecorder(store).record({"crm.customers": [("name", "VARCHAR"), ("ssn", "VARCHAR")]})
    store.put_policy(MaskRule("m_ssn", org, "crm.customers", "ssn", MaskFunction.HASH))
    engine_keys = ensure_mask_keys(store, deployment.control.keys)  # what every engine host does at start
    record = _start(deployment)
    monkeypatch.delenv("HD_SHADOW_REVOKE_KEYS")
    monkeypatch.setenv("HD_SHADOW_SAMPLE_MASKS", "true")
    wiring.shadow_settings.cache_clear()
    wiring.install_shadow_services(None)
    calls: list[tuple[str, str, dict[str, Any]]] = []
    events = boto3._get_default_session().events
    events.register("before-parameter-build", lambda params, model, **_: calls.append(
        (model.service_model.service_name, model.name, params)), unique_id="shadow-mask-calls")
    try:
        task = wiring.shadow_services()  # what ReplayBatch's Lambda builds from its environment
        assert task.revoke_key is None and task.sample_masks is not None
        masking = task.sample_masks(record)
    finally:
        events.unregister("before-parameter-build", unique_id="shadow-mask-calls")

    assert masking.hash_key == engine_keys[record_env(deployment, record)]
    render = masking.for_statement("select name, ssn from crm.customers", ["name", "ssn"])
    assert render("ssn", "078-05-1120") == mask_hash(masking.hash_key or b"", "078-05-1120")
    assert render("name", "Maria") == "Maria"
    table_calls = [(operation, params) for service, operation, params in calls if service == "dynamodb"]
    assert table_calls
    for operation, params in table_calls:
        partition = (params.get("Key") or {}).get("PK", {}).get("S") or params[
            "ExpressionAttributeValues"][":pk"]["S"]
        assert "IndexName" not in params and any(
            f"dynamodb:{operation}" in actions and fnmatch.fnmatchcase(partition, keys)
            for actions, _, keys in SAMPLE_MASK_TABLE_ACCESS), (operation, partition)
    kms_calls = [(operation, params) for service, operation, params in calls if service == "kms"]
    assert kms_calls and all(operation == "Decrypt" and params["EncryptionContext"]["purpose"] == MASK_KEY_PURPOSE
                             for operation, params in kms_calls)
    assert not [c for c in calls if c[0] not in ("dynamodb", "kms")]


def record_env(deployment: Deployment, record: dict[str, Any]) -> str:
    key = deployment.control.store.get_api_key(record["engine_key_id"])
    assert key is not None
    return str(getattr(key.env, "value", key.env))
