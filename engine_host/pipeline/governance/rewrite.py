"""Row filters and column masks, rewritten into the statement itself.

Every base table a statement reads becomes `(SELECT <masked columns> FROM schema.table WHERE <row
filter>) AS <its alias>`, so every expression of the query (aliases, functions, predicates, joins,
grouping, windows, set operations, recursion) only ever sees masked values of permitted rows.
Masking the result by column name afterwards is bypassable; masking inside the plan is not.

A hash- or partial-masked column of a table whose native copy stores its masked values
(engine_host/data/stored_masks.py) is read from the table's mask view instead: the same subquery,
row filter and alias, over `hd_masks_<n>.<schema>.<table>` (the table's own columns plus the
precomputed ones), projecting the stored column under the masked column's name. EXPLAIN keeps
computing the redacted macro.

Data-changing statements keep their target table, but evaluate their predicates, SET and RETURNING
expressions on masked values, only touch rows inside the row filter, and abort (atomically, with an
`HD_ERR_ROW_FILTER_CHECK` error raised inside DuckDB) when a new or updated row would leave it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlglot import exp

from engine_host.engine.duckdb_engine import DATA_CATALOG
from engine_host.pipeline.governance.guard import ParsedStatement, unsupported
from engine_host.pipeline.governance.tables import TableRef, find_cte
from hd_core.policies import Action, MaskFunction

ROW_FILTER_CHECK = "HD_ERR_ROW_FILTER_CHECK"
SOURCE_ALIAS = "__hd_src"
NEW_ROW_ALIAS = "__hd_new"
# The keyed-hash macros live in an in-memory catalog attached at startup (engine/masking.py), so
# the per-environment keys they embed are never written to the database file.
HASH_SCHEMA = "hd_keys"
HASH_MACRO = "hd_mask_hash"
HASH_MACRO_REDACTED = "hd_mask_hash_redacted"
# Table arguments a masked subquery cannot carry over (time travel, hints, ...): refused for governed tables.
_UNSUPPORTED_TABLE_ARGS = ("hints", "system_time", "version", "format", "pattern", "ordinality", "when",
                           "partition", "changes", "rows_from", "indexed")
_CARRIED_TABLE_ARGS = ("joins", "laterals", "pivots", "sample")

ColumnsOf = Callable[[str], set[str] | None]


@dataclass(frozen=True)
class MaskSpec:
    """How one column reads for this session."""

    function: MaskFunction
    visible_chars: int = 4
    # The keyed-hash macro of the session's environment (`hd_mask_hash_live`, `hd_mask_hash_test`).
    hash_macro: str = HASH_MACRO


@dataclass(frozen=True)
class StoredMaskColumns:
    """Where a table's masks are precomputed: its mask view's catalog, and the column of each masked column."""

    catalog: str
    columns: Mapping[str, str]


@dataclass(frozen=True)
class TablePolicy:
    """The masks and row filter that apply to one table for one session."""

    table: str
    columns: tuple[tuple[str, str], ...]
    masks: Mapping[str, MaskSpec] = field(default_factory=dict)
    row_filter: exp.Expr | None = None
    # Masks to read precomputed rather than compute (SELECT only; never for EXPLAIN).
    stored: StoredMaskColumns | None = None

    @property
    def governed(self) -> bool:
        return bool(self.masks) or self.row_filter is not None

    def column_type(self, name: str) -> str:
        return next((t for c, t in self.columns if c == name), "VARCHAR")


def is_row_filter_violation(message: str) -> bool:
    """Whether a DuckDB error message is the row-filter check of a rewritten INSERT or UPDATE."""
    return ROW_FILTER_CHECK in message


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _data_type(type_name: str) -> exp.DataType:
    try:
        return exp.DataType.build(type_name, dialect="duckdb")
    except Exception:  # noqa: BLE001 - an unknown type name (an ENUM, a user type) is a user-defined type
        return exp.DataType.build(type_name, dialect="duckdb", udt=True)


def mask_expression(column: exp.Expr, spec: MaskSpec, data_type: str, *, explain: bool = False) -> exp.Expr:
    """The masked value of `column` (an expression reading the raw value)."""
    as_text = exp.cast(column, "VARCHAR")
    if spec.function is MaskFunction.FULL:
        return exp.Literal.string("***")
    if spec.function is MaskFunction.PARTIAL:
        right = exp.Right(this=as_text, expression=exp.Literal.number(max(int(spec.visible_chars), 0)))
        return exp.Paren(this=exp.DPipe(this=exp.Literal.string("***"), expression=right))
    if spec.function is MaskFunction.HASH:
        macro = HASH_MACRO_REDACTED if explain else spec.hash_macro
        return exp.Dot(this=exp.to_identifier(HASH_SCHEMA), expression=exp.Anonymous(this=macro, expressions=[as_text]))
    return exp.cast(exp.null(), _data_type(data_type))


def _qualify(expr: exp.Expr, qualifier: str) -> exp.Expr:
    """Qualify every unqualified column of a row filter, so it can never bind to another scope."""
    expr = expr.copy()
    for column in list(expr.find_all(exp.Column)):
        if not column.table:
            column.set("table", _ident(qualifier))
    return expr


def governed_select(policy: TablePolicy, *, explain: bool = False) -> exp.Select:
    """`SELECT <masked columns> FROM schema.table AS __hd_src WHERE <row filter>` for one table."""
    schema, table = policy.table.split(".", 1)
    stored = policy.stored if policy.stored is not None and policy.columns and not explain else None
    if not policy.columns:
        if policy.masks:
            raise unsupported(f"the columns of {policy.table} are unknown, so its masks cannot be applied",
                              hint="Retry; the table list is being refreshed.")
        projections: list[exp.Expr] = [exp.Star()]
    else:
        projections = []
        for name, data_type in policy.columns:
            column = exp.Column(this=_ident(name), table=_ident(SOURCE_ALIAS))
            spec = policy.masks.get(name)
            if spec is None:
                projections.append(column)
            elif stored is not None and name in stored.columns:
                precomputed = exp.Column(this=_ident(stored.columns[name]), table=_ident(SOURCE_ALIAS))
                projections.append(exp.alias_(precomputed, _ident(name)))
            else:
                projections.append(exp.alias_(mask_expression(column, spec, data_type, explain=explain),
                                              _ident(name)))
    select = exp.Select(expressions=projections).from_(
        exp.Table(this=_ident(table), db=_ident(schema), catalog=_ident(stored.catalog if stored else DATA_CATALOG),
                  alias=exp.TableAlias(this=_ident(SOURCE_ALIAS))))
    if policy.row_filter is not None:
        select = select.where(_qualify(policy.row_filter, SOURCE_ALIAS))
    return select


def _governed_subquery(node: exp.Table, policy: TablePolicy, explain: bool) -> exp.Subquery:
    for arg in _UNSUPPORTED_TABLE_ARGS:
        if node.args.get(arg):
            raise unsupported(f"this table clause ({arg}) is not supported on {policy.table}",
                              hint="Remove it and query the table plainly.")
    alias = node.args.get("alias")
    table_alias = alias.copy() if isinstance(alias, exp.TableAlias) and alias.this else exp.TableAlias(
        this=_ident(node.name.lower()), columns=alias.args.get("columns") if alias is not None else None)
    subquery = exp.Subquery(this=governed_select(policy, explain=explain), alias=table_alias)
    for arg in _CARRIED_TABLE_ARGS:
        if node.args.get(arg):
            subquery.set(arg, node.args[arg])
    return subquery


def canonical_table(node: exp.Table, name: str) -> None:
    """Point a reference at the relation itself: `hd_data.<schema>.<table>`, the one name that binds."""
    schema, table = name.split(".", 1)
    node.set("this", _ident(table))
    node.set("db", _ident(schema))
    node.set("catalog", _ident(DATA_CATALOG))


def _strip_schema_qualifiers(tree: exp.Expr, refs: Sequence[TableRef]) -> None:
    """`crm.customers.ssn` -> `customers.ssn`: the reference it qualified is now a subquery aliased `customers`."""
    spelled = {(r.node.db.lower(), r.node.name.lower()) for r in refs}
    spelled |= {tuple(r.name.split(".", 1)) for r in refs}  # type: ignore[misc]
    for column in tree.find_all(exp.Column):
        if column.args.get("db") is not None and (column.db.lower(), column.table.lower()) in spelled:
            column.set("db", None)
            column.set("catalog", None)


def apply_policies(parsed: ParsedStatement, refs: list[TableRef], policies: Mapping[str, TablePolicy]) -> exp.Expr:
    """A new tree in which every governed table reference reads masked values of permitted rows only."""
    tree = parsed.tree.copy()
    copies = {id(original): copy for original, copy in zip(parsed.tree.walk(), tree.walk(), strict=True)}
    nodes: list[tuple[TableRef, exp.Table]] = []
    for ref in refs:
        node = copies[id(ref.node)]
        assert isinstance(node, exp.Table)
        nodes.append((ref, node))
    _strip_schema_qualifiers(tree, [TableRef(ref.name, node, ref.action) for ref, node in nodes])
    target: tuple[TableRef, exp.Table] | None = None
    for ref, node in nodes:
        policy = policies.get(ref.name)
        if ref.action is not Action.SELECT:
            canonical_table(node, ref.name)
            target = (ref, node)
        elif policy is not None and policy.governed:
            node.replace(_governed_subquery(node, policy, parsed.explain))
        else:
            canonical_table(node, ref.name)
    _canonical_new_names(tree)
    if target is not None and isinstance(tree, (exp.Insert, exp.Update, exp.Delete)):
        policy = policies.get(target[0].name)
        if policy is not None and policy.governed:
            _DmlRewrite(tree, target[1], policy, policies, parsed.explain).apply()
    return tree


def _canonical_new_names(tree: exp.Expr) -> None:
    """Names a statement creates or drops that no table holds yet (CREATE TABLE/SCHEMA, DROP ... IF EXISTS).

    They are not table references, so the table extract left them alone; they still go under the
    data catalog, never into the default one.
    """
    if isinstance(tree, exp.Create):
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        targets = [target] if isinstance(target, exp.Table) else []
    elif isinstance(tree, exp.Drop):
        targets = [t for t in (tree.this, *(tree.args.get("tables") or [])) if isinstance(t, exp.Table)]
    else:
        return
    for table in targets:
        if table.catalog == DATA_CATALOG:
            continue
        if table.this is None:  # CREATE SCHEMA: the name is the `db` part
            table.set("catalog", _ident(DATA_CATALOG))
        else:
            canonical_table(table, f"{(table.db or 'main').lower()}.{table.name.lower()}")


# --- data-changing statements -------------------------------------------------------------------------


class _DmlRewrite:
    """Masks and row filter for the target of an INSERT, UPDATE or DELETE."""

    def __init__(self, statement: exp.Insert | exp.Update | exp.Delete, target: exp.Table, policy: TablePolicy,
                 policies: Mapping[str, TablePolicy], explain: bool):
        self.statement = statement
        self.target = target
        self.policy = policy
        self.explain = explain
        self.qualifier = (target.alias or target.name).lower()
        self.qualifiers = {self.qualifier, target.name.lower()}
        self._policies = policies

    def apply(self) -> None:
        if isinstance(self.statement, exp.Insert):
            self._insert()
        else:
            self._update_or_delete()
        self._returning()

    def _columns_of(self, table: str) -> set[str] | None:
        policy = self._policies.get(table)
        return {c for c, _ in policy.columns} if policy is not None and policy.columns else None

    def _masked(self, expr: exp.Expr) -> exp.Expr:
        """`expr` with references to the target's masked columns replaced by their masked values."""
        if not self.policy.masks:
            return expr
        for column in list(expr.find_all(exp.Column)):
            name = column.name.lower()
            spec = self.policy.masks.get(name)
            if spec is None or not self._binds_to_target(column):
                continue
            masked = mask_expression(column.copy(), spec, self.policy.column_type(name), explain=self.explain)
            if column is expr:
                return masked
            column.replace(masked)
        return expr

    def _binds_to_target(self, column: exp.Column) -> bool:
        name, qualifier = column.name.lower(), column.table.lower()
        node = column.parent
        while node is not None and node is not self.statement:
            if isinstance(node, exp.Select):
                for alias, columns in _scope_sources(node, self._columns_of):
                    if qualifier and alias == qualifier:
                        return False
                    if not qualifier and columns is not None and name in columns:
                        return False
            node = node.parent
        return not qualifier or qualifier in self.qualifiers

    def _violation(self) -> exp.Expr:
        message = f"{ROW_FILTER_CHECK}: the row would be outside the row filter of {self.policy.table}"
        return exp.Anonymous(this="error", expressions=[exp.Literal.string(message)])

    def _checked(self, condition: exp.Expr) -> exp.Expr:
        return exp.Case(ifs=[exp.If(this=exp.Paren(this=condition), true=exp.true())], default=self._violation())

    def _update_or_delete(self) -> None:
        statement = self.statement
        where = statement.args.get("where")
        condition = self._masked(where.this) if where is not None else None
        conditions: list[exp.Expr] = []
        if self.policy.row_filter is not None:
            conditions.append(exp.Paren(this=_qualify(self.policy.row_filter, self.qualifier)))
        if condition is not None:
            conditions.append(exp.Paren(this=condition))
        if isinstance(statement, exp.Update):
            if self.policy.row_filter is not None:
                statement.set("expressions", _single_column_assignments(statement.expressions, self.policy.table))
            assigned: dict[str, exp.Expr] = {}
            for assignment in statement.expressions:
                if isinstance(assignment, exp.EQ):
                    assignment.set("expression", self._masked(assignment.expression))
                    assigned[assignment.this.name.lower()] = assignment.expression
            if self.policy.row_filter is not None:
                new_row = self._new_row_filter(assigned)
                # Only rows the statement updates are checked: the CASE keeps the check from firing on rows
                # the other conjuncts drop, whatever order DuckDB evaluates them in.
                guard = exp.and_(*[c.copy() for c in conditions])
                conditions.append(exp.Case(ifs=[exp.If(this=exp.Paren(this=guard), true=self._checked(new_row))],
                                           default=exp.false()))
        if conditions:
            statement.set("where", exp.Where(this=exp.and_(*conditions)))

    def _new_row_filter(self, assigned: Mapping[str, exp.Expr]) -> exp.Expr:
        assert self.policy.row_filter is not None
        new_row = self.policy.row_filter.copy()
        for column in list(new_row.find_all(exp.Column)):
            name = column.name.lower()
            if not column.table and name in assigned:
                replacement: exp.Expr = exp.Paren(this=assigned[name].copy())
            else:
                replacement = exp.Column(this=column.this.copy(), table=_ident(self.qualifier))
            if column is new_row:
                return replacement
            column.replace(replacement)
        return new_row

    def _insert(self) -> None:
        statement = self.statement
        if self.policy.row_filter is None:
            return
        if statement.args.get("by_name"):
            raise unsupported(f"INSERT ... BY NAME is not supported on {self.policy.table} (it has a row filter)",
                              hint="List the columns: INSERT INTO t (a, b) SELECT ...")
        source = statement.args.get("expression")
        if source is None:
            raise unsupported(f"INSERT ... DEFAULT VALUES is not supported on {self.policy.table} (row filter)",
                              hint="Insert explicit values that satisfy the row filter.")
        schema = statement.this if isinstance(statement.this, exp.Schema) else None
        names = ([e.name.lower() for e in schema.expressions] if schema is not None
                 else [c for c, _ in self.policy.columns])
        if not names:
            raise unsupported(f"the columns of {self.policy.table} are unknown", hint="List the columns to insert.")
        new_row = self.policy.row_filter.copy()
        for column in list(new_row.find_all(exp.Column)):
            name = column.name.lower()
            replacement: exp.Expr = (exp.Column(this=_ident(name), table=_ident(NEW_ROW_ALIAS)) if name in names
                                     else exp.null())
            if column is new_row:
                new_row = replacement
            else:
                column.replace(replacement)
        alias = exp.TableAlias(this=_ident(NEW_ROW_ALIAS), columns=[_ident(n) for n in names])
        source_query = source.this if isinstance(source, exp.Subquery) and not source.alias else source
        checked = (exp.Select(expressions=[exp.Star()])
                   .from_(exp.Subquery(this=source_query, alias=alias))
                   .where(self._checked(new_row)))
        if schema is None:
            statement.set("this", exp.Schema(this=statement.this, expressions=[_ident(n) for n in names]))
        statement.set("expression", checked)

    def _returning(self) -> None:
        returning = self.statement.args.get("returning")
        if returning is None or not self.policy.masks:
            return
        projections: list[exp.Expr] = []
        for projection in returning.expressions:
            if isinstance(projection, exp.Star) or (isinstance(projection, exp.Column)
                                                     and isinstance(projection.this, exp.Star)):
                if not self.policy.columns:
                    raise unsupported("RETURNING * needs the table's columns", hint="List the columns to return.")
                projections.extend(exp.Column(this=_ident(c)) for c, _ in self.policy.columns)
            else:
                projections.append(projection)
        masked: list[exp.Expr] = []
        for projection in projections:
            if isinstance(projection, exp.Column) and projection.name.lower() in self.policy.masks:
                name = projection.name.lower()
                value = self._masked(projection)
                masked.append(exp.alias_(value, _ident(name)) if value is not projection else value)
            else:
                masked.append(self._masked(projection))
        returning.set("expressions", masked)


def _single_column_assignments(assignments: Sequence[exp.Expr], table: str) -> list[exp.Expr]:
    """`SET (a, b) = (x, y)` and `SET (a) = (x)` as `SET a = x, b = y`, so the row-filter check sees every column.

    A multi-column assignment from anything but a list of values (`= (SELECT ...)`, `= ROW(...)`)
    cannot be checked column by column, so on a row-filtered table it is refused.
    """
    split: list[exp.Expr] = []
    for assignment in assignments:
        if not isinstance(assignment, exp.EQ):
            split.append(assignment)
            continue
        target, value = assignment.this, assignment.expression
        if not isinstance(target, (exp.Paren, exp.Tuple)):
            split.append(assignment)
            continue
        targets = target.expressions if isinstance(target, exp.Tuple) else [target.this]
        values = (value.expressions if isinstance(value, exp.Tuple)
                  else [value.this] if isinstance(value, exp.Paren) and not isinstance(value.this, exp.Query)
                  else [])
        if len(targets) != len(values):
            raise unsupported(f"this form of UPDATE ... SET is not supported on {table} (it has a row filter)",
                              hint="Assign each column on its own: SET a = x, b = y.")
        pairs = list(zip(targets, values, strict=True))
        for column, expression in pairs:
            if not isinstance(column, exp.Column):
                raise unsupported(f"this form of UPDATE ... SET is not supported on {table} (it has a row filter)",
                                  hint="Assign each column on its own: SET a = x, b = y.")
            split.append(exp.EQ(this=column, expression=expression))
    return split


def _scope_sources(select: exp.Select, columns_of: ColumnsOf) -> list[tuple[str, set[str] | None]]:
    """(alias, columns if known) of each relation in a SELECT's FROM clause."""
    items: list[exp.Expr] = []
    from_ = select.args.get("from_")
    if from_ is not None:
        items.append(from_.this)
    items.extend(join.this for join in select.args.get("joins") or [])
    sources: list[tuple[str, set[str] | None]] = []
    while items:
        item = items.pop()
        items.extend(join.this for join in item.args.get("joins") or [])
        alias = item.alias_or_name.lower()
        alias_node = item.args.get("alias")
        alias_columns = alias_node.args.get("columns") if isinstance(alias_node, exp.TableAlias) else None
        columns: set[str] | None = None
        if alias_columns:
            columns = {c.name.lower() for c in alias_columns}
        elif isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            cte = find_cte(item)
            if cte is not None:
                columns = _query_columns(cte.this)
            else:
                columns = columns_of(f"{item.db.lower() or 'main'}.{item.name.lower()}")
        elif isinstance(item, exp.Subquery):
            columns = _query_columns(item.this)
        sources.append((alias, columns))
    return sources


def _query_columns(query: exp.Expr) -> set[str] | None:
    if not isinstance(query, exp.Query):
        return None
    names = query.named_selects
    if not names or "*" in names:
        return None
    return {n.lower() for n in names}
