"""The one place that chooses adapters: DynamoDB, KMS and S3 in AWS; SQLite and local files in `hd dev`.

The control plane's services (`ControlServices`) are wired here for every process that needs them:
a Lambda container builds them on first use (functions/shared/wiring.py keeps them for warm starts),
`hd dev` and a fleet instance assemble them around the store their engine host already uses.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from hd_core.api_keys import ApiKeyAuthenticator, ApiKeyHasher
from hd_core.audit_export import AuditExportStore
from hd_core.auth_throttle import AuthThrottle
from hd_core.bootstrap import ensure_pepper
from hd_core.control_settings import ControlApiSettings
from hd_core.federation import FederatedIssuer, OidcFederation
from hd_core.federation_keys import PinnedJwks
from hd_core.iam_audit import IamAuditTrail
from hd_core.lockout_audit import record_lockout
from hd_core.models import utc_now
from hd_core.ports import CheckpointStore, ControlStore, KeyProvider, QueryAuditArchive
from hd_core.query_audit_chain import CHECKPOINT_FOLDER as QUERY_CHECKPOINT_FOLDER
from hd_core.query_audit_chain import CHECKPOINT_PREFIX as QUERY_CHECKPOINT_PREFIX
from hd_core.query_audit_chain import QUERY_CHECKPOINT_MESSAGE_TYPE, QueryChainStores
from hd_core.request_auth import RequestAuthenticator
from hd_core.sealed_secrets import SecretSealer
from hd_core.signing_keys import CheckpointKeyRing, JwtKeyRing, SigningKeyPolicy, kms_jwt_key_tags
from hd_core.tokens import JwtIssuer, JwtVerifier

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer

# Idempotency records share the control table under a partition of their own (functions/shared/idempotency).
IDEMPOTENCY_PARTITION = "IDEMPOTENCY#control-api"


@dataclass(frozen=True)
class ControlServices:
    """Everything a control-plane route may need, built once per process."""

    store: ControlStore
    keys: KeyProvider
    trail: IamAuditTrail
    hasher: ApiKeyHasher
    api_keys: ApiKeyAuthenticator
    jwt_keys: JwtKeyRing  # the stored ring of JWT keys: the current one signs, every one not disabled verifies
    checkpoints: CheckpointStore
    checkpoint_keys: CheckpointKeyRing  # the trail's: the current checkpoint key signs, every proven one verifies
    signing_key_policy: SigningKeyPolicy
    jwt_issuer: JwtIssuer
    jwt_verifier: JwtVerifier
    requests: RequestAuthenticator
    query_audit: QueryAuditArchive
    federation: OidcFederation
    secrets: SecretSealer  # TOTP seeds are stored sealed with a data key of `keys`
    auth_throttle: AuthThrottle  # brute-force limits of logins; the API key authenticator holds the same one
    # The first answers of retried creates, opened on first use: engine hosts assemble these services too.
    idempotency: Callable[[], BasePersistenceLayer]
    # Where audit exports go (beside the query audit); None where this process serves no exports.
    audit_exports: AuditExportStore | None = None
    # The query audit chain's records and checkpoints, for verify-chain?trail=queries.
    query_chain: QueryChainStores | None = None


def assemble_services(
    config: ControlApiSettings,
    *,
    store: ControlStore,
    keys: KeyProvider,
    checkpoints: CheckpointStore,
    query_audit: QueryAuditArchive,
    api_keys: ApiKeyAuthenticator | None = None,
    idempotency: BasePersistenceLayer | None = None,
    now: Callable[[], datetime] = utc_now,
    audit_exports: AuditExportStore | None = None,
    query_chain: QueryChainStores | None = None,
) -> ControlServices:
    """Wire the domain objects around already-chosen adapters (shared by Lambda and `hd dev`).

    `idempotency` defaults to the records' place that goes with `store` (`idempotency_records_for`).
    `now` is the clock credential checks and their throttle read (tests wind it by hand).
    """
    hasher = ApiKeyHasher()
    checkpoint_keys = CheckpointKeyRing(store, checkpoints, keys, now=now,
                                        refresh=timedelta(seconds=config.jwt_key_ring_refresh_seconds))
    trail = IamAuditTrail(
        store,
        checkpoints,
        checkpoint_keys,
        checkpoint_every=config.checkpoint_every,
        checkpoint_interval=timedelta(minutes=config.checkpoint_interval_minutes),
    )
    throttle = AuthThrottle(
        store, config.throttle_policy(), now=now, on_lockout=lambda lockout: record_lockout(store, trail, lockout)
    )
    authenticator = api_keys or ApiKeyAuthenticator(
        store, ensure_pepper(store), hasher=hasher, now=now, throttle=throttle
    )
    jwt_keys = JwtKeyRing(store, keys, now=now, refresh=timedelta(seconds=config.jwt_key_ring_refresh_seconds))
    issuer = JwtIssuer(jwt_keys, issuer=config.jwt_issuer, audience=config.jwt_audience)
    verifier = JwtVerifier(jwt_keys, issuer=config.jwt_issuer, audience=config.jwt_audience)
    signing_key_policy = SigningKeyPolicy(
        rotate_every=timedelta(days=config.jwt_key_rotate_days), token_lifetime=issuer.ttl,
        leeway=timedelta(seconds=verifier.leeway_seconds),
    )
    issuers = [FederatedIssuer(**item) for item in json.loads(config.federation_issuers)]
    return ControlServices(
        store=store,
        keys=keys,
        trail=trail,
        hasher=hasher,
        api_keys=authenticator,
        jwt_keys=jwt_keys,
        checkpoints=checkpoints,
        checkpoint_keys=checkpoint_keys,
        signing_key_policy=signing_key_policy,
        jwt_issuer=issuer,
        jwt_verifier=verifier,
        requests=RequestAuthenticator(store, authenticator, verifier),
        query_audit=query_audit,
        federation=OidcFederation(issuers, key_source=PinnedJwks(store).signing_key
                                  if config.federation_pinned_keys else None),
        secrets=SecretSealer(keys),
        auth_throttle=throttle,
        idempotency=(lambda: idempotency) if idempotency is not None else functools.cache(
            functools.partial(idempotency_records_for, store)),
        audit_exports=audit_exports,
        query_chain=query_chain,
    )


def idempotency_records_for(store: ControlStore) -> BasePersistenceLayer:
    """Where retried creates keep their first answers: the DynamoDB control table, or a file beside SQLite's."""
    table_name = getattr(store, "table_name", None)
    if table_name is not None:
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        from hd_core.adapters.dynamodb_schema import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE

        # The table's own TTL deletes expired records; the functions that create already write to the table.
        return DynamoDBPersistenceLayer(
            table_name=table_name, key_attr=PARTITION_KEY, sort_key_attr=SORT_KEY,
            static_pk_value=IDEMPOTENCY_PARTITION, expiry_attr=TTL_ATTRIBUTE,
        )
    from hd_core.adapters.sqlite_idempotency import SqliteIdempotencyStore, idempotency_path_for

    return SqliteIdempotencyStore(idempotency_path_for(getattr(store, "path", ":memory:")))


def build_services(config: ControlApiSettings) -> ControlServices:
    """Choose the adapters the settings name and wire them."""
    if config.store == "dynamodb" or config.keys == "kms" or config.audit == "s3":
        return _build_aws_services(config)
    return _build_local_services(config)


def _build_local_services(config: ControlApiSettings) -> ControlServices:
    from hd_core.adapters.local_audit import LocalFolderAuditArchive
    from hd_core.adapters.local_audit_exports import LocalFolderAuditExports
    from hd_core.adapters.local_checkpoints import LocalFolderCheckpointStore
    from hd_core.adapters.local_keys import LocalKeyFile
    from hd_core.adapters.sqlite_store import SqliteControlStore

    return assemble_services(
        config,
        store=SqliteControlStore(config.sqlite_path),
        keys=LocalKeyFile(config.local_key_file),
        checkpoints=LocalFolderCheckpointStore(config.audit_dir),
        query_audit=LocalFolderAuditArchive(config.audit_dir),
        audit_exports=LocalFolderAuditExports(config.audit_dir),
        query_chain=QueryChainStores(LocalFolderAuditArchive(config.audit_dir),
                                     LocalFolderCheckpointStore(config.audit_dir, QUERY_CHECKPOINT_FOLDER,
                                                                message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)),
    )


def _build_aws_services(config: ControlApiSettings) -> ControlServices:
    # boto3 is imported only here: the local path never pays for it at cold start.
    import boto3

    from hd_core.adapters.dynamodb_store import DynamoDbControlStore
    from hd_core.adapters.kms_keys import KmsKeyProvider
    from hd_core.adapters.s3_audit import S3AuditArchive
    from hd_core.adapters.s3_audit_exports import S3AuditExports
    from hd_core.adapters.s3_checkpoints import S3CheckpointStore

    if config.store != "dynamodb" or config.keys != "kms" or config.audit != "s3":
        raise ValueError("in AWS the control API needs HD_STORE=dynamodb, HD_KEYS=kms and HD_AUDIT=s3 together")
    s3 = boto3.client("s3")
    return assemble_services(
        config,
        store=DynamoDbControlStore(config.dynamodb_table),
        keys=KmsKeyProvider(
            boto3.client("kms"),
            jwt_key_ids=[key.strip() for key in config.kms_jwt_key_ids.split(",") if key.strip()],
            checkpoint_key_id=config.kms_checkpoint_key_id,
            data_key_id=config.kms_data_key_id,
            new_key_tags=kms_jwt_key_tags(config.kms_key_deployment_tag),
        ),
        checkpoints=S3CheckpointStore(s3, config.audit_bucket),
        query_audit=S3AuditArchive(s3, config.audit_bucket),
        audit_exports=S3AuditExports(s3, config.audit_bucket),
        query_chain=QueryChainStores(S3AuditArchive(s3, config.audit_bucket),
                                     S3CheckpointStore(s3, config.audit_bucket, prefix=QUERY_CHECKPOINT_PREFIX,
                                                       message_type=QUERY_CHECKPOINT_MESSAGE_TYPE)),
    )


def write_due_checkpoints(control: ControlServices) -> int:
    """Checkpoint every organisation's chain that grew since its last checkpoint; returns how many.

    What the EventBridge schedule runs in AWS (functions/audit) and `hd dev` runs every interval.
    """
    return sum(control.trail.checkpoint_if_behind(org.org_id) is not None for org in control.store.list_orgs())
