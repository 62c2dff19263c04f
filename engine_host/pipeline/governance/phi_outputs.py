"""Which result columns carry a table's declared patient key, unmasked (for the PHI accounting of disclosures).

A statement that returns unmasked PHI of a table with a declared patient-key column discloses the
PHI of the patients whose keys are in its result. The engine can record those keys (as keyed
HMACs) only when the key itself is a result column: here the top-level projection is read on the
client's tree, and a column counts only if it is a plain reference (optionally renamed) to the
patient-key column of a table read directly in the top-level FROM, or part of a `*`/`t.*` whose
width is known. Anything else - the key computed, masked, taken from a subquery, or a result
shape that cannot be followed - answers "not traceable", and the audit record says so rather than
guessing which patients were disclosed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlglot import exp

from engine_host.pipeline.governance.guard import ParsedStatement
from engine_host.pipeline.governance.tables import TableRef


def patient_key_outputs(parsed: ParsedStatement, refs: Sequence[TableRef], tables: Sequence[str],
                        patient_keys: Mapping[str, str], table_columns: Mapping[str, Sequence[str]],
                        masked: Mapping[str, Sequence[str]]) -> tuple[tuple[str, int], ...] | None:
    """(table, result column index) of the patient key of each of `tables`; None if any cannot be traced.

    `patient_keys` maps a table to its declared patient-key column, `masked` a table to the columns
    masked for this session (a masked key discloses no key).
    """
    select = parsed.tree
    if parsed.explain or not isinstance(select, exp.Select):
        return None
    top = [ref for ref in refs if _in_top_from(ref, select)]
    found: dict[str, int] = {}
    position = 0
    for projection in select.expressions:
        width = _width(projection, top, table_columns)
        if width is None:
            break  # later positions are unknown; what was found before stays exact
        for table, index in _key_positions(projection, top, table_columns, patient_keys, masked):
            found.setdefault(table, position + index)
        position += width
    if any(table not in found for table in tables):
        return None
    return tuple((table, found[table]) for table in tables)


def _star_keys(sources: Sequence[TableRef], table_columns: Mapping[str, Sequence[str]],
               patient_keys: Mapping[str, str], masked: Mapping[str, Sequence[str]]) -> list[tuple[str, int]]:
    found, offset = [], 0
    for ref in sources:
        columns = [c.lower() for c in table_columns.get(ref.name, ())]
        key = patient_keys.get(ref.name)
        if key in columns and key not in masked.get(ref.name, ()):
            found.append((ref.name, offset + columns.index(key)))
        offset += len(columns)
    return found


def _in_top_from(ref: TableRef, select: exp.Select) -> bool:
    return ref.node.find_ancestor(exp.Select) is select and ref.node.find_ancestor(exp.Subquery) is None


def _ref_for(qualifier: str, top: Sequence[TableRef]) -> TableRef | None:
    matches = [ref for ref in top if qualifier == (ref.node.alias_or_name or "").lower()]
    return matches[0] if len(matches) == 1 else None


def _width(projection: exp.Expr, top: Sequence[TableRef], table_columns: Mapping[str, Sequence[str]]) -> int | None:
    """How many result columns a projection makes (None when a star's tables are not all known)."""
    star = projection if isinstance(projection, exp.Star) else (
        projection.this if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star) else None)
    if star is None:
        return 1
    if star.args.get("except") or star.args.get("replace") or star.args.get("rename"):
        return None
    qualifier = projection.table.lower() if isinstance(projection, exp.Column) else ""
    if not qualifier:
        # A bare `*` over a join may fold USING/NATURAL columns together: its width is certain for one table only.
        single = len(top) == 1 and not projection.find_ancestor(exp.Select).args.get("joins")  # type: ignore[union-attr]
        sources = list(top) if single else []
    else:
        sources = [ref] if (ref := _ref_for(qualifier, top)) is not None else []
    if not sources or any(not table_columns.get(ref.name) for ref in sources):
        return None
    return sum(len(table_columns[ref.name]) for ref in sources)


def _key_positions(projection: exp.Expr, top: Sequence[TableRef], table_columns: Mapping[str, Sequence[str]],
                   patient_keys: Mapping[str, str], masked: Mapping[str, Sequence[str]]) -> list[tuple[str, int]]:
    """(table, offset within this projection's columns) of each unmasked patient key the projection returns."""
    if isinstance(projection, exp.Star):
        return _star_keys(list(top) if len(top) == 1 else [], table_columns, patient_keys, masked)
    column = projection.this if isinstance(projection, exp.Alias) else projection
    if not isinstance(column, exp.Column):
        return []
    if isinstance(column.this, exp.Star):
        ref = _ref_for(column.table.lower(), top)
        return _star_keys([ref] if ref is not None else [], table_columns, patient_keys, masked)
    name = column.name.lower()
    qualifier = column.table.lower()
    if qualifier:
        owner = _ref_for(qualifier, top)
    else:
        having = [ref for ref in top if name in (c.lower() for c in table_columns.get(ref.name, ()))]
        owner = having[0] if len(having) == 1 else None
    if owner is None or patient_keys.get(owner.name) != name or name in masked.get(owner.name, ()):
        return []
    return [(owner.name, 0)]
