"""Ports: the interfaces hd_core needs from the outside world; adapters in `hd_core.adapters` implement them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol

from hd_core.models import (
    ApiKeyRecord,
    AuthFailures,
    ChainCheckpoint,
    Environment,
    IamEvent,
    JitRequest,
    JitStatus,
    Organization,
    RefreshToken,
    UsageDelta,
    User,
)
from hd_core.policies import PolicyKind, PolicyObject, PolicySnapshot
from hd_core.webhook_models import WebhookDelivery, WebhookEndpoint

# The control store as one protocol per kind of state: a consumer is typed against the narrowest it
# needs (the throttle against `AuthFailureStore`, an engine host's policy watcher against
# `PolicySource`), so its signature says what it may touch. Adapters implement the union,
# `ControlStore`, and one contract suite (tests/contract) holds every adapter to all of it.


class OrgStore(Protocol):
    """Organisations."""

    def put_org(self, org: Organization) -> None:
        """Create or replace an organisation."""
        ...

    def get_org(self, org_id: str) -> Organization | None:
        """The organisation with this id, or None."""
        ...

    def list_orgs(self) -> list[Organization]:
        """Every organisation."""
        ...


class EnvironmentStore(Protocol):
    """Deployment environments of organisations."""

    def put_environment(self, env: Environment) -> None:
        """Create or replace an environment."""
        ...

    def get_environment(self, env_id: str) -> Environment | None:
        """The environment with this id, or None."""
        ...

    def list_environments(self, org_id: str) -> list[Environment]:
        """The environments of one organisation."""
        ...


class UserStore(Protocol):
    """Users: unique emails and external ids, session ends, the TOTP replay guard."""

    def put_user(self, user: User) -> None:
        """Create or replace a user.

        Emails (compared case-insensitively) and external ids are unique across the store: raises
        `Conflict` if another user already holds one of them, and then stores nothing.
        `tokens_valid_after` never moves back: the stored value is the later of the stored one and
        `user`'s, so a write from a copy read before `end_user_sessions` cannot revive sessions.
        """
        ...

    def end_user_sessions(self, user_id: str, at: datetime) -> None:
        """Refuse every token of the user issued before `at`: move `tokens_valid_after` forward to `at`, atomically.

        A later time already stored is kept. Raises `NotFound` for an absent user.
        """
        ...

    def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        ...

    def get_user_by_email(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or None; a key lookup, never a scan."""
        ...

    def get_user_by_external_id(self, external_id: str) -> User | None:
        """The user linked to this federated identity (`<issuer>#<subject>`), or None."""
        ...

    def advance_mfa_step(self, user_id: str, step: int) -> bool:
        """Set the user's last accepted TOTP step to `step` only if it is lower, atomically.

        True if it advanced; False if that step (or a later one) was already spent or the user is
        absent. This is what makes a TOTP code single-use when two logins race with it.
        """
        ...

    def list_users(self, org_id: str) -> list[User]:
        """The users of one organisation, whatever their status."""
        ...


class ApiKeyStore(Protocol):
    """API key records (their hashes, never a plaintext)."""

    def put_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new API key record; raises `Conflict` if its key id already exists (never overwrites)."""
        ...

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The API key record with this key id, or None."""
        ...

    def list_api_keys(self, org_id: str) -> list[ApiKeyRecord]:
        """The API key records of one organisation, revoked ones included."""
        ...

    def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord:
        """Mark a key revoked at `at` (an earlier revocation time is kept); raises `NotFound`; returns the record."""
        ...

    def update_api_key(self, record: ApiKeyRecord) -> None:
        """Replace an existing key record (rotation, expiry bookkeeping); raises `NotFound` if absent."""
        ...


class RefreshTokenStore(Protocol):
    """Single-use refresh tokens and their revocable families."""

    def put_refresh_token(self, token: RefreshToken) -> None:
        """Store a new refresh token; raises `Conflict` if its id exists."""
        ...

    def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """The refresh token with this id, or None."""
        ...

    def use_refresh_token(self, token_id: str, at: datetime) -> RefreshToken:
        """Mark an unused token used, atomically; raises `Conflict` if it was already used, `NotFound` if absent."""
        ...

    def revoke_refresh_family(self, family_id: str, at: datetime) -> None:
        """Revoke every token of a family, present and future (reuse detected or logout)."""
        ...

    def refresh_family_revoked(self, family_id: str) -> bool:
        """Whether the family was revoked."""
        ...


class AuthFailureStore(Protocol):
    """Failed credential checks of throttled subjects (`hd_core.auth_throttle`)."""

    def get_auth_failures(self, subject: str) -> AuthFailures | None:
        """The failure record of a throttled subject, or None; it may have expired (deletion can lag)."""
        ...

    def record_auth_failure(
        self, subject: str, at: datetime, *, forget_before: datetime, expires_at: datetime
    ) -> AuthFailures:
        """Count one failed credential check at `at`, atomically; returns the record as this write left it.

        The count goes up by one if the last failure was at or after `forget_before`, else starts
        again at 1 (without a previous failure). Of concurrent writers each sees a different count,
        so exactly one sees any given number. The record is kept until `expires_at`, then deleted
        (DynamoDB TTL; the SQLite adapter deletes expired records as it writes).
        """
        ...

    def clear_auth_failures(self, subject: str) -> None:
        """Forget a subject's failures (its secret was just proven); nothing happens if it has none."""
        ...


class JitRequestStore(Protocol):
    """Just-in-time elevation requests and their one-step decisions."""

    def put_jit_request(self, request: JitRequest) -> None:
        """Store a new JIT request; raises `Conflict` if its id exists."""
        ...

    def get_jit_request(self, request_id: str) -> JitRequest | None:
        """The JIT request with this id, or None."""
        ...

    def list_jit_requests(self, org_id: str, status: JitStatus | None = None) -> list[JitRequest]:
        """The JIT requests of one organisation, optionally of one status, oldest first."""
        ...

    def decide_jit_request(self, request: JitRequest, *, from_status: JitStatus = JitStatus.PENDING) -> None:
        """Replace a request whose stored status is `from_status` with `request`, atomically.

        Pending by default (a decision); approved for a revocation. Raises `Conflict` if the stored
        request is in another status (someone else moved first), `NotFound` if absent.
        """
        ...


class IamChainStore(Protocol):
    """The hash-chained IAM audit trails: append-only chains of positioned events."""

    def append_iam_event(self, event: IamEvent) -> None:
        """Store `event` at position `event.seq` of its chain only if that position is free (a conditional write).

        Raises `Conflict` when another writer took the position first: the caller re-reads the head
        and retries, so two writers can never fork the chain.
        """
        ...

    def iam_chain_head(self, chain_id: str) -> IamEvent | None:
        """The event with the highest position in the chain, or None for an empty chain."""
        ...

    def list_iam_events(self, chain_id: str, after_seq: int = 0, limit: int | None = None) -> list[IamEvent]:
        """Events with position > `after_seq`, in position order, at most `limit`."""
        ...


class SettingsStore(Protocol):
    """Bootstrap facts by name (the default org id, the local pepper, wipe tokens)."""

    def get_setting(self, name: str) -> str | None:
        """A local bootstrap fact (for example the default org id), or None if never set."""
        ...

    def put_setting(self, name: str, value: str) -> None:
        """Set a bootstrap fact, replacing any previous value."""
        ...

    def put_setting_if_absent(self, name: str, value: str) -> str:
        """Set a bootstrap fact only if unset, atomically; returns the value now stored (first writer wins)."""
        ...


class PolicySource(Protocol):
    """Governance policies read, with the store-wide version that tells when they changed."""

    def get_policy(self, kind: PolicyKind, object_id: str) -> PolicyObject | None:
        """One policy object, or None."""
        ...

    def list_policies(self, org_id: str | None = None, kind: PolicyKind | None = None) -> list[PolicyObject]:
        """Policy objects, optionally of one organisation and/or kind, ordered by kind then id."""
        ...

    def policy_version(self) -> int:
        """The store-wide policy version: 0 before any change, +1 on every put or delete."""
        ...

    def policy_snapshot(self) -> PolicySnapshot:
        """Every policy object and the version they make up, read consistently."""
        ...


class PolicyStore(PolicySource, Protocol):
    """Governance policies read and written; every write bumps the store-wide policy version."""

    def put_policy(self, obj: PolicyObject, *, if_version: int | None = None) -> int:
        """Create or replace a policy object (same kind and id); returns the new store-wide policy version.

        With `if_version`, the write commits only while the policy version is still that one and
        raises `Conflict` otherwise: a compare-and-set on the whole policy set, for a write that is
        valid only against the snapshot it was decided on (who owns a table).
        """
        ...

    def create_policy(self, obj: PolicyObject) -> int:
        """Store a new policy object; returns the new store-wide policy version.

        Raises `Conflict` if an object of the same kind and id exists, and then changes nothing (the
        version included): the check and the write are one atomic step, so of two creators of one id
        exactly one succeeds.
        """
        ...

    def delete_policy(self, kind: PolicyKind, object_id: str) -> int:
        """Delete a policy object; raises `NotFound`; returns the new store-wide policy version."""
        ...


class UsageStore(Protocol):
    """Metered consumption in (organisation, day, user, agent) buckets."""

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add metered consumption, summing into existing (org, day, user, agent) buckets, atomically."""
        ...

    def usage(self, org_id: str, start: date, end: date) -> list[UsageDelta]:
        """The usage buckets of one organisation for days in [start, end], ordered by day, user, agent."""
        ...


class WebhookStore(Protocol):
    """Webhook endpoints and the outbox of their deliveries (hd_core.webhooks)."""

    def put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint; raises `Conflict` if its id exists."""
        ...

    def update_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Replace a stored endpoint (same id); raises `NotFound` if absent."""
        ...

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint with this id, or None."""
        ...

    def list_webhook_endpoints(self, org_id: str) -> list[WebhookEndpoint]:
        """Every endpoint of one organisation (disabled ones included), oldest first."""
        ...

    def put_webhook_delivery(self, delivery: WebhookDelivery) -> None:
        """Record a new delivery; raises `Conflict` if the endpoint already has this event id (and changes nothing)."""
        ...

    def get_webhook_delivery(self, endpoint_id: str, event_id: str) -> WebhookDelivery | None:
        """The delivery of one event to one endpoint, or None."""
        ...

    def update_webhook_delivery(self, delivery: WebhookDelivery, *, from_attempt: int) -> None:
        """Replace a delivery whose stored `attempt` is `from_attempt` with `delivery`, atomically.

        Raises `Conflict` if another worker moved it first (its attempt differs), `NotFound` if absent:
        of two workers claiming one attempt exactly one succeeds.
        """
        ...

    def list_webhook_deliveries(self, endpoint_id: str, limit: int | None = None) -> list[WebhookDelivery]:
        """The deliveries of one endpoint, newest first, at most `limit`."""
        ...

    def due_webhook_deliveries(self, at: datetime, limit: int = 100) -> list[WebhookDelivery]:
        """Pending deliveries whose `next_attempt_at` is at or before `at`, earliest first, at most `limit`."""
        ...


class ControlStore(
    OrgStore,
    EnvironmentStore,
    UserStore,
    ApiKeyStore,
    RefreshTokenStore,
    AuthFailureStore,
    JitRequestStore,
    IamChainStore,
    SettingsStore,
    PolicyStore,
    UsageStore,
    WebhookStore,
    Protocol,
):
    """Durable control state, all of it: what a store adapter implements (SQLite, DynamoDB).

    Implementations are safe to call from several threads at once. Getters return None for an
    absent entity; lists are ordered by creation time. Datetimes are timezone-aware UTC.
    """


class AuditSink(Protocol):
    """Where query audit records go (a local folder or the Object Lock bucket), one JSONL line each.

    `write` returns only once the record is stored; it raises if it cannot store it, and the
    statement it describes then fails without returning rows (fail closed).
    """

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record; `record["ts"]` (ISO-8601 UTC) decides its `audit/queries/YYYY/MM/DD/` partition."""
        ...


class QueryAuditArchive(Protocol):
    """Read access to stored query audit records, for audit search."""

    def records(self, day: date) -> Iterator[dict[str, object]]:
        """Every record stored in the `audit/queries/YYYY/MM/DD/` partition of `day`, in no particular order."""
        ...


class CheckpointStore(Protocol):
    """Where signed IAM chain checkpoints go: the Object Lock audit bucket, or a local folder in `hd dev`."""

    def put_checkpoint(self, checkpoint: ChainCheckpoint) -> None:
        """Store a checkpoint; never overwrites an earlier one."""
        ...

    def list_checkpoints(self, chain_id: str, *, size: int | None = None) -> list[ChainCheckpoint]:
        """Every checkpoint stored for the chain, in no meaningful order; with `size`, those filed under it.

        Object names are an index, not evidence: anyone able to write to the store can name an
        object anything, so callers judge each checkpoint by its signed content alone. A stored
        object that is not a checkpoint raises `HdError` rather than being skipped.
        """
        ...


@dataclass(frozen=True)
class DataKey:
    """A fresh data key: the plaintext to use now and forget, and the ciphertext to keep."""

    plaintext: bytes = field(repr=False)
    ciphertext: bytes


@dataclass(frozen=True)
class JwtPublicKey:
    """One RS256 verification key as it appears in the JWKS document."""

    kid: str
    public_pem: bytes


class JwtKeySet(Protocol):
    """The JWT keys tokens are signed and verified with: one signs, every listed one verifies."""

    def jwt_signing_kid(self) -> str:
        """The key id (`kid`) new JWTs are signed with."""
        ...

    def sign_jwt(self, signing_input: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 / SHA-256 (RS256) signature over a JWS signing input, with the current key."""
        ...

    def jwt_public_keys(self) -> list[JwtPublicKey]:
        """The current and previous RS256 verification keys, current first."""
        ...


class CheckpointKeys(Protocol):
    """What the IAM trail signs and verifies checkpoints with (the checkpoint-key ring in services)."""

    def checkpoint_key_id(self) -> str:
        """The id of the key checkpoints are signed with."""
        ...

    def sign_checkpoint(self, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 DER signature over `message`."""
        ...

    def verify_checkpoint(self, key_id: str, message: bytes, signature: bytes) -> bool:
        """Whether `signature` over `message` was made by the checkpoint key `key_id`; never raises."""
        ...


class KeyProvider(JwtKeySet, CheckpointKeys, Protocol):
    """Key material: KMS in AWS, a local key file in `hd dev` (dev only, loudly labelled).

    Private keys never leave the provider: callers hand it bytes to sign. Its own JWT key set is the
    one it was configured with; which keys sign and verify once keys rotate is the signing-key ring's
    (hd_core.signing_keys), which creates, uses by kid, disables and deletes keys through the methods below.
    """

    def configured_jwt_kids(self) -> list[str]:
        """The JWT key ids this provider was configured with, current first (they seed the ring)."""
        ...

    def create_jwt_key(self) -> str:
        """Make a new RS256 signing key (never replacing an existing one); returns its kid."""
        ...

    def sign_jwt_with(self, kid: str, signing_input: bytes) -> bytes:
        """RS256 signature with the key `kid`; raises `KeyUnavailable` for an unknown, disabled or deleted key."""
        ...

    def jwt_public_pem(self, kid: str) -> bytes:
        """The PEM public key of `kid`; raises `KeyUnavailable` for an unknown, disabled or deleted key."""
        ...

    def disable_jwt_key(self, kid: str) -> None:
        """Make `kid` unusable for signing and verifying (repeating it is harmless)."""
        ...

    def schedule_jwt_key_deletion(self, kid: str, pending_days: int) -> datetime:
        """Ask for a disabled key's deletion after `pending_days`; returns when it will be gone."""
        ...

    def purge_jwt_key(self, kid: str) -> None:
        """Once its deletion date has passed: delete the key (or confirm the provider did); raises `KeyUnavailable`."""
        ...

    def create_checkpoint_key(self) -> str:
        """Make a new ECDSA P-256 checkpoint signing key (never replacing an existing one); returns its kid."""
        ...

    def checkpoint_public_key(self, kid: str) -> bytes:
        """The DER SubjectPublicKeyInfo of the checkpoint key `kid`; raises `KeyUnavailable`."""
        ...

    def sign_checkpoint_with(self, kid: str, message: bytes) -> bytes:
        """ECDSA P-256 / SHA-256 DER signature with the checkpoint key `kid`; raises `KeyUnavailable`."""
        ...

    def generate_data_key(self, context: Mapping[str, str]) -> DataKey:
        """A new 256-bit data key bound to the encryption context `context`."""
        ...

    def decrypt_data_key(self, ciphertext: bytes, context: Mapping[str, str]) -> bytes:
        """The plaintext of a data key made by `generate_data_key` with the same context."""
        ...
