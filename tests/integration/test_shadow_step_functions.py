"""Starting a shadow replay in AWS (moto): the query set in S3, the DSN in Secrets Manager, one StartExecution.

The execution goes to the state machine created from `state_machine.definition()`, named after the
replay, and its input names the comparison database by secret ARN only: the DSN's password is in
no execution input and no S3 object, and the secret gives back the DSN exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from hd_core import directory
from hd_core.adapters.aws_shadow import S3ShadowArtefacts, SecretsManagerShadowSecrets, StepFunctionsExecutions
from hd_core.adapters.local_keys import LocalKeyFile
from hd_core.errors import NotFound
from hd_core.models import KeyEnv, Role
from hd_core.shadow import replay, state_machine
from hd_core.shadow.replay import EngineEndpoint, ReplayOptions, ReplayServices
from tests.unit.core.test_directory import ControlPlane, make_control_plane

REGION = "eu-west-1"
BUCKET = "hd-data-test"
PASSWORD = "pw-never-leaves-secrets-manager-7f3a"
DSN = f"host=db.internal port=5432 dbname=warehouse user=reader password={PASSWORD}"


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[dict[str, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arns = {name: f"arn:aws:lambda:{REGION}:123456789012:function:hd-shadow-{name.lower()}"
                for name in state_machine.FUNCTIONS}
        machine = sfn.create_state_machine(
            name="hd-shadow-replay", definition=json.dumps(state_machine.definition(arns)),
            roleArn="arn:aws:iam::123456789012:role/hd-shadow-replay")
        yield {"s3": s3, "sfn": sfn, "secrets": boto3.client("secretsmanager", region_name=REGION),
               "machine_arn": machine["stateMachineArn"], "arns": arns}


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    return make_control_plane(tmp_path, LocalKeyFile(tmp_path / "keys.json"))


def test_a_replay_starts_the_definitions_state_machine_with_no_password_in_its_input(
        aws: dict[str, Any], plane: ControlPlane) -> None:
    services = ReplayServices(
        artefacts=S3ShadowArtefacts(aws["s3"], BUCKET), secrets=SecretsManagerShadowSecrets(aws["secrets"]),
        engine=EngineEndpoint("engine.internal", 5432), executions=StepFunctionsExecutions(aws["sfn"],
                                                                                           aws["machine_arn"]))
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1;\nselect 2;\ndelete from t;\n", "sql")
    assert [r.line for r in query_set.rejected] == [3]

    replay_id = replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                                    comparison_dsn=DSN, comparison_secret_arn=None,
                                    options=ReplayOptions(concurrency=7, timeout_seconds=30))

    executions = aws["sfn"].list_executions(stateMachineArn=aws["machine_arn"])["executions"]
    assert [e["name"] for e in executions] == [replay_id]
    described = aws["sfn"].describe_execution(executionArn=executions[0]["executionArn"])
    assert PASSWORD not in described["input"]
    execution_input = json.loads(described["input"])
    assert execution_input["concurrency"] == 7 and execution_input["query_set_id"] == query_set.id
    assert aws["secrets"].get_secret_value(SecretId=execution_input["comparison_secret_arn"])["SecretString"] == DSN
    definition = aws["sfn"].describe_state_machine(stateMachineArn=aws["machine_arn"])["definition"]
    assert json.loads(definition) == state_machine.definition(aws["arns"])
    for item in aws["s3"].list_objects_v2(Bucket=BUCKET)["Contents"]:
        assert PASSWORD.encode() not in aws["s3"].get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    assert replay.replay_progress(services, env, replay_id).status == "RUNNING"
    # The engine side runs as the organisation's shadow ServiceAccount, with a key of its own.
    record = services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
    assert record is not None
    user = plane.store.get_user(record["engine_user"])
    assert user is not None and user.role is Role.SERVICE_ACCOUNT
    key = plane.store.get_api_key(record["engine_key_id"])
    assert key is not None and key.user_id == user.user_id and key.expires_at is not None


def test_a_replay_of_another_environment_is_not_found(aws: dict[str, Any], plane: ControlPlane) -> None:
    services = ReplayServices(S3ShadowArtefacts(aws["s3"], BUCKET), SecretsManagerShadowSecrets(aws["secrets"]),
                              EngineEndpoint("engine.internal", 5432),
                              StepFunctionsExecutions(aws["sfn"], aws["machine_arn"]))
    ctx = plane.ctx(plane.owner)
    staging = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    prod = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "prod", KeyEnv.LIVE)
    query_set = replay.upload_query_set(services, staging, b"select 1", None)
    replay_id = replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, staging, query_set.id,
                                    comparison_dsn=DSN, comparison_secret_arn=None, options=ReplayOptions())
    with pytest.raises(NotFound):
        replay.replay_progress(services, prod, replay_id)
    with pytest.raises(NotFound):
        replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, prod, query_set.id,
                            comparison_dsn=DSN, comparison_secret_arn=None, options=ReplayOptions())


def test_a_query_set_whose_every_statement_was_rejected_is_a_conflict_to_replay(
        aws: dict[str, Any], plane: ControlPlane) -> None:
    services = ReplayServices(S3ShadowArtefacts(aws["s3"], BUCKET), SecretsManagerShadowSecrets(aws["secrets"]),
                              EngineEndpoint("engine.internal", 5432),
                              StepFunctionsExecutions(aws["sfn"], aws["machine_arn"]))
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"delete from t;\ndrop table t;\n", "sql")
    assert query_set.statements == () and len(query_set.rejected) == 2
    with pytest.raises(replay.QuerySetEmpty):
        replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                            comparison_dsn=DSN, comparison_secret_arn=None, options=ReplayOptions())
    assert aws["sfn"].list_executions(stateMachineArn=aws["machine_arn"])["executions"] == []


def _moto_services(aws: dict[str, Any]) -> ReplayServices:
    return ReplayServices(S3ShadowArtefacts(aws["s3"], BUCKET), SecretsManagerShadowSecrets(aws["secrets"]),
                          EngineEndpoint("engine.internal", 5432),
                          StepFunctionsExecutions(aws["sfn"], aws["machine_arn"]))


def _scheduled_days(aws: dict[str, Any], arn: str) -> float:
    described = aws["secrets"].describe_secret(SecretId=arn)
    assert "DeletedDate" in described, f"{arn} is not scheduled for deletion"
    return float((described["DeletedDate"] - datetime.now(UTC)).total_seconds() / 86400)


def test_write_report_deletes_the_replays_own_secrets_with_a_7_day_recovery_window(
        aws: dict[str, Any], plane: ControlPlane) -> None:
    services = _moto_services(aws)
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1;\nselect 2;\n", "sql")
    customers = aws["secrets"].create_secret(Name="hd/shadow/customer/warehouse", SecretString=DSN)["ARN"]
    by_dsn = replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                                 comparison_dsn=DSN, comparison_secret_arn=None, options=ReplayOptions())
    by_arn = replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                                 comparison_dsn=None, comparison_secret_arn=customers, options=ReplayOptions())
    records = {}
    for replay_id in (by_dsn, by_arn):
        record = services.artefacts.get_json(f"{replay.replay_prefix(replay_id)}replay.json")
        assert record is not None
        records[replay_id] = record
        replay.prepare({"replay_id": replay_id}, services)
        # Every batch failed (no database here): the report is all errors, and the replay has ended.
        output = replay.write_report({"replay_id": replay_id, "batch_results": [
            {"batch": 0, "status": "error", "error": "unreachable"}]}, services)
        assert output["error"] == 2

    assert set(records[by_dsn]["owned_secrets"]) == {records[by_dsn]["comparison_secret"],
                                                     records[by_dsn]["engine_key_secret"]}
    assert records[by_arn]["owned_secrets"] == [records[by_arn]["engine_key_secret"]]
    for arn in (*records[by_dsn]["owned_secrets"], *records[by_arn]["owned_secrets"]):
        assert 6.9 < _scheduled_days(aws, arn) <= 7.0
        with pytest.raises(ClientError):
            aws["secrets"].get_secret_value(SecretId=arn)
    # The customer's own secret is theirs: a replay that only read it leaves it alone.
    assert aws["secrets"].get_secret_value(SecretId=customers)["SecretString"] == DSN
    # A retried WriteReport meets secrets already scheduled for deletion: no error.
    replay.write_report({"replay_id": by_dsn, "batch_results": []}, services)


def test_a_comparison_secret_outside_the_shadow_prefix_is_refused_before_anything_starts(
        aws: dict[str, Any], plane: ControlPlane) -> None:
    services = _moto_services(aws)
    ctx = plane.ctx(plane.owner)
    env = directory.create_environment(plane.store, plane.trail, ctx, plane.org.org_id, "staging", KeyEnv.TEST)
    query_set = replay.upload_query_set(services, env, b"select 1", None)
    elsewhere = aws["secrets"].create_secret(Name="prod/warehouse/dsn", SecretString=DSN)["ARN"]
    for arn in (elsewhere, elsewhere.replace(":secret:prod/", ":secret:hd/shadowy/"),
                elsewhere.replace(":secret:prod/warehouse/", f":secret:hd/shadow/rp_{'0' * 32}/"),
                "arn:aws:ssm:eu-west-1:123456789012:parameter:hd/shadow/x"):
        with pytest.raises(replay.ComparisonSecretOutsidePrefix) as refused:
            replay.start_replay(services, plane.store, plane.trail, plane.hasher, ctx, env, query_set.id,
                                comparison_dsn=None, comparison_secret_arn=arn, options=ReplayOptions())
        assert refused.value.code == "HD_ERR_COMPARISON_SECRET_OUTSIDE_PREFIX"
        assert "hd/shadow/" in str(refused.value) and "comparison_dsn" in str(refused.value)
    assert aws["sfn"].list_executions(stateMachineArn=aws["machine_arn"])["executions"] == []
    assert [s["Name"] for s in aws["secrets"].list_secrets()["SecretList"]] == ["prod/warehouse/dsn"]
    assert plane.store.get_user_by_email(f"shadow-replay@{plane.org.org_id.replace('_', '-')}.hd.invalid") is None
