"""Masking the rows a shadow replay's report shows, with the engine's own mask rules.

A mismatch shows the first differing rows of each side. The engine's side is already masked for the
replay's ServiceAccount, but the comparison PostgreSQL's is raw, so every value is rendered here before
anything is stored:

- each result column of the statement is traced to a base table column with sqlglot (PostgreSQL dialect):
  the statement is qualified against the environment's catalog (the tables the engine hosts record,
  `hd_core.catalog_schemas`, as the organisation may see them), and a result column maps to
  `schema.table.column` only when it is that column itself, read from a table of the outermost SELECT
  (aliases and `*` over a known table are followed);
- a column with a mask rule that applies to the replay's ServiceAccount (`policy_eval.masks_for`, the
  rule the engine applies to it) is rendered through that rule as the engine renders it
  (`engine_host.pipeline.governance.rewrite.mask_expression`): `full` -> `***`, `partial` -> `***` and
  the last N characters, `hash` -> HMAC-SHA256 hex under the environment's mask key (the value of the
  engine's `hd_mask_hash_<env>` macro, `engine_host.engine.masking.mask_hash`), `null` -> NULL;
- a column of a base table no mask rule covers is shown as it is;
- anything else is redacted as before (`compare.redact_all`: NULL-ness and type only): expressions,
  functions and aggregates (over masked columns or not), CTEs, subqueries, set operations, `*` over an
  unknown table, a table the catalog lacks, a column some rule masks for other roles but not for the
  ServiceAccount, a hash or partial mask over a value whose text the engine would spell differently
  (only text and integers are rendered), two result columns of one name that render differently, and a
  statement that does not parse. It fails closed: when in doubt, nothing of the value is shown.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlglot import exp, parse_one
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope

from hd_core.catalog_schemas import TableSchema
from hd_core.models import Role, utc_now
from hd_core.policies import MaskFunction, MaskRule, PolicySnapshot
from hd_core.policy_catalog import visible_schema
from hd_core.policy_eval import Subject, effective_role, masks_for
from hd_core.ports import ControlStore, KeyProvider, SettingsStore
from hd_core.shadow.compare import Redactor, redact_all

DEFAULT_SEARCH_PATH = ("main",)  # the engine's (engine_host/pipeline/settings.py)
# Where the engine keeps each environment's mask key, wrapped by the data key, and the KMS encryption context
# that binds it (engine_host/engine/masking.py ensure_mask_keys; a test checks both agree).
MASK_KEY_SETTING = "mask_hash_key_wrapped.{env}"
MASK_KEY_PURPOSE = "hd-mask-hash"
MASKED_TEXT = "***"

SchemaLookup = Callable[[str], TableSchema | None]
"""`schema.table` -> its schema if the replay's organisation may see it (`policy_catalog.visible_schema`)."""


@dataclass(frozen=True)
class ColumnPlan:
    """How one result column's values are shown: as they are, through a mask rule, or redacted."""

    kind: Literal["show", "mask", "redact"]
    rule: MaskRule | None = None


REDACT = ColumnPlan("redact")
SHOW = ColumnPlan("show")


def result_sources(sql: str, lookup: SchemaLookup, search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
                   ) -> list[tuple[str, str] | None] | None:
    """For each result column of `sql`, the `(schema.table, column)` it reads as it is, or None; None for the
    whole statement when it cannot be traced (it does not parse, names an unknown table, is not one SELECT)."""
    try:
        tree = parse_one(sql, dialect="postgres")
    except SqlglotError:
        return None
    if not isinstance(tree, exp.Select) or tree.find(exp.With) is not None:
        return None
    schema: dict[str, Any] = {}  # {schema: {table: {column: type}}}; types do not matter to tracing
    for table in tree.find_all(exp.Table):
        found = _resolve(table, lookup, search_path)
        if found is None:
            return None  # a table the catalog lacks (or a function in FROM): nothing of it is traced
        db, name = found.table.split(".", 1)
        table.set("db", exp.to_identifier(db))
        schema.setdefault(db, {})[name] = {column: "TEXT" for column in found.column_names()}
    try:
        qualified = qualify(tree, schema=schema, dialect="postgres", validate_qualify_columns=True,
                            quote_identifiers=False)
        scope = build_scope(qualified)
    except (SqlglotError, ValueError):  # an unknown column, an ambiguous one: sqlglot refuses to guess
        return None
    if scope is None or not isinstance(qualified, exp.Select):
        return None
    sources: list[tuple[str, str] | None] = []
    for projection in qualified.selects:
        inner = projection.unalias()
        source = scope.sources.get(inner.table) if isinstance(inner, exp.Column) else None
        if isinstance(inner, exp.Column) and isinstance(source, exp.Table):
            sources.append((f"{source.db}.{source.name}".lower(), inner.name.lower()))
        else:
            sources.append(None)
    return sources


def _resolve(table: exp.Table, lookup: SchemaLookup, search_path: Sequence[str]) -> TableSchema | None:
    if not table.name or table.catalog:
        return None
    candidates = [f"{table.db}.{table.name}"] if table.db else [f"{schema}.{table.name}" for schema in search_path]
    for candidate in candidates:
        found = lookup(candidate.lower())
        if found is not None:
            return found
    return None


def column_plans(sql: str, column_names: Sequence[str], lookup: SchemaLookup, snapshot: PolicySnapshot,
                 subject: Subject, search_path: Sequence[str] = DEFAULT_SEARCH_PATH) -> list[ColumnPlan]:
    """How each of the statement's result columns is shown in a report (see the module docstring)."""
    sources = result_sources(sql, lookup, search_path)
    if sources is None or len(sources) != len(column_names):
        return [REDACT] * len(column_names)
    plans = []
    for source in sources:
        if source is None:
            plans.append(REDACT)
            continue
        table, column = source
        applying = masks_for(snapshot, subject, subject.role, table).get(column)
        if applying is not None:
            plans.append(ColumnPlan("mask", applying))
        elif any(rule.org_id == subject.org_id and rule.table == table and rule.column == column
                 for rule in snapshot.masks):
            plans.append(REDACT)  # masked for others: sensitive, even where the ServiceAccount is exempt
        else:
            plans.append(SHOW)
    return plans


def mask_value(rule: MaskRule, value: Any, hash_key: bytes | None) -> Any:
    """`value` as the engine's mask renders it; `redact_all`'s rendering where the engine's text of the value is
    not certain to be Python's (only str and int are rendered by partial and hash) or there is no key."""
    if rule.function is MaskFunction.FULL:
        return MASKED_TEXT
    if rule.function is MaskFunction.NULL or value is None:
        return None  # the engine's concatenation and hash macro give NULL for NULL too
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return redact_all(rule.column, value)
    text = str(value)
    if rule.function is MaskFunction.PARTIAL:
        visible = max(int(rule.visible_chars), 0)
        return MASKED_TEXT + (text[-visible:] if visible else "")
    if hash_key is None:
        return redact_all(rule.column, value)
    return hmac.new(hash_key, text.encode(), hashlib.sha256).hexdigest()


def redactor(names: Sequence[str], plans: Sequence[ColumnPlan], hash_key: bytes | None) -> Redactor:
    """A `compare` redactor (by column name) following `plans`; a name shared by columns of different plans
    is redacted."""
    by_name: dict[str, ColumnPlan] = {}
    for name, plan in zip(names, plans, strict=True):
        by_name[name] = plan if by_name.get(name, plan) == plan else REDACT

    def render(column: str, value: Any) -> Any:
        plan = by_name.get(column, REDACT)
        if plan.kind == "show":
            return value
        if plan.kind == "mask" and plan.rule is not None:
            return mask_value(plan.rule, value, hash_key)
        return redact_all(column, value)

    return render


@dataclass(frozen=True)
class ReplayMasking:
    """What a replay's samples are masked with: the policies, the catalog the organisation sees, the replay's
    ServiceAccount as the engine sees it, and the environment's mask key (None: hash masks are redacted)."""

    snapshot: PolicySnapshot
    lookup: SchemaLookup
    subject: Subject
    hash_key: bytes | None
    search_path: tuple[str, ...] = DEFAULT_SEARCH_PATH

    def for_statement(self, sql: str, names: Sequence[str]) -> Redactor:
        plans = column_plans(sql, names, self.lookup, self.snapshot, self.subject, self.search_path)
        return redactor(names, plans, self.hash_key)


MaskingSource = Callable[[Mapping[str, Any]], ReplayMasking]
"""A replay's record -> its `ReplayMasking` (built once per batch, where the control store is reachable)."""


def control_masking(store: ControlStore, mask_key: Callable[[str], bytes | None]) -> MaskingSource:
    """A `MaskingSource` over the control store: the current policies, the recorded catalog as the replay's
    organisation sees it, the replay's ServiceAccount (its key's environment, its effective role), and
    `mask_key(env)`, the environment's mask key (`engine_host.engine.masking`)."""

    def masking(record: Mapping[str, Any]) -> ReplayMasking:
        snapshot = store.policy_snapshot()
        org_id = str(record["org_id"])
        key = store.get_api_key(str(record["engine_key_id"]))
        if key is None or key.org_id != org_id:
            raise LookupError("the replay's key is not its organisation's")
        env = str(getattr(key.env, "value", key.env))
        subject = Subject(user_id=str(record["engine_user"]), org_id=org_id, role=Role.SERVICE_ACCOUNT,
                          scopes=tuple(key.scopes), key_id=key.key_id, env=env)
        subject = dataclasses.replace(subject, role=effective_role(snapshot, subject, utc_now()))
        path = tuple(p.strip().lower() for p in str(record.get("search_path") or "").split(",") if p.strip())
        return ReplayMasking(snapshot, lambda table: visible_schema(store, snapshot, org_id, table), subject,
                             mask_key(env), path or DEFAULT_SEARCH_PATH)

    return masking


def stored_mask_key(store: SettingsStore, keys: KeyProvider, env: str) -> bytes | None:
    """The environment's mask key as the engine stored it (wrapped by the data key), unwrapped; None before any
    engine made one. Reads only: a replay never makes a key."""
    wrapped = store.get_setting(MASK_KEY_SETTING.format(env=env))
    if wrapped is None:
        return None
    return keys.decrypt_data_key(base64.b64decode(wrapped, validate=True), {"purpose": MASK_KEY_PURPOSE, "env": env})
