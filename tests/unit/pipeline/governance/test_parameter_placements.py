"""Every placement of `$n` a client can produce parses, with or without the spaces around it (issue 16)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

from engine_host.pipeline.governance.guard import check_statement, parse_statement, space_parameters

# Expression shapes a parameter appears in; `{}` is a parameter, written with no space around it.
_SHAPES = ("{}", "({},{})", "{}::int", "{}||'x'", "-{}", "({})", "{}+{}", "{}*{}", "{}/{}", "{}>{}", "{}={}",
           "coalesce({},{})", "ARRAY[{},{}]", "case when {}=1 then {} else {} end", "{}::text", "lower({})",
           "1=any({})", "1<>all({})", "{} in ({},{},{})", "abs({})")
_STATEMENTS = ("select {}", "select x from t where x={}and y=2", "select x from t where x={}or y={}",
               "insert into t values ({},{}),({},{})", "update t set a={},b={} where c={}", "delete from t where a={}",
               "with w as (select {} as a) select a from w", "select x from t where x in (select {} from u)",
               "select x from (values ({}),({})) v(x)")
_TRAILERS = ("", ";", " -- $1,$2", " /* $3,$4 */", "\n")


def _fill(template: str, first: int) -> tuple[str, int]:
    count = template.count("{}")
    return template.format(*(f"${first + i}" for i in range(count))), count


@st.composite
def _placements(draw: st.DrawFn) -> tuple[str, set[int]]:
    statement = draw(st.sampled_from(_STATEMENTS))
    pieces, numbers, first = [], set(), draw(st.sampled_from((1, 9, 10, 99)))
    for _ in range(statement.count("{}")):
        text, count = _fill(draw(st.sampled_from(_SHAPES)), first)
        if text[-1].isalpha():  # `...end` or `::int` before `and`/`or` would run into one word
            text = f"({text})"
        numbers |= set(range(first, first + count))
        pieces.append(text)
        first += count
    return statement.format(*pieces) + draw(st.sampled_from(_TRAILERS)), numbers


@settings(max_examples=400, deadline=None)
@given(_placements())
def test_every_generated_placement_parses_with_exactly_its_parameters(case):
    sql, numbers = case
    parsed = parse_statement(sql)
    check_statement(parsed)
    found = {int(p.name) for p in parsed.tree.find_all(exp.Parameter, exp.Placeholder) if str(p.name).isdigit()}
    assert found == numbers, sql


@pytest.mark.parametrize(("sql", "numbers"), [
    ("select '$1,$2', $1,$2", {1, 2}),
    ("select $1,$2, 'x$1,$'", {1, 2}),  # sqlglot alone reads `$1,$ ... $1,$` as one dollar-quoted string
    ('select "a$1,$2" from t where a=$1', {1}),
    ("select $$ $1,$2 $$, $1", {1}),
    ("select $tag$ $1,$2 $tag$, $1,$2", {1, 2}),
    ("select E'\\'$1,', $1,$2", {1, 2}),
    ("select $10,$1", {1, 10}),
    ("select x from t limit $1 offset $2", {1, 2}),
    ("select x from t limit $1", {1}),
    ("select $1", {1}),
])
def test_parameters_inside_strings_comments_names_and_dollar_quotes_are_left_alone(sql, numbers):
    parsed = parse_statement(sql)
    found = {int(p.name) for p in parsed.tree.find_all(exp.Parameter, exp.Placeholder) if str(p.name).isdigit()}
    assert found == numbers


def test_space_parameters_only_spaces_placeholders():
    assert space_parameters("select $1,$2, '$1,$2' -- $3,$4") == "select $1 ,$2 , '$1,$2' -- $3,$4"
