"""PostgreSQL's numeric division (`/` with a numeric operand, avg() of integers and numerics) in DuckDB's DECIMAL.

PostgreSQL divides numerics exactly and rounds the quotient half away from zero at the scale its
select_div_scale (numeric.c) picks from the operands' values: at least NUMERIC_MIN_SIG_DIGITS (16)
significant digits from the estimated weight of the quotient (in base-10000 digits), and no fewer
than either operand's display scale. DuckDB's `/` returns a double instead. Here the quotient is
computed from the operands' unscaled integers (HUGEINT) with that scale chosen per value, so each
value is PostgreSQL's: a constant quotient becomes a literal computed here; any other one an
expression of integer arithmetic over the operands.

What can still differ, and why:
- DuckDB's DECIMAL has one scale per column, PostgreSQL's numeric one per value: a column's values
  are PostgreSQL's numbers, printed with trailing zeros up to the column's scale (38 digits minus
  the integer digits the operands' types allow); a value needing more fractional digits than that
  (a quotient below about 1e-20 of an int4 division) is rounded at the column's scale.
- A quotient whose unscaled integer (or the dividend scaled to it) passes DuckDB's 38 digits is an
  out-of-range error (22003) where PostgreSQL, with up to 1000 digits, answers.
- `x::numeric` is DuckDB's DECIMAL(18,3): its display scale is 3 where PostgreSQL's is x's own, so
  a quotient of 10^13 and more keeps 3 fractional digits where PostgreSQL's keeps fewer.
- avg() as a window function or with FILTER keeps DuckDB's double.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import sqlglot
from sqlglot import exp

NUMERIC_MIN_SIG_DIGITS = 16
NUMERIC_MAX_DISPLAY_SCALE = 1000
MAX_DECIMAL_DIGITS = 38
_DEC_DIGITS = 4  # decimal digits per base-10000 digit of PostgreSQL's numeric
# The lambda parameter of the quotient's steps (a name no client table column can shadow inside a lambda).
_STEP = "__hd_q"

# Decimal digits an integer type holds: a bound on the quotient's integer digits.
INTEGER_DIGITS: dict[exp.DType, int] = {
    exp.DType.TINYINT: 3, exp.DType.UTINYINT: 3, exp.DType.SMALLINT: 5, exp.DType.USMALLINT: 5,
    exp.DType.INT: 10, exp.DType.UINT: 10, exp.DType.BIGINT: 19, exp.DType.UBIGINT: 20,
    exp.DType.INT128: 38, exp.DType.UINT128: 38,
}
# How deep decimal_scale follows an expression (operands, and columns into their subqueries).
_MAX_DEPTH = 64
_PLAIN_NUMBER = re.compile(r"^(\d*)(?:\.(\d*))?$")


@dataclass(frozen=True)
class NumericOperand:
    """An operand of a numeric division: its display scale and how many integer digits its type holds."""

    scale: int
    integer_digits: int
    integer: bool  # an integer type (its unscaled value is itself)


def operand(node: exp.Expr, kind: exp.DataType | None) -> NumericOperand | None:
    """`node`'s scale and size for numeric division, or None when they are not known exactly."""
    literal = literal_value(node)
    if literal is not None:
        digits, scale = _literal_shape(node)
        return NumericOperand(scale, max(digits - scale, 1), scale == 0 and "." not in _literal_text(node))
    if kind is None:
        return None
    if kind.this in INTEGER_DIGITS:
        return NumericOperand(0, INTEGER_DIGITS[kind.this], True)
    if kind.this is exp.DType.DECIMAL:
        params = [p.this for p in kind.expressions if isinstance(p, exp.DataTypeParam)]
        if len(params) == 2 and all(isinstance(p, exp.Literal) for p in params):
            precision, scale = int(params[0].to_py()), int(params[1].to_py())
            return NumericOperand(scale, precision - scale, False)
        if not params and isinstance(node, exp.Cast):  # `::numeric` is DuckDB's default DECIMAL(18,3)
            return NumericOperand(3, 15, False)
    return None


def decimal_scale(node: exp.Expr, source: Callable[[exp.Column], exp.Expr | None] = lambda _: None,
                  depth: int = 0) -> int | None:
    """The scale of `node`'s DECIMAL value in DuckDB, which is PostgreSQL's display scale for these forms, read
    from a qualified, annotated tree; None if not a number whose scale is known.

    sqlglot types `a * b` (and `a + b`, `sum(a * b)` ...) as its left operand's type, so `price * (1 - discount)`
    read as scale 2 where DuckDB and PostgreSQL have 4: cast to that scale the operand was rounded before it
    was divided (TPC-H Q8's market share differed from PostgreSQL's in the 9th digit). The arithmetic follows
    both systems' rules (a product's scale is the sum of its operands', a sum's or difference's the larger);
    a form not listed keeps the annotated type's scale. `source` gives the expression a column of a derived
    table or CTE stands for (sqlglot carried its wrong type through the subquery too).
    """
    if depth > _MAX_DEPTH:
        return None
    while isinstance(node, (exp.Paren, exp.Neg, exp.Abs)):
        node = node.this
    if literal_value(node) is not None:
        return _literal_shape(node)[1]
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul)):  # before the type: sqlglot's is the left operand's
        left, right = decimal_scale(node.this, source, depth + 1), decimal_scale(node.expression, source, depth + 1)
        if left is None or right is None:
            return None
        return left + right if isinstance(node, exp.Mul) else max(left, right)
    kind = node.type
    if kind is not None and kind.this in INTEGER_DIGITS:
        return 0
    if isinstance(node, (exp.Sum, exp.Min, exp.Max, exp.AnyValue)):
        argument = node.this
        if isinstance(argument, exp.Distinct) and argument.expressions:
            argument = argument.expressions[0]
        return decimal_scale(argument, source, depth + 1)
    if isinstance(node, (exp.Case, exp.If, exp.Coalesce, exp.Nullif)):
        values = _branch_values(node)
        scales = [decimal_scale(v, source, depth + 1) for v in values if not isinstance(v, exp.Null)]
        known = [sc for sc in scales if sc is not None]
        return max(known) if known and len(known) == len(scales) else None
    if isinstance(node, exp.Column) and (defined := source(node)) is not None:
        return decimal_scale(defined, source, depth + 1)
    if kind is None or kind.this is not exp.DType.DECIMAL:
        return None
    if isinstance(node, exp.Cast) and not kind.expressions:
        return 3  # `::numeric` is DuckDB's default DECIMAL(18,3)
    params = [p.this for p in kind.expressions if isinstance(p, exp.DataTypeParam)]
    if len(params) == 2 and isinstance(params[1], exp.Literal):
        return int(params[1].to_py())
    return None


def _branch_values(node: exp.Expr) -> list[exp.Expr]:
    """The expressions whose value a conditional returns."""
    if isinstance(node, exp.Case):
        return [i.args["true"] for i in node.args.get("ifs") or []] + (
            [node.args["default"]] if node.args.get("default") is not None else [])
    if isinstance(node, exp.If):
        return [v for v in (node.args.get("true"), node.args.get("false")) if v is not None]
    if isinstance(node, exp.Nullif):
        return [node.this]
    return [node.this, *node.expressions]


def literal_value(node: exp.Expr) -> Decimal | None:
    """The value of a plain number literal (optionally negated), else None."""
    text = _literal_text(node)
    if not text or _PLAIN_NUMBER.match(text.lstrip("-")) is None or text.lstrip("-") in ("", "."):
        return None
    return Decimal(text)


def _literal_text(node: exp.Expr) -> str:
    sign = ""
    while isinstance(node, (exp.Neg, exp.Paren)):
        if isinstance(node, exp.Neg):
            sign = "" if sign else "-"
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string:
        return sign + str(node.this)
    return ""


def _literal_shape(node: exp.Expr) -> tuple[int, int]:
    match = _PLAIN_NUMBER.match(_literal_text(node).lstrip("-"))
    assert match is not None
    whole, fraction = match.group(1).lstrip("0"), match.group(2) or ""
    return len(whole) + len(fraction), len(fraction)


# --- PostgreSQL's rule, for constants and as the specification of the SQL below -----------------


def _weight_and_first_digit(unscaled: int, scale: int) -> tuple[int, int]:
    if unscaled == 0:
        return 0, 0
    digits = str(abs(unscaled))
    exponent = len(digits) - 1 - scale  # of the leading decimal digit
    weight = exponent // _DEC_DIGITS
    width = exponent - _DEC_DIGITS * weight + 1  # decimal digits of the leading base-10000 digit
    return weight, int(digits[:width].ljust(width, "0"))


def division_scale(dividend: int, scale1: int, divisor: int, scale2: int) -> int:
    """select_div_scale: the scale of PostgreSQL's quotient of two numerics given unscaled and scale."""
    weight1, first1 = _weight_and_first_digit(dividend, scale1)
    weight2, first2 = _weight_and_first_digit(divisor, scale2)
    quotient_weight = weight1 - weight2 - (1 if first1 <= first2 else 0)
    scale = max(NUMERIC_MIN_SIG_DIGITS - quotient_weight * _DEC_DIGITS, scale1, scale2, 0)
    return min(scale, NUMERIC_MAX_DISPLAY_SCALE)


def divide(dividend: Decimal, divisor: Decimal) -> Decimal:
    """PostgreSQL's `dividend / divisor` for numerics (display scale: each operand's exponent)."""
    scale1, scale2 = max(0, -int(dividend.as_tuple().exponent)), max(0, -int(divisor.as_tuple().exponent))
    unscaled1, unscaled2 = int(dividend.scaleb(scale1)), int(divisor.scaleb(scale2))
    scale = division_scale(unscaled1, scale1, unscaled2, scale2)
    quotient, remainder = divmod(abs(unscaled1) * 10 ** (scale2 - scale1 + scale), abs(unscaled2))
    rounded = quotient + (1 if 2 * remainder >= abs(unscaled2) else 0)
    negative = (unscaled1 < 0) != (unscaled2 < 0)
    return Decimal(-rounded if negative else rounded).scaleb(-scale)


# --- the DuckDB expression ---------------------------------------------------------------------


def constant_quotient(dividend: Decimal, divisor: Decimal) -> exp.Expr | None:
    """PostgreSQL's quotient of two constants as a DECIMAL literal, or None if DuckDB cannot hold it."""
    value = divide(dividend, divisor)
    scale = max(0, -int(value.as_tuple().exponent))
    precision = max(len(value.as_tuple().digits), scale + 1)
    if precision > MAX_DECIMAL_DIGITS:
        return None
    return exp.cast(exp.Literal.string(str(value)), exp.DataType.build(f"DECIMAL({precision}, {scale})"))


def quotient(dividend: exp.Expr, left: NumericOperand, divisor: exp.Expr, right: NumericOperand,
             integer_digits: int | None = None) -> exp.Expr:
    """PostgreSQL's numeric quotient of two expressions, as DuckDB DECIMAL(38, S).

    S leaves room for the quotient's largest integer part (`integer_digits`, by default the
    dividend's integer digits plus the divisor's scale) and is never below an operand's scale.

    Each operand, and each value derived from it (its digits, the quotient's scale), is written once:
    the steps are lambdas over a one-element list, each reading the previous step's struct. Written
    inline, the operands were repeated ~10 times each, nested: DuckDB spent ~15 ms binding and
    optimising one TPC-H avg() (44 ms for Q1's three) and evaluated the repeats per row.
    """
    whole = integer_digits if integer_digits is not None else left.integer_digits + right.scale
    column_scale = min(MAX_DECIMAL_DIGITS, max(MAX_DECIMAL_DIGITS - whole, left.scale, right.scale))
    operands = {_DIVIDEND: dividend, _DIVISOR: divisor}
    sql = "".join(f"({operands[part].sql(dialect='duckdb', comments=False)})" if part in operands else part
                  for part in _quotient_template(left, right, column_scale))
    # The template is text sqlglot generated, the operands too: kept as text, not a tree of ~350 nodes to copy
    # and generate again (that cost more than the rest of planning a statement with an avg()). transpile's
    # check parses the whole statement's SQL, this included, and checks its functions as any other.
    return exp.Paren(this=exp.Var(this=sql))


_DIVIDEND, _DIVISOR = "__hd_dividend", "__hd_divisor"


@lru_cache(maxsize=256)
def _quotient_template(left: NumericOperand, right: NumericOperand, column_scale: int) -> tuple[str, ...]:
    """The quotient's DuckDB SQL for one shape of operands, split around the two operands' places.

    DuckDB binds and optimises each function call of an expression in tens of microseconds, so what
    counts is how many this writes. select_div_scale's weights and leading digits are read from each
    operand's digits padded with zeros to a scale that is a multiple of 4 (base-10000 digits are then whole
    groups of 4 decimal digits counted from the right), with every constant folded here: ~110 calls where
    computing them per value with CASE, rpad and left took ~160. Parse, bind and optimise of TPC-H Q1
    (three avg()s) went from 14.0 to 11.3 ms, Q17 from 17.9 to 14.1 ms (thread CPU time, best of 20).
    """
    s1, s2 = left.scale, right.scale
    q = _STEP
    operands = f"[{{'a': {_unscaled(_DIVIDEND, left)}, 'b': {_unscaled(_DIVISOR, right)}}}]"
    # x, y: |a| and |b| as digits at scales s1 + p1 and s2 + p2, multiples of 4 (p: the zeros appended).
    p1, p2 = -s1 % _DEC_DIGITS, -s2 % _DEC_DIGITS
    digits = (f"LAMBDA {q}: {{'a': {q}.a, 'b': {q}.b, 'x': {_padded_digits(f'{q}.a', p1)}, "
              f"'y': {_padded_digits(f'{q}.b', p2)}}}")
    # weight = (groups of 4 digits) - 1 - (padded scale) / 4; the leading group is the first (len - 1) % 4 + 1
    # digits. The weights' constant parts fold into `base`; a zero operand's weight and digit differ from
    # PostgreSQL's (0, 0), which only changes the scale of a zero quotient (or of a division by zero, refused).
    base = NUMERIC_MIN_SIG_DIGITS + _DEC_DIGITS * ((s1 + p1) // _DEC_DIGITS - (s2 + p2) // _DEC_DIGITS)
    first_a = f"CAST(left({q}.x, (length({q}.x) + 3) % 4 + 1) AS INTEGER)"
    first_b = f"CAST(left({q}.y, (length({q}.y) + 3) % 4 + 1) AS INTEGER)"
    scale = (f"least(greatest({base} - 4 * ((length({q}.x) + 3) // 4 - (length({q}.y) + 3) // 4 - "
             f"CAST({first_a} <= {first_b} AS INTEGER)), {max(s1, s2, 0)}), {column_scale})")
    # n: |dividend| scaled so that n // |divisor| is the quotient's unscaled integer at scale sc.
    dividend_scaled = (f"LAMBDA {q}: {{'g': sign({q}.a) * sign({q}.b), 'b': abs({q}.b), 'sc': {scale}, "
                       f"'n': abs({q}.a)}}")
    scaled = (f"LAMBDA {q}: {{'g': {q}.g, 'b': {q}.b, 'sc': {q}.sc, "
              f"'n': {q}.n * {_power_of_ten(f'{s2 - s1} + {q}.sc')}}}")
    # Rounded half away from zero, then widened to the column's scale.
    rounded = (f"LAMBDA {q}: ({q}.n // {q}.b + CAST(2 * ({q}.n % {q}.b) >= {q}.b AS HUGEINT)) "
               f"* {q}.g * {_power_of_ten(f'{column_scale} - {q}.sc')}")
    steps = operands
    for step in (digits, dividend_scaled, scaled, rounded):
        steps = f"list_transform({steps}, {step})"
    unit = "0." + "0" * (column_scale - 1) + "1" if column_scale else "1"
    sql = (f"CAST({steps}[1] AS DECIMAL(38, 0)) "
           f"* CAST('{unit}' AS DECIMAL({MAX_DECIMAL_DIGITS}, {column_scale}))")
    generated = sqlglot.parse_one(sql, read="duckdb").sql(dialect="duckdb")
    return tuple(re.split(f"({_DIVIDEND}|{_DIVISOR})", generated))


def _padded_digits(unscaled: str, zeros: int) -> str:
    """The decimal digits of |unscaled| with `zeros` zeros appended."""
    digits = f"CAST(abs({unscaled}) AS VARCHAR)"
    return f"{digits} || '{'0' * zeros}'" if zeros else digits


def _power_of_ten(exponent: str) -> str:
    """10 ** exponent as HUGEINT (exponent: SQL for a non-negative integer of at most 38)."""
    return f"CAST(rpad('1', CAST({exponent} + 1 AS INTEGER), '0') AS HUGEINT)"


def _unscaled(placeholder: str, side: NumericOperand) -> str:
    """The operand's unscaled integer: itself for an integer, else its digits at its scale without the point."""
    if side.integer:
        return f"CAST({placeholder} AS HUGEINT)"
    return (f"CAST(replace(CAST(CAST({placeholder} AS DECIMAL({MAX_DECIMAL_DIGITS}, {side.scale})) AS VARCHAR), "
            f"'.', '') AS HUGEINT)")
