"""Control entities as flat records of primitives: the one mapping every `ControlStore` adapter stores.

A `RecordCodec` turns a frozen entity dataclass of `hd_core.models` into a dict keyed by its field
names and back, by one rule per field type, so the SQLite and DynamoDB adapters cannot drift:

    datetime            ISO-8601 at UTC with microseconds (`2026-03-01T12:00:00.000000+00:00`): fixed
                        width, so text order is time order. Decoding takes any offset (and treats a
                        naive value as UTC) and returns the same instant at UTC.
    date                `YYYY-MM-DD`
    enum                its value
    tuple[str, ...]     a list of str
    dict[str, object]   canonical JSON text (sorted keys): the IAM chain hash covers it, so it must
                        come back exactly
    str, int, float, bool
                        themselves; decoding coerces what stores give back (SQLite's 0/1 for a bool,
                        DynamoDB's Decimal for a number)
    None                None (DynamoDB leaves the attribute out)

A field missing from a record (an item written before the field existed) decodes to its default,
to None when it is optional, to an empty tuple when it is a list; any other missing field is an
error. Keys a record holds beyond the entity's fields (store keys, counters) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from hd_core.models import (
    ApiKeyRecord,
    AuthFailures,
    Environment,
    IamEvent,
    JitRequest,
    Organization,
    RefreshToken,
    UsageDelta,
    User,
)

Primitive = str | int | float | bool | list[str] | None
Record = dict[str, Primitive]

Entity = TypeVar("Entity")

_NO_DEFAULT: Any = dataclasses.MISSING


def encode_time(value: datetime) -> str:
    """A timezone-aware datetime as fixed-width ISO-8601 text at UTC; raises `ValueError` for a naive one."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def decode_time(value: str) -> datetime:
    """The instant stored as ISO-8601 text, at UTC whatever offset it was written with."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def encode_json_object(value: Mapping[str, object]) -> str:
    """Canonical JSON text (sorted keys, non-ASCII kept), so equal objects store as equal text."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclasses.dataclass(frozen=True)
class _FieldRule:
    name: str
    encode: Callable[[Any], Primitive]
    decode: Callable[[Any], Any]
    absent: Any  # the value of a field missing from a record; _NO_DEFAULT: the record is refused
    is_list: bool


class RecordCodec(Generic[Entity]):
    """One entity class ⇄ flat records, derived from its dataclass fields and their types."""

    def __init__(self, entity: type[Entity]) -> None:
        self.entity = entity
        hints = get_type_hints(entity)
        self._rules = tuple(_rule_for(field, hints[field.name]) for field in dataclasses.fields(entity))  # type: ignore[arg-type]
        # The record's keys, in the dataclass's field order.
        self.names: tuple[str, ...] = tuple(rule.name for rule in self._rules)
        # The keys whose values are lists (a store without list values keeps them as JSON text).
        self.list_names: frozenset[str] = frozenset(rule.name for rule in self._rules if rule.is_list)

    def encode(self, entity: Entity) -> Record:
        """The entity's fields as primitives, under their field names."""
        record: Record = {}
        for rule in self._rules:
            value = getattr(entity, rule.name)
            record[rule.name] = None if value is None else rule.encode(value)
        return record

    def decode(self, record: Mapping[str, Any]) -> Entity:
        """The entity a record holds; raises `KeyError` for a missing field that has no default."""
        values: dict[str, Any] = {}
        for rule in self._rules:
            value = record.get(rule.name)
            if value is None:
                if rule.name not in record and rule.absent is _NO_DEFAULT:
                    raise KeyError(f"{self.entity.__name__} record without {rule.name!r}")
                values[rule.name] = None if rule.name in record else rule.absent
            else:
                values[rule.name] = rule.decode(value)
        return self.entity(**values)


def _rule_for(field: dataclasses.Field[Any], hint: Any) -> _FieldRule:
    optional, base = _unwrap_optional(hint)
    if field.default is not dataclasses.MISSING:
        absent = field.default
    elif field.default_factory is not dataclasses.MISSING:
        absent = field.default_factory()
    elif optional:
        absent = None
    elif get_origin(base) is tuple:
        absent = ()
    else:
        absent = _NO_DEFAULT
    encode, decode = _converters(base)
    return _FieldRule(field.name, encode, decode, absent, get_origin(base) is tuple)


def _unwrap_optional(hint: Any) -> tuple[bool, Any]:
    """(whether None is allowed, the type without None) of a field's type hint."""
    if get_origin(hint) in (Union, types.UnionType):
        members = [member for member in get_args(hint) if member is not type(None)]
        if len(members) != 1:
            raise TypeError(f"no record rule for the union {hint}")
        return True, members[0]
    return False, hint


def _converters(base: Any) -> tuple[Callable[[Any], Primitive], Callable[[Any], Any]]:
    """The (encode, decode) pair of one field type; datetime is tested before its base class date."""
    origin = get_origin(base)
    if origin is tuple:
        return list, tuple
    if origin is dict:
        return encode_json_object, lambda text: dict(json.loads(text))
    if base is datetime:
        return encode_time, decode_time
    if base is date:
        return date.isoformat, date.fromisoformat
    if isinstance(base, type) and issubclass(base, Enum):
        return (lambda member: base(member).value), base
    if base in (str, int, float, bool):
        return base, base
    raise TypeError(f"no record rule for the type {base}")


ORGANIZATIONS = RecordCodec(Organization)
ENVIRONMENTS = RecordCodec(Environment)
USERS = RecordCodec(User)
API_KEYS = RecordCodec(ApiKeyRecord)
REFRESH_TOKENS = RecordCodec(RefreshToken)
JIT_REQUESTS = RecordCodec(JitRequest)
IAM_EVENTS = RecordCodec(IamEvent)
USAGE = RecordCodec(UsageDelta)
AUTH_FAILURES = RecordCodec(AuthFailures)
