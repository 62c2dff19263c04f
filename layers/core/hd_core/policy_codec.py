"""Policy objects as JSON documents, and the policy file format.

A document is the object's fields plus `"kind"` (a `PolicyKind` value). Datetimes are ISO-8601
UTC strings, enums their values, tuples lists, nested conditions objects. On the way in, a
missing id is generated, table, column and resource names are lower-cased (DuckDB resolves them
case-insensitively), and any missing, unknown or wrongly typed field is a `PolicyInvalid` naming
it. Every document except a `table_binding` needs an `org_id`.

A policy file holds `{"version": 1, "policies": [document, ...]}`, for example::

    {
      "version": 1,
      "policies": [
        {"kind": "mask", "org_id": "org_acme", "table": "crm.customers", "column": "ssn",
         "function": "partial", "visible_chars": 4, "exempt_roles": ["Owner", "Auditor"]},
        {"kind": "row_filter", "org_id": "org_acme", "table": "crm.customers",
         "filter": "region = {region}", "exempt_roles": ["Admin"]},
        {"kind": "abac", "org_id": "org_acme", "name": "office hours only", "effect": "deny",
         "actions": ["*"], "resources": ["crm.*"], "reason": "CRM data is read during office hours",
         "conditions": {"time_window": {"start": "08:00", "end": "18:00", "timezone": "Europe/Berlin",
                                        "weekdays": ["mon", "tue", "wed", "thu", "fri"], "outside": true}}},
        {"kind": "column_tag", "org_id": "org_acme", "table": "crm.customers", "column": "email",
         "pii_type": "email"}
      ]
    }

Ids (`rule_id`, `policy_id`, `grant_id`, `tag_id`, `binding_id`, `quota_id`) may be given to
update an object in place; omitted, a fresh one is generated on every load.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from hd_core.errors import PolicyInvalid
from hd_core.files import write_file_atomically
from hd_core.models import new_id
from hd_core.policies import (
    AbacPolicy,
    ColumnTag,
    JitGrant,
    MaskRule,
    PhiGrant,
    PolicyKind,
    PolicyObject,
    QuotaLimit,
    RowFilter,
    TableBinding,
)

POLICY_FILE_VERSION = 1

KIND_CLASSES: dict[PolicyKind, type[PolicyObject]] = {
    PolicyKind.MASK: MaskRule,
    PolicyKind.ROW_FILTER: RowFilter,
    PolicyKind.ABAC: AbacPolicy,
    PolicyKind.JIT_GRANT: JitGrant,
    PolicyKind.COLUMN_TAG: ColumnTag,
    PolicyKind.PHI_GRANT: PhiGrant,
    PolicyKind.TABLE_BINDING: TableBinding,
    PolicyKind.QUOTA: QuotaLimit,
}
_KIND_OF_CLASS: dict[type, PolicyKind] = {cls: kind for kind, cls in KIND_CLASSES.items()}

# The prefix of generated ids, per kind (`new_id` wants letters and digits only).
_ID_PREFIXES: dict[PolicyKind, str] = {
    PolicyKind.MASK: "mask",
    PolicyKind.ROW_FILTER: "rowf",
    PolicyKind.ABAC: "abac",
    PolicyKind.JIT_GRANT: "jit",
    PolicyKind.COLUMN_TAG: "tag",
    PolicyKind.PHI_GRANT: "phi",
    PolicyKind.TABLE_BINDING: "tbl",
    PolicyKind.QUOTA: "quota",
}

# Names DuckDB folds to lower case, so policies compare them in lower case.
_LOWER_CASE_FIELDS = frozenset(
    {"table", "column", "tables", "resources", "actions", "weekdays", "tenant_column", "subject_column", "effect"}
)


def kind_of(obj: PolicyObject) -> PolicyKind:
    """The kind of a policy object."""
    try:
        return _KIND_OF_CLASS[type(obj)]
    except KeyError:
        raise TypeError(f"{type(obj).__name__} is not a policy object") from None


def object_id(obj: PolicyObject) -> str:
    """The id of a policy object (its first field: `rule_id`, `policy_id`, ...)."""
    value = getattr(obj, dataclasses.fields(obj)[0].name)
    return str(value)


# Optional fields added after documents were first stored: left out while unset, so a document that
# does not use one is stored byte for byte as before it existed (tests/contract/test_stored_state_compat.py).
# Each maps to the value that means unset (issue 20's subject column, issue 22's pending table).
_OMITTED_WHEN_UNSET: Mapping[str, object] = {"subject_column": None, "pending": False}


def to_document(obj: PolicyObject) -> dict[str, Any]:
    """A JSON-ready dict of a policy object, with its `kind`."""
    document: dict[str, Any] = {"kind": kind_of(obj).value}
    document.update(_encode(obj))
    for name, unset in _OMITTED_WHEN_UNSET.items():
        if name in document and document[name] is unset:
            del document[name]
    return document


def from_document(doc: Mapping[str, Any]) -> PolicyObject:
    """The policy object a document describes; raises `PolicyInvalid` naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise PolicyInvalid(f"a policy document must be a JSON object, got {_json_type(doc)}")
    raw_kind = doc.get("kind")
    try:
        kind = PolicyKind(raw_kind if isinstance(raw_kind, str) else "")
    except ValueError:
        known = ", ".join(k.value for k in PolicyKind)
        raise PolicyInvalid(f"unknown or missing policy kind {raw_kind!r}; use one of {known}", field="kind") from None
    cls = KIND_CLASSES[kind]
    fields = {name: value for name, value in doc.items() if name != "kind"}
    id_field = dataclasses.fields(cls)[0].name
    if fields.get(id_field) is None:
        fields[id_field] = new_id(_ID_PREFIXES[kind])
    elif fields[id_field] == "":
        raise PolicyInvalid(
            f"{kind.value}.{id_field} must not be empty (omit it to have one generated)", field=id_field
        )
    obj = _decode_dataclass(cls, fields, kind.value)
    if kind is not PolicyKind.TABLE_BINDING and not getattr(obj, "org_id", ""):
        raise PolicyInvalid(f"{kind.value} document needs a non-empty 'org_id'", field="org_id")
    return typing.cast(PolicyObject, obj)


def load_policy_file(path: str | Path) -> list[PolicyObject]:
    """The policy objects of a policy file (`{"version": 1, "policies": [...]}`); raises `PolicyInvalid`."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PolicyInvalid(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyInvalid(f"{path}: cannot be read ({error})") from None
    if not isinstance(content, dict):
        raise PolicyInvalid(f'{path}: expected {{"version": 1, "policies": [...]}}, got {_json_type(content)}')
    extra = sorted(set(content) - {"version", "policies"})
    if extra:
        raise PolicyInvalid(f"{path}: unknown top-level field(s) {', '.join(extra)}; expected version and policies")
    if content.get("version") != POLICY_FILE_VERSION:
        raise PolicyInvalid(
            f"{path}: unsupported policy file version {content.get('version')!r}; expected {POLICY_FILE_VERSION}"
        )
    documents = content.get("policies")
    if not isinstance(documents, list):
        raise PolicyInvalid(f"{path}: 'policies' must be a list of policy documents")
    objects = []
    for index, document in enumerate(documents):
        try:
            objects.append(from_document(document))
        except PolicyInvalid as error:
            raise PolicyInvalid(f"{path}: policies[{index}]: {error}", field=error.field) from None
    return objects


def dump_policy_file(objs: Iterable[PolicyObject], path: str | Path) -> None:
    """Write policy objects as a policy file, atomically (readers never see a half-written file)."""
    path = Path(path)
    text = json.dumps(
        {"version": POLICY_FILE_VERSION, "policies": [to_document(obj) for obj in objs]}, indent=2, ensure_ascii=False
    )
    write_file_atomically(path, (text + "\n").encode("utf-8"), durable=False)


# --- encoding ---------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _encode(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("policy timestamps must be timezone-aware")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    return value


# --- decoding ---------------------------------------------------------------------------------


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode_dataclass(cls: type, fields: Mapping[str, Any], where: str) -> Any:
    hints = _type_hints(cls)
    known = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(str(name) for name in set(fields) - set(known))
    if unknown:
        raise PolicyInvalid(
            f"unknown field(s) {', '.join(map(repr, unknown))} in {where}; known fields: {', '.join(known)}",
            field=_field_of(f"{where}.{unknown[0]}"),
        )
    values: dict[str, Any] = {}
    for name, field in known.items():
        path = f"{where}.{name}"
        if name not in fields:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise PolicyInvalid(f"{where} is missing the required field {name!r}", field=_field_of(path))
            continue
        value = _decode(fields[name], hints[name], path)
        if name in _LOWER_CASE_FIELDS:
            value = _lower(value)
        values[name] = value
    return cls(**values)


def _decode(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None:
            if len(options) < len(typing.get_args(hint)):
                return None
            raise PolicyInvalid(f"{path} must not be null", field=_field_of(path))
        return _decode(value, options[0], path)
    if origin is tuple:
        if not isinstance(value, list):
            raise PolicyInvalid(f"{path} must be a list, got {_json_type(value)}", field=_field_of(path))
        item_hint = typing.get_args(hint)[0]
        return tuple(_decode(item, item_hint, f"{path}[{index}]") for index, item in enumerate(value))
    if value is None:
        raise PolicyInvalid(f"{path} must not be null", field=_field_of(path))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _decode_enum(value, hint, path)
    if hint is datetime:
        return _decode_datetime(value, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise PolicyInvalid(f"{path} must be an object, got {_json_type(value)}", field=_field_of(path))
        return _decode_dataclass(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise PolicyInvalid(f"{path} must be true or false, got {_json_type(value)}", field=_field_of(path))
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyInvalid(f"{path} must be an integer, got {_json_type(value)}", field=_field_of(path))
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyInvalid(f"{path} must be a number, got {_json_type(value)}", field=_field_of(path))
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PolicyInvalid(f"{path} must be a string, got {_json_type(value)}", field=_field_of(path))
        return value
    raise TypeError(f"no decoder for {hint!r} at {path}")  # a new field type: teach the codec


def _decode_enum(value: Any, enum: type[Enum], path: str) -> Enum:
    if isinstance(value, str):
        for member in enum:
            if str(member.value).lower() == value.lower():
                return member
    known = ", ".join(str(member.value) for member in enum)
    raise PolicyInvalid(f"{path} is {value!r}; use one of {known}", field=_field_of(path))


def _decode_datetime(value: Any, path: str) -> datetime:
    if not isinstance(value, str):
        raise PolicyInvalid(
            f"{path} must be an ISO-8601 timestamp string, got {_json_type(value)}", field=_field_of(path)
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PolicyInvalid(f"{path} is not an ISO-8601 timestamp: {value!r}", field=_field_of(path)) from None
    if parsed.tzinfo is None:
        raise PolicyInvalid(f"{path} needs a UTC offset, e.g. {value}+00:00 or a trailing Z", field=_field_of(path))
    return parsed.astimezone(UTC)


def _field_of(path: str) -> str:
    """`abac.conditions.roles[0]` -> `conditions.roles`: the field, without the kind or list index."""
    return re.sub(r"\[\d+\]", "", path.partition(".")[2] or path)


def _lower(value: Any) -> Any:
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, tuple):
        return tuple(item.lower() if isinstance(item, str) else item for item in value)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
