"""Adversarial corpus of issue 12 ("Governance by construction"): an org-A Analyst attacks over the wire.

Each attack is a template (tokens in tests/e2e/adversarial_support.py) instantiated over the two kinds
of governed table, the demo's Parquet-backed shared `crm.customers` (tenant column `org_id`, on the
session's demo host) and the writable `main.wpeople` (department row filter, `ssn` masked, `email`
keyed-hashed, on a host of this suite that also holds org_globex's `globex_notes`), and sent over
both the simple query protocol and the extended one (Parse/Bind/Execute). Classes:

1. name resolution and scoping: CTEs of every shape (recursive with and without UNION, mutual,
   nested, shadowing, sibling/forward references, MATERIALIZED), subqueries everywhere, LATERAL,
   set operations, cursors, prepared statements, every `hd.dialect`, quoted/qualified/internal names;
2. function classes: file, engine and SQL-text functions in every spelling and position, mask keys;
3. catalog and statistics: reltuples, n_live_tup, EXPLAIN estimates, view definitions, current_query();
4. error oracles: another organisation's table answers exactly like a missing one, binder errors name
   nothing of anyone else, failing expressions on filtered rows reveal nothing, audit details;
5. writes: UPDATE/INSERT/DELETE/CREATE TABLE AS through the same escapes, MERGE, RETURNING; the Owner
   checks afterwards that no other tenant's value and no unmasked value landed in the caller's tables.

A read attack passes when it is refused (any SQLSTATE but XX000, an HD_ERR_* code, nothing protected
in the error, the connection still usable) or when no returned cell holds a protected value, another
tenant's data or an internal name, and, where the statement's meaning fixes it, the answer equals the
truth for the caller's own rows (read with pyarrow, or the constants the Owner wrote). Attacks that
are ordinary SQL underneath (marked A0/A1/A2/ANSWER) must also answer, so the suite cannot pass by an
engine that refuses everything. Nothing here is xfail: a failing case is an open hole of the engine.

Hosts: the session's `engine_host` (Parquet kind) and one more for the session (tests/e2e/adversarial_support.py:
`wpeople` and `wsink` of org_acme with policies added by `hd local-policy add --json`, and `globex_notes` created by
an Admin of org_globex, so it belongs to org_globex). Connections are shared per person and protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.e2e.adversarial_support import (
    ACME_ONLY_NAMES,
    ADMIN,
    ANALYST,
    ANALYST_DEPARTMENT,
    GLOBEX_ADMIN,
    GLOBEX_ANALYST,
    GLOBEX_NOTES,
    GLOBEX_ONLY_NAMES,
    WPEOPLE,
    WSINK,
    KeyMaterial,
    Leaks,
    Outcome,
    Sessions,
    Target,
    assert_clean_refusal,
    assert_reveals_nothing,
    assert_still_usable,
    execute,
    globex_notes_now,
    leaks_of,
    long_hex_constants,
    owner_rows,
    parquet_target,
    reset_writable_tables,
    sessions,
    shared_writable_host,
    truth_of,
    visible_ids_of,
    writable_target,
)
from tests.e2e.protocols import PROTOCOLS
from tests.harness import EngineHostProcess

__all__ = ["sessions"]  # the fixture, imported so pytest finds it in this module

KINDS = ("parquet", "writable")


@dataclass(frozen=True)
class Arena:
    """A host, the governed table attacked on it, and the leak finder for everything stored there."""

    host: EngineHostProcess
    target: Target
    leaks: Leaks


@pytest.fixture(scope="module")
def writable_host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> EngineHostProcess:
    return shared_writable_host(request, tmp_path_factory)


@pytest.fixture(scope="module")
def arenas(engine_host: EngineHostProcess, writable_host: EngineHostProcess) -> dict[str, Arena]:
    return {"parquet": Arena(engine_host, parquet_target(engine_host), leaks_of(engine_host)),
            "writable": Arena(writable_host, writable_target(writable_host), leaks_of(writable_host))}


# --- expectations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What a successful answer must be: `counts` are the allowed multiples of the caller's visible rows
    in the first column of an @P projection (whose last column lists the ids read); `refuse` demands refusal."""

    counts: tuple[int, ...] = ()
    refuse: bool = False
    answer: bool = False  # ordinary SQL: refusing it would make the suite pass by refusing everything

    def check(self, outcome: Outcome, target: Target) -> None:
        assert not self.refuse, f"{outcome.sql!r} must be refused, but it returned {str(outcome.rows)[:300]}"
        if not self.counts:
            return
        rows = outcome.rows or []
        assert len(rows) == 1 and len(rows[0]) == 4, f"{outcome.sql!r}: unexpected shape {str(rows)[:300]}"
        count, ids = rows[0][0], visible_ids_of(rows[0][3])
        allowed = sorted({m * target.visible for m in self.counts})
        assert count in allowed, f"{outcome.sql!r} counted {count} rows; the caller sees {target.visible}"
        assert ids <= target.visible_ids, f"{outcome.sql!r} read invisible ids {sorted(ids - target.visible_ids)[:5]}"
        if count:
            assert ids == target.visible_ids, f"{outcome.sql!r} read ids other than the caller's rows"


P0, P1, P2, P01 = Expect((0,)), Expect((1,)), Expect((2,)), Expect((0, 1))
SAFE, REFUSE = Expect(), Expect(refuse=True)
# Controls: ordinary statements (which the attacks are variations of) must answer, and answer truly.
A0, A1, A2 = Expect((0,), answer=True), Expect((1,), answer=True), Expect((2,), answer=True)
ANSWER = Expect(answer=True)


def attack(arena: Arena, sessions: Sessions, protocol: str, template: str, expect: Expect, *,
           person: str | None = ANALYST, dialect: str | None = None, params: tuple | None = None) -> Outcome:
    """Send one attack and judge it: a clean refusal, or an answer that reveals nothing and is true."""
    conn = sessions.get(arena.host, person, protocol, dialect)
    outcome = execute(conn, arena.target.sql(template), protocol, params)
    judge(outcome, arena, expect)
    if outcome.refused:
        assert_still_usable(conn)
    return outcome


def judge(outcome: Outcome, arena: Arena, expect: Expect) -> None:
    if outcome.refused:
        assert_clean_refusal(outcome, arena.leaks)
        assert not expect.answer, f"ordinary SQL was refused: {outcome.sql!r}: {outcome.error}"
        return
    assert_reveals_nothing(outcome, arena.leaks, arena.target.forbidden)
    expect.check(outcome, arena.target)


# =================================================================================================
# 1. name resolution and scoping
# =================================================================================================

NAME_RESOLUTION = [
    # recursive CTEs named like the table, reading "themselves"
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N", P1, id="recursive-self-no-union"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @T UNION SELECT * FROM @N) SELECT @P FROM @N", A1,
                 id="recursive-union-self"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @T UNION ALL SELECT * FROM @N WHERE false) SELECT @P FROM @N",
                 A1, id="recursive-union-all-self"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N UNION SELECT * FROM @T) SELECT @P FROM @N", P1,
                 id="recursive-anchor-reads-name"),
    pytest.param("WITH RECURSIVE @N(@K, @S, @M) AS (SELECT @K, @S, @M FROM @N) SELECT @P FROM @N", P1,
                 id="recursive-self-column-list"),
    pytest.param('WITH RECURSIVE "@U" AS (SELECT * FROM @N) SELECT @P FROM "@U"', P1, id="recursive-quoted-upper"),
    pytest.param('WITH RECURSIVE @N AS (SELECT * FROM "@U") SELECT @P FROM @N', P1, id="recursive-body-quoted-upper"),
    pytest.param("WITH RECURSIVE @N AS MATERIALIZED (SELECT * FROM @N) SELECT @P FROM @N", P1,
                 id="recursive-materialized"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @T WHERE @K IN (SELECT @K FROM @N)) SELECT @P FROM @N", P1,
                 id="recursive-self-in-subquery"),
    pytest.param("WITH RECURSIVE @N AS (TABLE @N) SELECT @P FROM @N", P1, id="recursive-table-statement"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT count(*), string_agg(CAST(b.@S AS VARCHAR), ','), "
                 "string_agg(CAST(b.@M AS VARCHAR), ','), string_agg(CAST(a.@K AS VARCHAR), ',') "
                 "FROM @T a JOIN @N b USING (@K)", P1, id="recursive-joined-to-table"),
    # mutual recursion, siblings and forward references
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM b UNION SELECT * FROM @T), b AS (SELECT * FROM a UNION "
                 "SELECT * FROM @T) SELECT @P FROM a", P1, id="mutual-recursion"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM @N), @N AS (SELECT * FROM @T WHERE false) SELECT @P FROM a",
                 P01, id="recursive-forward-sibling-named-like-table"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM @N), @N AS (SELECT * FROM @T) SELECT @P FROM a", P1,
                 id="recursive-forward-sibling-over-table"),
    pytest.param("WITH a AS (SELECT * FROM @N), @N AS (SELECT * FROM @T) SELECT @P FROM a", P1,
                 id="forward-sibling-named-like-table"),
    pytest.param("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM @T) SELECT @P FROM a", P1,
                 id="forward-sibling"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM @T) SELECT @P FROM a", P1,
                 id="recursive-forward-sibling"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM c), c AS (SELECT * FROM @N) "
                 "SELECT @P FROM a", P1, id="recursive-forward-chain"),
    pytest.param("WITH RECURSIVE b AS (SELECT * FROM @T), a AS (SELECT * FROM b UNION SELECT * FROM a) "
                 "SELECT @P FROM a", A1, id="recursive-earlier-sibling"),
    pytest.param("WITH x AS (SELECT * FROM @T), y AS (SELECT * FROM x UNION ALL SELECT * FROM x) SELECT @P FROM y",
                 A2, id="sibling-chain-union-all"),
    # shadowing
    pytest.param("WITH @N AS (SELECT * FROM @T) SELECT @P FROM @N", A1, id="cte-shadows-table"),
    pytest.param("WITH @N AS (SELECT * FROM @N) SELECT @P FROM @N", P1, id="non-recursive-self-reference"),
    pytest.param("WITH @N AS MATERIALIZED (SELECT * FROM @T) SELECT @P FROM @N", A1, id="materialized"),
    pytest.param("WITH @N AS NOT MATERIALIZED (SELECT * FROM @T) SELECT @P FROM @N", A1, id="not-materialized"),
    pytest.param("WITH c(@K, @S, @M) AS (SELECT @K, @S, @M FROM @T) SELECT @P FROM c", A1, id="cte-column-list"),
    pytest.param("WITH c(x, y, @K) AS (SELECT @S, @M, @K FROM @T) SELECT count(*), string_agg(CAST(x AS VARCHAR), "
                 "','), string_agg(CAST(y AS VARCHAR), ','), string_agg(CAST(@K AS VARCHAR), ',') FROM c", A1,
                 id="cte-column-list-renames-masked"),
    pytest.param("WITH @SCH AS (SELECT 1 AS x) SELECT @P FROM @T", A1, id="cte-named-like-schema"),
    pytest.param("WITH @N AS (SELECT 1 AS x) SELECT @P FROM @SCH.@N", A1, id="qualified-name-past-cte"),
    pytest.param("WITH @N AS (SELECT * FROM @T WHERE false) SELECT @P FROM (WITH RECURSIVE x AS "
                 "(SELECT * FROM @N) SELECT * FROM x) s", A0, id="inner-recursive-reads-outer-cte"),
    pytest.param("WITH RECURSIVE __hd_src AS (SELECT * FROM @T) SELECT @P FROM __hd_src", P1,
                 id="cte-named-like-rewrite-alias"),
    pytest.param("SELECT @P FROM @T AS __hd_src", P1, id="alias-named-like-rewrite-alias"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T) AS @N", A1, id="derived-table-named-like-table"),
    # nested WITH
    pytest.param("SELECT @P FROM (WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT * FROM @N) s", P1,
                 id="nested-with-in-derived-table"),
    pytest.param("WITH x AS (WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT * FROM @N) SELECT @P FROM x", P1,
                 id="nested-with-in-cte-body"),
    pytest.param("WITH a AS (WITH b AS (WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT * FROM @N) SELECT * FROM b) "
                 "SELECT @P FROM a", P1, id="nested-with-three-deep"),
    pytest.param("SELECT (WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT count(*) FROM @N) AS n, "
                 "(WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT string_agg(CAST(@S AS VARCHAR), ',') FROM @N), "
                 "(WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT string_agg(CAST(@M AS VARCHAR), ',') FROM @N), "
                 "(WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT string_agg(CAST(@K AS VARCHAR), ',') FROM @N)",
                 P1, id="nested-with-in-scalar-subqueries"),
    pytest.param("SELECT @P FROM @T WHERE @K IN (WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @K FROM @N)", P1,
                 id="nested-with-in-in-list"),
    pytest.param("SELECT @P FROM (SELECT 1) x, LATERAL (WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT * FROM @N) l",
                 P1, id="nested-with-in-lateral"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T UNION ALL (WITH RECURSIVE @N AS (SELECT * FROM @N) "
                 "SELECT * FROM @N)) u", P2, id="nested-with-in-union-branch"),
    # subqueries everywhere
    pytest.param("SELECT (SELECT count(*) FROM @T) AS n, (SELECT string_agg(CAST(@S AS VARCHAR), ',') FROM @T), "
                 "(SELECT string_agg(CAST(@M AS VARCHAR), ',') FROM @T), "
                 "(SELECT string_agg(CAST(@K AS VARCHAR), ',') FROM @T)", A1, id="scalar-subqueries-in-select"),
    pytest.param("SELECT @P FROM @T WHERE @K IN (SELECT @K FROM @T)", A1, id="in-subquery-in-where"),
    pytest.param("SELECT @P FROM @T a WHERE EXISTS (SELECT 1 FROM @T b WHERE b.@K = a.@K)", A1,
                 id="correlated-exists"),
    pytest.param("SELECT @P FROM @T a WHERE (SELECT count(*) FROM @T b WHERE b.@K = a.@K) = 1", A1,
                 id="correlated-scalar-in-where"),
    pytest.param("SELECT count(*), string_agg((SELECT CAST(b.@S AS VARCHAR) FROM @T b WHERE b.@K = a.@K), ','), "
                 "string_agg((SELECT CAST(b.@M AS VARCHAR) FROM @T b WHERE b.@K = a.@K), ','), "
                 "string_agg(CAST(a.@K AS VARCHAR), ',') FROM @T a", A1, id="correlated-in-select"),
    pytest.param("SELECT @P FROM @T HAVING count(*) = (SELECT count(*) FROM @T)", A1, id="subquery-in-having"),
    pytest.param("SELECT @P FROM @T ORDER BY (SELECT count(*) FROM @T)", A1, id="subquery-in-order-by"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T LIMIT (SELECT count(*) FROM @T)) s", A1, id="subquery-in-limit"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T OFFSET (SELECT count(*) - count(*) FROM @T)) s", A1,
                 id="subquery-in-offset"),
    pytest.param("SELECT @P FROM @T WHERE (@K, @S) IN (SELECT @K, @S FROM @T)", A1, id="row-in-subquery"),
    pytest.param("SELECT @P FROM @T WHERE @K = ANY (SELECT @K FROM @T)", A1, id="any-subquery"),
    pytest.param("SELECT @P FROM @T a, LATERAL (SELECT b.@K AS k2 FROM @T b WHERE b.@K = a.@K) l", A1,
                 id="lateral"),
    pytest.param("SELECT @P FROM @T a CROSS JOIN LATERAL (SELECT a.@S AS s2) l", A1, id="lateral-over-outer-row"),
    pytest.param("SELECT count(*), string_agg(CAST(a.@S AS VARCHAR), ','), string_agg(CAST(b.@M AS VARCHAR), ','), "
                 "string_agg(CAST(a.@K AS VARCHAR), ',') FROM @T a JOIN @T b USING (@K)", A1, id="self-join"),
    pytest.param("SELECT @P FROM (TABLE @T) t", A1, id="table-statement"),
    # set operations
    pytest.param("SELECT @P FROM (SELECT * FROM @T UNION ALL SELECT * FROM @T) u", A2, id="union-all"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T UNION SELECT * FROM @T) u", A1, id="union"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T INTERSECT SELECT * FROM @T) u", A1, id="intersect"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T INTERSECT ALL SELECT * FROM @T) u", A1, id="intersect-all"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T EXCEPT SELECT * FROM @T WHERE false) u", A1, id="except"),
    pytest.param("SELECT @P FROM (SELECT * FROM @T EXCEPT ALL SELECT * FROM @T WHERE @K < 0) u", A1,
                 id="except-all"),
    pytest.param("SELECT @P FROM ((SELECT * FROM @T) UNION ALL ((SELECT * FROM @T) EXCEPT (SELECT * FROM @T))) u",
                 A1, id="nested-set-operations"),
    # quoted, upper-case, catalog-qualified and guessed internal names
    pytest.param('SELECT @P FROM "@SU"."@U"', A1, id="quoted-upper"),
    pytest.param("SELECT @P FROM hd.@T", A1, id="catalog-qualified"),
    pytest.param('SELECT @P FROM "hd"."@SCH"."@N"', P1, id="catalog-qualified-quoted"),
    pytest.param("SELECT @P FROM HD.@SU.@U", P1, id="catalog-qualified-upper"),
    pytest.param("SELECT @P FROM memory.@T", P1, id="memory-catalog"),
    pytest.param("SELECT @P FROM memory.main.@N", P1, id="memory-main"),
    pytest.param("SELECT @P FROM system.main.@N", P1, id="system-main"),
    pytest.param("SELECT @P FROM temp.main.@N", P1, id="temp-main"),
    pytest.param("SELECT @P FROM hd_data.@T", P1, id="hd_data-catalog"),
    pytest.param("SELECT @P FROM hd_raw.@T", P1, id="hd_raw-catalog"),
    pytest.param("SELECT @P FROM engine.@T", P1, id="engine-catalog"),
    pytest.param('SELECT @P FROM "engine"."@SCH"."@N"', P1, id="engine-catalog-quoted"),
    pytest.param("SELECT @P FROM hd_keys.@T", P1, id="hd_keys-catalog"),
    pytest.param("SELECT * FROM hd_pg.pg_class", SAFE, id="hd_pg-relation"),
    pytest.param("SELECT hd_keys.main.hd_mask_hash_live('x')", SAFE, id="hd_keys-live-macro"),
    pytest.param("SELECT hd_keys.main.hd_mask_hash_test(@M) FROM @T", SAFE, id="hd_keys-test-macro-on-column"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM engine.@T) SELECT @P FROM @N", P1,
                 id="recursive-over-engine-catalog"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("template", "expect"), NAME_RESOLUTION)
def test_name_resolution_never_reaches_raw_rows(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                protocol: str, template: str, expect: Expect) -> None:
    attack(arenas[kind], sessions, protocol, template, expect)


DIALECT_ATTACKS = [
    # DuckDB-only syntax, read with hd.dialect = duckdb
    pytest.param("duckdb", "FROM @T SELECT @P", A1, id="duckdb-from-first"),
    pytest.param("duckdb", "FROM (WITH RECURSIVE @N AS (FROM @N) FROM @N) SELECT @P", P1,
                 id="duckdb-from-first-recursive-shadow"),
    pytest.param("duckdb", "SELECT * EXCLUDE (@F) FROM @T", SAFE, id="duckdb-exclude"),
    pytest.param("duckdb", "SELECT * REPLACE (CAST(@K AS VARCHAR) AS @S) FROM @T", SAFE, id="duckdb-replace"),
    pytest.param("duckdb", "SELECT COLUMNS(*) FROM @T", SAFE, id="duckdb-columns-star"),
    pytest.param("duckdb", "SELECT COLUMNS('.*') FROM (WITH RECURSIVE @N AS (FROM @N) FROM @N)", SAFE,
                 id="duckdb-columns-regex-recursive"),
    pytest.param("duckdb", "SELECT @P FROM @T USING SAMPLE 100 PERCENT (bernoulli)", A1, id="duckdb-using-sample"),
    pytest.param("duckdb", "SELECT @K, @S, @M FROM @T QUALIFY row_number() OVER (ORDER BY @K) <= 3", ANSWER,
                 id="duckdb-qualify"),
    pytest.param("duckdb", "SELECT count(*), string_agg(CAST(a.@S AS VARCHAR), ','), "
                 "string_agg(CAST(b.@M AS VARCHAR), ','), string_agg(CAST(a.@K AS VARCHAR), ',') "
                 "FROM @T a POSITIONAL JOIN @T b", A1, id="duckdb-positional-join"),
    pytest.param("duckdb", "SELECT count(*), string_agg(CAST(a.@S AS VARCHAR), ','), "
                 "string_agg(CAST(b.@M AS VARCHAR), ','), string_agg(CAST(a.@K AS VARCHAR), ',') "
                 "FROM @T a ASOF JOIN @T b ON a.@K >= b.@K", A1, id="duckdb-asof-join"),
    pytest.param("duckdb", "SELECT [x FOR x IN list(@S) IF x IS NOT NULL], [y || '' FOR y IN list(@M)] FROM @T",
                 ANSWER, id="duckdb-list-comprehension"),
    pytest.param("duckdb", "PIVOT @T ON @F USING count(*)", SAFE, id="duckdb-pivot"),
    pytest.param("duckdb", "UNPIVOT (SELECT CAST(@K AS VARCHAR) AS k, @S, CAST(@M AS VARCHAR) AS m FROM @T) "
                 "ON @S, m INTO NAME col VALUE val", SAFE, id="duckdb-unpivot"),
    pytest.param("duckdb", "SELECT @P FROM (FROM @T UNION ALL BY NAME FROM @T)", A2, id="duckdb-union-by-name"),
    pytest.param("duckdb", "SELECT #1, #3, #4 FROM @T", SAFE, id="duckdb-positional-columns"),
    pytest.param("duckdb", "SELECT struct_pack(*COLUMNS(*)) FROM @T", SAFE, id="duckdb-struct-pack-columns"),
    pytest.param("duckdb", "SELECT list_transform(list(@S), x -> x || '') FROM @T", ANSWER, id="duckdb-lambda"),
    pytest.param("duckdb", "WITH RECURSIVE @N AS (SELECT * FROM @N) FROM @N SELECT @P", P1,
                 id="duckdb-recursive-shadow"),
    pytest.param("duckdb", "SELECT @P FROM @T t GROUP BY ALL HAVING true", SAFE, id="duckdb-group-by-all"),
    # Snowflake
    pytest.param("snowflake", "WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N", P1,
                 id="snowflake-recursive-shadow"),
    pytest.param("snowflake", "SELECT @S, @M FROM @T QUALIFY ROW_NUMBER() OVER (ORDER BY @K) = 1", ANSWER,
                 id="snowflake-qualify"),
    pytest.param("snowflake", "SELECT IFF(@S IS NULL, 'a', @S), TO_VARCHAR(@M) FROM @T", ANSWER, id="snowflake-iff"),
    pytest.param("snowflake", "SELECT @P FROM @T SAMPLE (100)", A1, id="snowflake-sample"),
    pytest.param("snowflake", "SELECT f.value FROM @T, LATERAL FLATTEN(input => ARRAY_CONSTRUCT(@S, @M)) f", SAFE,
                 id="snowflake-flatten"),
    # BigQuery
    pytest.param("bigquery", "SELECT @P FROM `@T`", A1, id="bigquery-backticks"),
    pytest.param("bigquery", "WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N", P1,
                 id="bigquery-recursive-shadow"),
    pytest.param("bigquery", "SELECT * EXCEPT (@K) FROM @T", ANSWER, id="bigquery-except-columns"),
    pytest.param("bigquery", "SELECT x FROM @T, UNNEST([@S, CAST(@M AS STRING)]) AS x", ANSWER, id="bigquery-unnest"),
    # Redshift
    pytest.param("redshift", "SELECT TOP 5 @S, @M FROM @T", ANSWER, id="redshift-top"),
    pytest.param("redshift", "WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N", P1,
                 id="redshift-recursive-shadow"),
    pytest.param("redshift", "SELECT NVL(@S, ''), NVL2(@M, @M, '') FROM @T", ANSWER, id="redshift-nvl"),
    # the default dialect, for comparison
    pytest.param("postgres", "SELECT @P FROM @T", A1, id="postgres-plain"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("dialect", "template", "expect"), DIALECT_ATTACKS)
def test_every_dialect_reads_only_governed_rows(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                               protocol: str, dialect: str, template: str, expect: Expect) -> None:
    attack(arenas[kind], sessions, protocol, template, expect, dialect=dialect)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dialect", ["duckdb", "snowflake", "bigquery", "redshift"])
def test_dialect_switched_over_sql_reads_only_governed_rows(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                            protocol: str, dialect: str) -> None:
    arena = arenas[kind]
    conn = sessions.get(arena.host, ANALYST, protocol, tag=f"switch-{dialect}")
    assert not execute(conn, f"SET hd.dialect = '{dialect}'", protocol).refused
    outcome = execute(conn, arena.target.sql("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N"), protocol)
    judge(outcome, arena, P1)
    assert not execute(conn, "SET hd.dialect = 'postgres'", protocol).refused


PARAMETERISED = [
    pytest.param("SELECT @P FROM @T WHERE @K > %s", (0,), P1, id="param-in-where"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N WHERE @K > %s) SELECT @P FROM @N", (0,), P1,
                 id="param-in-recursive-shadow"),
    pytest.param("SELECT @P FROM @T WHERE @F = %s OR %s", ("org_globex", True), P1, id="param-or-true"),
    pytest.param("SELECT @P FROM @T WHERE @S = %s", ("811-11-1111",), P0, id="param-equals-real-ssn"),
    pytest.param("SELECT %s::text AS v, @S FROM @T", ("'); SELECT * FROM read_csv('/etc/passwd') --",), SAFE,
                 id="param-injection-text"),
    pytest.param("SELECT @P FROM (WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM @T WHERE @K > %s) "
                 "SELECT * FROM a) s", (0,), P1, id="param-in-forward-sibling"),
    pytest.param("SELECT @P FROM @T WHERE @K = ANY(%s)", ([1, 2, 3, 1000001, 2000001, 4, 5],), SAFE,
                 id="param-array-any"),
    pytest.param("SELECT @P FROM @T LIMIT %s", (10_000,), P1, id="param-in-limit"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("template", "params", "expect"), PARAMETERISED)
def test_parameterised_statements_read_only_governed_rows(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                          protocol: str, template: str, params: tuple,
                                                          expect: Expect) -> None:
    attack(arenas[kind], sessions, protocol, template, expect, params=params)


SQL_PREPARED = [
    pytest.param("PREPARE hd_p1 AS WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N",
                 "EXECUTE hd_p1", id="prepare-recursive-shadow"),
    pytest.param("PREPARE hd_p2(int) AS SELECT @P FROM @T WHERE @K > $1", "EXECUTE hd_p2(0)", id="prepare-param"),
    pytest.param("PREPARE hd_p3 AS SELECT * FROM query('SELECT * FROM @T')", "EXECUTE hd_p3", id="prepare-query"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("prepare", "run"), SQL_PREPARED)
def test_sql_level_prepare_and_execute_read_only_governed_rows(arenas: dict[str, Arena], sessions: Sessions,
                                                               kind: str, protocol: str, prepare: str,
                                                               run: str) -> None:
    arena = arenas[kind]
    conn = sessions.get(arena.host, ANALYST, protocol)
    prepared = execute(conn, arena.target.sql(prepare), protocol)
    judge(prepared, arena, SAFE)
    executed = execute(conn, run, protocol)
    judge(executed, arena, P1 if "@P" in prepare else REFUSE)
    execute(conn, f"DEALLOCATE {prepare.split()[1].split('(')[0]}", protocol)  # by name: psycopg keeps its own


CURSORS = [
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT @P FROM @N", P1, id="cursor-recursive-shadow"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM @N), @N AS (SELECT * FROM @T) SELECT @P FROM a", P1,
                 id="cursor-forward-sibling"),
    pytest.param("SELECT @P FROM (WITH RECURSIVE @N AS (SELECT * FROM @N UNION SELECT * FROM @T) "
                 "SELECT * FROM @N) s", P1, id="cursor-nested-recursive"),
    pytest.param("SELECT @P FROM @T", P1, id="cursor-plain"),
    pytest.param("SELECT * FROM query('SELECT * FROM @T')", REFUSE, id="cursor-query-function"),
    pytest.param("SELECT json_serialize_plan('SELECT * FROM @T')", REFUSE, id="cursor-json-serialize-plan"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hold", ["", "WITH HOLD "])
@pytest.mark.parametrize(("template", "expect"), CURSORS)
def test_declare_cursor_and_fetch_read_only_governed_rows(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                          protocol: str, hold: str, template: str,
                                                          expect: Expect) -> None:
    arena = arenas[kind]
    conn = sessions.get(arena.host, ANALYST, protocol)
    declared = execute(conn, arena.target.sql(f"DECLARE hd_cur NO SCROLL CURSOR {hold}FOR {template}"), protocol)
    if declared.refused:
        judge(declared, arena, expect)
        assert_still_usable(conn)
        return
    try:
        fetched = execute(conn, "FETCH ALL FROM hd_cur", protocol)
        fetched.sql = declared.sql
        judge(fetched, arena, expect)
    finally:
        execute(conn, "CLOSE hd_cur", protocol)


VIEWS = [
    pytest.param("CREATE VIEW hd_v1 AS SELECT * FROM @T", id="create-view"),
    pytest.param("CREATE VIEW hd_v2 AS WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT * FROM @N",
                 id="create-view-recursive-shadow"),
    pytest.param("CREATE OR REPLACE VIEW hd_v3 AS SELECT @S FROM @T", id="create-or-replace-view"),
    pytest.param("CREATE TEMP VIEW hd_v4 AS SELECT * FROM @T", id="create-temp-view"),
    pytest.param("CREATE MATERIALIZED VIEW hd_v5 AS SELECT * FROM @T", id="create-materialized-view"),
    pytest.param("CREATE VIEW @N AS SELECT * FROM @T", id="create-view-named-like-table"),
    pytest.param("CREATE RECURSIVE VIEW hd_v6(x) AS SELECT 1 UNION ALL SELECT x + 1 FROM hd_v6 WHERE x < 3",
                 id="create-recursive-view"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("person", [ANALYST, ADMIN])
@pytest.mark.parametrize("sql", VIEWS)
def test_create_view_is_refused(arenas: dict[str, Arena], sessions: Sessions, protocol: str, person: str,
                                sql: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, person, protocol)
    outcome = execute(conn, arena.target.sql(sql), protocol)
    assert outcome.refused, f"{outcome.sql!r} created a view"
    assert_clean_refusal(outcome, arena.leaks)
    assert_still_usable(conn)


ASYNCPG_ATTACKS = (
    ("WITH RECURSIVE @N AS (SELECT * FROM @N WHERE @K > $1) SELECT @P FROM @N", (0,)),
    ("SELECT @P FROM @T WHERE @F <> $1 OR $2", ("x", True)),
    ("WITH RECURSIVE a AS (SELECT * FROM @N WHERE @K > $1), @N AS (SELECT * FROM @T) SELECT @P FROM a", (0,)),
)


@pytest.mark.parametrize("kind", KINDS)
def test_asyncpg_prepared_statements_read_only_governed_rows(arenas: dict[str, Arena], kind: str) -> None:
    """asyncpg prepares every statement (Parse/Describe/Bind/Execute with binary parameters)."""
    import asyncio

    import asyncpg

    arena = arenas[kind]
    key = (arena.host.state_dir / "demo-keys" / f"{ANALYST}.key").read_text().strip()

    async def run() -> list[tuple[str, list[tuple] | None, str]]:
        conn = await asyncpg.connect(host="127.0.0.1", port=arena.host.port, user="usr_demo_acme_analyst",
                                     password=key, database="hd", ssl=False)
        answers: list[tuple[str, list[tuple] | None, str]] = []
        try:
            for template, args in ASYNCPG_ATTACKS:
                sql = arena.target.sql(template)
                try:
                    statement = await conn.prepare(sql)
                    answers.append((sql, [tuple(r) for r in await statement.fetch(*args)], ""))
                except asyncpg.PostgresError as exc:
                    answers.append((sql, None, f"{exc.sqlstate} {getattr(exc, 'detail', '')} {exc}"))
        finally:
            await conn.close()
        return answers

    for sql, found, error in asyncio.run(run()):
        if found is None:
            assert not error.startswith("XX000") and "HD_ERR_" in error, error
            assert not arena.leaks.found(error, sql), error
        else:
            judge(Outcome(sql, found), arena, P1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("depth", [20, 1000])
def test_deep_nesting_answers_or_is_too_complex(arenas: dict[str, Arena], sessions: Sessions, protocol: str,
                                                depth: int) -> None:
    arena = arenas["parquet"]
    inner = "SELECT * FROM @T"
    for level in range(depth):
        inner = f"SELECT * FROM ({inner}) s{level}"
    conn = sessions.get(arena.host, ANALYST, protocol)
    outcome = execute(conn, arena.target.sql(f"SELECT @P FROM ({inner}) top"), protocol)
    if depth >= 1000:
        assert outcome.error is not None, "a 1000-deep statement must be refused as too complex"
        assert (outcome.error.sqlstate, outcome.error.diag.message_detail) == (
            "54001", "HD_ERR_STATEMENT_TOO_COMPLEX"), str(outcome.error)
    judge(outcome, arena, P1)
    assert_still_usable(conn)


IDENTITY_SETTINGS = ["hd.department = 'Legal'", "hd.org_id = 'org_globex'", "hd.user_id = 'usr_demo_globex_analyst'",
                     "hd.role = 'Owner'", "hd.region = 'eu-west'", "hd.tenant = 'org_globex'"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("setting", IDENTITY_SETTINGS)
def test_identity_settings_are_refused_and_change_nothing(arenas: dict[str, Arena], sessions: Sessions,
                                                          protocol: str, setting: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ANALYST, protocol, tag=setting)
    outcome = execute(conn, f"SET {setting}", protocol)
    assert outcome.refused, f"SET {setting} was accepted"
    assert outcome.error is not None and outcome.error.sqlstate in ("42501", "55P02"), str(outcome.error)
    assert_clean_refusal(outcome, arena.leaks)
    judge(execute(conn, arena.target.sql("SELECT @P FROM @T"), protocol), arena, P1)


# =================================================================================================
# 2. function classes
# =================================================================================================

# (id, scalar or table function, name, arguments)
FUNCTIONS = [
    ("json_serialize_plan", "s", "json_serialize_plan", "'SELECT * FROM @T'"),
    ("json_serialize_plan-csv-sniff", "s", "json_serialize_plan",
     "'SELECT * FROM read_csv(''@DATA/crm/customers/part-0.parquet'')'"),
    ("json_serialize_plan-mask-key", "s", "json_serialize_plan", "'SELECT hd_keys.main.hd_mask_hash_test(''x'')'"),
    ("json_serialize_plan-other-tenant", "s", "json_serialize_plan", "'SELECT zebra_note FROM globex_notes'"),
    ("json_serialize_sql", "s", "json_serialize_sql", "'SELECT @S FROM @T'"),
    ("json_deserialize_sql", "s", "json_deserialize_sql", "json_serialize_sql('SELECT 1')"),
    ("json_execute_serialized_sql", "t", "json_execute_serialized_sql", "json_serialize_sql('SELECT @S FROM @T')"),
    ("query", "t", "query", "'SELECT @S, @M FROM @T'"),
    ("query_table", "t", "query_table", "'@T'"),
    ("read_csv-parquet", "t", "read_csv", "'@DATA/crm/customers/part-0.parquet'"),
    ("read_csv-passwd", "t", "read_csv", "'/etc/passwd'"),
    ("read_csv_auto", "t", "read_csv_auto", "'/etc/passwd'"),
    ("read_text", "t", "read_text", "'/etc/passwd'"),
    ("read_blob", "t", "read_blob", "'@STATE/control.sqlite3'"),
    ("read_parquet", "t", "read_parquet", "'@DATA/crm/customers/*.parquet'"),
    ("read_json", "t", "read_json", "'@DATA/crm/customers/part-0.parquet'"),
    ("read_ndjson_objects", "t", "read_ndjson_objects", "'/etc/passwd'"),
    ("parquet_metadata", "t", "parquet_metadata", "'@DATA/crm/customers/part-0.parquet'"),
    ("parquet_schema", "t", "parquet_schema", "'@DATA/crm/customers/part-0.parquet'"),
    ("sniff_csv", "t", "sniff_csv", "'@DATA/crm/customers/part-0.parquet'"),
    ("glob", "t", "glob", "'@STATE/*'"),
    ("getenv", "s", "getenv", "'HOME'"),
    ("getvariable", "s", "getvariable", "'hd_mask_ipad'"),
    ("current_setting", "s", "current_setting", "'allowed_directories'"),
    ("current_query", "s", "current_query", ""),
    ("duckdb_tables", "t", "duckdb_tables", ""),
    ("duckdb_views", "t", "duckdb_views", ""),
    ("duckdb_columns", "t", "duckdb_columns", ""),
    ("duckdb_settings", "t", "duckdb_settings", ""),
    ("duckdb_functions", "t", "duckdb_functions", ""),
    ("duckdb_databases", "t", "duckdb_databases", ""),
    ("duckdb_secrets", "t", "duckdb_secrets", ""),
    ("duckdb_extensions", "t", "duckdb_extensions", ""),
    ("duckdb_dependencies", "t", "duckdb_dependencies", ""),
    ("pragma_database_list", "t", "pragma_database_list", ""),
    ("pragma_table_info", "t", "pragma_table_info", "'@T'"),
    ("pragma_storage_info", "t", "pragma_storage_info", "'@T'"),
    ("which_secret", "s", "which_secret", "'s3://bucket/x', 's3'"),
    ("stats", "s", "stats", "@S"),
    ("checkpoint", "t", "checkpoint", ""),
    ("force_checkpoint", "t", "force_checkpoint", ""),
    ("nextval", "s", "nextval", "'hd_seq'"),
    ("sql_auto_complete", "t", "sql_auto_complete", "'SELECT * FROM hd_'"),
    ("test_all_types", "t", "test_all_types", ""),
    ("pg_read_file", "s", "pg_read_file", "'/etc/passwd'"),
    ("pg_ls_dir", "t", "pg_ls_dir", "'.'"),
]
# The ones the red team used, tried in every spelling and position.
CORE = ("json_serialize_plan", "json_serialize_plan-csv-sniff", "json_serialize_plan-mask-key", "json_serialize_sql",
        "json_execute_serialized_sql", "query", "query_table", "read_csv-parquet", "getenv", "getvariable",
        "current_query", "duckdb_tables", "glob")


def _call(name: str, args: str) -> str:
    return f"{name}({args})"


def _function_attacks() -> list:
    attacks = []
    for fid, kind, name, args in FUNCTIONS:
        call = _call(name, args)
        if kind == "s":
            forms = {"plain": f"SELECT {call} AS v FROM @T LIMIT 1",
                     "quoted": f'SELECT "{name}"({args}) AS v FROM @T LIMIT 1',
                     "main": f"SELECT main.{call} AS v FROM @T LIMIT 1"}
        else:
            forms = {"plain": f"SELECT * FROM {call}", "quoted": f'SELECT * FROM "{name}"({args})',
                     "main": f"SELECT * FROM main.{call}"}
        if fid in CORE and kind == "s":
            first, _, rest = args.partition(", ")
            forms |= {
                "pg_catalog": f"SELECT pg_catalog.{call} AS v",
                "system": f"SELECT system.main.{call} AS v",
                "subquery": f"SELECT (SELECT {call}) AS v FROM @T LIMIT 1",
                "cte": f"WITH x AS (SELECT {call} AS v) SELECT v FROM x",
                "recursive-shadow": f"WITH RECURSIVE @N AS (SELECT {call} AS v) SELECT v FROM @N",
                "lateral": f"SELECT l.v FROM @T, LATERAL (SELECT {call} AS v) l LIMIT 1",
                "where": f"SELECT count(*) FROM @T WHERE {call} IS NOT NULL",
                "union": f"SELECT CAST(@S AS VARCHAR) FROM @T UNION ALL SELECT CAST({call} AS VARCHAR)",
                "case": f"SELECT CASE WHEN @K > 0 THEN {call} END FROM @T LIMIT 1",
            }
            if first:
                forms["method"] = f"SELECT ({first}).{name}({rest}) AS v"
        elif fid in CORE:
            forms |= {
                "pg_catalog": f"SELECT * FROM pg_catalog.{call}",
                "system": f"SELECT * FROM system.main.{call}",
                "subquery": f"SELECT * FROM (SELECT * FROM {call}) s",
                "scalar-subquery": f"SELECT (SELECT count(*) FROM {call})",
                "cte": f"WITH x AS (SELECT * FROM {call}) SELECT * FROM x",
                "recursive-shadow": f"WITH RECURSIVE @N AS (SELECT * FROM {call}) SELECT * FROM @N",
                "lateral": f"SELECT * FROM @T a, LATERAL {call} l LIMIT 1",
                "join": f"SELECT * FROM @T JOIN {call} ON true LIMIT 1",
                "in": f"SELECT count(*) FROM @T WHERE @K IN (SELECT 1 FROM {call})",
            }
        kinds = KINDS if fid in CORE else ("writable",)  # refusals do not depend on the table: the fast host
        attacks += [pytest.param(sql, kind, id=f"{fid}-{form}-{kind}") for form, sql in forms.items() for kind in kinds]
    return attacks


FUNCTION_ATTACKS = _function_attacks()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("template", "kind"), FUNCTION_ATTACKS)
def test_file_engine_and_sql_text_functions_are_refused(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                        protocol: str, template: str) -> None:
    attack(arenas[kind], sessions, protocol, template, REFUSE)


FUNCTIONS_IN_DDL = [
    pytest.param("CREATE TABLE hd_fx1 (v VARCHAR DEFAULT CAST(getenv('HOME') AS VARCHAR))", id="default-getenv"),
    pytest.param("CREATE TABLE hd_fx2 (v VARCHAR DEFAULT json_serialize_plan('SELECT * FROM wpeople'))",
                 id="default-json_serialize_plan"),
    pytest.param("CREATE TABLE hd_fx3 (v VARCHAR DEFAULT current_query())", id="default-current_query"),
    pytest.param("CREATE TABLE hd_fx4 (v VARCHAR CHECK (json_serialize_sql(v) IS NOT NULL))",
                 id="check-json_serialize_sql"),
    pytest.param("CREATE TABLE hd_fx5 (v VARCHAR CHECK (getvariable('hd_mask_ipad') IS NULL))", id="check-getvariable"),
    pytest.param("CREATE TABLE hd_fx6 (v VARCHAR, w VARCHAR GENERATED ALWAYS AS (getenv('HOME')) VIRTUAL)",
                 id="generated-getenv"),
    pytest.param("CREATE TABLE hd_fx7 AS SELECT * FROM query('SELECT * FROM wpeople')", id="ctas-query"),
    pytest.param("CREATE TABLE hd_fx8 AS SELECT json_serialize_plan('SELECT 1') AS v", id="ctas-json_serialize_plan"),
    pytest.param("ALTER TABLE wsink ADD COLUMN hd_fx9 VARCHAR DEFAULT getenv('HOME')", id="alter-add-default"),
    pytest.param("ALTER TABLE wsink ALTER COLUMN v SET DEFAULT current_query()", id="alter-set-default"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sql", FUNCTIONS_IN_DDL)
def test_functions_in_table_definitions_are_refused(arenas: dict[str, Arena], sessions: Sessions, protocol: str,
                                                    sql: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ADMIN, protocol)
    try:
        outcome = execute(conn, sql, protocol)
        assert outcome.refused, f"{sql!r} was accepted"
        assert_clean_refusal(outcome, arena.leaks)
        assert_still_usable(conn)
    finally:
        with psycopg.connect(arena.host.dsn(), autocommit=True) as owner:
            for n in range(1, 9):
                owner.execute(f"DROP TABLE IF EXISTS hd_fx{n}")
            columns = {r[0] for r in owner.execute("SELECT column_name FROM information_schema.columns "
                                                   "WHERE table_name = 'wsink'").fetchall()}
            if "hd_fx9" in columns:
                owner.execute("ALTER TABLE wsink DROP COLUMN hd_fx9")


FUNCTIONS_IN_INSERTS = [
    pytest.param("INSERT INTO wsink SELECT 9, json_serialize_plan('SELECT * FROM wpeople')", id="json_serialize_plan"),
    pytest.param("INSERT INTO wsink SELECT 9, CAST(getenv('HOME') AS VARCHAR)", id="getenv"),
    pytest.param("INSERT INTO wsink SELECT 9, current_query()", id="current_query"),
    pytest.param("INSERT INTO wsink SELECT 9, CAST(column0 AS VARCHAR) FROM read_csv('/etc/passwd')", id="read_csv"),
    pytest.param("INSERT INTO wsink SELECT id, CAST(zebra_note AS VARCHAR) FROM query('SELECT * FROM globex_notes')",
                 id="query"),
    pytest.param("INSERT INTO wsink (id, v) VALUES (9, (SELECT json_serialize_sql('SELECT 1')))",
                 id="values-json_serialize_sql"),
    pytest.param("UPDATE wsink SET v = json_serialize_plan('SELECT * FROM wpeople')", id="update-json_serialize_plan"),
    pytest.param("UPDATE wsink SET v = (SELECT string_agg(table_name, ',') FROM duckdb_tables())",
                 id="update-duckdb_tables"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sql", FUNCTIONS_IN_INSERTS)
def test_functions_in_writes_are_refused_and_write_nothing(arenas: dict[str, Arena], sessions: Sessions,
                                                           writable: None, protocol: str, sql: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ANALYST, protocol)
    outcome = execute(conn, sql, protocol)
    assert outcome.refused, f"{sql!r} was accepted"
    assert_clean_refusal(outcome, arena.leaks)
    assert_still_usable(conn)
    assert sorted(owner_rows(arena.host, "SELECT id, v FROM wsink")) == sorted(WSINK)


MASK_KEY_PROBES = [
    "EXPLAIN SELECT phone FROM crm.customers",
    "EXPLAIN SELECT phone FROM crm.customers WHERE phone = 'abc'",
    "EXPLAIN SELECT count(*) FROM crm.customers a JOIN crm.customers b ON a.phone = b.phone",
    "EXPLAIN WITH RECURSIVE customers AS (SELECT * FROM crm.customers) SELECT phone FROM customers",
    "SELECT json_serialize_plan('SELECT hd_keys.main.hd_mask_hash_test(''x'')')",
    "SELECT json_serialize_plan('SELECT phone FROM crm.customers')",
    "SELECT phone + 1 FROM crm.customers",
    "SELECT CAST(phone AS INTEGER) FROM crm.customers",
    "SELECT phone FROM crm.customers WHERE phone = 'abc'::INTEGER",
    "SELECT error(phone) FROM crm.customers",
    "SELECT hd_keys.main.hd_mask_hash_test('x')",
    "SELECT nosuchfunction(phone) FROM crm.customers",
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hash_mask_key_cannot_be_derived(arenas: dict[str, Arena], sessions: Sessions, protocol: str) -> None:
    arena = arenas["parquet"]
    conn = sessions.get(arena.host, ANALYST, protocol)
    masked = {r[0]: r[1] for r in execute(conn, "SELECT customer_id, phone FROM crm.customers", protocol).rows or []}
    truth = {r["customer_id"]: r["phone"] for r in truth_of(arena.host).customers}
    assert masked and all(re.fullmatch(r"[0-9a-f]{64}", v) for v in masked.values())
    texts = [execute(conn, probe, protocol).text() for probe in MASK_KEY_PROBES]
    material = KeyMaterial.of(arena.host)
    # The mask is the keyed construction under a key the test reads from the control store...
    assert any(all(hmac.new(k, truth[i].encode(), hashlib.sha256).hexdigest() == masked[i] for i in masked)
               for k in material.keys), "the phone mask is not HMAC-SHA256 under the environment's key"
    # ...and no text the attacker can obtain holds that key, in any form, or a hex constant longer than a hash.
    candidates: set[bytes] = {b"", b"\0" * 32}
    for text in texts:
        assert not [f for f in material.forms if f.lower() in text.lower()], f"key material in: {text[:300]}"
        assert not long_hex_constants(text), f"a long hex constant in: {text[:300]}"
        for run in re.findall(r"[0-9a-fA-F]{64}", text):
            assert run.lower() in set(masked.values()) or run.lower() not in {k.hex() for k in material.keys}
            candidates.add(bytes.fromhex(run))
    sample = sorted(masked)[:20]
    for candidate in candidates:
        assert not all(hmac.new(candidate, truth[i].encode(), hashlib.sha256).hexdigest() == masked[i]
                       for i in sample), "a key found in the attacker's answers reproduces the mask"
    assert all(hashlib.sha256(truth[i].encode()).hexdigest() != masked[i] for i in sample)


# =================================================================================================
# 3. catalog and statistics
# =================================================================================================

RELTUPLES = [
    pytest.param("SELECT reltuples FROM pg_catalog.pg_class WHERE relname = '@N'", id="pg_class"),
    pytest.param("SELECT c.reltuples FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                 "ON n.oid = c.relnamespace WHERE n.nspname = '@SCH' AND c.relname = '@N'", id="pg_class-namespace"),
    pytest.param("SELECT reltuples FROM pg_class WHERE oid = '@T'::regclass", id="pg_class-regclass"),
    pytest.param("SELECT n_live_tup FROM pg_catalog.pg_stat_user_tables WHERE relname = '@N'",
                 id="pg_stat_user_tables"),
    pytest.param("SELECT n_live_tup FROM pg_catalog.pg_stat_all_tables WHERE relname = '@N'",
                 id="pg_stat_all_tables"),
    pytest.param("SELECT n_tup_ins FROM pg_catalog.pg_stat_user_tables WHERE relname = '@N'", id="n_tup_ins"),
    pytest.param("SELECT pg_relation_size('@T')", id="pg_relation_size"),
    pytest.param("SELECT pg_total_relation_size('@T')", id="pg_total_relation_size"),
    pytest.param("SELECT pg_table_size('@T')", id="pg_table_size"),
    pytest.param("SELECT estimated_size FROM duckdb_tables() WHERE table_name = '@N'", id="duckdb_tables-size"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("template", RELTUPLES)
def test_row_statistics_show_nothing_beyond_the_callers_rows(arenas: dict[str, Arena], sessions: Sessions,
                                                             kind: str, protocol: str, template: str) -> None:
    arena = arenas[kind]
    outcome = attack(arena, sessions, protocol, template, SAFE)
    if outcome.refused:
        return
    values = [v for row in outcome.rows or [] for v in row]
    allowed = {-1, arena.target.visible} | ({None, 0} if "size" in template else set())
    assert all(v in allowed for v in values), (
        f"{outcome.sql!r} returned {values}; only -1 or the caller's {arena.target.visible} rows may show")


def test_reltuples_of_every_demo_table_is_hidden(arenas: dict[str, Arena], sessions: Sessions) -> None:
    arena = arenas["parquet"]
    truth = truth_of(arena.host)
    visible = {"customers": len(truth.ids("crm.customers", "org_acme")),
               "employees": len(truth.ids("hr.employees", "org_acme", department=ANALYST_DEPARTMENT)),
               "orders": len(truth.ids("sales.orders", "org_acme")),
               "encounters": len(truth.ids("clinical.encounters", "org_acme"))}
    conn = sessions.get(arena.host, ANALYST)
    found = execute(conn, "SELECT c.relname, c.reltuples FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname IN ('crm', 'hr', 'sales', 'clinical')", "simple")
    assert not found.refused, str(found.error)
    shown = {name: tuples for name, tuples in found.rows or []}
    assert {name: tuples for name, tuples in shown.items() if tuples not in (-1, visible.get(name))} == {}


EXPLAINS = [
    pytest.param("EXPLAIN SELECT * FROM @T", id="star"),
    pytest.param("EXPLAIN SELECT count(*) FROM @T", id="count"),
    pytest.param("EXPLAIN SELECT * FROM @T WHERE @K > 0", id="range-predicate"),
    pytest.param("EXPLAIN SELECT * FROM @T WHERE @F <> 'x'", id="filter-column-predicate"),
    pytest.param("EXPLAIN SELECT * FROM @T a JOIN @T b USING (@K)", id="self-join"),
    pytest.param("EXPLAIN SELECT @K FROM @T GROUP BY @K", id="group-by"),
    pytest.param("EXPLAIN SELECT * FROM @T LIMIT 1", id="limit"),
    pytest.param("EXPLAIN SELECT * FROM (SELECT * FROM @T UNION ALL SELECT * FROM @T) u", id="union-all"),
    pytest.param("EXPLAIN WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT * FROM @N", id="recursive-shadow"),
    pytest.param("EXPLAIN WITH a AS (SELECT * FROM @T) SELECT * FROM a WHERE @K IN (SELECT @K FROM @T)",
                 id="cte-and-subquery"),
    pytest.param("EXPLAIN SELECT @M FROM @T WHERE @M = 'abc'", id="hash-mask-predicate"),
    pytest.param("EXPLAIN UPDATE @T SET @S = @S WHERE @K = 1", id="update"),
    pytest.param("EXPLAIN DELETE FROM @T WHERE @K = 1", id="delete"),
]
_ESTIMATE = re.compile(r"~\s*[\d,.]+\s*rows?|\bEC:\s*\d|estimated[ _]cardinality|\bcardinality\b\D{0,5}\d",
                       re.IGNORECASE)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("template", EXPLAINS)
def test_explain_over_filtered_tables_shows_no_estimates(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                         protocol: str, template: str) -> None:
    outcome = attack(arenas[kind], sessions, protocol, template, SAFE)
    if outcome.refused:
        return
    plan = outcome.text()
    assert not _ESTIMATE.findall(plan), f"{outcome.sql!r} shows row estimates {_ESTIMATE.findall(plan)[:3]}"


VIEW_DEFINITIONS = [
    pytest.param("SELECT viewname, definition FROM pg_catalog.pg_views", id="pg_views"),
    pytest.param("SELECT definition FROM pg_catalog.pg_views WHERE viewname = '@N'", id="pg_views-of-table"),
    pytest.param("SELECT table_name, view_definition FROM information_schema.views", id="information_schema.views"),
    pytest.param("SELECT pg_get_viewdef('@T'::regclass)", id="pg_get_viewdef"),
    pytest.param("SELECT pg_get_viewdef(c.oid, true) FROM pg_catalog.pg_class c WHERE c.relname = '@N'",
                 id="pg_get_viewdef-by-oid"),
    pytest.param("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = '@SCH'",
                 id="information_schema.tables"),
    pytest.param("SELECT column_name, column_default FROM information_schema.columns WHERE table_name = '@N'",
                 id="information_schema.columns"),
    pytest.param("SELECT obj_description('@T'::regclass)", id="obj_description"),
    pytest.param("SELECT c.relname, c.relkind, c.relpages FROM pg_catalog.pg_class c", id="pg_class"),
    pytest.param("SELECT ev_action FROM pg_catalog.pg_rewrite", id="pg_rewrite"),
    pytest.param("SELECT sql FROM duckdb_views()", id="duckdb_views"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("template", VIEW_DEFINITIONS)
def test_catalog_shows_no_data_paths_or_other_tenants(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                      protocol: str, template: str) -> None:
    outcome = attack(arenas[kind], sessions, protocol, template, SAFE)
    if outcome.refused:
        return
    text = outcome.text()
    assert "read_parquet" not in text.lower() and ".parquet" not in text.lower(), f"{outcome.sql!r}: {text[:300]}"
    assert str(arenas[kind].host.state_dir) not in text and "/data/" not in text, f"{outcome.sql!r}: {text[:300]}"
    assert not [n for n in GLOBEX_ONLY_NAMES if n in text], f"{outcome.sql!r} lists org_globex's table"


CURRENT_QUERY = [
    pytest.param("SELECT current_query()", id="plain"),
    pytest.param("SELECT current_query() AS q, @S FROM @T", id="with-table"),
    pytest.param('SELECT "current_query"()', id="quoted"),
    pytest.param("SELECT main.current_query()", id="main"),
    pytest.param("SELECT pg_catalog.current_query()", id="pg_catalog"),
    pytest.param("WITH q AS (SELECT current_query() AS v) SELECT v FROM q", id="cte"),
    pytest.param("SELECT (SELECT current_query())", id="subquery"),
    pytest.param("SELECT upper(current_query())", id="wrapped"),
    pytest.param("SELECT count(*) FROM @T WHERE current_query() LIKE '%hd%'", id="in-where"),
    pytest.param("SELECT CURRENT_QUERY()", id="upper-case"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("template", CURRENT_QUERY)
def test_current_query_is_refused(arenas: dict[str, Arena], sessions: Sessions, kind: str, protocol: str,
                                  template: str) -> None:
    outcome = attack(arenas[kind], sessions, protocol, template, REFUSE)
    assert outcome.error is not None
    assert (outcome.error.sqlstate, outcome.error.diag.message_detail) == ("42501", "HD_ERR_FUNCTION_NOT_ALLOWED")


# =================================================================================================
# 4. error oracles
# =================================================================================================

MISSING = "zz_no_such_tb"  # as long as globex_notes, so even a length-revealing message would match

CROSS_TENANT = [
    pytest.param("SELECT * FROM globex_notes", id="select"),
    pytest.param("SELECT * FROM main.globex_notes", id="select-qualified"),
    pytest.param("SELECT * FROM hd.main.globex_notes", id="select-catalog-qualified"),
    pytest.param('SELECT * FROM "globex_notes"', id="select-quoted"),
    pytest.param("SELECT globex_notes.id FROM globex_notes", id="select-column"),
    pytest.param("SELECT count(*) FROM wpeople JOIN globex_notes ON true", id="join"),
    pytest.param("SELECT * FROM wpeople WHERE id IN (SELECT id FROM globex_notes)", id="in-subquery"),
    pytest.param("SELECT (SELECT count(*) FROM globex_notes)", id="scalar-subquery"),
    pytest.param("WITH x AS (SELECT * FROM globex_notes) SELECT * FROM x", id="cte"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM globex_notes) SELECT * FROM a", id="recursive-cte-body"),
    pytest.param("SELECT * FROM wpeople, LATERAL (SELECT * FROM globex_notes) g", id="lateral"),
    pytest.param("SELECT id FROM wpeople UNION SELECT id FROM globex_notes", id="union"),
    pytest.param("TABLE globex_notes", id="table-statement"),
    pytest.param("EXPLAIN SELECT * FROM globex_notes", id="explain"),
    pytest.param("INSERT INTO globex_notes VALUES (3, 'x', 'y')", id="insert"),
    pytest.param("INSERT INTO wsink SELECT id, zebra_note FROM globex_notes", id="insert-select"),
    pytest.param("UPDATE globex_notes SET zebra_note = 'x'", id="update"),
    pytest.param("UPDATE wsink SET v = g.zebra_note FROM globex_notes g WHERE g.id = wsink.id", id="update-from"),
    pytest.param("DELETE FROM globex_notes", id="delete"),
    pytest.param("DELETE FROM wsink USING globex_notes g WHERE g.id = wsink.id", id="delete-using"),
    pytest.param("DROP TABLE globex_notes", id="drop"),
    pytest.param("ALTER TABLE globex_notes ADD COLUMN z INTEGER", id="alter"),
    pytest.param("SELECT to_regclass('globex_notes')", id="to_regclass"),
    pytest.param("SELECT 'globex_notes'::regclass", id="regclass-cast"),
]


def _same_answer(outcome: Outcome, missing: Outcome) -> None:
    def shape(o: Outcome, name: str) -> tuple:
        if o.error is None:
            return ("ok", str(o.rows).replace(name, "<name>"))
        diag = o.error.diag
        return (o.error.sqlstate, diag.message_detail, diag.message_hint,
                (diag.message_primary or "").replace(name, "<name>"))

    assert shape(outcome, "globex_notes") == shape(missing, MISSING), (
        f"another organisation's table answers differently from a missing one:\n  {outcome.text()[:300]}\n"
        f"  {missing.text()[:300]}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sql", CROSS_TENANT)
def test_another_organisations_table_answers_like_a_missing_one(arenas: dict[str, Arena], sessions: Sessions,
                                                                writable: None, protocol: str, sql: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ANALYST, protocol)
    outcome = execute(conn, sql, protocol)
    missing = execute(conn, sql.replace("globex_notes", MISSING), protocol)
    if "regclass" not in sql:
        assert outcome.refused, f"{sql!r} reached org_globex's table: {str(outcome.rows)[:200]}"
        assert_clean_refusal(outcome, arena.leaks)
        assert_still_usable(conn)
    if sql.startswith(("SELECT", "TABLE", "WITH")) and "regclass" not in sql:
        assert outcome.error is not None and outcome.error.sqlstate == "42P01", (
            f"{sql!r}: {outcome.error.sqlstate if outcome.error else ''} {outcome.text()[:200]}")
    _same_answer(outcome, missing)
    assert globex_notes_now(arena.host) == sorted(GLOBEX_NOTES)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sql", [
    pytest.param("SELECT * FROM wpeople", id="select"),
    pytest.param("SELECT acme_kiwi FROM main.wpeople", id="select-column"),
    pytest.param("WITH x AS (SELECT * FROM wpeople) SELECT * FROM x", id="cte"),
    pytest.param("UPDATE wpeople SET note = 'x'", id="update"),
    pytest.param("DELETE FROM wsink", id="delete"),
])
def test_org_acme_tables_answer_org_globex_like_missing_ones(arenas: dict[str, Arena], sessions: Sessions,
                                                             protocol: str, sql: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, GLOBEX_ANALYST, protocol)
    outcome = execute(conn, sql, protocol)
    name = "wsink" if "wsink" in sql else "wpeople"
    stand_in = "z" + name[1:]
    missing = execute(conn, sql.replace(name, stand_in), protocol)
    assert outcome.refused, f"{sql!r} reached org_acme's table"
    assert_clean_refusal(outcome, arena.leaks)
    assert outcome.error is not None and outcome.error.sqlstate == "42P01", str(outcome.error)
    assert not [n for n in ACME_ONLY_NAMES if n in outcome.text() and n not in sql]
    primary = (outcome.error.diag.message_primary or "").replace(name, "<name>")
    assert missing.error is not None
    assert primary == (missing.error.diag.message_primary or "").replace(stand_in, "<name>")
    assert_still_usable(conn)


BINDER_ERRORS = [
    pytest.param("SELECT zebra_note FROM @T", id="other-orgs-column-name"),
    pytest.param("SELECT zebra_not FROM @T", id="typo-of-other-orgs-column"),
    pytest.param("SELECT zebra_ssn FROM @T a JOIN @T b USING (@K)", id="other-orgs-column-in-join"),
    pytest.param("SELECT @Sx FROM @T", id="typo-of-masked-column"),
    pytest.param("SELECT @N.zebra_note FROM @T", id="qualified-other-orgs-column"),
    pytest.param("SELECT * FROM @SCH.@Nx", id="typo-of-table"),
    pytest.param("SELECT * FROM globex_note", id="typo-of-other-orgs-table"),
    pytest.param("SELECT * FROM globex_notes2", id="other-orgs-table-plus-suffix"),
    pytest.param("SELECT * FROM hd_dat.@T", id="typo-of-internal-catalog"),
    pytest.param("SELECT * FROM memory.main.x", id="memory-main-x"),
    pytest.param("SELECT * FROM system.main.x", id="system-main-x"),
    pytest.param("SELECT * FROM temp.main.x", id="temp-main-x"),
    pytest.param("SELECT * FROM hd_data.@T", id="hd_data"),
    pytest.param("SELECT * FROM hd_raw.@T", id="hd_raw"),
    pytest.param("SELECT * FROM hd_keys.main.x", id="hd_keys-main-x"),
    pytest.param("SELECT * FROM engine.@T", id="engine"),
    pytest.param("SELECT * FROM __hd_src", id="rewrite-alias-as-table"),
    pytest.param("SELECT __hd_src.@S FROM @T", id="rewrite-alias-as-qualifier"),
    pytest.param("SELECT getenvv('HOME')", id="typo-of-getenv"),
    pytest.param("SELECT jsn_serialize_plan('SELECT 1')", id="typo-of-json_serialize_plan"),
    pytest.param("SELECT * FROM read_csvv('x')", id="typo-of-read_csv"),
    pytest.param("SELECT * FROM querry('SELECT 1')", id="typo-of-query"),
    pytest.param("SELECT hd_mask_hash_tst('x')", id="typo-of-mask-macro"),
    pytest.param("SELECT @S + 1 FROM @T", id="type-error-on-masked-column"),
    pytest.param("SELECT @M - 1 FROM @T", id="type-error-on-hashed-column"),
    pytest.param("SELECT sum(@M) FROM @T", id="aggregate-type-error-on-hashed-column"),
    pytest.param("SELECT * FROM @T ORDER BY 99", id="order-by-position"),
    pytest.param("SELECT * FROM @T JOIN @T USING (nosuch)", id="join-using-missing"),
    pytest.param("SELECT @K FROM @T GROUP BY @F", id="group-by-error"),
    pytest.param("INSERT INTO wsink (nosuch) VALUES (1)", id="insert-missing-column"),
    pytest.param("UPDATE wsink SET zebra_note = 1", id="update-other-orgs-column"),
    pytest.param("WITH RECURSIVE globex_notes AS (SELECT * FROM globex_notes) SELECT zebra_not FROM globex_notes",
                 id="recursive-shadow-other-orgs-typo"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT nosuch FROM @N", id="recursive-shadow-missing-column"),
    pytest.param("SELECT * FROM (SELECT 1) x(a) JOIN @T ON a = @Sx", id="join-condition-typo"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("template", BINDER_ERRORS)
def test_binder_errors_name_nothing_of_others_or_internals(arenas: dict[str, Arena], sessions: Sessions, kind: str,
                                                           protocol: str, template: str) -> None:
    arena = arenas[kind]
    target = arena.target
    sql = target.sql(template.replace("@Sx", target.masked + "x").replace("@Nx", target.name + "x"))
    conn = sessions.get(arena.host, ANALYST, protocol)
    outcome = execute(conn, sql, protocol)
    assert outcome.refused, f"{sql!r} did not fail"
    assert_clean_refusal(outcome, arena.leaks)
    text = outcome.text().lower()
    named = [n for n in GLOBEX_ONLY_NAMES if n in text and n not in sql.lower()]
    assert not named, f"{sql!r}: the error names org_globex's {named}"
    assert "did you mean" not in text, f"{sql!r}: the error suggests a name: {outcome.text()[:300]}"
    assert_still_usable(conn)


VALUE_ERRORS = [
    # an error only a filtered row could raise must not happen: the filter applies before anything else
    pytest.param("SELECT CAST(CASE WHEN @F = '@HIDDEN' THEN 'x' ELSE '1' END AS INTEGER) AS v FROM @T", "no-error",
                 id="cast-fails-only-on-hidden-rows"),
    pytest.param("SELECT count(*) FROM @T WHERE CAST(CASE WHEN @F = '@HIDDEN' THEN 'x' ELSE '1' END AS INTEGER) = 1",
                 "count", id="cast-in-where-fails-only-on-hidden-rows"),
    pytest.param("SELECT count(*) FROM @T WHERE CASE WHEN @K = @HIDDEN_ID THEN error('boom') ELSE true END", "count",
                 id="error-only-on-hidden-id"),
    pytest.param("SELECT count(*) FROM @T WHERE ln(abs(@K - @HIDDEN_ID)) > -1", "count", id="log-of-zero-on-hidden-id"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT count(*) FROM @N WHERE "
                 "CAST(CASE WHEN @F = '@HIDDEN' THEN 'x' ELSE '1' END AS INTEGER) = 1", "count",
                 id="recursive-shadow-cast-on-hidden-rows"),
    # errors on visible rows may happen, but name no protected value
    pytest.param("SELECT CAST(@S AS INTEGER) FROM @T", "any", id="cast-masked"),
    pytest.param("SELECT CAST(@M AS INTEGER) FROM @T", "any", id="cast-hashed"),
    pytest.param("SELECT error(CAST(@S AS VARCHAR) || CAST(@M AS VARCHAR)) FROM @T", "any", id="error-function"),
    pytest.param("SELECT CAST(t AS INTEGER) FROM @T t", "any", id="cast-whole-row"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT CAST(@S AS INTEGER) FROM @N", "any",
                 id="recursive-shadow-cast-masked"),
    pytest.param("WITH RECURSIVE @N AS (SELECT * FROM @N) SELECT error(@S || '|' || @M) FROM @N", "any",
                 id="recursive-shadow-error-function"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM @N), @N AS (SELECT * FROM @T) SELECT CAST(@S AS DATE) FROM a",
                 "any", id="forward-sibling-cast-masked"),
    pytest.param("SELECT CAST(@S AS INTEGER) FROM @T WHERE @K = @HIDDEN_ID", "empty", id="cast-on-hidden-id"),
    pytest.param("WITH RECURSIVE globex_notes AS (SELECT * FROM globex_notes) SELECT CAST(zebra_ssn AS INTEGER) "
                 "FROM globex_notes", "any", id="recursive-shadow-other-org-cast"),
    pytest.param("SELECT CAST(zebra_note AS INTEGER) FROM globex_notes", "any", id="other-org-cast"),
    pytest.param("SELECT CAST(@S AS INTEGER) FROM (SELECT * FROM @T UNION ALL SELECT * FROM @T) u", "any",
                 id="cast-masked-through-union"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("template", "expect"), VALUE_ERRORS)
def test_failing_expressions_reveal_nothing(arenas: dict[str, Arena], sessions: Sessions, kind: str, protocol: str,
                                            template: str, expect: str) -> None:
    arena = arenas[kind]
    hidden, hidden_id = ("org_globex", 2_000_001) if kind == "parquet" else ("Legal", 4)
    template = template.replace("@HIDDEN_ID", str(hidden_id)).replace("@HIDDEN", hidden)
    conn = sessions.get(arena.host, ANALYST, protocol)
    outcome = execute(conn, arena.target.sql(template), protocol)
    if expect in ("no-error", "count", "empty") and outcome.error is not None:
        # refusing the statement is fine; failing on a value of a row the caller cannot see is an oracle
        assert not outcome.error.sqlstate.startswith("22"), (
            f"{outcome.sql!r} failed on rows the caller cannot see: {outcome.error}")
    judge(outcome, arena, SAFE)
    if outcome.refused:
        assert_still_usable(conn)
        return
    if expect == "count":
        assert outcome.rows == [(arena.target.visible,)], f"{outcome.sql!r}: {outcome.rows}"
    if expect == "no-error":
        assert len(outcome.rows or []) == arena.target.visible
    if expect == "empty":
        assert outcome.rows == []


AUDITED_FAILURES = [
    pytest.param("SELECT CAST('kiwi-literal-4242' AS INTEGER)", "kiwi-literal-4242", id="literal-in-cast"),
    pytest.param("SELECT CAST(note AS INTEGER) FROM wpeople", "sales-note-", id="data-value-in-cast"),
    pytest.param("SELECT * FROM wpeople WHERE id = CAST('mango-literal-77' AS INTEGER)", "mango-literal-77",
                 id="literal-in-predicate"),
    pytest.param("SELECT error('papaya-literal-' || note) FROM wpeople", "papaya-literal-", id="literal-in-error"),
    pytest.param("INSERT INTO wsink VALUES (CAST('guava-literal-5' AS INTEGER), 'x')", "guava-literal-5",
                 id="literal-in-insert"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("sql", "literal"), AUDITED_FAILURES)
def test_audit_records_of_failed_statements_hold_no_literals(arenas: dict[str, Arena], sessions: Sessions,
                                                             protocol: str, sql: str, literal: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ANALYST, protocol)
    before = len(_audit_lines(arena.host))
    outcome = execute(conn, sql, protocol)
    assert outcome.error is not None, f"{sql!r} did not fail"
    assert_clean_refusal(outcome, arena.leaks)
    reference = re.search(r"q_[0-9a-f]{8,}", outcome.text())
    record = _audit_record(arena.host, before, reference.group(0) if reference else None, sql.split()[0])
    assert literal not in json.dumps(record), f"the audit record of {sql!r} stores {literal!r}: {record}"


def _audit_lines(host: EngineHostProcess) -> list[str]:
    return [line for path in sorted((host.state_dir / "audit" / "queries").rglob("*.jsonl"))
            for line in path.read_text().splitlines()]


def _audit_record(host: EngineHostProcess, after: int, query_id: str | None, verb: str) -> dict:
    """The audit record of the failed statement: by its reference, else the analyst's next failed `verb`."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in _audit_lines(host)[after:]:
            record = json.loads(line)
            if query_id is not None and record.get("query_id") == query_id:
                return dict(record)
            if (query_id is None and record.get("error") and record.get("user_id") == "usr_demo_acme_analyst"
                    and str(record.get("sql_redacted", "")).upper().startswith(verb.upper())):
                return dict(record)
        time.sleep(0.2)
    pytest.fail(f"no audit record for {query_id or verb}")


# =================================================================================================
# 5. writes
# =================================================================================================


@pytest.fixture
def writable(arenas: dict[str, Arena]) -> Iterator[None]:
    """`wpeople` and `wsink` hold their constants before and after the test."""
    reset_writable_tables(arenas["writable"].host)
    yield
    reset_writable_tables(arenas["writable"].host)


# How the writable tables must look afterwards, beyond "nothing protected or foreign landed in them":
ESCAPE, INTACT, ORDINARY = "escape", "sink-intact", "ordinary"  # ... / wsink unchanged / must also succeed

WRITES = [
    pytest.param("UPDATE wsink SET v = (SELECT zebra_note FROM globex_notes LIMIT 1)", ESCAPE,
                 id="update-from-other-org"),
    pytest.param("UPDATE wsink SET v = (SELECT ssn FROM wpeople WHERE id = 4)", ORDINARY, id="update-from-hidden-row"),
    pytest.param("UPDATE wsink SET v = (SELECT string_agg(ssn || email, ',') FROM wpeople)", ORDINARY,
                 id="update-from-masked-columns"),
    pytest.param("WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) UPDATE wsink SET v = "
                 "(SELECT string_agg(ssn || '|' || email, ',') FROM wpeople)", ESCAPE, id="with-recursive-update"),
    pytest.param("UPDATE wsink SET v = p.ssn || '|' || p.email FROM (WITH RECURSIVE wpeople AS "
                 "(SELECT * FROM wpeople) SELECT * FROM wpeople) p WHERE p.id = wsink.id", ESCAPE,
                 id="update-from-recursive-shadow"),
    pytest.param("UPDATE wsink SET v = g.zebra_note FROM (WITH RECURSIVE globex_notes AS "
                 "(SELECT * FROM globex_notes) SELECT * FROM globex_notes) g WHERE g.id = wsink.id", ESCAPE,
                 id="update-from-recursive-shadow-other-org"),
    pytest.param("UPDATE wsink SET v = x.ssn FROM (WITH RECURSIVE a AS (SELECT * FROM b), b AS "
                 "(SELECT * FROM wpeople) SELECT * FROM a) x WHERE x.id = wsink.id", ESCAPE,
                 id="update-from-forward-sibling"),
    pytest.param("WITH RECURSIVE a AS (SELECT * FROM wpeople), wpeople AS (SELECT 1 AS id) UPDATE wsink SET v = "
                 "(SELECT string_agg(ssn, ',') FROM a)", ESCAPE, id="with-forward-sibling-update"),
    pytest.param("UPDATE wpeople SET note = p.ssn || '|' || p.email FROM (WITH RECURSIVE wpeople AS "
                 "(SELECT * FROM wpeople) SELECT * FROM wpeople) p WHERE p.id = wpeople.id + 3", ESCAPE,
                 id="update-own-rows-from-hidden-rows"),
    pytest.param("UPDATE wpeople SET note = (SELECT email FROM wpeople w2 WHERE w2.id = 4)", ORDINARY,
                 id="update-own-rows-from-hidden-row"),
    pytest.param("UPDATE wpeople SET note = (SELECT zebra_ssn FROM globex_notes LIMIT 1)", ESCAPE,
                 id="update-own-rows-from-other-org"),
    pytest.param("INSERT INTO wsink SELECT id, ssn || '|' || email FROM (WITH RECURSIVE wpeople AS "
                 "(SELECT * FROM wpeople) SELECT * FROM wpeople) s", ESCAPE, id="insert-select-recursive-shadow"),
    pytest.param("INSERT INTO wsink WITH RECURSIVE globex_notes AS (SELECT * FROM globex_notes) "
                 "SELECT id, zebra_note FROM globex_notes", ESCAPE, id="insert-with-recursive-other-org"),
    pytest.param("WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) INSERT INTO wsink SELECT id, ssn FROM wpeople",
                 ESCAPE, id="with-recursive-insert"),
    pytest.param("INSERT INTO wsink SELECT id, ssn || email FROM wpeople", ORDINARY, id="insert-select-masked"),
    pytest.param("INSERT INTO wsink SELECT customer_id, ssn || card_number || email FROM crm.customers LIMIT 3",
                 ORDINARY, id="insert-select-demo-masked"),
    pytest.param("INSERT INTO wsink SELECT id, zebra_ssn FROM globex_notes", ESCAPE, id="insert-select-other-org"),
    pytest.param("INSERT INTO wsink SELECT id, zebra_note FROM (WITH RECURSIVE a AS (SELECT * FROM globex_notes) "
                 "SELECT * FROM a) g", ESCAPE, id="insert-select-cte-over-other-org"),
    pytest.param("INSERT INTO wpeople (id, department, note) SELECT 20 + id, 'Sales', ssn || email FROM "
                 "(WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) SELECT * FROM wpeople) s", ESCAPE,
                 id="insert-own-rows-from-recursive-shadow"),
    pytest.param("DELETE FROM wsink USING (WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) SELECT * FROM wpeople) "
                 "p WHERE p.ssn = '814-14-1414'", INTACT, id="delete-using-oracle-on-hidden-ssn"),
    pytest.param("DELETE FROM wsink USING (WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) SELECT * FROM wpeople) "
                 "p WHERE p.ssn = '811-11-1111'", INTACT, id="delete-using-oracle-on-visible-ssn"),
    pytest.param("DELETE FROM wsink WHERE id IN (WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) "
                 "SELECT id FROM wpeople WHERE email LIKE 'dee%')", INTACT, id="delete-in-recursive-shadow-oracle"),
    pytest.param("DELETE FROM wsink USING globex_notes g WHERE g.zebra_note LIKE 'zebra%'", INTACT,
                 id="delete-using-other-org-oracle"),
    pytest.param("DELETE FROM wpeople USING (WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) "
                 "SELECT * FROM wpeople) p WHERE p.department = 'Legal' AND wpeople.id = p.id", ESCAPE,
                 id="delete-hidden-rows-through-shadow"),
    pytest.param("DELETE FROM wpeople WHERE id IN (SELECT id FROM wpeople) OR department <> 'Sales'", ORDINARY,
                 id="delete-hidden-rows-by-predicate"),
    pytest.param("UPDATE wpeople SET note = 'pwned' FROM (WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) "
                 "SELECT * FROM wpeople) p WHERE p.department = 'Legal'", ESCAPE,
                 id="update-hidden-rows-through-shadow"),
    pytest.param("UPDATE wpeople SET ssn = ssn, email = email RETURNING id, ssn, email", ORDINARY,
                 id="returning-masked"),
    pytest.param("UPDATE wpeople SET note = note RETURNING *", ORDINARY, id="returning-star"),
    pytest.param("DELETE FROM wpeople WHERE id = 1 RETURNING ssn, email, note", ORDINARY, id="delete-returning-masked"),
    pytest.param("INSERT INTO wpeople (id, department, note) SELECT 40, 'Sales', 'x' RETURNING "
                 "(SELECT string_agg(ssn, ',') FROM wpeople)", ESCAPE, id="returning-subquery"),
    pytest.param("MERGE INTO wsink USING globex_notes g ON wsink.id = g.id WHEN MATCHED THEN UPDATE SET "
                 "v = g.zebra_note", INTACT, id="merge-from-other-org"),
    pytest.param("MERGE INTO wpeople USING (SELECT 4 AS id) s ON wpeople.id = s.id WHEN MATCHED THEN DELETE", INTACT,
                 id="merge-delete-hidden-row"),
    pytest.param("MERGE INTO wsink USING (WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) SELECT * FROM wpeople) p "
                 "ON wsink.id = p.id WHEN MATCHED THEN UPDATE SET v = p.ssn", INTACT, id="merge-from-recursive-shadow"),
]


def _assert_no_write_leak(arena: Arena, sql: str) -> None:
    """As the Owner: hidden rows untouched, and no cell of org_acme's tables holds a value the caller may not see."""
    people = owner_rows(arena.host, "SELECT id, department, ssn, email, note, acme_kiwi FROM wpeople ORDER BY id")
    original = {r[0]: r for r in WPEOPLE}
    hidden = [r for r in WPEOPLE if r[1] != ANALYST_DEPARTMENT]
    assert [r for r in people if r[1] != ANALYST_DEPARTMENT] == hidden, f"{sql!r} changed rows the caller cannot see"
    for row in people:
        mine = original.get(row[0])
        for column, value in zip(("ssn", "email", "note"), row[2:5], strict=True):
            own = mine is not None and value == mine[("ssn", "email", "note").index(column) + 2]
            if own or value is None:
                continue
            leaked = arena.leaks.found(str(value), sql)
            assert not leaked, f"{sql!r} wrote {leaked[:3]} into wpeople.{column} of row {row[0]}"
    sink = owner_rows(arena.host, "SELECT id, v FROM wsink")
    leaked = [hit for _, v in sink for hit in arena.leaks.found(str(v), sql)]
    assert not leaked, f"{sql!r} wrote {leaked[:3]} into wsink"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("sql", "kind"), WRITES)
def test_writes_copy_no_protected_or_foreign_value(arenas: dict[str, Arena], sessions: Sessions, writable: None,
                                                   protocol: str, sql: str, kind: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ANALYST, protocol)
    outcome = execute(conn, sql, protocol)
    if sql.startswith("MERGE"):
        assert outcome.refused, f"{sql!r} was accepted"
    judge(outcome, arena, ANSWER if kind == ORDINARY else SAFE)
    if outcome.refused:
        assert_still_usable(conn)
    _assert_no_write_leak(arena, sql)
    if kind == INTACT:
        assert sorted(owner_rows(arena.host, "SELECT id, v FROM wsink")) == sorted(WSINK), (
            f"{sql!r} deleted rows by a value the caller cannot see")
    assert globex_notes_now(arena.host) == sorted(GLOBEX_NOTES)


CREATE_TABLE_AS = [
    pytest.param("CREATE TABLE hd_stolen AS WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) SELECT * FROM wpeople",
                 id="ctas-recursive-shadow"),
    pytest.param("CREATE TABLE hd_stolen AS SELECT * FROM (WITH RECURSIVE globex_notes AS "
                 "(SELECT * FROM globex_notes) SELECT * FROM globex_notes) g", id="ctas-recursive-shadow-other-org"),
    pytest.param("CREATE TABLE hd_stolen AS WITH RECURSIVE a AS (SELECT * FROM wpeople), wpeople AS "
                 "(SELECT 1 AS x) SELECT * FROM a", id="ctas-forward-sibling"),
    pytest.param("CREATE TABLE hd_stolen AS SELECT * FROM wpeople UNION ALL SELECT * FROM "
                 "(WITH RECURSIVE wpeople AS (SELECT * FROM wpeople) SELECT * FROM wpeople) w", id="ctas-union"),
    pytest.param("CREATE TABLE hd_stolen AS SELECT id, ssn, email, ssn || '|' || email AS both FROM wpeople",
                 id="ctas-masked"),
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("sql", CREATE_TABLE_AS)
def test_create_table_as_stores_no_protected_or_foreign_value(arenas: dict[str, Arena], sessions: Sessions,
                                                              protocol: str, sql: str) -> None:
    arena = arenas["writable"]
    conn = sessions.get(arena.host, ADMIN, protocol)
    try:
        outcome = execute(conn, sql, protocol)
        judge(outcome, arena, SAFE)
        if outcome.refused:
            assert_still_usable(conn)
            return
        stored = owner_rows(arena.host, "SELECT * FROM hd_stolen")
        leaked = [hit for row in stored for cell in row for hit in arena.leaks.found(str(cell), sql)]
        assert not leaked, f"{sql!r} stored {leaked[:3]}"
    finally:
        with psycopg.connect(arena.host.dsn(), autocommit=True) as owner:
            owner.execute("DROP TABLE IF EXISTS hd_stolen")


def test_globex_admin_sees_its_own_table(arenas: dict[str, Arena], sessions: Sessions) -> None:
    """The cross-tenant cases above are meaningful: org_globex itself reads its rows."""
    arena = arenas["writable"]
    conn = sessions.get(arena.host, GLOBEX_ADMIN)
    found = execute(conn, "SELECT id, zebra_note, zebra_ssn FROM globex_notes ORDER BY id", "simple")
    assert found.rows == list(GLOBEX_NOTES), str(found.error)
