"""OpenTelemetry, off by default: where spans go (`HD_OTEL_ENDPOINT`) and what a span may say.

Unset, nothing is built and nothing leaves the process: no exporter, no provider, not even an import
of the OpenTelemetry SDK (the `[otel]` extra). OpenTelemetry's own `OTEL_EXPORTER_OTLP_*` variables
alone never turn it on: a collector address someone exported for another program must not start a
flow of spans out of a governed warehouse.

A span's attributes pass one allow list (`span_attributes`): each name has a pattern or a type its
value must match, so no SQL text, literal, key, identity or row value can ride along; anything else
is dropped. Identity lives in the audit record, which a span joins by `hd.query_id`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from hd_core.errors import HdError

OTEL_ENDPOINT_ENV = "HD_OTEL_ENDPOINT"
TRACES_PATH = "/v1/traces"

_Rule = re.Pattern[str] | type[int]

# Every attribute a span may carry, and what its value must look like.
ALLOWED_ATTRIBUTES: Mapping[str, _Rule] = {
    # statements (engine host)
    "hd.query_id": re.compile(r"q_[0-9a-f]{20}"),  # a random correlation id: the audit record's key
    "hd.statement.kind": re.compile(r"[a-z][a-z_]{0,31}"),  # select, insert, setting, transaction, ...
    "hd.stage": re.compile(r"[a-z][a-z_]{0,31}"),  # guard, tables, policy, plan_check, quota, execute, audit
    "hd.decision": re.compile(r"allow|deny"),
    "hd.outcome": re.compile(r"ok|denied|error"),
    "db.response.status_code": re.compile(r"[0-9A-Z]{5}"),  # SQLSTATE
    "hd.error.code": re.compile(r"HD_ERR_[A-Z0-9_]{1,64}"),
    "hd.tables.count": int,
    "hd.rows": int,
    # control-plane functions
    "hd.function": re.compile(r"hd-[a-z0-9-]{1,48}"),
    "faas.trigger": re.compile(r"http|timer"),
    "http.request.method": re.compile(r"GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS"),
    "http.response.status_code": int,
}


class TelemetryMisconfigured(HdError):
    """`HD_OTEL_ENDPOINT` is set but unusable: not an http(s) URL, or the `[otel]` extra is not installed."""

    code = "HD_ERR_OTEL_MISCONFIGURED"


def traces_url(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL `HD_OTEL_ENDPOINT` names (its base + /v1/traces), or None when unset."""
    raw = environ.get(OTEL_ENDPOINT_ENV, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        raise TelemetryMisconfigured(
            f"{OTEL_ENDPOINT_ENV} must be an OTLP/HTTP collector URL like http://127.0.0.1:4318 "
            "(http or https, no credentials, query or fragment)")
    path = parts.path.rstrip("/")
    if not path.endswith(TRACES_PATH):
        path += TRACES_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def span_attributes(values: Mapping[str, object]) -> dict[str, str | int]:
    """The entries of `values` the allow list admits (name known, value of its shape); None values dropped."""
    kept: dict[str, str | int] = {}
    for name, value in values.items():
        rule = ALLOWED_ATTRIBUTES.get(name)
        if rule is None or value is None:
            continue
        if rule is int:
            if isinstance(value, int) and not isinstance(value, bool):
                kept[name] = value
        elif isinstance(value, str) and isinstance(rule, re.Pattern) and rule.fullmatch(value):
            kept[name] = value
    return kept
