"""Which columns of each base table a statement reads (for PHI checks and the audit record).

The precise path qualifies a copy of the query with sqlglot's optimizer (stars expanded against the
known table columns) and maps each scope's column references to base tables. Whenever that is not
possible (DML, unknown columns, constructs the optimizer does not follow) the answer is
conservative: any column of a read table whose name appears anywhere as an identifier, and all of
a table's columns when it is read through a star, a whole-row reference, COLUMNS(...) or a
positional reference (DuckDB's `#n`). Column names a table alias gives (`FROM t AS x(a, b)`) are
mapped back, by position, to the table's own columns. The answer may over-report; it never
under-reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope
from sqlglot.schema import MappingSchema

from engine_host.pipeline.governance.guard import ParsedStatement
from engine_host.pipeline.governance.pg_semantics import SCHEMAS
from engine_host.pipeline.governance.tables import TableRef
from hd_core.policies import Action

_ALIAS_PREFIX = "__hd_t"


def referenced_columns(parsed: ParsedStatement, refs: Sequence[TableRef],
                       table_columns: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """table -> the columns the statement reads from it."""
    read = [r for r in refs if r.action in (Action.SELECT, Action.UPDATE, Action.DELETE)
            or (r.action is Action.INSERT and parsed.tree.args.get("returning") is not None)]
    if not read:
        return {}
    if any(_is_positional(n) for n in parsed.tree.walk()):
        # `SELECT #4 FROM t` names no column: any column of any table may be the one it reads.
        return {r.name: {c.lower() for c in table_columns.get(r.name, ())} for r in read}
    query = _query_part(parsed.tree)
    if query is not None and all(r.action is Action.SELECT for r in read):
        with contextlib.suppress(Exception):  # the optimizer gave up: answer conservatively instead
            return _qualified_columns(parsed, query, read, table_columns)
    return _conservative_columns(parsed.tree, read, table_columns)


def _query_part(tree: exp.Expr) -> exp.Expr | None:
    if isinstance(tree, exp.Query):
        return tree
    if isinstance(tree, exp.Create) and isinstance(tree.expression, exp.Query):
        return tree.expression
    if isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Query) and tree.args.get("returning") is None:
        return tree.expression
    return None


def _qualified_columns(parsed: ParsedStatement, query: exp.Expr, refs: Sequence[TableRef],
                       table_columns: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    if any(_is_columns_expression(n) for n in query.walk()):
        raise ValueError("COLUMNS(...) selects by pattern")
    tree = parsed.tree.copy()
    copies = {id(o): c for o, c in zip(parsed.tree.walk(), tree.walk(), strict=True)}
    query = copies[id(query)]
    # Each base reference is renamed to a unique table so that every column maps back to exactly one ref.
    names: dict[str, str] = {}
    schema: dict[str, dict[str, str]] = {}
    known: dict[str, set[str]] = {}
    renamed: dict[str, dict[str, str]] = {}
    for i, ref in enumerate(refs):
        node = copies[id(ref.node)]
        unique = f"{_ALIAS_PREFIX}{i}"
        names[unique] = ref.name
        ordered = [c.lower() for c in table_columns.get(ref.name, ())]
        known[unique] = set(ordered)
        # In the table's own column order: alias column lists (`AS x(a, b)`) rename by position.
        schema[unique] = dict.fromkeys(ordered, "VARCHAR")
        if not known[unique]:
            raise ValueError(f"columns of {ref.name} unknown")
        renamed[unique] = _alias_renames(node, ordered)
        alias = node.args.get("alias")
        if alias is None or not alias.this:
            new_alias = exp.TableAlias(this=exp.to_identifier(node.name.lower()),
                                       columns=alias.args.get("columns") if alias is not None else None)
            node.set("alias", new_alias)
        node.set("this", exp.to_identifier(unique))
        node.set("db", None)
        node.set("catalog", None)
    for identifier in query.find_all(exp.Identifier):
        identifier.set("this", identifier.name.lower())
        identifier.set("quoted", True)
    for column in query.find_all(exp.Column):  # crm.customers.ssn -> customers.ssn
        column.set("db", None)
        column.set("catalog", None)
    # The schema depends only on the dialect and each ref's columns in order: built once for all statements alike.
    key = ("columns", parsed.dialect, tuple((name, tuple(columns)) for name, columns in schema.items()))
    mapping = SCHEMAS.get(key, lambda: MappingSchema(dict(schema), dialect=parsed.dialect))
    qualified = qualify(query, schema=mapping, dialect=parsed.dialect, validate_qualify_columns=True,
                        expand_stars=True, quote_identifiers=False)
    result: dict[str, set[str]] = {r.name: set() for r in refs}
    for scope in traverse_scope(qualified):
        for column in scope.columns:
            source = scope.sources.get(column.table)
            if isinstance(source, exp.Table) and source.name in names:
                name = column.name.lower()
                result[names[source.name]].add(renamed[source.name].get(name, name))
                if name in known[source.name]:
                    result[names[source.name]].add(name)  # over-report rather than guess which one binds
        for source_name, (selected, _) in scope.selected_sources.items():
            if isinstance(selected, exp.Table) and selected.name in names and _whole_row(scope.expression, source_name):
                result[names[selected.name]].update(known[selected.name])
    return result


def _alias_renames(table: exp.Expr, ordered: Sequence[str]) -> dict[str, str]:
    """alias column name -> the table column it renames, for `FROM t AS x(a, b)` (a is t's 1st column, ...)."""
    alias = table.args.get("alias")
    columns = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
    if not columns:
        return {}
    if len(columns) > len(ordered):
        raise ValueError("more alias columns than table columns")
    return {c.name.lower(): ordered[i] for i, c in enumerate(columns)}


def _is_positional(node: exp.Expr) -> bool:
    return type(node).__name__ == "PositionalColumn"


def _whole_row(select: exp.Expr, alias: str) -> bool:
    """Whether a scope reads a table as a whole-row value (`SELECT t FROM t`)."""
    for node in select.find_all(exp.Column, exp.TableColumn):
        if (isinstance(node, exp.TableColumn) or not node.args.get("table")) and node.name.lower() == alias.lower():
            return True
    return False


def _is_columns_expression(node: exp.Expr) -> bool:
    return type(node).__name__ == "Columns" or (
        isinstance(node, exp.Anonymous) and str(node.name).lower() in ("columns", "unpack"))


def _conservative_columns(tree: exp.Expr, refs: Sequence[TableRef],
                          table_columns: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    identifiers = {i.name.lower() for i in tree.find_all(exp.Identifier)}
    star = any(not isinstance(s.parent, exp.Count) for s in tree.find_all(exp.Star)) or any(
        _is_columns_expression(n) for n in tree.walk())
    result: dict[str, set[str]] = {}
    for ref in refs:
        columns = {c.lower() for c in table_columns.get(ref.name, ())}
        names = {ref.node.name.lower(), (ref.node.alias or "").lower()} - {""}
        whole_row = any(not c.table and c.name.lower() in names for c in tree.find_all(exp.Column))
        if star or whole_row:
            result.setdefault(ref.name, set()).update(columns)
        else:
            result.setdefault(ref.name, set()).update(columns & identifiers)
            ordered = [c.lower() for c in table_columns.get(ref.name, ())]
            alias = ref.node.args.get("alias")
            aliased = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
            # Columns renamed by an alias column list are read under names that are not theirs.
            result[ref.name].update(ordered[:len(aliased or ())])
    return result
