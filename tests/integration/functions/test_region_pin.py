"""The control plane's region pin: every request refused (503 HD_ERR_REGION_MISMATCH) while its control table,
audit bucket or a KMS key is outside the pinned region; moto holds resources in two regions.

The functions here are built from the environment as in Lambda (HD_STORE=dynamodb, HD_KEYS=kms, HD_AUDIT=s3),
not from installed services.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from functions.shared.lambda_entry import OutsideLambdaContext
from functions.shared.wiring import install_services
from hd_core.adapters.dynamodb_schema import create_table_kwargs
from hd_core.control_settings import settings
from hd_core.region_pinning import RegionMismatch
from tests.integration.functions.test_lambda_entry import log_lines

PINNED, OTHER = "eu-central-1", "us-west-2"
TABLE, BUCKET = "hd-control-pin", "hd-audit-pin"


@dataclass
class Deployment:
    """A control plane configured through its environment, with its resources made in moto."""

    monkeypatch: pytest.MonkeyPatch

    def env(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    def bucket(self, region: str, name: str = BUCKET) -> None:
        s3 = boto3.client("s3", region_name=region)
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
        self.env(HD_AUDIT_BUCKET=name)

    def table(self, region: str) -> None:
        boto3.client("dynamodb", region_name=region).create_table(**create_table_kwargs(TABLE))

    def key(self, region: str, **create: Any) -> str:
        return str(boto3.client("kms", region_name=region).create_key(**create)["KeyMetadata"]["Arn"])


@pytest.fixture
def deployment(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    with mock_aws():
        made = Deployment(monkeypatch)
        made.env(HD_STORE="dynamodb", HD_KEYS="kms", HD_AUDIT="s3", HD_DYNAMODB_TABLE=TABLE, HD_REGION=PINNED,
                 AWS_DEFAULT_REGION=PINNED, POWERTOOLS_METRICS_DISABLED="true")
        made.table(PINNED)
        made.bucket(PINNED)
        made.env(HD_KMS_JWT_KEY_IDS=made.key(PINNED, KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY"),
                 HD_KMS_CHECKPOINT_KEY_ID=made.key(PINNED, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY"),
                 HD_KMS_DATA_KEY_ID=made.key(PINNED))
        settings.cache_clear()
        install_services(None)
        try:
            yield made
        finally:
            settings.cache_clear()
            install_services(None)


def _list_users(key: str = "hd_live_" + "A" * 32) -> dict[str, Any]:
    from functions.users import handler

    path = "/v1/organizations/org_x/users"
    event = {
        "resource": path, "path": path, "httpMethod": "GET", "body": None, "isBase64Encoded": False,
        "headers": {"X-API-Key": key}, "multiValueHeaders": {"X-API-Key": [key]},
        "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
        "requestContext": {"requestId": "apigw-pin", "identity": {"sourceIp": "127.0.0.1"}, "stage": "v1"},
    }
    return handler.lambda_handler(event, OutsideLambdaContext(function_name="hd-users"))  # type: ignore[arg-type]


def _refused(response: dict[str, Any]) -> dict[str, Any]:
    assert response["statusCode"] == 503, response
    error = json.loads(response["body"])["error"]
    assert error["code"] == "HD_ERR_REGION_MISMATCH" and error["request_id"] == "apigw-pin"
    return dict(error)


def test_with_everything_in_the_pinned_region_requests_reach_the_routes(deployment: Deployment) -> None:
    assert _list_users()["statusCode"] == 401  # past the pin, refused by authentication


def test_an_audit_bucket_in_another_region_refuses_every_request(deployment: Deployment) -> None:
    deployment.bucket(OTHER, "hd-audit-elsewhere")
    with log_lines("hd-users") as lines:
        error = _refused(_list_users())
        _refused(_list_users())
    assert "hd-audit-elsewhere" not in error["message"]  # the caller is not authenticated: no resource names
    logged = [line for line in lines if line["message"] == "request refused: region pin"]
    assert len(logged) == 2 and logged[0]["region"] == PINNED
    assert logged[0]["differences"] == [f"audit bucket S3 bucket hd-audit-elsewhere is in {OTHER}"]


def test_a_control_table_reached_through_another_region_refuses_every_request(deployment: Deployment) -> None:
    """HD_REGION pins one region while the function's clients talk to another, where a table of the name exists."""
    deployment.table(OTHER)
    deployment.env(AWS_DEFAULT_REGION=OTHER)
    with log_lines("hd-users") as lines:
        _refused(_list_users())
    refusal = next(line for line in lines if line["message"] == "request refused: region pin")
    assert f"control table DynamoDB table {TABLE} is in {OTHER}" in refusal["differences"]


@pytest.mark.parametrize("variable", ["HD_KMS_JWT_KEY_IDS", "HD_KMS_CHECKPOINT_KEY_ID", "HD_KMS_DATA_KEY_ID"])
def test_a_kms_key_in_another_region_refuses_every_request(deployment: Deployment, variable: str) -> None:
    arn = deployment.key(OTHER)
    deployment.env(**{variable: arn})
    with log_lines("hd-users") as lines:
        _refused(_list_users())
    refusal = next(line for line in lines if line["message"] == "request refused: region pin")
    assert refusal["differences"] == [f"{refusal['differences'][0].split(' KMS key ')[0]} KMS key {arn} is in {OTHER}"]


def test_a_webhook_queue_in_another_region_refuses_every_request(deployment: Deployment) -> None:
    here = boto3.client("sqs", region_name=PINNED).create_queue(QueueName="hd-webhooks")["QueueUrl"]
    deployment.env(HD_WEBHOOK_QUEUE_URL=here)
    assert _list_users()["statusCode"] == 401  # a queue in the pinned region passes
    elsewhere = boto3.client("sqs", region_name=OTHER).create_queue(QueueName="hd-webhooks")["QueueUrl"]
    deployment.env(HD_WEBHOOK_QUEUE_URL=elsewhere)
    install_services(None)
    with log_lines("hd-users") as lines:
        _refused(_list_users())
    refusal = next(line for line in lines if line["message"] == "request refused: region pin")
    assert refusal["differences"] == [f"webhook queue SQS queue {elsewhere} is in {OTHER}"]


def test_a_webhook_queue_url_that_names_no_region_is_refused_as_unconfirmed(deployment: Deployment) -> None:
    deployment.env(HD_WEBHOOK_QUEUE_URL="https://queue.example.com/123456789012/hd-webhooks")
    with log_lines("hd-users") as lines:
        _refused(_list_users())
    refusal = next(line for line in lines if line["message"] == "request refused: region pin")
    assert "region cannot be confirmed (not an SQS queue URL" in refusal["differences"][0]


def test_a_mismatch_is_kept_for_the_container_but_an_unconfirmed_region_is_asked_again(
    deployment: Deployment,
) -> None:
    deployment.bucket(OTHER, "hd-audit-elsewhere")
    _refused(_list_users())
    boto3.client("s3", region_name=OTHER).delete_bucket(Bucket="hd-audit-elsewhere")
    deployment.bucket(PINNED, "hd-audit-elsewhere")  # fixed in place: a new deployment would start new containers
    _refused(_list_users())

    install_services(None)
    deployment.env(HD_AUDIT_BUCKET="hd-audit-not-yet")
    settings.cache_clear()
    _refused(_list_users())  # NoSuchBucket: cannot be confirmed, so not kept
    deployment.bucket(PINNED, "hd-audit-not-yet")
    assert _list_users()["statusCode"] == 401


def test_without_a_pinned_region_nothing_is_served(deployment: Deployment) -> None:
    deployment.monkeypatch.delenv("HD_REGION")
    deployment.monkeypatch.delenv("AWS_REGION", raising=False)
    _refused(_list_users())
    deployment.env(AWS_REGION=PINNED)  # Lambda's own region stands in for HD_REGION
    install_services(None)
    assert _list_users()["statusCode"] == 401


def test_a_scheduled_run_fails_while_the_pin_does_not_hold(deployment: Deployment) -> None:
    from functions.audit import handler

    deployment.env(HD_KMS_DATA_KEY_ID=deployment.key(OTHER))
    schedule = {"id": "evt-pin", "source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}
    with pytest.raises(RegionMismatch, match=f"data key KMS key arn:aws:kms:{OTHER}:"):
        handler.lambda_handler(schedule, OutsideLambdaContext(function_name="hd-audit"))


def test_local_adapters_have_nothing_to_pin(deployment: Deployment) -> None:
    for name in ("HD_STORE", "HD_KEYS", "HD_AUDIT", "HD_REGION"):
        deployment.monkeypatch.delenv(name)
    settings.cache_clear()
    from functions.shared.wiring import require_region_pin

    require_region_pin()  # no AWS resource named: nothing to ask AWS, nothing refused
