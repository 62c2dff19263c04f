"""PostgreSQL array literals ('{a,b}') as DuckDB lists."""

from __future__ import annotations

from sqlglot import exp


def _pg_array_items(text: str) -> list[str | None] | None:
    """Elements of a one-dimensional PostgreSQL array literal such as '{a,"b c",NULL}'."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    body, items, current, quoted, escaped, was_quoted = text[1:-1], [], [], False, False, False
    if not body.strip():
        return []
    for ch in body:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted, was_quoted = not quoted, True
        elif ch == "," and not quoted:
            item = "".join(current).strip() if not was_quoted else "".join(current)
            items.append(None if item.upper() == "NULL" and not was_quoted else item)
            current, was_quoted = [], False
        elif ch in "{}" and not quoted:
            return None  # nested arrays are not used by catalog clients
        else:
            current.append(ch)
    item = "".join(current).strip() if not was_quoted else "".join(current)
    items.append(None if item.upper() == "NULL" and not was_quoted else item)
    return items


def _array_literal(text: str) -> exp.Expr | None:
    items = _pg_array_items(text)
    if items is None:
        return None
    return exp.Array(expressions=[exp.null() if i is None else exp.Literal.string(i) for i in items])
