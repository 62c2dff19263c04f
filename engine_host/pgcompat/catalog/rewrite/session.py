"""A session's own values (user, settings, search_path, backend pid) filled into a rewritten catalog query."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlglot import exp

from engine_host.pgcompat.catalog.relations import SCHEMA
from engine_host.pgcompat.catalog.rewrite.functions import _SESSION_PID, _SESSION_SETTING, _SESSION_USER
from engine_host.pgcompat.catalog.rewrite.nodes import _call
from engine_host.pgcompat.gucs import DURATION_SETTINGS, InvalidSetting, SearchPath, parse_duration

# The session's search_path, `"$user"` expanded, as a VARCHAR[] (schemas that do not exist included:
# the queries that read it compare it with pg_namespace).
SESSION_SEARCH_PATH = "__hd_session_search_path"
# The session's setting values as pg_settings shows them, a MAP(VARCHAR, VARCHAR).
SESSION_SETTINGS_MAP = "__hd_session_settings"


def fill_session_values(tree: exp.Expr, owner: str, user: str | None, settings: Mapping[str, str] | None,
                        backend_pid: int | None, search_path: Sequence[str] = ("main",)) -> None:
    """Replace the session placeholders in `tree` (a copy the caller owns) by this session's values.

    `search_path` is the path used when no session settings are given (the server's default).
    """
    for call in list(tree.find_all(exp.Anonymous)):
        if call.name == _SESSION_USER:
            call.replace(exp.Literal.string(user or owner))
        elif call.name == _SESSION_PID:
            call.replace(exp.Literal.number(backend_pid or 0))
        elif call.name == _SESSION_SETTING:
            name = call.expressions[0].name
            value = _lookup_setting(settings, name)
            call.replace(exp.Literal.string(value) if value is not None
                         else _call("current_setting", call.expressions[0].copy(), schema=SCHEMA))
        elif call.name == SESSION_SEARCH_PATH:
            call.replace(_varchar_list(session_search_path(settings, user or owner, search_path)))
        elif call.name == SESSION_SETTINGS_MAP:
            call.replace(_settings_map(settings or {}))


def session_search_path(settings: Mapping[str, str] | None, user: str, default: Sequence[str]) -> tuple[str, ...]:
    """The schemas of the session's search_path in order, `"$user"` read as `user`."""
    value = _lookup_setting(settings, "search_path")
    return SearchPath.of(value, user).schemas if value is not None else tuple(default)


def _varchar_list(items: Sequence[str]) -> exp.Expr:
    return exp.Cast(this=exp.Array(expressions=[exp.Literal.string(s) for s in items]),
                    to=exp.DataType.build("VARCHAR[]", dialect="duckdb"))


def _settings_map(settings: Mapping[str, str]) -> exp.Expr:
    """pg_settings' `setting` column for this session: durations in their base unit (ms), as PostgreSQL."""
    keys: list[exp.Expr] = []
    values: list[exp.Expr] = []
    for name, value in settings.items():
        if name.lower() in DURATION_SETTINGS:
            try:
                value = str(parse_duration(name, value))
            except InvalidSetting:
                continue
        keys.append(exp.Literal.string(name))
        values.append(exp.Literal.string(value))
    return _call("map", _varchar_array(keys), _varchar_array(values))


def _varchar_array(items: list[exp.Expr]) -> exp.Expr:
    return exp.Cast(this=exp.Array(expressions=items), to=exp.DataType.build("VARCHAR[]", dialect="duckdb"))


def _lookup_setting(settings: Mapping[str, str] | None, name: str) -> str | None:
    if not settings:
        return None
    lowered = name.lower()
    for key, value in settings.items():
        if key.lower() == lowered:
            return value
    return None
