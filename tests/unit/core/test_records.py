"""`hd_core.records`: the one entity ⇄ flat record mapping both control stores use."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from hd_core.models import (
    ApiKeyRecord,
    AuthFailures,
    IamEvent,
    JitStatus,
    KeyEnv,
    Organization,
    OrgStatus,
    Role,
    UsageDelta,
    User,
    UserStatus,
)
from hd_core.records import (
    API_KEYS,
    AUTH_FAILURES,
    IAM_EVENTS,
    JIT_REQUESTS,
    ORGANIZATIONS,
    REFRESH_TOKENS,
    USAGE,
    USERS,
    RecordCodec,
    decode_time,
    encode_time,
)
from tests.contract import stored_state

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EASTERN = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    ("codec", "entities"),
    [
        (ORGANIZATIONS, stored_state.ORGS),
        (USERS, stored_state.USERS),
        (API_KEYS, stored_state.API_KEYS),
        (REFRESH_TOKENS, stored_state.REFRESH_TOKENS),
        (JIT_REQUESTS, stored_state.JIT_REQUESTS),
        (IAM_EVENTS, stored_state.IAM_EVENTS),
        (USAGE, stored_state.USAGE),
        (AUTH_FAILURES, stored_state.AUTH_FAILURES),
    ],
)
def test_every_entity_round_trips_through_its_record(codec: RecordCodec[object], entities: tuple[object, ...]) -> None:
    for entity in entities:
        assert codec.decode(codec.encode(entity)) == entity


def test_a_record_holds_only_primitives_under_the_field_names() -> None:
    user = stored_state.USERS[0]
    record = USERS.encode(user)
    assert tuple(record) == USERS.names
    assert record["role"] == "Admin" and record["external_ids"] == list(user.external_ids)
    assert record["created_at"] == "2026-03-01T12:00:00.123456+00:00"
    assert USERS.list_names == {"external_ids"}


def test_times_are_stored_at_utc_with_a_fixed_width_and_read_back_at_utc() -> None:
    assert encode_time(datetime(2026, 3, 1, 7, 0, tzinfo=EASTERN)) == "2026-03-01T12:00:00.000000+00:00"
    read = decode_time("2026-03-01T13:00:00+01:00")
    assert read == T0 and read.tzinfo is UTC


def test_a_naive_time_is_refused_on_the_way_in() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ORGANIZATIONS.encode(Organization("org_1", "Acme", OrgStatus.ACTIVE, datetime(2026, 1, 1)))


def test_store_representations_of_numbers_and_bools_are_coerced() -> None:
    usage = USAGE.decode(
        {"org_id": "org_1", "day": "2026-03-01", "user_id": "usr_1", "statements": Decimal(3),
         "credits": Decimal("0.1"), "rows": Decimal(30), "bytes": Decimal(3000)}
    )
    assert usage == UsageDelta("org_1", date(2026, 3, 1), "usr_1", None, 3, 0.1, 30, 3000)
    assert isinstance(usage.statements, int) and isinstance(usage.credits, float)
    org = ORGANIZATIONS.decode({"org_id": "o", "name": "n", "status": "active", "created_at": encode_time(T0),
                                "mfa_required": 1})
    assert org.mfa_required is True


def test_fields_missing_from_an_older_record_take_their_defaults() -> None:
    user = USERS.decode({"user_id": "usr_1", "org_id": "org_1", "email": "a@x.test", "role": "Analyst",
                         "status": "active", "created_at": encode_time(T0)})
    assert user == User("usr_1", "org_1", "a@x.test", Role.ANALYST, UserStatus.ACTIVE, None, None, T0)
    token = REFRESH_TOKENS.decode({"token_id": "rt", "family_id": "f", "user_id": "u", "org_id": "o",
                                   "token_hash": "h", "issued_at": encode_time(T0), "expires_at": encode_time(T0)})
    assert token.env is KeyEnv.LIVE and token.used_at is None
    request = JIT_REQUESTS.decode({"request_id": "r", "org_id": "o", "user_id": "u", "role": "Admin", "reason": "x",
                                   "duration_seconds": Decimal(60), "status": "pending",
                                   "requested_at": encode_time(T0)})
    assert request.status is JitStatus.PENDING and request.decision_reason == ""


def test_a_missing_required_field_is_an_error() -> None:
    with pytest.raises(KeyError, match="created_at"):
        ORGANIZATIONS.decode({"org_id": "o", "name": "n", "status": "active"})


def test_keys_beyond_the_entity_are_ignored() -> None:
    record = AUTH_FAILURES.encode(stored_state.AUTH_FAILURES[0]) | {"PK": "AUTHFAIL#x", "ttl_epoch": 1}
    assert AUTH_FAILURES.decode(record) == stored_state.AUTH_FAILURES[0]


def test_iam_event_objects_are_stored_as_canonical_json_and_come_back_exactly() -> None:
    event = IamEvent("c", 1, "e", "t", "a", "t", {"b": 1, "a": [1, {"z": None}]}, None, T0, "r", "p", "h")
    record = IAM_EVENTS.encode(event)
    assert record["before"] == '{"a": [1, {"z": null}], "b": 1}' and record["after"] is None
    assert IAM_EVENTS.decode(record) == event


def test_api_key_scopes_absent_from_a_record_are_empty() -> None:
    record = API_KEYS.encode(stored_state.API_KEYS[0])
    del record["scopes"], record["allowed_cidrs"]
    decoded = API_KEYS.decode(record)
    assert isinstance(decoded, ApiKeyRecord) and decoded.scopes == () and decoded.allowed_cidrs == ()


def test_a_field_type_without_a_rule_is_refused_when_the_codec_is_made() -> None:
    @dataclass(frozen=True)
    class Odd:
        value: bytes

    with pytest.raises(TypeError, match="no record rule"):
        RecordCodec(Odd)


def test_auth_failures_without_a_previous_failure_round_trip() -> None:
    failures = AuthFailures("login:a", 1, T0, None, T0 + timedelta(minutes=15))
    assert AUTH_FAILURES.decode(AUTH_FAILURES.encode(failures)) == failures
