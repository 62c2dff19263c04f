"""`ControlStore` on one DynamoDB table: the control plane's store in AWS.

Single-table design; the key schema and the one index live in `dynamodb_schema`. Every item has
string keys `PK`/`SK`; items that appear in a list also carry `GSI1PK`/`GSI1SK`:

    item                  PK                   SK                          GSI1PK             GSI1SK
    organisation          ORG#<org_id>         ORG                         ORGS               <created_at>#<org_id>
    environment           ENV#<env_id>         ENV                         ENVS#<org_id>      <created_at>#<env_id>
    user                  USER#<user_id>       USER                        USERS#<org_id>     <created_at>#<user_id>
    email claim           EMAIL#<email key>    EMAIL                       -                  -
    external id claim     EXTID#<external id>  EXTID                       -                  -
    API key               APIKEY#<key_id>      APIKEY                      APIKEYS#<org_id>   <created_at>#<key_id>
    refresh token         REFRESH#<token_id>   REFRESH                     -                  -
    revoked token family  FAMILY#<family_id>   REVOKED                     -                  -
    auth failures         AUTHFAIL#<subject>   AUTHFAIL                    -                  -
    JIT request           JIT#<request_id>     JIT                         JITS#<org_id>      <requested_at>#<id>
    webhook endpoint      WEBHOOK#<id>         WEBHOOK                     WEBHOOKS#<org_id>  <created_at>#<id>
    forget request        FORGET#<request_id>  FORGET                      FORGETS#<org_id>   <requested_at>#<id>
    forget host ack       FORGETACK#<req. id>  HOST#<host_id>              -                  -
    fleet host            HOST#<host_id>       HOST                        HOSTS#<org_id>     <host_id>
    policy preview        PREVIEWS             <request_id>                PREVIEWS_PENDING   <created_at>#<id>
    webhook delivery      WHDELIVERY#<endp.>   EVT#<event_id>              WHDUE (pending)    <next_attempt_at>#...
    IAM event             CHAIN#<chain_id>     EVT#<seq, 12 digits>        -                  -
    setting               SETTING#<name>       SETTING                     -                  -
    policy object         POLICIES             <kind>#<object_id>          POLICIES#<org_id>  <kind>#<object_id>
    policy version        POLICY_VERSION       POLICY_VERSION              -                  -
    usage bucket          USAGE#<org_id>       <day>#<JSON [user, agent]>  -                  -

Other attributes are the entity's `hd_core.records` record (the same record the SQLite adapter
stores): datetimes as fixed-width ISO-8601 UTC strings (so GSI1SK sorts by time), tuples as lists,
enums as their values, IAM `before`/`after` as canonical JSON strings, and a None field is left out
(so `if_not_exists` sees it as unset). A user also carries `revision`, the counter its optimistic
writes are conditioned on; a claim item carries the owning `user_id`; a policy
object is its `policy_codec` JSON document in `document`, plus `kind`, `object_id` and `org_id`
(a shared table's binding has no org and so no GSI1 keys); the policy version item holds `version`;
a usage bucket holds `org_id`, `day`, `user_id`, `agent_id` (absent for no agent) and the counters
`statements`, `credits`, `rows`, `bytes`, summed by `ADD`. DynamoDB numbers are Decimals: credits
are converted at this boundary.
An auth failure record also carries the table's TTL attribute (`dynamodb_schema.TTL_ATTRIBUTE`,
epoch seconds of its `expires_at`), so DynamoDB deletes it once it no longer matters.
A webhook delivery is in the sparse `WHDUE` listing only while pending (the local delivery thread's
"what is due" query); a delivered or failed one carries the TTL attribute instead, 30 days after its
creation, so the delivery log keeps a month.
A policy preview request is in the sparse `PREVIEWS_PENDING` listing until a host claims it (the
fleet's every-second "what is waiting" query) and carries the TTL attribute of its expiry.
A fleet host (hd_core/erasure_fleet.py) carries the TTL attribute a week after its last accepted
heartbeat, so terminated hosts leave the registry; a forget host ack is written with a condition
(no ack yet, or a failed one), so a host's done ack is never replaced.

Uniqueness is a claim item written in the same TransactWriteItems as the entity (emails, external
ids), or a conditional write on the entity's own key (API keys, refresh tokens, JIT requests, IAM
chain positions). Reads by id use strongly consistent GetItem; lists Query the table or GSI1 (GSI
reads are eventually consistent: an entity written a moment ago may be missing from a list).
Like the SQLite adapter, this store does not enforce references between entities.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from hd_core.adapters.dynamodb_schema import (
    GSI1_NAME,
    GSI1_PARTITION_KEY,
    GSI1_SORT_KEY,
    PARTITION_KEY,
    SORT_KEY,
    TTL_ATTRIBUTE,
)
from hd_core.erasure_models import (
    FLEET_HOSTS,
    FORGET_HOST_ACKS,
    FORGET_REQUESTS,
    AckStatus,
    FleetHost,
    ForgetHostAck,
    ForgetRequest,
    ForgetStatus,
)
from hd_core.errors import Conflict, InvalidRequest, NotFound
from hd_core.models import (
    ApiKeyRecord,
    AuthFailures,
    Environment,
    IamEvent,
    JitRequest,
    JitStatus,
    Organization,
    RefreshToken,
    UsageDelta,
    User,
    email_key,
    utc_now,
)
from hd_core.policies import PolicyKind, PolicyObject, PolicySnapshot
from hd_core.policy_codec import from_document, kind_of, object_id, to_document
from hd_core.policy_previews import CLAIMED as PREVIEW_CLAIMED
from hd_core.policy_previews import PENDING as PREVIEW_PENDING
from hd_core.policy_previews import PREVIEW_REQUESTS, PreviewRequest
from hd_core.records import (
    API_KEYS,
    AUTH_FAILURES,
    ENVIRONMENTS,
    IAM_EVENTS,
    JIT_REQUESTS,
    ORGANIZATIONS,
    REFRESH_TOKENS,
    USAGE,
    USERS,
    decode_time,
    encode_json_object,
    encode_time,
)
from hd_core.webhook_models import (
    WEBHOOK_DELIVERIES,
    WEBHOOK_ENDPOINTS,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

Item = dict[str, Any]  # an item in plain Python values (keys included)
Key = tuple[str, str]  # (PK, SK)

# Optimistic writes (policy version bumps, user claims) retry when another writer moved first;
# every lost round means someone else committed, so the store as a whole always progresses.
_MAX_OPTIMISTIC_ATTEMPTS = 64
_MAX_TRANSACTION_ITEMS = 100
_SEQ_DIGITS = 12
_POLICY_PARTITION = "POLICIES"
_POLICY_VERSION_KEY: Key = ("POLICY_VERSION", "POLICY_VERSION")
_PREVIEW_PARTITION = "PREVIEWS"  # every policy preview request, by id (minutes of them: TTL)
_PREVIEW_PENDING_LISTING = "PREVIEWS_PENDING"  # GSI1 partition of requests no host has claimed yet
_DUE_PARTITION = "WHDUE"  # GSI1 partition of pending webhook deliveries, by next attempt time
_DELIVERY_LOG_KEPT = timedelta(days=30)  # finished deliveries expire (TTL) this long after creation

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


class DynamoDbControlStore:
    """A `ControlStore` in one DynamoDB table shaped by `dynamodb_schema.create_table_kwargs`."""

    def __init__(self, table_name: str, *, client: Any | None = None) -> None:
        self.table_name = table_name
        # A low-level client: transactions exist only there, and one client is safe to share across threads.
        self._client = client if client is not None else boto3.client("dynamodb")

    # --- organisations ----------------------------------------------------------------------

    def put_org(self, org: Organization) -> None:
        """Create or replace an organisation."""
        self._put(_org_item(org))

    def get_org(self, org_id: str) -> Organization | None:
        """The organisation with this id, or None."""
        item = self._get(_org_key(org_id))
        return None if item is None else ORGANIZATIONS.decode(item)

    def list_orgs(self) -> list[Organization]:
        """Every organisation, oldest first (one Query of the fixed `ORGS` index partition)."""
        return [ORGANIZATIONS.decode(item) for item in self._query_index("ORGS")]

    # --- environments -----------------------------------------------------------------------

    def put_environment(self, env: Environment) -> None:
        """Create or replace an environment."""
        self._put(_environment_item(env))

    def get_environment(self, env_id: str) -> Environment | None:
        """The environment with this id, or None."""
        item = self._get(("ENV#" + env_id, "ENV"))
        return None if item is None else ENVIRONMENTS.decode(item)

    def list_environments(self, org_id: str) -> list[Environment]:
        """The environments of one organisation, oldest first."""
        return [ENVIRONMENTS.decode(item) for item in self._query_index("ENVS#" + org_id)]

    # --- users ------------------------------------------------------------------------------

    def put_user(self, user: User) -> None:
        """Create or replace a user, claiming its email and external ids in the same transaction.

        Raises `Conflict`, storing nothing, if another user holds the email (case-insensitively) or
        one of the external ids.
        """
        for _ in range(_MAX_OPTIMISTIC_ATTEMPTS):
            current = self._get(_user_key(user.user_id))
            try:
                self._transact(_user_writes(self.table_name, user, current))
                return
            except ClientError as error:
                reasons = _cancellation_reasons(error)
                if any(reason == "ConditionalCheckFailed" for reason in reasons[1:]):
                    raise Conflict(
                        f"another user already holds the email or an external id of user {user.user_id}"
                    ) from None
                if not _lost_a_race(reasons, guard=0):
                    raise
                # The user item changed between our read and our write: recompute the claims.
        raise Conflict(f"user {user.user_id} is being changed concurrently; try again")

    def get_user(self, user_id: str) -> User | None:
        """The user with this id, or None."""
        item = self._get(_user_key(user_id))
        return None if item is None else USERS.decode(item)

    def get_user_by_email(self, email: str) -> User | None:
        """The user with this email (case-insensitive), or None: the claim item, then the user."""
        wanted = email_key(email)
        user = self._user_of_claim(("EMAIL#" + wanted, "EMAIL"))
        # The user may have changed email between the two reads; the claim then no longer speaks for it.
        return user if user is not None and email_key(user.email) == wanted else None

    def advance_mfa_step(self, user_id: str, step: int) -> bool:
        """Set the user's last accepted TOTP step to `step` only if it is lower: one conditional update."""
        advanced = self._update(
            _user_key(user_id),
            "SET mfa_last_step = :step",
            {":step": step},
            condition="attribute_exists(PK) AND (attribute_not_exists(mfa_last_step) OR mfa_last_step < :step)",
            return_values="NONE",
        )
        return advanced is not None

    def end_user_sessions(self, user_id: str, at: datetime) -> None:
        """Move the user's `tokens_valid_after` forward to `at`: one conditional update; raises `NotFound`.

        The revision moves too, so a `put_user` computed from an earlier read retries and keeps the new time.
        """
        encoded = encode_time(at)
        moved = self._update(
            _user_key(user_id),
            "SET tokens_valid_after = :at, revision = revision + :one",
            {":at": encoded, ":one": 1},
            condition="attribute_exists(PK) AND (attribute_not_exists(tokens_valid_after) OR tokens_valid_after < :at)",
            return_values="NONE",
        )
        if moved is None and self._get(_user_key(user_id)) is None:
            raise NotFound(f"user {user_id} not found")

    def get_user_by_external_id(self, external_id: str) -> User | None:
        """The user linked to this federated identity (`<issuer>#<subject>`), or None."""
        user = self._user_of_claim(("EXTID#" + external_id, "EXTID"))
        return user if user is not None and external_id in user.external_ids else None

    def list_users(self, org_id: str) -> list[User]:
        """The users of one organisation, oldest first, whatever their status."""
        return [USERS.decode(item) for item in self._query_index("USERS#" + org_id)]

    def _user_of_claim(self, claim_key: Key) -> User | None:
        claim = self._get(claim_key)
        return None if claim is None else self.get_user(str(claim["user_id"]))

    # --- API keys ---------------------------------------------------------------------------

    def put_api_key(self, record: ApiKeyRecord) -> None:
        """Store a new key record; raises `Conflict` if the key id exists, so a key is never overwritten."""
        if not self._put(_api_key_item(record), condition="attribute_not_exists(PK)"):
            raise Conflict(f"api key {record.key_id} already exists")

    def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        """The key record with this key id, or None."""
        item = self._get(_api_key_key(key_id))
        return None if item is None else API_KEYS.decode(item)

    def list_api_keys(self, org_id: str) -> list[ApiKeyRecord]:
        """The key records of one organisation, revoked ones included, oldest first."""
        return [API_KEYS.decode(item) for item in self._query_index("APIKEYS#" + org_id)]

    def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord:
        """Mark a key revoked at `at`, keeping an earlier revocation time; raises `NotFound`."""
        attributes = self._update(
            _api_key_key(key_id),
            "SET revoked_at = if_not_exists(revoked_at, :at)",
            {":at": encode_time(at)},
            condition="attribute_exists(PK)",
        )
        if attributes is None:
            raise NotFound(f"api key {key_id} not found")
        return API_KEYS.decode(attributes)

    def update_api_key(self, record: ApiKeyRecord) -> None:
        """Replace an existing key record (rotation, expiry bookkeeping); raises `NotFound` if absent."""
        if not self._put(_api_key_item(record), condition="attribute_exists(PK)"):
            raise NotFound(f"api key {record.key_id} not found")

    # --- refresh tokens ---------------------------------------------------------------------

    def put_refresh_token(self, token: RefreshToken) -> None:
        """Store a new refresh token; raises `Conflict` if its id exists."""
        if not self._put(_refresh_token_item(token), condition="attribute_not_exists(PK)"):
            raise Conflict(f"refresh token {token.token_id} already exists")

    def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """The refresh token with this id, or None."""
        item = self._get(_refresh_token_key(token_id))
        return None if item is None else REFRESH_TOKENS.decode(item)

    def use_refresh_token(self, token_id: str, at: datetime) -> RefreshToken:
        """Mark an unused token used, atomically; raises `Conflict` if it was already used, `NotFound` if absent."""
        attributes = self._update(
            _refresh_token_key(token_id),
            "SET used_at = :at",
            {":at": encode_time(at)},
            condition="attribute_exists(PK) AND attribute_not_exists(used_at)",
        )
        if attributes is not None:
            return REFRESH_TOKENS.decode(attributes)
        # Tokens are never deleted, so a failed condition on an existing item means "already used".
        if self._get(_refresh_token_key(token_id)) is None:
            raise NotFound(f"refresh token {token_id} not found")
        raise Conflict(f"refresh token {token_id} was already used")

    def revoke_refresh_family(self, family_id: str, at: datetime) -> None:
        """Revoke every token of a family, present and future; the first revocation time is kept."""
        self._update(
            _family_key(family_id),
            "SET family_id = :family, revoked_at = if_not_exists(revoked_at, :at)",
            {":family": family_id, ":at": encode_time(at)},
            return_values="NONE",
        )

    def refresh_family_revoked(self, family_id: str) -> bool:
        """Whether the family was revoked."""
        return self._get(_family_key(family_id)) is not None

    # --- authentication throttling ----------------------------------------------------------

    def get_auth_failures(self, subject: str) -> AuthFailures | None:
        """The failure record of a throttled subject, or None; it may have expired (TTL deletion lags)."""
        item = self._get(_auth_failures_key(subject))
        return None if item is None else AUTH_FAILURES.decode(item)

    def record_auth_failure(
        self, subject: str, at: datetime, *, forget_before: datetime, expires_at: datetime
    ) -> AuthFailures:
        """Count one failure: an atomic ADD to a current record, else a conditional put of a fresh one.

        Either write is conditioned on what it assumes (a current record; no record or a stale one),
        so two hosts racing never both restart the count: the loser retries the other write.
        """
        key = _auth_failures_key(subject)
        forget = {":forget": encode_time(forget_before)}
        fresh = AuthFailures(subject, 1, at, None, expires_at)
        for _ in range(_MAX_OPTIMISTIC_ATTEMPTS):
            # Every operand reads the item as it was before the update: the previous failure is the old last one.
            updated = self._update(
                key,
                "SET previous_failure_at = last_failure_at, last_failure_at = :at, expires_at = :expires,"
                " #ttl = :ttl ADD #count :one",
                {":at": encode_time(at), ":expires": encode_time(expires_at), ":ttl": _epoch(expires_at), ":one": 1}
                | forget,
                condition="last_failure_at >= :forget",
                names={"#count": "count", "#ttl": TTL_ATTRIBUTE},
            )
            if updated is not None:
                return AUTH_FAILURES.decode(updated)
            if self._put(
                _auth_failures_item(fresh), condition="attribute_not_exists(PK) OR last_failure_at < :forget",
                values=forget,
            ):
                return fresh
        raise Conflict(f"the failures of {subject} kept changing; the failure could not be counted")

    def clear_auth_failures(self, subject: str) -> None:
        """Forget a subject's failures: one DeleteItem, a no-op when there is no record."""
        self._client.delete_item(TableName=self.table_name, Key=_serialize_key(_auth_failures_key(subject)))

    # --- just-in-time elevation -------------------------------------------------------------

    def put_jit_request(self, request: JitRequest) -> None:
        """Store a new JIT request; raises `Conflict` if its id exists."""
        if not self._put(_jit_item(request), condition="attribute_not_exists(PK)"):
            raise Conflict(f"jit request {request.request_id} already exists")

    def get_jit_request(self, request_id: str) -> JitRequest | None:
        """The JIT request with this id, or None."""
        item = self._get(_jit_key(request_id))
        return None if item is None else JIT_REQUESTS.decode(item)

    def list_jit_requests(self, org_id: str, status: JitStatus | None = None) -> list[JitRequest]:
        """The JIT requests of one organisation, optionally of one status, oldest first."""
        requests = [JIT_REQUESTS.decode(item) for item in self._query_index("JITS#" + org_id)]
        return requests if status is None else [request for request in requests if request.status == status]

    def decide_jit_request(self, request: JitRequest, *, from_status: JitStatus = JitStatus.PENDING) -> None:
        """Replace a request still in `from_status` with `request`; `Conflict` if it moved on, `NotFound` if absent."""
        stored = self._put(
            _jit_item(request),
            condition="attribute_exists(PK) AND #status = :from",
            names={"#status": "status"},
            values={":from": JitStatus(from_status).value},
        )
        if stored:
            return
        if self._get(_jit_key(request.request_id)) is None:
            raise NotFound(f"jit request {request.request_id} not found")
        raise Conflict(f"jit request {request.request_id} is no longer {JitStatus(from_status).value}")

    # --- forget requests (GDPR erasure) -------------------------------------------------------

    def put_forget_request(self, request: ForgetRequest) -> None:
        """Store a new forget request; raises `Conflict` if its id exists."""
        if not self._put(_forget_item(request), condition="attribute_not_exists(PK)"):
            raise Conflict(f"forget request {request.request_id} already exists")

    def get_forget_request(self, request_id: str) -> ForgetRequest | None:
        """The forget request with this id, or None."""
        item = self._get(_forget_key(request_id))
        return None if item is None else FORGET_REQUESTS.decode(item)

    def list_forget_requests(self, org_id: str) -> list[ForgetRequest]:
        """The forget requests of one organisation, oldest first."""
        return [FORGET_REQUESTS.decode(item) for item in self._query_index("FORGETS#" + org_id)]

    def list_unsettled_forget_requests(self) -> list[ForgetRequest]:
        """Requests not completed, or completed with object versions still to purge: the items that carry
        `_UNSETTLED_ATTRIBUTE` (a settled request loses it), read with a filtered Scan."""
        items = self._scan_marked(_UNSETTLED_ATTRIBUTE)
        requests = [FORGET_REQUESTS.decode(item) for item in items]
        return sorted(requests, key=lambda request: (request.requested_at, request.request_id))

    def update_forget_request(self, request: ForgetRequest, *, from_status: ForgetStatus) -> None:
        """Replace a request still in `from_status`; `Conflict` if it moved on, `NotFound` if absent."""
        stored = self._put(
            _forget_item(request),
            condition="attribute_exists(PK) AND #status = :from",
            names={"#status": "status"},
            values={":from": ForgetStatus(from_status).value},
        )
        if stored:
            return
        if self._get(_forget_key(request.request_id)) is None:
            raise NotFound(f"forget request {request.request_id} not found")
        raise Conflict(f"forget request {request.request_id} is no longer {ForgetStatus(from_status).value}")

    # --- fleet hosts and their forget acks (hd_core/erasure_fleet.py) -------------------------

    def record_fleet_host(self, host: FleetHost) -> None:
        """Create or replace the host's registry entry (one PutItem).

        No TTL: a host silent for days (a stopped instance) may come back with its writable tables, so only
        the forget worker removes the entry, once EC2 says the instance is gone (`forget_fleet_host`).
        """
        record = FLEET_HOSTS.encode(host)
        self._put(_keyed(("HOST#" + host.host_id, "HOST"), record, "HOSTS#" + host.org_id, host.host_id))

    def forget_fleet_host(self, host_id: str) -> None:
        """Remove the host's registry entry (one DeleteItem; nothing happens when there is none)."""
        self._client.delete_item(TableName=self.table_name, Key=_serialize_key(("HOST#" + host_id, "HOST")))

    def list_fleet_hosts(self, org_id: str) -> list[FleetHost]:
        """Every registered host of the organisation, by host id (a GSI1 query: eventually consistent)."""
        return [FLEET_HOSTS.decode(item) for item in self._query_index("HOSTS#" + org_id)]

    def put_forget_host_ack(self, ack: ForgetHostAck) -> bool:
        """Store the ack unless a done ack of this request and host exists (False: nothing written)."""
        return self._put(
            _keyed(("FORGETACK#" + ack.request_id, "HOST#" + ack.host_id), dict(FORGET_HOST_ACKS.encode(ack))),
            condition="attribute_not_exists(PK) OR #status = :replaceable",
            names={"#status": "status"},
            values={":replaceable": AckStatus.FAILED.value},
        )

    def list_forget_host_acks(self, request_id: str) -> list[ForgetHostAck]:
        """Every host's ack of the request, by host id (one strongly consistent Query of its partition)."""
        items = self._query_table("PK = :pk", {":pk": "FORGETACK#" + request_id})
        return [FORGET_HOST_ACKS.decode(item) for item in items]

    def _scan_marked(self, attribute: str) -> list[Item]:
        # Few requests are ever unsettled at once (days of them at most), and only the scheduled job
        # reads them, so a filtered Scan costs less than an index kept for it.
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "FilterExpression": "attribute_exists(#marked)",
            "ExpressionAttributeNames": {"#marked": attribute},
            "ConsistentRead": True,
        }
        found: list[Item] = []
        while True:
            response = self._client.scan(**request)
            found.extend(_deserialize(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return found
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    # --- policy previews (hd_core/policy_previews.py) ---------------------------------------

    def put_preview_request(self, request: PreviewRequest) -> None:
        """Store a new pending request, with the TTL attribute of its expiry; `Conflict` if its id exists."""
        if not self._put(_preview_item(request), condition="attribute_not_exists(PK)"):
            raise Conflict(f"preview request {request.request_id} already exists")

    def get_preview_request(self, request_id: str) -> PreviewRequest | None:
        """The request with this id, or None."""
        item = self._get(_preview_key(request_id))
        return None if item is None else PREVIEW_REQUESTS.decode(item)

    def pending_preview_requests(self, at: datetime) -> list[PreviewRequest]:
        """Unclaimed requests not expired at `at`, oldest first: one Query of the sparse pending listing.

        Hosts ask every second; a claim takes the request out of the listing, so the read covers only
        requests waiting now, however many answered ones wait for TTL. The index is eventually consistent:
        a request claimed a moment ago may still be listed, and its claim then fails as it should.
        """
        found = [PREVIEW_REQUESTS.decode(item) for item in self._query_index(_PREVIEW_PENDING_LISTING)]
        return [request for request in found if request.status == PREVIEW_PENDING and request.expires_at > at]

    def claim_preview_request(self, request_id: str, host_id: str, at: datetime) -> PreviewRequest | None:
        """Make a pending, unexpired request `host_id`'s (conditional update); None when another host won."""
        updated = self._update(
            _preview_key(request_id), f"SET #status = :claimed, host_id = :host REMOVE {GSI1_PARTITION_KEY}, "
            f"{GSI1_SORT_KEY}",
            {":claimed": PREVIEW_CLAIMED, ":host": host_id, ":pending": PREVIEW_PENDING, ":at": encode_time(at)},
            condition="attribute_exists(PK) AND #status = :pending AND expires_at > :at", names={"#status": "status"},
        )
        return None if updated is None else PREVIEW_REQUESTS.decode(updated)

    def answer_preview_request(self, request_id: str, host_id: str, status: str, answer: dict[str, object]) -> bool:
        """Store the answer of the host that claimed the request; False if it is not that host's claim."""
        updated = self._update(
            _preview_key(request_id), "SET #status = :status, answer = :answer",
            {":status": status, ":answer": encode_json_object(answer), ":claimed": PREVIEW_CLAIMED,
             ":host": host_id},
            condition="#status = :claimed AND host_id = :host", names={"#status": "status"},
        )
        return updated is not None

    # --- webhooks ---------------------------------------------------------------------------

    def put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint; raises `Conflict` if its id exists."""
        if not self._put(_webhook_endpoint_item(endpoint), condition="attribute_not_exists(PK)"):
            raise Conflict(f"webhook endpoint {endpoint.endpoint_id} already exists")

    def update_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Replace a stored endpoint; raises `NotFound` if absent."""
        if not self._put(_webhook_endpoint_item(endpoint), condition="attribute_exists(PK)"):
            raise NotFound(f"webhook endpoint {endpoint.endpoint_id} not found")

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The endpoint with this id, or None."""
        item = self._get(_webhook_endpoint_key(endpoint_id))
        return None if item is None else WEBHOOK_ENDPOINTS.decode(item)

    def list_webhook_endpoints(self, org_id: str) -> list[WebhookEndpoint]:
        """Every endpoint of one organisation, oldest first."""
        return [WEBHOOK_ENDPOINTS.decode(item) for item in self._query_index("WEBHOOKS#" + org_id)]

    def put_webhook_delivery(self, delivery: WebhookDelivery) -> None:
        """Record a new delivery; raises `Conflict` if the endpoint already has this event id."""
        if not self._put(_webhook_delivery_item(delivery), condition="attribute_not_exists(PK)"):
            raise Conflict(f"event {delivery.event_id} is already recorded for {delivery.endpoint_id}")

    def get_webhook_delivery(self, endpoint_id: str, event_id: str) -> WebhookDelivery | None:
        """The delivery of one event to one endpoint, or None."""
        item = self._get(_webhook_delivery_key(endpoint_id, event_id))
        return None if item is None else WEBHOOK_DELIVERIES.decode(item)

    def update_webhook_delivery(self, delivery: WebhookDelivery, *, from_attempt: int) -> None:
        """Replace a delivery still at attempt `from_attempt`; `Conflict` if it moved on, `NotFound` if absent."""
        stored = self._put(
            _webhook_delivery_item(delivery),
            condition="attribute_exists(PK) AND attempt = :from",
            values={":from": from_attempt},
        )
        if stored:
            return
        if self._get(_webhook_delivery_key(delivery.endpoint_id, delivery.event_id)) is None:
            raise NotFound(f"delivery of {delivery.event_id} to {delivery.endpoint_id} not found")
        raise Conflict(f"delivery of {delivery.event_id} is no longer at attempt {from_attempt}")

    def list_webhook_deliveries(self, endpoint_id: str, limit: int | None = None) -> list[WebhookDelivery]:
        """The deliveries of one endpoint, newest first, at most `limit` (the log keeps about 30 days)."""
        items = self._query_table("PK = :pk", {":pk": "WHDELIVERY#" + endpoint_id})
        deliveries = sorted(
            (WEBHOOK_DELIVERIES.decode(item) for item in items),
            key=lambda delivery: (delivery.created_at, delivery.event_id),
            reverse=True,
        )
        return deliveries if limit is None else deliveries[:limit]

    def due_webhook_deliveries(self, at: datetime, limit: int = 100) -> list[WebhookDelivery]:
        """Pending deliveries due at or before `at`, earliest first, at most `limit` (read from GSI1, so may lag)."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": GSI1_NAME,
            "KeyConditionExpression": "#pk = :pk AND #sk <= :upto",
            "ExpressionAttributeNames": {"#pk": GSI1_PARTITION_KEY, "#sk": GSI1_SORT_KEY},
            # Every sort key of a delivery due at `at` starts with its ISO time, so it sorts below this one.
            "ExpressionAttributeValues": _serialize({":pk": _DUE_PARTITION, ":upto": encode_time(at) + "#\uffff"}),
        }
        due = [WEBHOOK_DELIVERIES.decode(item) for item in self._paginate(request, limit)]
        return [delivery for delivery in due if delivery.status == DeliveryStatus.PENDING]

    # --- IAM audit chain --------------------------------------------------------------------

    def append_iam_event(self, event: IamEvent) -> None:
        """Store `event` at its position only if that position is free; raises `Conflict` otherwise."""
        if not self._put(_iam_event_item(event), condition="attribute_not_exists(PK)"):
            raise Conflict(f"position {event.seq} of chain {event.chain_id} is taken")

    def iam_chain_head(self, chain_id: str) -> IamEvent | None:
        """The event with the highest position in the chain, or None for an empty chain."""
        items = self._query_table("PK = :pk", {":pk": "CHAIN#" + chain_id}, forward=False, limit=1)
        return next((IAM_EVENTS.decode(item) for item in items), None)

    def list_iam_events(self, chain_id: str, after_seq: int = 0, limit: int | None = None) -> list[IamEvent]:
        """Events with position > `after_seq`, in position order, at most `limit`."""
        if limit is not None and limit <= 0:
            return []
        # Zero-padded positions sort as numbers; every event sorts above position 0.
        after = _event_sort_key(max(after_seq, 0))
        items = self._query_table(
            "PK = :pk AND SK > :after", {":pk": "CHAIN#" + chain_id, ":after": after}, limit=limit
        )
        return [IAM_EVENTS.decode(item) for item in items]

    # --- settings ---------------------------------------------------------------------------

    def get_setting(self, name: str) -> str | None:
        """A bootstrap fact, or None if never set."""
        item = self._get(_setting_key(name))
        return None if item is None else str(item["value"])

    def put_setting(self, name: str, value: str) -> None:
        """Set a bootstrap fact, replacing any previous value."""
        self._put(_setting_item(name, value))

    def put_setting_if_absent(self, name: str, value: str) -> str:
        """Set a bootstrap fact only if unset; returns the value now stored (first writer wins)."""
        if self._put(_setting_item(name, value), condition="attribute_not_exists(PK)"):
            return value
        stored = self.get_setting(name)
        assert stored is not None  # the failed condition says it exists, and settings are never deleted
        return stored

    # --- governance policies ----------------------------------------------------------------

    def put_policy(self, obj: PolicyObject, *, if_version: int | None = None) -> int:
        """Create or replace a policy object (same kind and id); returns the new policy version.

        With `if_version`, only while the policy version is still that one (else `Conflict`).
        """
        item = _policy_item(obj)
        put = {"Put": {"TableName": self.table_name, "Item": _serialize(item)}}
        if if_version is None:
            return self._write_policy(lambda: put)
        try:
            self._transact([put, _version_bump(self.table_name, if_version)])
        except ClientError as error:
            if _lost_a_race(_cancellation_reasons(error), guard=1):
                raise Conflict(f"the policy version moved from {if_version}; decide again") from None
            raise
        return if_version + 1

    def create_policy(self, obj: PolicyObject) -> int:
        """Store a new policy object: its put, conditioned on no item at its key, commits with version + 1."""
        put = {
            "Put": {
                "TableName": self.table_name,
                "Item": _serialize(_policy_item(obj)),
                "ConditionExpression": "attribute_not_exists(PK)",
            }
        }
        try:
            return self._write_policy(lambda: put)
        except _PolicyWriteRefused:
            raise Conflict(f"{kind_of(obj).value} policy {object_id(obj)} already exists") from None

    def delete_policy(self, kind: PolicyKind, object_id: str) -> int:
        """Delete a policy object; raises `NotFound`; returns the new policy version."""
        key = _policy_key(PolicyKind(kind), object_id)
        try:
            return self._write_policy(
                lambda: {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": _serialize_key(key),
                        "ConditionExpression": "attribute_exists(PK)",
                    }
                }
            )
        except _PolicyWriteRefused:
            raise NotFound(f"{PolicyKind(kind).value} policy {object_id} not found") from None

    def get_policy(self, kind: PolicyKind, object_id: str) -> PolicyObject | None:
        """One policy object, or None."""
        item = self._get(_policy_key(PolicyKind(kind), object_id))
        return None if item is None else _policy_from_item(item)

    def list_policies(self, org_id: str | None = None, kind: PolicyKind | None = None) -> list[PolicyObject]:
        """Policy objects, optionally of one organisation and/or kind, ordered by kind then id."""
        # "<kind>#<id>" sorts as (kind, id): no kind is a prefix of another and "#" comes before every id.
        prefix = "" if kind is None else PolicyKind(kind).value + "#"
        if org_id is None and kind is None:
            items = self._query_table("PK = :pk", {":pk": _POLICY_PARTITION})
        elif org_id is None:
            items = self._query_table(
                "PK = :pk AND begins_with(SK, :prefix)", {":pk": _POLICY_PARTITION, ":prefix": prefix}
            )
        else:
            items = self._query_index(f"{_POLICY_PARTITION}#{org_id}", sort_prefix=prefix)
        return [_policy_from_item(item) for item in items]

    def policy_version(self) -> int:
        """The store-wide policy version: 0 before any change, +1 on every put or delete."""
        item = self._get(_POLICY_VERSION_KEY)
        return 0 if item is None else int(item["version"])

    def policy_snapshot(self) -> PolicySnapshot:
        """Every policy object and the version they make up: the version read before and after the objects agrees."""
        for _ in range(_MAX_OPTIMISTIC_ATTEMPTS):
            before = self.policy_version()
            items = list(self._query_table("PK = :pk", {":pk": _POLICY_PARTITION}))
            # Objects and version commit together, so an unmoved version proves no write landed mid-read.
            if self.policy_version() == before:
                return PolicySnapshot.of(before, (_policy_from_item(item) for item in items))
        raise Conflict("policies are changing too fast to read a consistent snapshot; try again")

    def _write_policy(self, policy_write: Callable[[], dict[str, Any]]) -> int:
        """Commit one policy write together with version + 1, retrying when another writer bumped it first."""
        for _ in range(_MAX_OPTIMISTIC_ATTEMPTS):
            version = self.policy_version()
            try:
                self._transact([policy_write(), _version_bump(self.table_name, version)])
                return version + 1
            except ClientError as error:
                reasons = _cancellation_reasons(error)
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    raise _PolicyWriteRefused from None
                if not _lost_a_race(reasons, guard=1):
                    raise
        raise Conflict("the policy version is contended; try again")

    # --- metering ---------------------------------------------------------------------------

    def add_usage(self, deltas: Sequence[UsageDelta]) -> None:
        """Add metered consumption: deltas are merged per (org, day, user, agent) bucket, then one ADD per bucket.

        Each bucket's ADD is atomic, so concurrent meters never lose counts; buckets are separate
        writes (a transaction would fail under that very concurrency).
        """
        for bucket in _merge_usage(deltas):
            self._update(
                _usage_key(bucket),
                "SET org_id = :org, #day = :day, user_id = :user"
                + ("" if bucket.agent_id is None else ", agent_id = :agent")
                + " ADD statements :statements, credits :credits, #rows :rows, #bytes :bytes",
                {
                    ":org": bucket.org_id,
                    ":day": bucket.day.isoformat(),
                    ":user": bucket.user_id,
                    ":statements": bucket.statements,
                    ":credits": _to_decimal(bucket.credits),
                    ":rows": bucket.rows,
                    ":bytes": bucket.bytes,
                }
                | ({} if bucket.agent_id is None else {":agent": bucket.agent_id}),
                names={"#day": "day", "#rows": "rows", "#bytes": "bytes"},
                return_values="NONE",
            )

    def usage(self, org_id: str, start: date, end: date) -> list[UsageDelta]:
        """The usage buckets of one organisation for days in [start, end], ordered by day, user, agent."""
        items = self._query_table(
            "PK = :pk AND SK BETWEEN :start AND :end",
            # "$" sorts just above the "#" after the day, so every bucket of `end` is inside the range.
            {":pk": "USAGE#" + org_id, ":start": start.isoformat(), ":end": end.isoformat() + "$"},
        )
        buckets = [USAGE.decode(item) for item in items]
        return sorted(buckets, key=lambda bucket: (bucket.day, bucket.user_id, bucket.agent_id or ""))

    # --- plumbing ---------------------------------------------------------------------------

    def _get(self, key: Key) -> Item | None:
        response = self._client.get_item(TableName=self.table_name, Key=_serialize_key(key), ConsistentRead=True)
        item = response.get("Item")
        return None if item is None else _deserialize(item)

    def _put(
        self,
        item: Item,
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        values: Mapping[str, object] | None = None,
    ) -> bool:
        """Write an item; False when `condition` did not hold (and nothing was written)."""
        request: dict[str, Any] = {"TableName": self.table_name, "Item": _serialize(item)}
        request |= _condition_arguments(condition, names, values)
        try:
            self._client.put_item(**request)
        except ClientError as error:
            if _error_code(error) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _update(
        self,
        key: Key,
        expression: str,
        values: Mapping[str, object],
        *,
        condition: str | None = None,
        names: Mapping[str, str] | None = None,
        return_values: str = "ALL_NEW",
    ) -> Item | None:
        """Apply an update expression; the item after it, or None when `condition` did not hold."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": _serialize_key(key),
            "UpdateExpression": expression,
            "ReturnValues": return_values,
        }
        request |= _condition_arguments(condition, names, values)
        try:
            response = self._client.update_item(**request)
        except ClientError as error:
            if _error_code(error) == "ConditionalCheckFailedException":
                return None
            raise
        return _deserialize(response.get("Attributes", {}))

    def _transact(self, writes: list[dict[str, Any]]) -> None:
        if len(writes) > _MAX_TRANSACTION_ITEMS:
            raise InvalidRequest(f"a change may touch at most {_MAX_TRANSACTION_ITEMS} items, this one {len(writes)}")
        self._client.transact_write_items(TransactItems=writes)

    def _query_table(
        self, key_condition: str, values: Mapping[str, object], *, forward: bool = True, limit: int | None = None
    ) -> Iterator[Item]:
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeValues": _serialize(dict(values)),
            "ScanIndexForward": forward,
            "ConsistentRead": True,
        }
        return self._paginate(request, limit)

    def _query_index(self, partition: str, *, sort_prefix: str = "") -> Iterator[Item]:
        # DynamoDB refuses an empty key value, even as a begins_with operand.
        condition, names, values = "#pk = :pk", {"#pk": GSI1_PARTITION_KEY}, {":pk": partition}
        if sort_prefix:
            condition += " AND begins_with(#sk, :prefix)"
            names["#sk"] = GSI1_SORT_KEY
            values[":prefix"] = sort_prefix
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": GSI1_NAME,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": _serialize(values),
        }
        return self._paginate(request, None)

    def _paginate(self, request: dict[str, Any], limit: int | None) -> Iterator[Item]:
        """Yield the items of a Query page by page, stopping after `limit` items."""
        remaining = limit
        while True:
            if remaining is not None:
                request["Limit"] = remaining
            response = self._client.query(**request)
            for raw in response.get("Items", []):
                yield _deserialize(raw)
            if remaining is not None:
                remaining -= len(response.get("Items", []))
                if remaining <= 0:
                    return
            last_key = response.get("LastEvaluatedKey")
            if not last_key:
                return
            request["ExclusiveStartKey"] = last_key


class _PolicyWriteRefused(Exception):
    """The policy write's own condition failed (creating an object that exists, deleting one that does not)."""


# --- keys and items ---------------------------------------------------------------------------


def _org_key(org_id: str) -> Key:
    return ("ORG#" + org_id, "ORG")


def _user_key(user_id: str) -> Key:
    return ("USER#" + user_id, "USER")


def _api_key_key(key_id: str) -> Key:
    return ("APIKEY#" + key_id, "APIKEY")


def _refresh_token_key(token_id: str) -> Key:
    return ("REFRESH#" + token_id, "REFRESH")


def _family_key(family_id: str) -> Key:
    return ("FAMILY#" + family_id, "REVOKED")


def _auth_failures_key(subject: str) -> Key:
    return ("AUTHFAIL#" + subject, "AUTHFAIL")


def _jit_key(request_id: str) -> Key:
    return ("JIT#" + request_id, "JIT")


def _webhook_endpoint_key(endpoint_id: str) -> Key:
    return ("WEBHOOK#" + endpoint_id, "WEBHOOK")


def _webhook_delivery_key(endpoint_id: str, event_id: str) -> Key:
    return ("WHDELIVERY#" + endpoint_id, "EVT#" + event_id)


def _setting_key(name: str) -> Key:
    return ("SETTING#" + name, "SETTING")


def _policy_key(kind: PolicyKind, object_id: str) -> Key:
    return (_POLICY_PARTITION, f"{kind.value}#{object_id}")


def _event_sort_key(seq: int) -> str:
    if not 0 <= seq < 10**_SEQ_DIGITS:
        raise InvalidRequest(f"an IAM chain position must be in [0, 10**{_SEQ_DIGITS}), got {seq}")
    return f"EVT#{seq:0{_SEQ_DIGITS}d}"


def _usage_key(bucket: UsageDelta) -> Key:
    # JSON keeps (user, agent) unambiguous whatever characters the ids hold.
    return ("USAGE#" + bucket.org_id, f"{bucket.day.isoformat()}#{json.dumps([bucket.user_id, bucket.agent_id or ''])}")


def _keyed(key: Key, fields: Item, listed_under: str | None = None, listed_at: str | None = None) -> Item:
    item: Item = {PARTITION_KEY: key[0], SORT_KEY: key[1]}
    if listed_under is not None:
        item[GSI1_PARTITION_KEY] = listed_under
        item[GSI1_SORT_KEY] = listed_at
    return item | fields


def _org_item(org: Organization) -> Item:
    record = ORGANIZATIONS.encode(org)
    return _keyed(_org_key(org.org_id), record, "ORGS", f"{record['created_at']}#{org.org_id}")


def _environment_item(env: Environment) -> Item:
    record = ENVIRONMENTS.encode(env)
    return _keyed(("ENV#" + env.env_id, "ENV"), record, "ENVS#" + env.org_id, f"{record['created_at']}#{env.env_id}")


def _user_item(user: User, revision: int) -> Item:
    record = USERS.encode(user) | {"revision": revision}
    return _keyed(_user_key(user.user_id), record, "USERS#" + user.org_id, f"{record['created_at']}#{user.user_id}")


def _user_writes(table_name: str, user: User, current: Item | None) -> list[dict[str, Any]]:
    """The transaction that writes `user`: the user item first, then its claims taken and released.

    The user item is conditioned on the revision we read, so claims computed from a stale read
    never commit; each claim may be taken only if free or already ours.
    """
    revision = 0 if current is None else int(current["revision"])
    stored_after = None if current is None else current.get("tokens_valid_after")
    if stored_after is not None and (
        user.tokens_valid_after is None or decode_time(stored_after) > user.tokens_valid_after
    ):
        # Never back: a copy read before end_user_sessions must not revive the sessions it ended.
        user = replace(user, tokens_valid_after=decode_time(stored_after))
    user_put: dict[str, Any] = {"TableName": table_name, "Item": _serialize(_user_item(user, revision + 1))}
    if current is None:
        user_put["ConditionExpression"] = "attribute_not_exists(PK)"
    else:
        user_put |= {
            "ConditionExpression": "revision = :revision",
            "ExpressionAttributeValues": _serialize({":revision": revision}),
        }
    held = _claim_keys(current["email"], current.get("external_ids", ())) if current is not None else []
    wanted = _claim_keys(user.email, user.external_ids)
    ours = {
        "ConditionExpression": "attribute_not_exists(PK) OR user_id = :user",
        "ExpressionAttributeValues": _serialize({":user": user.user_id}),
    }
    writes: list[dict[str, Any]] = [{"Put": user_put}]
    for key in wanted:
        claim = _keyed(key, {"user_id": user.user_id})
        writes.append({"Put": {"TableName": table_name, "Item": _serialize(claim)} | ours})
    for key in held:
        if key not in wanted:
            writes.append({"Delete": {"TableName": table_name, "Key": _serialize_key(key)} | ours})
    return writes


def _claim_keys(email: str, external_ids: Sequence[str]) -> list[Key]:
    """The claim items a user with this email and these external ids holds, without duplicates."""
    keys = [("EMAIL#" + email_key(email), "EMAIL")]
    keys.extend(("EXTID#" + external_id, "EXTID") for external_id in dict.fromkeys(external_ids))
    return keys


def _api_key_item(record: ApiKeyRecord) -> Item:
    fields = API_KEYS.encode(record)
    return _keyed(
        _api_key_key(record.key_id), fields, "APIKEYS#" + record.org_id, f"{fields['created_at']}#{record.key_id}"
    )


def _refresh_token_item(token: RefreshToken) -> Item:
    return _keyed(_refresh_token_key(token.token_id), REFRESH_TOKENS.encode(token))


def _jit_item(request: JitRequest) -> Item:
    record = JIT_REQUESTS.encode(request)
    return _keyed(
        _jit_key(request.request_id), record, "JITS#" + request.org_id, f"{record['requested_at']}#{request.request_id}"
    )


def _preview_key(request_id: str) -> Key:
    return (_PREVIEW_PARTITION, request_id)


def _preview_item(request: PreviewRequest) -> Item:
    record = PREVIEW_REQUESTS.encode(request) | {TTL_ATTRIBUTE: _epoch(request.expires_at)}
    listed = request.status == PREVIEW_PENDING
    return _keyed(_preview_key(request.request_id), record, _PREVIEW_PENDING_LISTING if listed else None,
                  f"{record['created_at']}#{request.request_id}" if listed else None)


def _forget_key(request_id: str) -> Key:
    return ("FORGET#" + request_id, "FORGET")


# Present while a forget request is unsettled (open, or completed with versions left to purge).
_UNSETTLED_ATTRIBUTE = "forget_unsettled"


def _forget_item(request: ForgetRequest) -> Item:
    record: Item = dict(FORGET_REQUESTS.encode(request))
    if request.status != ForgetStatus.COMPLETED or request.purge_versions:
        record[_UNSETTLED_ATTRIBUTE] = True
    return _keyed(_forget_key(request.request_id), record, "FORGETS#" + request.org_id,
                  f"{record['requested_at']}#{request.request_id}")


def _webhook_endpoint_item(endpoint: WebhookEndpoint) -> Item:
    record = WEBHOOK_ENDPOINTS.encode(endpoint)
    return _keyed(
        _webhook_endpoint_key(endpoint.endpoint_id), record, "WEBHOOKS#" + endpoint.org_id,
        f"{record['created_at']}#{endpoint.endpoint_id}",
    )


def _webhook_delivery_item(delivery: WebhookDelivery) -> Item:
    record: Item = dict(WEBHOOK_DELIVERIES.encode(delivery))
    key = _webhook_delivery_key(delivery.endpoint_id, delivery.event_id)
    if delivery.status == DeliveryStatus.PENDING and delivery.next_attempt_at is not None:
        due_at = f"{record['next_attempt_at']}#{delivery.endpoint_id}#{delivery.event_id}"
        return _keyed(key, record, _DUE_PARTITION, due_at)
    return _keyed(key, record | {TTL_ATTRIBUTE: _epoch(delivery.created_at + _DELIVERY_LOG_KEPT)})


def _iam_event_item(event: IamEvent) -> Item:
    return _keyed(("CHAIN#" + event.chain_id, _event_sort_key(event.seq)), IAM_EVENTS.encode(event))


def _setting_item(name: str, value: str) -> Item:
    return _keyed(_setting_key(name), {"name": name, "value": value})


def _policy_item(obj: PolicyObject) -> Item:
    kind = kind_of(obj)
    key = _policy_key(kind, object_id(obj))
    org_id: str | None = getattr(obj, "org_id", None)
    fields = {
        "kind": kind.value,
        "object_id": object_id(obj),
        "org_id": org_id,
        "document": json.dumps(to_document(obj), ensure_ascii=False),
        "updated_at": encode_time(utc_now()),
    }
    if org_id is None:
        return _keyed(key, fields)  # a shared table's binding: in no organisation's listing
    return _keyed(key, fields, f"{_POLICY_PARTITION}#{org_id}", key[1])


def _policy_from_item(item: Item) -> PolicyObject:
    return from_document(json.loads(item["document"]))


def _version_bump(table_name: str, version: int) -> dict[str, Any]:
    """Set the policy version to `version + 1`, only if it is still `version` (0: the item does not exist yet)."""
    expected = "attribute_not_exists(PK)" if version == 0 else "version = :expected"
    values: dict[str, object] = {":next": version + 1}
    if version:
        values[":expected"] = version
    return {
        "Update": {
            "TableName": table_name,
            "Key": _serialize_key(_POLICY_VERSION_KEY),
            "UpdateExpression": "SET version = :next",
            "ConditionExpression": expected,
            "ExpressionAttributeValues": _serialize(values),
        }
    }


def _merge_usage(deltas: Sequence[UsageDelta]) -> list[UsageDelta]:
    """Sum deltas that land in the same bucket, so each bucket costs one write."""
    merged: dict[tuple[str, date, str, str | None], UsageDelta] = {}
    for delta in deltas:
        bucket = (delta.org_id, delta.day, delta.user_id, delta.agent_id or None)
        previous = merged.get(bucket)
        merged[bucket] = (
            UsageDelta(*bucket, delta.statements, delta.credits, delta.rows, delta.bytes)
            if previous is None
            else UsageDelta(
                *bucket,
                previous.statements + delta.statements,
                previous.credits + delta.credits,
                previous.rows + delta.rows,
                previous.bytes + delta.bytes,
            )
        )
    return list(merged.values())


def _auth_failures_item(failures: AuthFailures) -> Item:
    record = AUTH_FAILURES.encode(failures) | {TTL_ATTRIBUTE: _epoch(failures.expires_at)}
    return _keyed(_auth_failures_key(failures.subject), record)


# --- values at the boundary -------------------------------------------------------------------


def _epoch(value: datetime) -> int:
    """Whole epoch seconds, rounded up: the TTL attribute's format, never earlier than `value`."""
    return math.ceil(value.timestamp())


def _to_decimal(value: float) -> Decimal:
    # Via the shortest repr, so 0.1 is stored as 0.1 and not as its 55-digit binary expansion.
    return Decimal(repr(value))


def _serialize(item: Mapping[str, object]) -> dict[str, Any]:
    """Plain values to DynamoDB attribute values; None fields are left out of the item."""
    return {name: _SERIALIZER.serialize(value) for name, value in item.items() if value is not None}


def _serialize_key(key: Key) -> dict[str, Any]:
    return _serialize({PARTITION_KEY: key[0], SORT_KEY: key[1]})


def _deserialize(item: Mapping[str, Any]) -> Item:
    return {name: _DESERIALIZER.deserialize(value) for name, value in item.items()}


def _condition_arguments(
    condition: str | None, names: Mapping[str, str] | None, values: Mapping[str, object] | None
) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if condition is not None:
        arguments["ConditionExpression"] = condition
    if names:
        arguments["ExpressionAttributeNames"] = dict(names)
    if values:
        arguments["ExpressionAttributeValues"] = _serialize(values)
    return arguments


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _cancellation_reasons(error: ClientError) -> list[str]:
    """The per-item reason codes of a cancelled transaction; re-raises any other error."""
    if _error_code(error) != "TransactionCanceledException":
        raise error
    return [str(reason.get("Code", "None")) for reason in error.response.get("CancellationReasons", [])]


def _lost_a_race(reasons: list[str], *, guard: int) -> bool:
    """Whether a cancelled transaction failed because another writer got there first, so a retry may pass.

    `guard` is the index of the write conditioned on what we read (a revision, the policy version).
    """
    guard_moved = len(reasons) > guard and reasons[guard] == "ConditionalCheckFailed"
    return guard_moved or "TransactionConflict" in reasons
