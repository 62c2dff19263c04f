"""A session's own values (user, settings, backend pid) filled into a rewritten catalog query."""

from __future__ import annotations

from collections.abc import Mapping

from sqlglot import exp

from engine_host.pgcompat.catalog.relations import SCHEMA
from engine_host.pgcompat.catalog.rewrite.functions import _SESSION_PID, _SESSION_SETTING, _SESSION_USER
from engine_host.pgcompat.catalog.rewrite.nodes import _call


def fill_session_values(tree: exp.Expr, owner: str, user: str | None, settings: Mapping[str, str] | None,
                        backend_pid: int | None) -> None:
    """Replace the session placeholders in `tree` (a copy the caller owns) by this session's values."""
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


def _lookup_setting(settings: Mapping[str, str] | None, name: str) -> str | None:
    if not settings:
        return None
    lowered = name.lower()
    for key, value in settings.items():
        if key.lower() == lowered:
            return value
    return None
