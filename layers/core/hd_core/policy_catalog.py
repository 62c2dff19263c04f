"""A policy's table and columns checked against the live catalog before it is stored.

The catalog is what the engine hosts record (`hd_core.catalog_schemas`). A mask, row filter or
column tag naming a table the organisation cannot see, or a column that table lacks, is refused
with the name (`UnknownTable`, `UnknownColumn`: HTTP 422). A policy written ahead of its table says
so with `"pending": true`; its columns are checked once the table exists (a pending policy on an
existing table is checked like any other). An ABAC deny's exact table names (resources and
`conditions.tables`) are checked too: a misspelt one would deny nothing.

Another organisation's table reads exactly like a missing one: the refusal must not tell an
organisation which names its neighbours use.
"""

from __future__ import annotations

from hd_core.bootstrap import DEFAULT_ORG_SETTING
from hd_core.catalog_schemas import TableSchema, table_schema
from hd_core.errors import UnknownColumn, UnknownTable
from hd_core.policies import AbacPolicy, ColumnTag, MaskRule, PolicyObject, PolicySnapshot, RowFilter
from hd_core.policy_codec import kind_of
from hd_core.policy_eval import binding_for
from hd_core.ports import ControlStore

CatalogChecked = MaskRule | RowFilter | ColumnTag


def visible_schema(store: ControlStore, snapshot: PolicySnapshot, org_id: str, table: str) -> TableSchema | None:
    """`table`'s schema if it is served and `org_id` may see it (its own, or shared with a tenant column)."""
    schema = table_schema(store, table)
    if schema is None:
        return None
    binding = binding_for(snapshot, table)
    if binding is not None and binding.tenant_column:
        return schema
    owner = binding.org_id if binding is not None and binding.org_id else store.get_setting(DEFAULT_ORG_SETTING)
    return schema if owner == org_id else None


def check_against_catalog(store: ControlStore, snapshot: PolicySnapshot, obj: PolicyObject) -> None:
    """Raise `UnknownTable` or `UnknownColumn` if `obj` names what its organisation's catalog lacks."""
    if isinstance(obj, AbacPolicy):
        _check_abac_tables(store, snapshot, obj)
        return
    if not isinstance(obj, MaskRule | RowFilter | ColumnTag):
        return
    schema = visible_schema(store, snapshot, obj.org_id, obj.table)
    if schema is None:
        if obj.pending:
            return
        raise UnknownTable(
            f"table {obj.table} does not exist: check the name (schema.table), or, to write the "
            f"{kind_of(obj).value} before the table is created, send \"pending\": true",
            field="table", name=obj.table,
        )
    known = schema.column_names()
    for column in _columns_named(obj):
        if column not in known:
            raise UnknownColumn(
                f"table {obj.table} has no column {column}; its columns are {', '.join(known)}",
                field="filter" if isinstance(obj, RowFilter) else "column", name=f"{obj.table}.{column}",
            )


def _columns_named(obj: CatalogChecked) -> list[str]:
    if isinstance(obj, RowFilter):
        # Imported on first use: parsing needs sqlglot, which most control Lambdas never load.
        from hd_core.row_filters import parse_row_filter, referenced_columns

        return sorted(referenced_columns(parse_row_filter(obj.filter)))
    return [obj.column]


def _check_abac_tables(store: ControlStore, snapshot: PolicySnapshot, policy: AbacPolicy) -> None:
    """The tables an ABAC deny names one by one: a misspelt one would deny nothing, silently.

    Patterns (`schema.*`, `*`) match whatever exists when a statement runs, so they are not checked.
    """
    if policy.pending:
        return
    named = [("resources", r) for r in policy.resources if "*" not in r]
    named += [("conditions.tables", t) for t in policy.conditions.tables]
    for field, table in named:
        if visible_schema(store, snapshot, policy.org_id, table) is None:
            raise UnknownTable(
                f"table {table} ({field}) does not exist: check the name (schema.table), or, to deny it "
                "before the table is created, send \"pending\": true",
                field=field, name=table,
            )
