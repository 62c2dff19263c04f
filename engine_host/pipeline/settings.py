"""PostgreSQL session settings (GUCs) that clients read and write, answered by us, not DuckDB.

DuckDB's own settings are locked (`lock_configuration`), and Postgres clients expect Postgres
names and values: drivers `SET extra_float_digits`, `SET application_name`, `SHOW transaction
isolation level` and read ParameterStatus. This module keeps each session's values, accepts the
values we really honour, and refuses the rest with a clear error instead of pretending. Our own
`hd.*` namespace holds only the settings the engine reads; none of them can change who the session
is (that comes from the credential), so `SET hd.role = 'Owner'` is refused, not stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from engine_host.pgcompat.gucs import (
    InvalidSetting,
    join_identifiers,
    parse_duration,
    show_duration,
    split_identifiers,
)
from engine_host.pipeline.errors import QueryError

SERVER_VERSION = "15.8"
SERVER_VERSION_NUM = "150008"
DEFAULT_SEARCH_PATH = "main"

# Settings Postgres reports to the client with ParameterStatus at startup and on change.
REPORTED = (
    "server_version",
    "server_encoding",
    "client_encoding",
    "application_name",
    "DateStyle",
    "IntervalStyle",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
)


def _only(*allowed: str) -> Callable[[str], str]:
    canon = {a.lower().replace("-", "").replace(" ", ""): a for a in allowed}

    def check(value: str) -> str:
        key = value.lower().replace("-", "").replace(" ", "")
        if key not in canon:
            raise QueryError(
                "22023",
                "HD_ERR_UNSUPPORTED_SETTING",
                f"invalid value for this server: {value!r}",
                hint=f"Hardened Duck supports only: {', '.join(allowed)}.",
            )
        return canon[key]

    return check


def _any(value: str) -> str:
    return value


def _integer(value: str) -> str:
    try:
        return str(int(value))
    except ValueError:
        raise QueryError("22023", "HD_ERR_INVALID_SETTING", f"invalid integer value {value!r}") from None


def _duration(name: str) -> Callable[[str], str]:
    """A timeout in PostgreSQL's units (`'1s'`, `'500ms'`, `'2min'`, `1000`), kept as SHOW prints it."""

    def check(value: str) -> str:
        try:
            return show_duration(parse_duration(name, value))
        except InvalidSetting as exc:
            raise QueryError("22023", "HD_ERR_INVALID_SETTING", exc.message, hint=exc.hint) from None

    return check


def duration_milliseconds(value: str) -> int:
    """Milliseconds of a duration setting's stored value (0 for none)."""
    try:
        return parse_duration("", value)
    except InvalidSetting:
        return 0


def _identifier_list(name: str) -> Callable[[str], str]:
    """A list of identifiers (search_path): checked as PostgreSQL splits it, kept as written."""

    def check(value: str) -> str:
        try:
            split_identifiers(name, value)
        except InvalidSetting as exc:
            raise QueryError("22023", "HD_ERR_INVALID_SETTING", exc.message, hint=exc.hint) from None
        return value

    return check


def _datestyle(value: str) -> str:
    parts = [p.strip().upper() for p in value.split(",")]
    if "ISO" not in parts and not all(p in ("MDY", "DMY", "YMD") for p in parts):
        raise QueryError(
            "22023", "HD_ERR_UNSUPPORTED_SETTING", f"DateStyle {value!r} is not supported",
            hint="Dates are always sent in ISO format; use DateStyle 'ISO'.",
        )
    order = next((p for p in parts if p in ("MDY", "DMY", "YMD")), "MDY")
    return f"ISO, {order}"


@dataclass(frozen=True)
class SettingSpec:
    default: str
    normalise: Callable[[str], str]
    read_only: bool = False


# Values we honour. TimeZone stays UTC because timestamptz text is rendered in UTC; extra_float_digits
# is accepted at any value since we always send shortest round-trip floats (what PG does for > 0).
SPECS: dict[str, SettingSpec] = {
    "server_version": SettingSpec(SERVER_VERSION, _any, read_only=True),
    "server_version_num": SettingSpec(SERVER_VERSION_NUM, _any, read_only=True),
    "server_encoding": SettingSpec("UTF8", _any, read_only=True),
    "client_encoding": SettingSpec("UTF8", _only("UTF8", "UTF-8", "UNICODE")),
    "application_name": SettingSpec("", _any),
    "DateStyle": SettingSpec("ISO, MDY", _datestyle),
    "IntervalStyle": SettingSpec("postgres", _only("postgres")),
    "integer_datetimes": SettingSpec("on", _any, read_only=True),
    "is_superuser": SettingSpec("off", _any, read_only=True),
    "session_authorization": SettingSpec("", _any, read_only=True),
    "standard_conforming_strings": SettingSpec("on", _only("on")),
    "TimeZone": SettingSpec("UTC", _only("UTC", "Etc/UTC", "GMT", "Z", "+00", "00:00")),
    "extra_float_digits": SettingSpec("1", _integer),
    # `main` is the schema unqualified names have always meant here; there is no `public` schema.
    "search_path": SettingSpec(DEFAULT_SEARCH_PATH, _identifier_list("search_path")),
    "transaction_isolation": SettingSpec("repeatable read", _any, read_only=True),
    "default_transaction_isolation": SettingSpec("repeatable read", _any, read_only=True),
    "transaction_read_only": SettingSpec("off", _any, read_only=True),
    "default_transaction_read_only": SettingSpec("off", _only("off", "false")),
    "max_identifier_length": SettingSpec("63", _any, read_only=True),
    "bytea_output": SettingSpec("hex", _only("hex")),
    "client_min_messages": SettingSpec("notice", _any),
    "statement_timeout": SettingSpec("0", _duration("statement_timeout")),
    "lock_timeout": SettingSpec("0", _duration("lock_timeout")),
    "idle_in_transaction_session_timeout": SettingSpec("0", _duration("idle_in_transaction_session_timeout")),
    "idle_session_timeout": SettingSpec("0", _duration("idle_session_timeout")),
    "row_security": SettingSpec("on", _only("on")),
    "in_hot_standby": SettingSpec("off", _any, read_only=True),
    "TimeZone_abbreviations": SettingSpec("Default", _any, read_only=True),
    "lc_messages": SettingSpec("C", _any),
    "lc_monetary": SettingSpec("C", _any),
    "lc_numeric": SettingSpec("C", _any),
    "lc_time": SettingSpec("C", _any),
    "jit": SettingSpec("off", _any),
    "geqo": SettingSpec("on", _any),
}

_CANONICAL = {name.lower(): name for name in SPECS}
_ALIASES = {"time zone": "TimeZone", "transaction isolation level": "transaction_isolation",
            "session authorization": "session_authorization", "names": "client_encoding"}


# The hd.* settings the engine reads. Who a session is (organisation, user, role, key, scopes and
# attributes) comes from its credential alone: policies, row filters and masks are decided by it, so
# no setting may claim it. An agent declares its own identity once, when it connects.
HD_SETTINGS = frozenset({"hd.dialect", "hd.request_id", "hd.priority"})
STARTUP_ONLY_SETTINGS = frozenset({"hd.agent_id", "hd.agent_framework"})
IDENTITY_SETTINGS = STARTUP_ONLY_SETTINGS | frozenset({
    "hd.org_id", "hd.org", "hd.organisation", "hd.organization", "hd.tenant", "hd.tenant_id",
    "hd.user_id", "hd.user", "hd.role", "hd.key_id", "hd.api_key", "hd.scopes", "hd.scope",
    "hd.env", "hd.environment", "hd.department", "hd.region", "hd.source_ip",
    "hd.agent", "hd.framework",
})


def canonical_name(name: str) -> str:
    """The setting's Postgres spelling, or raise 42704 for names we do not know."""
    key = " ".join(name.lower().split())
    if key in _ALIASES:
        return _ALIASES[key]
    if key in _CANONICAL:
        return _CANONICAL[key]
    if key.startswith("hd."):  # our own namespace: only the names the engine reads
        if key in HD_SETTINGS or key in IDENTITY_SETTINGS:
            return key
        raise QueryError(
            "42704", "HD_ERR_UNKNOWN_SETTING", f'unrecognized configuration parameter "{name}"',
            hint=f"The hd.* settings a session may set are {', '.join(sorted(HD_SETTINGS))}.",
        )
    if "." in key:  # custom placeholder variables of other prefixes, as Postgres allows
        return key
    raise QueryError(
        "42704", "HD_ERR_UNKNOWN_SETTING", f'unrecognized configuration parameter "{name}"',
    )


def identity_immutable(name: str) -> QueryError:
    """The refusal for a statement or startup parameter that tries to set who the session is."""
    if name in STARTUP_ONLY_SETTINGS:
        hint = ("The agent's identity is declared when connecting: reconnect with "
                f"options='-c {name}=...' (or the agent_id / agent_framework startup parameter).")
    else:
        hint = ("To act as another user, organisation or role, connect with that user's API key or token; "
                "an admin can change roles in the control API.")
    return QueryError("42501", "HD_ERR_IDENTITY_IMMUTABLE",
                      f'parameter "{name}" cannot be changed: the session\'s identity comes from its credential',
                      hint=hint)


class SessionSettings:
    """One session's setting values."""

    def __init__(self, startup: dict[str, str], user: str):
        self._values = {name: spec.default for name, spec in SPECS.items()}
        self._values["session_authorization"] = user
        for name, value in startup.items():
            # Startup options that we cannot honour are ignored, not fatal: drivers send what they
            # prefer (e.g. a local TimeZone) and then read the real value from ParameterStatus.
            # A claimed identity is refused outright: ignoring it would let the client believe it holds.
            try:
                canon = canonical_name(name)
            except QueryError:
                continue
            if canon in IDENTITY_SETTINGS and canon not in STARTUP_ONLY_SETTINGS:
                raise identity_immutable(canon)
            try:
                self._assign(canon, value)
            except QueryError:
                continue

    def get(self, name: str) -> str:
        canon = canonical_name(name)
        if canon not in self._values:
            raise QueryError("42704", "HD_ERR_UNKNOWN_SETTING", f'unrecognized configuration parameter "{name}"')
        return self._values[canon]

    def set(self, name: str, value: str) -> str | None:
        """Set a value; returns the canonical name when clients must be told (ParameterStatus)."""
        canon = canonical_name(name)
        if canon in IDENTITY_SETTINGS:
            raise identity_immutable(canon)
        return self._assign(canon, value)

    def _assign(self, canon: str, value: str) -> str | None:
        spec = SPECS.get(canon)
        if spec is None:
            self._values[canon] = value
            return None
        if spec.read_only:
            raise QueryError("55P02", "HD_ERR_READ_ONLY_SETTING", f'parameter "{canon}" cannot be changed')
        self._values[canon] = spec.normalise(value)
        return canon if canon in REPORTED else None

    def reset(self, name: str) -> str | None:
        canon = canonical_name(name)
        if canon in IDENTITY_SETTINGS:
            raise identity_immutable(canon)
        spec = SPECS.get(canon)
        if spec is None:
            self._values.pop(canon, None)
            return None
        if spec.read_only:
            raise QueryError("55P02", "HD_ERR_READ_ONLY_SETTING", f'parameter "{canon}" cannot be changed')
        self._values[canon] = spec.default
        return canon if canon in REPORTED else None

    def reset_all(self) -> list[str]:
        """RESET ALL / DISCARD ALL: Postgres settings back to their defaults; hd.* settings are kept."""
        changed = []
        for name, spec in SPECS.items():
            if not spec.read_only and self._values.get(name) != spec.default:
                self._values[name] = spec.default
                if name in REPORTED:
                    changed.append(name)
        return changed

    def reported(self) -> list[tuple[str, str]]:
        return [(name, self._values[name]) for name in REPORTED]

    def all(self) -> list[tuple[str, str]]:
        return sorted(self._values.items(), key=lambda item: item[0].lower())

    def with_prefix(self, prefix: str) -> dict[str, str]:
        """Custom settings under one prefix (e.g. `hd.`), cheaply: read for every statement."""
        return {name: value for name, value in self._values.items() if name.startswith(prefix)}


# --- recognising SET / SHOW / RESET --------------------------------------------------------

_SET = re.compile(
    r"^\s*SET\s+(?:(SESSION|LOCAL)\s+)?(?P<name>TIME\s+ZONE|NAMES|[A-Za-z_][\w.$]*)\s*(?:(?:=|TO)\s*)?"
    r"(?P<value>.*?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_SET_TRANSACTION = re.compile(
    r"^\s*SET\s+(?:SESSION\s+CHARACTERISTICS\s+AS\s+)?TRANSACTION\b(?P<rest>.*?);?\s*$", re.IGNORECASE | re.DOTALL
)
_SHOW = re.compile(r"^\s*SHOW\s+(?P<name>.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_RESET = re.compile(r"^\s*RESET\s+(?P<name>.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_ISOLATION = re.compile(
    r"ISOLATION\s+LEVEL\s+(SERIALIZABLE|REPEATABLE\s+READ|READ\s+COMMITTED|READ\s+UNCOMMITTED)", re.IGNORECASE
)


@dataclass(frozen=True)
class SettingCommand:
    """A parsed SET/SHOW/RESET: `verb` is SET, SHOW, RESET or SET TRANSACTION."""

    verb: str
    name: str
    value: str = ""


def _unquote_value(raw: str) -> str:
    parts = []
    for item in _split_list(raw):
        item = item.strip()
        if len(item) >= 2 and item[0] == item[-1] == "'":
            item = item[1:-1].replace("''", "'")
        elif len(item) >= 2 and item[0] == item[-1] == '"':
            item = item[1:-1]
        parts.append(item)
    return ", ".join(parts)


# Settings whose SET values are identifiers, shown quoted where needed (PostgreSQL's GUC_LIST_QUOTE).
_LIST_SETTINGS = frozenset({"search_path"})


def _identifier_values(raw: str) -> str:
    """`crm, 'Foo', "$user"` -> `crm, "Foo", "$user"`: each value one identifier, as PostgreSQL flattens SET."""
    idents = []
    for item in _split_list(raw):
        item = item.strip()
        if len(item) >= 2 and item[0] == item[-1] == "'":
            idents.append(item[1:-1].replace("''", "'"))
        elif len(item) >= 2 and item[0] == item[-1] == '"':
            idents.append(item[1:-1].replace('""', '"'))
        else:
            idents.append(item.lower())
    return join_identifiers(idents)


def _split_list(raw: str) -> list[str]:
    items, current, quote = [], [], ""
    for ch in raw:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def parse_setting_command(sql: str) -> SettingCommand | None:
    """Recognise SET/SHOW/RESET statements; None for anything else."""
    head = sql.lstrip()[:6].upper()
    if head.startswith("SET"):
        tx = _SET_TRANSACTION.match(sql)
        if tx:
            return SettingCommand("SET TRANSACTION", "transaction", tx.group("rest").strip())
        m = _SET.match(sql)
        if not m:
            return None
        value = m.group("value")
        if value.upper() == "DEFAULT":
            return SettingCommand("RESET", m.group("name"))
        if m.group("name").lower() in _LIST_SETTINGS:
            return SettingCommand("SET", m.group("name"), _identifier_values(value))
        return SettingCommand("SET", m.group("name"), _unquote_value(value))
    if head.startswith("SHOW"):
        m = _SHOW.match(sql)
        return SettingCommand("SHOW", m.group("name")) if m else None
    if head.startswith("RESET"):
        m = _RESET.match(sql)
        return SettingCommand("RESET", m.group("name")) if m else None
    return None


def check_transaction_mode(text: str) -> None:
    """Accept isolation levels DuckDB's snapshot isolation satisfies; refuse what it cannot promise."""
    upper = " ".join(text.upper().split())
    if "READ ONLY" in upper and "READ WRITE" not in upper:
        return
    m = _ISOLATION.search(text)
    if m and m.group(1).upper().split()[0] == "SERIALIZABLE":
        raise QueryError(
            "0A000", "HD_ERR_UNSUPPORTED",
            "SERIALIZABLE isolation is not available; transactions run under snapshot isolation",
            hint="Use REPEATABLE READ (snapshot isolation), which is what every transaction gets.",
        )
