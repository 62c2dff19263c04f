"""The shadow replay's services for this process: AWS adapters from `HD_SHADOW_*` settings, or `hd dev`'s.

In AWS, the API function and the state machine's task functions build `ReplayServices` on first use
from the settings below (read once). WriteReport alone has `HD_SHADOW_REVOKE_KEYS` set, with the control
plane's `HD_*` store, key and audit settings: it revokes the replay's key through the control table and
records the IAM event (`control_key_revoker`), which no other shadow function can. ReplayBatch alone has
`HD_SHADOW_SAMPLE_MASKS`: it reads the policies, catalog and mask keys to mask a mismatch's rows. `hd dev` installs its
own (`install_shadow_services`): the state folder, sealed local secrets, its engine host's address and
the local ASL interpreter.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from hd_core.errors import HdError
from hd_core.shadow.replay import EngineEndpoint, ReplayKeyRevoker, ReplayServices, control_key_revoker
from hd_core.shadow.sample_masks import MaskingSource, control_masking, stored_mask_key

_lock = threading.Lock()
_services: ReplayServices | None = None


class ShadowUnavailable(HdError):
    """This deployment has no shadow replay configured."""

    code = "HD_ERR_SHADOW_UNAVAILABLE"


class ShadowSettings(BaseSettings):
    """Where a shadow replay keeps its documents and secrets, which state machine runs it, how it reaches the engine."""

    model_config = SettingsConfigDict(env_prefix="HD_SHADOW_", extra="ignore")

    bucket: str = ""  # the data bucket; documents go under shadow/
    state_machine_arn: str = ""  # empty in the task functions: they start nothing
    secrets_kms_key_id: str = ""  # the key Secrets Manager encrypts replay secrets with (default: aws/secretsmanager)
    engine_host: str = ""  # the engine's internal load balancer, reached through the VPC
    engine_port: int = 5432
    engine_dbname: str = "hd"
    engine_sslmode: str = "verify-full"
    engine_ca_file: str = ""  # the CA bundle the engine's certificate chains to
    revoke_keys: bool = False  # WriteReport only: revoke the replay's key at its end (HD_* control settings)
    sample_masks: bool = False  # ReplayBatch only: mask a mismatch's rows with the engine's rules (HD_* settings)


@lru_cache(maxsize=1)
def shadow_settings() -> ShadowSettings:
    return ShadowSettings()


def shadow_services() -> ReplayServices:
    """This process's replay services, built from the settings on first use."""
    global _services
    with _lock:
        if _services is None:
            _services = _build_aws(shadow_settings())
        return _services


def install_shadow_services(value: ReplayServices | None) -> None:
    """Use `value` for every later request in this process (`hd dev`, tests); None forgets them."""
    global _services
    with _lock:
        _services = value


def _build_aws(config: ShadowSettings) -> ReplayServices:
    if not config.bucket or not config.engine_host:
        raise ShadowUnavailable("shadow replay is not configured in this deployment (HD_SHADOW_BUCKET, "
                                "HD_SHADOW_ENGINE_HOST)")
    import boto3

    from hd_core.adapters.aws_shadow import S3ShadowArtefacts, SecretsManagerShadowSecrets, StepFunctionsExecutions

    executions = (StepFunctionsExecutions(boto3.client("stepfunctions"), config.state_machine_arn)
                  if config.state_machine_arn else None)
    return ReplayServices(
        artefacts=S3ShadowArtefacts(boto3.client("s3"), config.bucket),
        secrets=SecretsManagerShadowSecrets(boto3.client("secretsmanager"), config.secrets_kms_key_id or None),
        engine=EngineEndpoint(config.engine_host, config.engine_port, config.engine_dbname, config.engine_sslmode,
                              config.engine_ca_file or None),
        executions=executions,
        revoke_key=_control_key_revoker() if config.revoke_keys else None,
        sample_masks=_control_masking() if config.sample_masks else None,
    )


def _control_masking() -> MaskingSource:
    """The engine's mask rules, catalog and mask keys, read from the control table and unwrapped with the data
    key (read only: the grants are `SAMPLE_MASK_TABLE_ACCESS` and Decrypt for the mask-key purpose)."""
    import boto3

    from hd_core.adapters.dynamodb_store import DynamoDbControlStore
    from hd_core.adapters.kms_keys import KmsKeyProvider
    from hd_core.control_settings import ControlApiSettings

    control = ControlApiSettings()
    if control.store != "dynamodb" or control.keys != "kms" or not control.kms_data_key_id:
        raise ShadowUnavailable("HD_SHADOW_SAMPLE_MASKS needs HD_STORE=dynamodb, HD_KEYS=kms and HD_KMS_DATA_KEY_ID")
    store = DynamoDbControlStore(control.dynamodb_table)
    keys = KmsKeyProvider(boto3.client("kms"),
                          jwt_key_ids=[k.strip() for k in control.kms_jwt_key_ids.split(",") if k.strip()],
                          checkpoint_key_id=control.kms_checkpoint_key_id, data_key_id=control.kms_data_key_id)
    return control_masking(store, lambda env: stored_mask_key(store, keys, env))


def _control_key_revoker() -> ReplayKeyRevoker:
    """Revocation through the control table, the IAM trail (chain items, signed checkpoints) and nothing else:
    no pepper, no token keys, no authenticator cache (a Lambda has none to forget; hosts re-read key records)."""
    import boto3

    from hd_core.adapters.dynamodb_store import DynamoDbControlStore
    from hd_core.adapters.kms_keys import KmsKeyProvider
    from hd_core.adapters.s3_checkpoints import S3CheckpointStore
    from hd_core.control_settings import ControlApiSettings
    from hd_core.iam_audit import IamAuditTrail

    control = ControlApiSettings()
    if control.store != "dynamodb" or control.keys != "kms" or control.audit != "s3" or not control.audit_bucket:
        raise ShadowUnavailable("HD_SHADOW_REVOKE_KEYS needs HD_STORE=dynamodb, HD_KEYS=kms, HD_AUDIT=s3 and "
                                "HD_AUDIT_BUCKET")
    store = DynamoDbControlStore(control.dynamodb_table)
    keys = KmsKeyProvider(boto3.client("kms"),
                          jwt_key_ids=[k.strip() for k in control.kms_jwt_key_ids.split(",") if k.strip()],
                          checkpoint_key_id=control.kms_checkpoint_key_id, data_key_id=control.kms_data_key_id)
    trail = IamAuditTrail(store, S3CheckpointStore(boto3.client("s3"), control.audit_bucket), keys,
                          checkpoint_every=control.checkpoint_every,
                          checkpoint_interval=timedelta(minutes=control.checkpoint_interval_minutes))
    return control_key_revoker(store, trail, None)
