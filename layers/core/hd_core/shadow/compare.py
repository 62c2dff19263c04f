"""The comparison of one statement's result on the reference PostgreSQL and on the engine, in bounded memory.

Each side's result (column names, PostgreSQL type OIDs, row batches) or error (SQLSTATE, message) is
reduced by `digest_result` to a `ResultDigest`: counts, a few 128-bit hashes and bounded samples, so a
10M-row result is never held. `compare_digests` turns two digests into a verdict:

- `exact`: same column names and types, and the same rows: in the same order when the statement has
  ORDER BY at its top level (decided from sqlglot's tree), else the same multiset.
- `semantic`: the same rows after normalisation: integer, numeric and float values of equal value are
  equal (5 = 5.00 = 5.0, -0.0 = 0, NaN = NaN), varchar/text/bpchar/name are text (bpchar without its
  padding), timestamp and timestamptz are compared as UTC instants, json by value, and values of
  numeric or float columns may differ within a relative tolerance (default 1e-9).
- `mismatch`: row counts of each side and up to `max_report_rows` differing rows per side.
- `error`: which side(s) failed, with SQLSTATE and a redacted message.

How the hashes work. A row is encoded per tier and hashed to 128 bits (BLAKE2b). The multiset hash
of a result is the sum of its row hashes mod 2^128 (a sum, not a xor, so duplicates count); the
ordered hash chains the multiset hashes of consecutive groups of rows with equal ORDER BY keys, so
rows that tie on the sort key may come in any order (as PostgreSQL allows). When a key cannot be
mapped to an output column, every row is its own group. Two encodings are hashed:

1. strict: the values as delivered (a numeric keeps its scale, -0.0 is not 0); decides `exact`.
2. tolerant: the normalisation above, with every non-integral value of a numeric or float column
   rounded to `digits` significant digits, where 10^(1-digits) <= rel_tol / 10 (11 digits for
   1e-9). Two values that round alike differ by less than the tolerance, so equal tolerant hashes
   prove `semantic`. Integral values (and integer columns) are never rounded: an id or a count off
   by one stays a mismatch, and 5 = 5.00 = 5.0 compare exactly. Equal values always encode alike,
   so results equal without tolerance are found by this hash too.

Limits of the rule. Two values within tolerance can still round to neighbouring cells (a value
close to a rounding boundary): the tolerant hashes then differ although the results agree. In that
case, when both results fit in the head sample (`sample_rows`, complete results), the samples are
compared pairwise with the tolerance itself and the verdict is exact again. A result larger than the
sample whose hashes differ only that way is reported as `mismatch` with the note that the
difference could not be verified: a false `mismatch` is possible, a false `semantic` is not. The
tolerance is relative (|a - b| <= rel_tol * max(|a|, |b|)); with `rel_tol=0` numerics compare exactly.
When the encodings coincide (no numeric, float, timestamptz, bpchar or json column) one hash serves
both tiers, so a plain result costs one hash per row. A statement whose rows are not fully determined
(LIMIT without ORDER BY, or an ORDER BY ... LIMIT that cuts through ties) may return different rows
on each side: that is reported as a mismatch, since the rows do differ.

What a digest holds. Counts, hashes and two bounded samples of raw rows: the first `sample_rows`
(for ordered reports and small results) and the `hash_sample_rows` rows with the smallest tolerant
hashes (a sample both sides draw alike, so rows present on one side only show up in it even when the
result is far larger than any sample). The samples are raw values: a digest stays in the memory of
the process that compares and is never stored; only the redacted `Comparison` is. An error raised
while reading a side's batches propagates; the caller records it as that side's `SideError`.

Rows that reach a report pass through the caller's `redact(column, value)` (the engine's masking
rules); the default keeps only NULL-ness and the Python type. Error messages are redacted with
`hd_core.text_redaction.redact_error_message`, which drops quoted values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from hd_core.text_redaction import redact_error_message

Verdict = Literal["exact", "semantic", "mismatch", "error"]
Side = Literal["reference", "engine"]
Row = tuple[Any, ...]
Redactor = Callable[[str, Any], Any]

# PostgreSQL type OIDs, by the family the comparison treats alike.
INTEGER_OIDS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
INEXACT_NUMBER_OIDS = frozenset({700, 701, 1700})  # float4, float8, numeric
TEXT_OIDS = frozenset({25, 1043, 1042, 19, 18})  # text, varchar, bpchar, name, "char"
BPCHAR_OID = 1042
TIMESTAMP_OIDS = frozenset({1114, 1184})
TIMESTAMPTZ_OID = 1184
JSON_OIDS = frozenset({114, 3802})
BYTEA_OID = 17

_MASK_128 = (1 << 128) - 1


def redact_all(column: str, value: Any) -> Any:
    """The default redaction: a report shows that a value was NULL or of which type, never the value."""
    return None if value is None else f"<{type(value).__name__}>"


@dataclass(frozen=True)
class CompareOptions:
    """Tolerance and the bounds of what a digest keeps."""

    rel_tol: float = 1e-9
    sample_rows: int = 1000  # the first rows of each side, kept for ordered reports and small results
    hash_sample_rows: int = 256  # the rows with the smallest hashes: a sample both sides draw alike
    max_report_rows: int = 5  # differing rows per side in a mismatch

    def __post_init__(self) -> None:
        if not (0 <= self.rel_tol < 1) or self.sample_rows < 1 or self.hash_sample_rows < 1:
            raise ValueError("rel_tol must be in [0, 1) and the sample sizes at least 1")

    @property
    def digits(self) -> int | None:
        """Significant digits numerics are rounded to in the tolerant hash (None: no rounding)."""
        if self.rel_tol == 0:
            return None
        return max(1, math.ceil(1 - math.log10(self.rel_tol)) + 1)


@dataclass(frozen=True)
class ResultColumns:
    """A result's column names and PostgreSQL type OIDs (0 when unknown)."""

    names: tuple[str, ...]
    type_oids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.type_oids):
            raise ValueError("one type OID per column name")


@dataclass(frozen=True)
class SideResult:
    """One side's successful result: its columns and an iterable of row batches (sequences of rows)."""

    columns: ResultColumns
    batches: Iterable[Sequence[Sequence[Any]]]


@dataclass(frozen=True)
class SideError:
    """One side's failure: SQLSTATE and message as the server gave them (redacted when reported)."""

    sqlstate: str
    message: str


SideOutcome = SideResult | SideError


# --- ordering -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ordering:
    """Whether a statement's rows come in a defined order, and the output columns of its sort key.

    `key_columns` None with `ordered` True: the order is defined but its key is not all in the output,
    so every row is compared in place (ties on a hidden key can then look like a difference).
    """

    ordered: bool
    key_columns: tuple[int, ...] | None = None


UNORDERED = Ordering(False)


def result_order(sql: str, column_names: Sequence[str]) -> Ordering:
    """The ordering of `sql`'s result: ORDER BY at the top level, its keys mapped to output positions."""
    try:
        tree = sqlglot.parse_one(sql, read="postgres")
    except (ParseError, TokenError, RecursionError):
        return UNORDERED
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    order = tree.args.get("order") if tree is not None else None
    if not isinstance(order, exp.Order) or not order.expressions:
        return UNORDERED
    select = tree
    while isinstance(select, exp.SetOperation):
        select = select.this
    projections = list(select.expressions) if isinstance(select, exp.Select) else []
    names = [name.lower() for name in column_names]
    keys: list[int] = []
    for ordered in order.expressions:
        position = _key_position(ordered.this, projections, names)
        if position is None:
            return Ordering(True, None)
        keys.append(position)
    return Ordering(True, tuple(keys))


def _key_position(key: exp.Expr, projections: list[exp.Expr], names: list[str]) -> int | None:
    if isinstance(key, exp.Literal) and not key.is_string and str(key.this).isdigit():
        position = int(key.this) - 1
        return position if 0 <= position < len(names) else None
    has_star = any(isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
                   for p in projections)
    if not has_star:
        for position, projection in enumerate(projections):
            inner = projection.this if isinstance(projection, exp.Alias) else projection
            if inner == key:
                return position
    if isinstance(key, exp.Column) and not key.table:
        matches = [i for i, name in enumerate(names) if name == key.name.lower()]
        if len(matches) == 1:
            return matches[0]
    return None


# --- value encodings -------------------------------------------------------------------------------

_NAN = float("nan")


def _strict(value: Any) -> Any:
    """The value as delivered, with only representation noise removed (time zone objects, buffers)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return value


def _json_value(value: Any) -> Any:
    try:
        parsed = json.loads(value) if isinstance(value, (str, bytes)) else value
        return json.dumps(parsed, sort_keys=True, separators=(",", ":"), default=str)
    except (ValueError, TypeError):
        return value


def _canonical_number(value: Any) -> Any:
    """An int when the value is integral, else a normalised Decimal; NaN and infinities as floats."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return _NAN
        if math.isinf(value):
            return value
        if value.is_integer():
            return int(value)
        return Decimal(repr(value)).normalize()
    if isinstance(value, Decimal):
        if value.is_nan():
            return _NAN
        if value.is_infinite():
            return float(value)
        if value == value.to_integral_value():
            return int(value)
        return value.normalize()
    return value


def _rounder(digits: int) -> Callable[[Any], Any]:
    context = Context(prec=digits, rounding=ROUND_HALF_EVEN)

    def rounded(value: Any) -> Any:
        canonical = _canonical_number(value)
        if not isinstance(canonical, Decimal):  # integral (an int), NaN or an infinity: kept exact
            return canonical
        result = context.plus(canonical)
        return int(result) if result == result.to_integral_value() else result.normalize()

    return rounded


def _utc_naive(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _bpchar(value: Any) -> Any:
    return value.rstrip(" ") if isinstance(value, str) else value


Encoder = Callable[[Any], Any] | None


def _encoders(oids: Sequence[int], tier: str, digits: int | None) -> tuple[Encoder, ...]:
    rounder = _rounder(digits) if digits is not None else None
    encoders: list[Encoder] = []
    for oid in oids:
        if oid in JSON_OIDS:
            encoders.append(_json_value)
        elif tier == "strict":
            encoders.append(_strict if oid in (TIMESTAMPTZ_OID, BYTEA_OID, 0) else None)
        elif oid in INTEGER_OIDS:
            encoders.append(None)  # Python ints already; a numeric's integral value becomes the same int
        elif oid in INEXACT_NUMBER_OIDS:
            encoders.append(rounder if tier == "tolerant" and rounder is not None else _canonical_number)
        elif oid in TIMESTAMP_OIDS:
            encoders.append(_utc_naive)
        elif oid == BPCHAR_OID:
            encoders.append(_bpchar)
        elif oid in TEXT_OIDS:
            encoders.append(None)
        else:
            encoders.append(_strict)
    return tuple(encoders)


def _family(oid: int) -> str:
    if oid in INTEGER_OIDS or oid in INEXACT_NUMBER_OIDS:
        return "number"
    if oid in TEXT_OIDS:
        return "text"
    if oid in TIMESTAMP_OIDS:
        return "timestamp"
    if oid in JSON_OIDS:
        return "json"
    return f"oid:{oid}"


# --- digests --------------------------------------------------------------------------------------

TIERS = ("strict", "tolerant")


def _none_safe(encoder: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else encoder(value)


def _row_hashes(rows: Iterable[Row]) -> list[int]:
    """128-bit BLAKE2b of each row's repr (stable across processes, unlike `hash`)."""
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b(text.encode(), digest_size=16).digest(), "big") for text in map(repr, rows)]


class _TierHasher:
    """The multiset and (tie-grouped) ordered hashes of one encoding of the rows."""

    def __init__(self, encoders: tuple[Encoder, ...], key_columns: tuple[int, ...] | None, ordered: bool) -> None:
        self.encoders = encoders
        self.identity = all(encoder is None for encoder in encoders)
        self.column_encoders = [None if encoder is None else _none_safe(encoder) for encoder in encoders]
        self.key_columns = key_columns
        self.ordered = ordered
        self.total = 0
        self.chain = hashlib.blake2b(digest_size=16)
        self.group_key: object = _NO_GROUP
        self.group_sum = 0
        self.group_count = 0

    def encode(self, row: Row) -> Row:
        """One row in this tier's encoding."""
        return self.encode_batch([row])[0]

    def encode_batch(self, rows: Sequence[Row]) -> list[Row]:
        """Rows in this tier's encoding, computed column by column (much faster than row by row)."""
        if self.identity:
            return list(rows)
        columns = [list(column) for column in zip(*rows, strict=True)] if rows else []
        encoded = [column if encoder is None else list(map(encoder, column))
                   for column, encoder in zip(columns, self.column_encoders, strict=True)]
        return list(zip(*encoded, strict=True))

    def add_batch(self, rows: Sequence[Row]) -> list[int]:
        """Hash a batch of rows into the running hashes; the row hashes, in order."""
        encoded = self.encode_batch(rows)
        digests = _row_hashes(encoded)
        self.total += sum(digests)
        if self.ordered:
            for row, digest in zip(encoded, digests, strict=True):
                if self.key_columns is None:
                    self._flush()  # no known sort key: every row is its own group
                else:
                    key = tuple(row[i] for i in self.key_columns)
                    if key != self.group_key:
                        self._flush()
                        self.group_key = key
                self.group_sum += digest
                self.group_count += 1
        return digests

    def _flush(self) -> None:
        if self.group_count:
            self.chain.update((self.group_sum & _MASK_128).to_bytes(16, "big"))
            self.chain.update(self.group_count.to_bytes(8, "big"))
        self.group_sum = 0
        self.group_count = 0

    def finish(self) -> tuple[str, str | None]:
        self._flush()
        return f"{self.total & _MASK_128:032x}", self.chain.hexdigest() if self.ordered else None


_NO_GROUP = object()


@dataclass(frozen=True)
class ResultDigest:
    """What is kept of one side's result: bounded whatever the result's size."""

    columns: ResultColumns | None
    error: SideError | None
    row_count: int = 0
    multiset: dict[str, str] = field(default_factory=dict)  # tier -> hex
    ordered_hash: dict[str, str] = field(default_factory=dict)  # tier -> hex (ordered results only)
    head: tuple[Row, ...] = ()  # the first `sample_rows` rows
    hash_sample: tuple[tuple[int, Row], ...] = ()  # (tolerant row hash, row), the smallest hashes
    ordering: Ordering = UNORDERED

    @property
    def complete(self) -> bool:
        """Whether `head` holds every row."""
        return self.error is None and self.row_count <= len(self.head)


def digest_result(outcome: SideOutcome, ordering: Ordering = UNORDERED,
                  options: CompareOptions | None = None) -> ResultDigest:
    """Reduce one side's result to its digest, reading the batches once."""
    options = options or CompareOptions()
    if isinstance(outcome, SideError):
        return ResultDigest(columns=None, error=outcome, ordering=ordering)
    columns = outcome.columns
    hashers: dict[str, _TierHasher] = {}
    by_encoders: dict[tuple[Encoder, ...], _TierHasher] = {}
    for tier in TIERS:
        encoders = _encoders(columns.type_oids, tier, options.digits)
        if encoders not in by_encoders:
            by_encoders[encoders] = _TierHasher(encoders, ordering.key_columns, ordering.ordered)
        hashers[tier] = by_encoders[encoders]
    distinct = list(by_encoders.values())
    tolerant = hashers["tolerant"]
    head: list[Row] = []
    smallest: list[tuple[int, Row]] = []  # ascending by tolerant row hash, at most hash_sample_rows
    width = len(columns.names)
    count = 0
    for batch in outcome.batches:
        rows = [raw if isinstance(raw, tuple) else tuple(raw) for raw in batch]
        if not rows:
            continue
        if any(len(row) != width for row in rows):
            raise ValueError(f"a row's length differs from the result's {width} columns")
        tolerant_hashes: list[int] = []
        for hasher in distinct:
            digests = hasher.add_batch(rows)
            if hasher is tolerant:
                tolerant_hashes = digests
        if count < options.sample_rows:
            head.extend(rows[: options.sample_rows - count])
        full = len(smallest) >= options.hash_sample_rows
        threshold = smallest[-1][0] if full else _MASK_128 + 1
        candidates = [(h, row) for h, row in zip(tolerant_hashes, rows, strict=True) if h < threshold]
        if candidates:
            smallest = heapq.nsmallest(options.hash_sample_rows, smallest + candidates, key=lambda item: item[0])
        count += len(rows)
    finished = {id(hasher): hasher.finish() for hasher in distinct}
    return ResultDigest(
        columns=columns,
        error=None,
        row_count=count,
        multiset={tier: finished[id(hasher)][0] for tier, hasher in hashers.items()},
        ordered_hash={tier: finished[id(hasher)][1] or "" for tier, hasher in hashers.items()}
        if ordering.ordered else {},
        head=tuple(head),
        hash_sample=tuple(smallest),
        ordering=ordering,
    )


# --- the verdict ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorReport:
    """One side's failure as a report shows it."""

    side: Side
    sqlstate: str
    message: str


@dataclass(frozen=True)
class Comparison:
    """The verdict on one statement, with what a report may show of it (redacted)."""

    verdict: Verdict
    ordered: bool
    reference_rows: int | None
    engine_rows: int | None
    notes: tuple[str, ...] = ()
    reference_only: tuple[dict[str, Any], ...] = ()  # differing rows of the reference side, redacted
    engine_only: tuple[dict[str, Any], ...] = ()
    errors: tuple[ErrorReport, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {
            "verdict": self.verdict,
            "ordered": self.ordered,
            "reference_rows": self.reference_rows,
            "engine_rows": self.engine_rows,
            "notes": list(self.notes),
            "reference_only": [dict(row) for row in self.reference_only],
            "engine_only": [dict(row) for row in self.engine_only],
            "errors": [{"side": e.side, "sqlstate": e.sqlstate, "message": e.message} for e in self.errors],
        }


def compare_results(sql: str, reference: SideOutcome, engine: SideOutcome, *,
                    options: CompareOptions | None = None, redact: Redactor = redact_all) -> Comparison:
    """Digest both sides of `sql` (one after the other, each in bounded memory) and compare them."""
    options = options or CompareOptions()
    names = next((o.columns.names for o in (reference, engine) if isinstance(o, SideResult)), ())
    ordering = result_order(sql, names)
    return compare_digests(digest_result(reference, ordering, options), digest_result(engine, ordering, options),
                           options=options, redact=redact)


def compare_digests(reference: ResultDigest, engine: ResultDigest, *, options: CompareOptions | None = None,
                    redact: Redactor = redact_all) -> Comparison:
    """The verdict on two digests of one statement (made with the same ordering and options)."""
    options = options or CompareOptions()
    ordered = reference.ordering.ordered
    sides: tuple[tuple[Side, ResultDigest], ...] = (("reference", reference), ("engine", engine))
    errors = tuple(ErrorReport(side, digest.error.sqlstate, redact_error_message(digest.error.message))
                   for side, digest in sides if digest.error is not None)
    if errors:
        return Comparison("error", ordered, None if reference.error else reference.row_count,
                          None if engine.error else engine.row_count, errors=errors)
    assert reference.columns is not None and engine.columns is not None
    counts = (reference.row_count, engine.row_count)
    ref_cols, eng_cols = reference.columns, engine.columns
    if len(ref_cols.names) != len(eng_cols.names):
        return Comparison("mismatch", ordered, *counts,
                          notes=(f"column count differs: {len(ref_cols.names)} vs {len(eng_cols.names)}",))
    notes: list[str] = []
    families = [(_family(a), _family(b)) for a, b in zip(ref_cols.type_oids, eng_cols.type_oids, strict=True)]
    incompatible = [ref_cols.names[i] for i, (a, b) in enumerate(families) if a != b]
    if incompatible:
        return Comparison("mismatch", ordered, *counts,
                          notes=(f"column types differ in kind: {', '.join(incompatible)}",))
    same_shape = ref_cols == eng_cols
    if not same_shape:
        if [n.lower() for n in ref_cols.names] != [n.lower() for n in eng_cols.names]:
            notes.append("column names differ")
        if ref_cols.type_oids != eng_cols.type_oids:
            notes.append("column types differ but are equivalent")
    hashes = reference.ordered_hash if ordered else reference.multiset
    other = engine.ordered_hash if ordered else engine.multiset
    if counts[0] != counts[1]:
        notes.append(f"row counts differ: {counts[0]} vs {counts[1]}")
    else:
        if same_shape and hashes["strict"] == other["strict"]:
            return Comparison("exact", ordered, *counts)
        within = "equal after normalisation"
        if hashes["tolerant"] == other["tolerant"]:
            return Comparison("semantic", ordered, *counts, notes=(*notes, within))
        complete = reference.complete and engine.complete
        if complete and _rows_agree(reference.head, engine.head, ref_cols.type_oids, eng_cols.type_oids,
                                    reference.ordering, options):
            return Comparison("semantic", ordered, *counts, notes=(*notes, within))
        if ordered and reference.multiset["tolerant"] == engine.multiset["tolerant"]:
            notes.append("the same rows in a different order")
        elif not complete:
            notes.append(f"the results exceed the {options.sample_rows}-row sample: a difference within the "
                         "tolerance cannot be told from a real one there, so it counts as a mismatch")
    ref_only, eng_only = _differing_rows(reference, engine, options)
    if not ref_only and not eng_only:
        notes.append("the differing rows are outside the bounded samples")
    return Comparison("mismatch", ordered, *counts, notes=tuple(notes),
                      reference_only=tuple(_redacted(ref_cols.names, row, redact) for row in ref_only),
                      engine_only=tuple(_redacted(eng_cols.names, row, redact) for row in eng_only))


def _redacted(names: Sequence[str], row: Row, redact: Redactor) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, value in zip(names, row, strict=True):
        masked = redact(name, value)
        shown[name] = masked if masked is None or isinstance(masked, (str, int, float, bool)) else str(masked)
    return shown


# --- sample comparisons ----------------------------------------------------------------------------


def _number_close(a: Any, b: Any, rel_tol: float) -> bool:
    a, b = _canonical_number(a), _canonical_number(b)
    if isinstance(a, int) and isinstance(b, int):  # two integral values compare exactly, as in the hash
        return a == b
    if isinstance(a, float) or isinstance(b, float):  # NaN and the infinities
        if isinstance(a, float) and isinstance(b, float):
            return (math.isnan(a) and math.isnan(b)) or a == b
        return False
    if not isinstance(a, (int, Decimal)) or not isinstance(b, (int, Decimal)):
        return bool(a == b)
    x, y = Decimal(a), Decimal(b)
    try:
        return abs(x - y) <= Decimal(repr(rel_tol)) * max(abs(x), abs(y))
    except InvalidOperation:
        return False


def _column_agreement(oid_a: int, oid_b: int, rel_tol: float) -> Callable[[Any, Any], bool]:
    """How two values of one column are compared when checking with the tolerance itself."""
    if _family(oid_a) == "number" and not (oid_a in INTEGER_OIDS and oid_b in INTEGER_OIDS):
        return lambda a, b: _number_close(a, b, rel_tol)
    encode_a = _encoders((oid_a,), "canonical", None)[0] or _same
    encode_b = _encoders((oid_b,), "canonical", None)[0] or _same
    return lambda a, b: bool(encode_a(a) == encode_b(b))


def _same(value: Any) -> Any:
    return value


def _rows_agree(left: Sequence[Row], right: Sequence[Row], oids_l: Sequence[int], oids_r: Sequence[int],
                ordering: Ordering, options: CompareOptions) -> bool:
    """Whether two complete results agree with the tolerance itself (no rounding cells)."""
    columns = [_column_agreement(a, b, options.rel_tol) for a, b in zip(oids_l, oids_r, strict=True)]

    def agree(a: Row, b: Row) -> bool:
        return all((x is None and y is None) or (x is not None and y is not None and same(x, y))
                   for x, y, same in zip(a, b, columns, strict=True))

    canonical_l = _TierHasher(_encoders(oids_l, "canonical", None), None, False)
    canonical_r = _TierHasher(_encoders(oids_r, "canonical", None), None, False)
    if not ordering.ordered:
        return _multiset_agree(left, right, agree, canonical_l.encode, canonical_r.encode)
    runs_l = _runs(left, ordering.key_columns, oids_l, options)
    runs_r = _runs(right, ordering.key_columns, oids_r, options)
    return len(runs_l) == len(runs_r) and all(
        _multiset_agree(a, b, agree, canonical_l.encode, canonical_r.encode)
        for a, b in zip(runs_l, runs_r, strict=True))


def _runs(rows: Sequence[Row], keys: tuple[int, ...] | None, oids: Sequence[int],
          options: CompareOptions) -> list[list[Row]]:
    """Consecutive rows with equal sort keys (each row alone when the key is unknown)."""
    if keys is None:
        return [[row] for row in rows]
    encoders = _TierHasher(_encoders(oids, "tolerant", options.digits), None, False)
    runs: list[list[Row]] = []
    previous: object = _NO_GROUP
    for row in rows:
        encoded = encoders.encode(row)
        key = tuple(encoded[i] for i in keys)
        if key != previous:
            runs.append([])
            previous = key
        runs[-1].append(row)
    return runs


_MAX_PAIRWISE = 2000


def _multiset_agree(left: Sequence[Row], right: Sequence[Row], agree: Callable[[Row, Row], bool],
                    key_left: Callable[[Row], Row], key_right: Callable[[Row], Row]) -> bool:
    """A pairing where every pair agrees: canonically equal rows first, then the rest greedily."""
    if len(left) != len(right):
        return False
    counts = Counter(repr(key_right(row)) for row in right)
    leftover_left: list[Row] = []
    for row in left:
        key = repr(key_left(row))
        if counts[key] > 0:
            counts[key] -= 1
        else:
            leftover_left.append(row)
    leftover_right: list[Row] = []
    for row in right:
        key = repr(key_right(row))
        if counts[key] > 0:
            counts[key] -= 1
            leftover_right.append(row)
    if len(leftover_left) > _MAX_PAIRWISE:
        return False
    for row in leftover_left:
        match = next((i for i, candidate in enumerate(leftover_right) if agree(row, candidate)), None)
        if match is None:
            return False
        leftover_right.pop(match)
    return not leftover_right


def _differing_rows(reference: ResultDigest, engine: ResultDigest,
                    options: CompareOptions) -> tuple[list[Row], list[Row]]:
    """Up to `max_report_rows` rows per side that the other side lacks, as far as the samples tell."""
    limit = options.max_report_rows
    assert reference.columns is not None and engine.columns is not None
    tol_ref = _TierHasher(_encoders(reference.columns.type_oids, "tolerant", options.digits), None, False)
    tol_eng = _TierHasher(_encoders(engine.columns.type_oids, "tolerant", options.digits), None, False)
    if reference.ordering.ordered:
        ref_rows: list[Row] = []
        eng_rows: list[Row] = []
        for a, b in zip(reference.head, engine.head, strict=False):
            if repr(tol_ref.encode(a)) != repr(tol_eng.encode(b)):
                ref_rows.append(a)
                eng_rows.append(b)
                if len(ref_rows) >= limit:
                    break
        shorter = min(len(reference.head), len(engine.head))
        ref_rows.extend(reference.head[shorter:shorter + limit - len(ref_rows)])
        eng_rows.extend(engine.head[shorter:shorter + limit - len(eng_rows)])
        return ref_rows[:limit], eng_rows[:limit]
    if reference.complete and engine.complete:
        ref_pool, eng_pool = list(reference.head), list(engine.head)
    else:
        # Every row hashing at or below both samples' bounds is in both samples: compare those.
        bound = min(_sample_bound(reference), _sample_bound(engine))
        ref_pool = [row for h, row in reference.hash_sample if h <= bound]
        eng_pool = [row for h, row in engine.hash_sample if h <= bound]
    ref_keys = Counter(repr(tol_ref.encode(row)) for row in ref_pool)
    eng_keys = Counter(repr(tol_eng.encode(row)) for row in eng_pool)
    return (_only_in(ref_pool, ref_keys - eng_keys, tol_ref, limit),
            _only_in(eng_pool, eng_keys - ref_keys, tol_eng, limit))


def _sample_bound(digest: ResultDigest) -> int:
    """The largest row hash below which the hash sample holds every row of the result."""
    if digest.row_count <= len(digest.hash_sample):
        return _MASK_128
    return digest.hash_sample[-1][0]


def _only_in(pool: list[Row], extra: Counter[str], hasher: _TierHasher, limit: int) -> list[Row]:
    rows: list[Row] = []
    for row in pool:
        key = repr(hasher.encode(row))
        if extra[key] > 0 and len(rows) < limit:
            extra[key] -= 1
            rows.append(row)
    return rows
