"""The column names PostgreSQL gives unaliased select items (clients read results by name)."""

from __future__ import annotations

import re

from sqlglot import exp

from engine_host.pgcompat.catalog.rewrite.nodes import _cast_target, _func_name


def _pg_column_name(node: exp.Expr) -> tuple[str | None, int]:
    """The output column name PostgreSQL gives an unaliased select item, with the strength its
    FigureColname rules give it (2 = a real name, 1 = a type name fallback, 0 = none)."""
    if isinstance(node, exp.Column):
        return node.name, 2
    if isinstance(node, exp.Cast):
        name, strength = _pg_column_name(node.this)
        if strength > 1:
            return name, strength
        return _cast_target(node.to) or node.to.sql("postgres").lower(), 1
    if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Select) and node.this.expressions:
        first = node.this.expressions[0]
        return (first.alias, 2) if isinstance(first, exp.Alias) else _pg_column_name(first)
    if isinstance(node, exp.Case):
        default = node.args.get("default")
        name, strength = _pg_column_name(default) if default is not None else (None, 0)
        return (name, strength) if strength > 1 else ("case", 1)
    if isinstance(node, exp.Paren | exp.Window):
        return _pg_column_name(node.this)
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        return _pg_column_name(node.expression)
    if isinstance(node, exp.Array):
        return "array", 2
    if isinstance(node, exp.Func):
        name = _func_name(node)
        if name is None:
            match = re.match(r"[A-Za-z_]\w*", node.sql("postgres"))
            name = match.group(0) if match else None
        return (name.lower(), 2) if name else (None, 0)
    return None, 0


def fold_identifiers(tree: exp.Expr) -> None:
    """Lower-case every unquoted identifier, as PostgreSQL does before anything else sees it.

    DuckDB keeps an alias's spelling, so without this `SELECT NULL AS PKTABLE_CAT` (pgjdbc's
    getImportedKeys) would answer a column named PKTABLE_CAT where PostgreSQL answers pktable_cat.
    """
    for identifier in tree.find_all(exp.Identifier):
        if not identifier.args.get("quoted") and isinstance(identifier.this, str):
            identifier.set("this", identifier.this.lower())


def name_outputs(tree: exp.Expr) -> None:
    """Give unaliased select items the column name PostgreSQL would (clients read them by name);
    unquoted identifiers are folded to lower case first, as PostgreSQL folds them.

    Every SELECT of the statement is named, not only the outermost: a query may refer to the name
    PostgreSQL gave a CTE's or a subquery's column (pgcli's casing query orders by `count` and filters
    on `row_number` of its CTEs).
    """
    fold_identifiers(tree)
    for select in list(tree.find_all(exp.Select)):
        _name_items(select)


def _name_items(select: exp.Select) -> None:
    for item in list(select.expressions):
        if isinstance(item, exp.Alias | exp.Star | exp.Column) or (
            isinstance(item, exp.Column) and isinstance(item.this, exp.Star)
        ):
            continue
        # Re-parent rather than copy: classification refers to the original table nodes.
        alias = exp.Alias(alias=exp.to_identifier(_pg_column_name(item)[0] or "?column?", quoted=True))
        item.replace(alias)
        alias.set("this", item)
