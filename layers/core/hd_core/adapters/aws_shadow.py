"""Shadow replay's ports in AWS: S3 for documents, Secrets Manager for secrets, Step Functions for executions.

The execution is named after the replay id (StartExecution is idempotent for a name and the same
input), and its input is the `ExecutionInput` the API built: secret ARNs, never a secret value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, cast

from botocore.exceptions import ClientError

from hd_core.errors import NotFound
from hd_core.shadow.replay import ExecutionStatus
from hd_core.shadow.state_machine import ExecutionInput

SECRET_RECOVERY_DAYS = 7  # a replay's secret, deleted when it ends, can be restored for a week
# DeleteSecret on a secret already scheduled for deletion: "...because it was marked for deletion" (AWS),
# "...currently marked deleted" (moto).
_MARKED_DELETED = re.compile(r"marked (for )?delet", re.IGNORECASE)


# What ending a replay calls on the control table to revoke its key (`key_admin.revoke_key` through
# `dynamodb_store`), item kind by item kind: (actions, on the index?, partition keys). The CDK app grants
# WriteReport exactly these (dynamodb:LeadingKeys); a moto test checks every call of a revocation against them.
KEY_REVOCATION_TABLE_ACCESS: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (("dynamodb:GetItem", "dynamodb:UpdateItem"), False, "APIKEY#*"),  # the key: read it, set revoked_at
    (("dynamodb:Query", "dynamodb:PutItem"), False, "CHAIN#*"),  # the IAM chain: its head, the append
    (("dynamodb:Query",), True, "WEBHOOKS#*"),  # the organisation's webhook endpoints (key.revoked)
    (("dynamodb:PutItem",), False, "WHDELIVERY#*"),  # their pending deliveries
)

# What ReplayBatch reads of the control table to mask a mismatch's rows (`sample_masks.control_masking` through
# `dynamodb_store`): the policies and their version, the replay's key, the recorded catalog, the default
# organisation and the wrapped mask keys. Read only; the CDK app grants exactly these (dynamodb:LeadingKeys).
SAMPLE_MASK_TABLE_ACCESS: tuple[tuple[tuple[str, ...], bool, str], ...] = (
    (("dynamodb:Query",), False, "POLICIES"),
    (("dynamodb:GetItem",), False, "POLICY_VERSION"),
    (("dynamodb:GetItem",), False, "APIKEY#*"),
    (("dynamodb:GetItem",), False, "SETTING#catalog.table.*"),
    (("dynamodb:GetItem",), False, "SETTING#default_org_id"),
    (("dynamodb:GetItem",), False, "SETTING#mask_hash_key_wrapped.*"),
)


class S3ShadowArtefacts:
    """`ShadowArtefacts` as JSON objects in the data bucket (SSE as the bucket enforces)."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self._bucket = bucket

    def put_json(self, key: str, document: Mapping[str, Any]) -> None:
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=json.dumps(document, default=str).encode("utf-8"),
                            ContentType="application/json")

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        loaded = json.loads(body)
        return loaded if isinstance(loaded, dict) else None

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", ())]
        return sorted(keys)


class SecretsManagerShadowSecrets:
    """`ShadowSecrets` in Secrets Manager; the reference is the secret's ARN."""

    def __init__(self, client: Any, kms_key_id: str | None = None) -> None:
        self._client = client
        self._kms_key_id = kms_key_id

    def put_secret(self, name: str, value: str) -> str:
        extra = {"KmsKeyId": self._kms_key_id} if self._kms_key_id else {}
        created = self._client.create_secret(Name=name, SecretString=value,
                                             Tags=[{"Key": "hd:purpose", "Value": "shadow-replay"}], **extra)
        return str(created["ARN"])

    def get_secret(self, reference: str) -> str:
        try:
            return str(self._client.get_secret_value(SecretId=reference)["SecretString"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise NotFound("secret not found") from None
            raise


    def delete_secret(self, reference: str) -> None:
        try:
            self._client.delete_secret(SecretId=reference, RecoveryWindowInDays=SECRET_RECOVERY_DAYS)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            # Already gone, or already scheduled for deletion (a retried WriteReport): nothing left to do.
            if code == "ResourceNotFoundException" or (
                    code == "InvalidRequestException" and _MARKED_DELETED.search(str(error))):
                return
            raise


class StepFunctionsExecutions:
    """`ReplayExecutions` on the shadow replay state machine."""

    def __init__(self, client: Any, state_machine_arn: str) -> None:
        self._client = client
        self._arn = state_machine_arn

    def start(self, replay_id: str, execution_input: ExecutionInput) -> str:
        started = self._client.start_execution(stateMachineArn=self._arn, name=replay_id,
                                               input=json.dumps(execution_input, sort_keys=True))
        return str(started["executionArn"])

    def status(self, execution_id: str) -> ExecutionStatus:
        status = self._client.describe_execution(executionArn=execution_id)["status"]
        if status in ("RUNNING", "PENDING_REDRIVE"):
            return "RUNNING"
        return cast(ExecutionStatus, "SUCCEEDED" if status == "SUCCEEDED" else "FAILED")
