"""Restricting a catalog answer to the relations a session may see (fails closed)."""

from __future__ import annotations

from sqlglot import exp

from engine_host.pgcompat.catalog.relations import _OWNED_VIEWS, _OWNER_COLUMNS, _REF_COLUMNS, _REF_VIEWS, SCHEMA


def wrap_visible(tree: exp.Expr, pairs: list[tuple[str, str]] | None) -> None:
    """Replace each catalog view carrying owners by a subquery hiding (and filtering on) them."""
    for table in list(tree.find_all(exp.Table)):
        if table.db != SCHEMA or table.name not in _OWNED_VIEWS:
            continue
        hidden = list(_OWNER_COLUMNS) + (list(_REF_COLUMNS) if table.name in _REF_VIEWS else [])
        inner = exp.Select(expressions=[exp.Star(except_=[exp.column(c) for c in hidden])]).from_(
            exp.Table(this=exp.to_identifier(table.name), db=exp.to_identifier(SCHEMA)))
        if pairs is not None:
            inner = inner.where(_visibility_condition(pairs, table.name in _REF_VIEWS))
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
        wrapped = exp.Subquery(this=inner, alias=alias.copy())
        # `(a JOIN b ON ...)` hangs b's join on a's node: it must move to the subquery, not vanish.
        if table.args.get("joins"):
            wrapped.set("joins", table.args["joins"])
        table.replace(wrapped)


def _visibility_condition(pairs: list[tuple[str, str]], with_ref: bool) -> exp.Expr:
    def member(table_column: str) -> exp.Expr:
        if not pairs:
            return exp.false()
        return exp.In(
            this=exp.Tuple(expressions=[exp.column("hd_schema"), exp.column(table_column)]),
            expressions=[exp.Tuple(expressions=[exp.Literal.string(s), exp.Literal.string(t)]) for s, t in pairs],
        )

    condition: exp.Expr = exp.or_(exp.column("hd_schema").is_(exp.null()), member("hd_table"))
    if with_ref:
        ref_ok = exp.or_(exp.column("hd_ref_table").is_(exp.null()), member("hd_ref_table"))
        condition = exp.and_(exp.Paren(this=condition), exp.Paren(this=ref_ok))
    return condition
