"""The region pin in the functions beside the API: shadow replay's task Lambdas pin the data bucket they keep
query sets and reports in (HD_SHADOW_BUCKET) and the key sealing their secrets, and the webhook delivery worker
refuses to read a delivery while anything it is configured with is outside the pinned region (moto, two regions).
"""

from __future__ import annotations

import boto3
import pytest

from functions.shared.wiring import install_services, require_region_pin
from hd_core.region_pinning import RegionMismatch
from tests.integration.functions.test_lambda_entry import log_lines
from tests.integration.functions.test_region_pin import OTHER, PINNED, Deployment
from tests.integration.functions.test_region_pin import deployment as deployment  # the fixture, re-exported

SHADOW_BUCKET = "hd-data-shadow-pin"


def _shadow_bucket(deployment: Deployment, region: str) -> None:
    boto3.client("s3", region_name=region).create_bucket(
        Bucket=SHADOW_BUCKET, CreateBucketConfiguration={"LocationConstraint": region})
    deployment.env(HD_SHADOW_BUCKET=SHADOW_BUCKET)


def test_a_shadow_task_refuses_to_run_with_its_data_bucket_in_another_region(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    # The task functions carry no control settings (only WriteReport does): the shadow bucket is all they pin.
    for name in ("HD_STORE", "HD_KEYS", "HD_AUDIT"):
        monkeypatch.delenv(name)
    _shadow_bucket(deployment, OTHER)
    from functions.shadow.tasks import prepare_handler

    with pytest.raises(RegionMismatch) as refused:
        prepare_handler({"execution": "x"}, None)
    assert refused.value.differences == (f"shadow data bucket S3 bucket {SHADOW_BUCKET} is in {OTHER}",)


def test_a_shadow_secrets_key_of_another_region_is_refused(deployment: Deployment) -> None:
    _shadow_bucket(deployment, PINNED)
    key = deployment.key(OTHER)
    deployment.env(HD_SHADOW_SECRETS_KMS_KEY_ID=key)
    with pytest.raises(RegionMismatch, match=f"shadow secrets key KMS key {key} is in {OTHER}"):
        require_region_pin()


def test_a_shadow_bucket_in_the_pinned_region_passes(deployment: Deployment) -> None:
    _shadow_bucket(deployment, PINNED)
    require_region_pin()


def _queue(deployment: Deployment) -> str:
    url = str(boto3.client("sqs", region_name=PINNED).create_queue(QueueName="hd-webhooks-pin")["QueueUrl"])
    deployment.env(HD_WEBHOOK_QUEUE_URL=url)
    return url


def test_the_webhook_worker_delivers_nothing_while_the_pin_does_not_hold(deployment: Deployment) -> None:
    url = _queue(deployment)
    boto3.client("s3", region_name=OTHER).create_bucket(
        Bucket="hd-audit-far", CreateBucketConfiguration={"LocationConstraint": OTHER})
    deployment.env(HD_AUDIT_BUCKET="hd-audit-far")
    install_services(None)
    from functions.webhooks import delivery

    record = {"messageId": "m-1", "body": '{"endpoint_id": "whe_x", "event_id": "evt_x"}'}
    with log_lines(delivery.SERVICE) as lines:
        with pytest.raises(RegionMismatch, match=f"audit bucket S3 bucket hd-audit-far is in {OTHER}"):
            delivery.lambda_handler({"Records": [record]}, None)
        with pytest.raises(RegionMismatch):  # the scheduled sweep too: it would re-enqueue deliveries
            delivery.lambda_handler({}, None)
    refused = [line for line in lines if line.get("message") == "webhook delivery refused: region pin"]
    assert refused and refused[0]["code"] == "HD_ERR_REGION_MISMATCH"
    attributes = boto3.client("sqs", region_name=PINNED).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"  # the sweep enqueued nothing


def test_the_webhook_worker_sweeps_when_everything_is_pinned(deployment: Deployment) -> None:
    _queue(deployment)
    from functions.webhooks import delivery

    assert delivery.lambda_handler({}, None) == {"requeued": 0}
