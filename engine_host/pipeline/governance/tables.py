"""Table extract: every relation a statement names, resolved to its canonical `schema.table` with an action.

sqlglot's `traverse_scope` misses DML targets, `DELETE ... USING` and `UPDATE ... FROM` tables, so
this module classifies every `exp.Table` node itself: a reference to a visible CTE, an allowed
table function, or a base table (which must exist). A CTE is visible from the statement body, from
later sibling CTEs, and (WITH RECURSIVE only) from itself and earlier siblings; a schema-qualified
name is never a CTE.

An unqualified name is looked up in the session's search_path, in order, as PostgreSQL does: the
first schema holding a table of that name wins, and the reference is qualified with it in the
parsed tree, so every later stage (policies, tenancy, the rewrite, the audit) sees that one table.
A table of another organisation is not there for the lookup: it neither wins nor shadows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from sqlglot import exp

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.governance.guard import ParsedStatement, unknown_table, unsupported
from hd_core.policies import Action

Resolver = Callable[[str | None, str | None, str], str | None]


def _nothing_hidden(name: str) -> bool:
    return False


@dataclass(frozen=True)
class NameLookup:
    """Where unqualified names are looked up: the session's search_path, `"$user"` already expanded.

    `existing` are the schemas that exist (None: every schema of the path does); `hidden` says which
    canonical names belong to another organisation, which the lookup passes over as if missing;
    `refuse_hidden` makes the refusal of a name that only such a table matched (the client must see
    what a missing table gets, the audit record the real reason).
    """

    schemas: tuple[str, ...] = ("main",)
    existing: Collection[str] | None = None
    hidden: Callable[[str], bool] = _nothing_hidden
    refuse_hidden: Callable[[str, exp.Table], QueryError] | None = None

    def creation_schema(self) -> str | None:
        """Where an unqualified CREATE TABLE goes: the first schema of the path that exists."""
        return next((s for s in self.schemas if self.existing is None or s in self.existing), None)


DEFAULT_LOOKUP = NameLookup()


def no_schema_selected() -> QueryError:
    """PostgreSQL's answer to an unqualified CREATE when no schema of the search_path exists."""
    return QueryError("3F000", "HD_ERR_NO_SCHEMA_SELECTED", "no schema has been selected to create in",
                      hint="Qualify the name (schema.table), or SET search_path to a schema that exists "
                           "(\\dn lists them).")


@dataclass(frozen=True)
class TableRef:
    """One base-table reference of a statement: canonical name, the node in the parsed tree, and what is done."""

    name: str
    node: exp.Table = field(compare=False, repr=False)
    action: Action


def find_cte(table: exp.Table) -> exp.CTE | None:
    """The CTE an unqualified table name refers to, honouring WITH visibility rules, or None."""
    if table.args.get("db") is not None or table.args.get("catalog") is not None:
        return None
    name = table.name.lower()
    grandchild: exp.Expr | None = None
    child: exp.Expr = table
    node = table.parent
    while node is not None:
        with_ = node.args.get("with_")
        if isinstance(with_, exp.With):
            ctes = list(with_.expressions)
            recursive = bool(with_.args.get("recursive"))
            # Inside the i-th CTE's body only earlier siblings are visible, unless WITH RECURSIVE.
            inside = next((i for i, cte in enumerate(ctes) if cte is grandchild), None) if child is with_ else None
            visible = ctes if inside is None or recursive else ctes[:inside]
            for cte in visible:
                if cte.alias_or_name.lower() == name:
                    return cte
        grandchild, child, node = child, node, node.parent
    return None




def _target(tree: exp.Expr) -> exp.Table | None:
    if isinstance(tree, (exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Alter)):
        target = tree.this
        if isinstance(target, exp.Schema):
            target = target.this
        return target if isinstance(target, exp.Table) else None
    return None


def _target_action(tree: exp.Expr) -> Action:
    if isinstance(tree, exp.Insert):
        return Action.INSERT
    if isinstance(tree, exp.Update):
        return Action.UPDATE
    if isinstance(tree, exp.Delete):
        return Action.DELETE
    if isinstance(tree, exp.Create):
        return Action.CREATE
    if isinstance(tree, exp.Alter):
        return Action.ALTER
    return Action.DROP


def _is_drop_target(tree: exp.Expr, table: exp.Table) -> bool:
    if not isinstance(tree, exp.Drop):
        return False
    return table is tree.this or any(table is t for t in tree.args.get("tables") or [])


def _qualify(table: exp.Table, schema: str) -> None:
    table.set("db", exp.to_identifier(schema, quoted=True))


def _lookup(table: exp.Table, resolve: Resolver, lookup: NameLookup) -> tuple[str | None, str | None]:
    """The canonical name a reference stands for (as qualified, or the first match along the search_path),
    and the first hidden name the search passed over."""
    if table.args.get("db") is not None or table.args.get("catalog") is not None:
        parts = [p.lower() if p else None for p in (table.catalog, table.db)]
        return resolve(parts[0], parts[1], table.name.lower()), None
    passed_over = None
    for schema in lookup.schemas:
        name = resolve(None, schema, table.name.lower())
        if name is not None and not lookup.hidden(name):
            return name, None
        passed_over = passed_over or name
    return None, passed_over


def extract_tables(parsed: ParsedStatement, resolve: Resolver, lookup: NameLookup = DEFAULT_LOOKUP) -> list[TableRef]:
    """Every base-table reference with its action; unknown tables raise 42P01 HD_ERR_UNKNOWN_TABLE.

    Unqualified references are qualified in `parsed.tree` with the schema the lookup chose.
    """
    tree = parsed.tree
    target = _target(tree)
    refs: list[TableRef] = []
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            if table.this is None and isinstance(tree, exp.Create):
                continue  # CREATE SCHEMA names a schema, not a table
            if isinstance(table.this, exp.Func):
                continue  # an allowed table function (the guard refused the others)
            raise unsupported(f"{table.sql()} cannot be used as a table", hint="Name a table.")
        is_target = table is target or _is_drop_target(tree, table)
        if not is_target and find_cte(table) is not None:
            continue
        unqualified = table.args.get("db") is None and table.args.get("catalog") is None
        name, passed_over = _lookup(table, resolve, lookup)
        action = _target_action(tree) if is_target else Action.SELECT
        if name is None:
            creates = is_target and isinstance(tree, exp.Create)
            if creates or (is_target and isinstance(tree, exp.Drop) and tree.args.get("exists")):
                # A new table (or DROP IF EXISTS of one that is not there, a no-op): it belongs in the
                # first schema of the path that exists, never in one the path does not name.
                schema = lookup.creation_schema() or (None if creates else next(iter(lookup.schemas), None))
                if unqualified and schema is None:
                    raise no_schema_selected() if creates else unknown_table(table)
                if unqualified:
                    _qualify(table, schema)  # type: ignore[arg-type]
                continue
            if passed_over is not None and lookup.refuse_hidden is not None:
                raise lookup.refuse_hidden(passed_over, table)
            raise unknown_table(table)
        if unqualified:
            _qualify(table, name.split(".", 1)[0])
        if is_target and isinstance(tree, exp.Create) and tree.args.get("replace"):
            raise unsupported(f"CREATE OR REPLACE TABLE {name} would drop an existing table",
                              hint="DROP TABLE it first, then CREATE TABLE.")
        refs.append(TableRef(name=name, node=table, action=action))
    return refs
