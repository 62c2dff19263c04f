"""A mismatch's rows are rendered with the engine's mask rules where a result column traces to a base column.

The hash mask must give exactly what the engine's `hd_mask_hash_<env>` DuckDB macro gives (checked against
the macro itself, installed by `engine_host.engine.masking`), partial and full as the engine's rewrite spells
them; anything that cannot be traced to one base column is redacted as before.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pytest

from engine_host.engine.masking import install_mask_macros, macro_name, mask_hash
from hd_core.catalog_schemas import TableSchema
from hd_core.models import Role
from hd_core.policies import MaskFunction, MaskRule, PolicySnapshot
from hd_core.policy_eval import Subject
from hd_core.shadow.compare import redact_all
from hd_core.shadow.sample_masks import (
    REDACT,
    SHOW,
    ColumnPlan,
    ReplayMasking,
    column_plans,
    mask_value,
    result_sources,
)

ORG = "org_1"
KEY = bytes(range(32))
CATALOG = {
    "crm.customers": TableSchema("crm.customers", (("id", "INTEGER"), ("name", "VARCHAR"), ("email", "VARCHAR"),
                                                   ("ssn", "VARCHAR"), ("phone", "VARCHAR"), ("notes", "VARCHAR"))),
    "main.orders": TableSchema("main.orders", (("id", "INTEGER"), ("customer_id", "INTEGER"), ("total", "DOUBLE"))),
}
RULES = (
    MaskRule("m_email", ORG, "crm.customers", "email", MaskFunction.PARTIAL, 4),
    MaskRule("m_ssn", ORG, "crm.customers", "ssn", MaskFunction.HASH),
    MaskRule("m_phone", ORG, "crm.customers", "phone", MaskFunction.NULL),
    # Masked for everyone but ServiceAccounts: still sensitive, so a report redacts it.
    MaskRule("m_notes", ORG, "crm.customers", "notes", MaskFunction.FULL, exempt_roles=(Role.SERVICE_ACCOUNT,)),
    MaskRule("m_theirs", "org_2", "main.orders", "total", MaskFunction.FULL),  # another organisation's: not ours
)
SUBJECT = Subject(user_id="usr_sa", org_id=ORG, role=Role.SERVICE_ACCOUNT, scopes=("read_only",), key_id="k",
                  env="test")


def _plans(sql: str, names: list[str]) -> list[ColumnPlan]:
    return column_plans(sql, names, CATALOG.get, PolicySnapshot(1, masks=RULES), SUBJECT)


def test_each_result_column_is_traced_to_its_base_column_through_aliases_joins_and_stars() -> None:
    assert result_sources("select c.email as e, o.total, upper(c.name) from crm.customers c "
                          "join orders o on o.customer_id = c.id", CATALOG.get) == [
        ("crm.customers", "email"), ("main.orders", "total"), None]
    assert result_sources("select * from orders", CATALOG.get) == [
        ("main.orders", "id"), ("main.orders", "customer_id"), ("main.orders", "total")]
    on_path = result_sources("select * from customers", CATALOG.get, ("crm",))
    assert on_path is not None and on_path[3] == ("crm.customers", "ssn")


@pytest.mark.parametrize("sql", [
    "select * from unknown_table",  # `*` over a table the catalog lacks
    "select email from crm.customers union all select email from crm.customers",
    "with c as (select email from crm.customers) select email from c",
    "select email from customers",  # not on the search path (main)
    "select nosuch from crm.customers",
    "select id from crm.customers c join orders o on true",  # `id` is ambiguous
    "this is not sql",
])
def test_what_cannot_be_traced_is_redacted_whole(sql: str) -> None:
    assert result_sources(sql, CATALOG.get) is None
    assert _plans(sql, ["a", "b"]) == [REDACT, REDACT]


def test_masked_columns_get_the_rule_the_engine_applies_and_expressions_over_them_are_redacted() -> None:
    plans = _plans("select c.id, c.name, c.email, c.ssn, c.phone, c.notes, lower(c.email), s.ssn "
                   "from crm.customers c, (select ssn from crm.customers) s",
                   ["id", "name", "email", "ssn", "phone", "notes", "l", "x"])
    assert plans[:2] == [SHOW, SHOW]
    assert [p.rule.rule_id for p in plans[2:5] if p.rule is not None] == ["m_email", "m_ssn", "m_phone"]
    assert plans[5:] == [REDACT, REDACT, REDACT]
    assert _plans("select total from orders", ["total"]) == [SHOW]  # another organisation's rule is not ours


def test_hash_is_the_engines_macro_and_partial_full_null_spell_as_the_engine_does() -> None:
    con = duckdb.connect()
    install_mask_macros(con, {"test": KEY})

    def one(sql: str, params: list[Any] | None = None) -> Any:
        row = con.execute(sql, params or []).fetchone()
        assert row is not None
        return row[0]

    for value in ("123-45-6789", "ana@example.com", "", "ü"):
        engine = one(f"SELECT hd_keys.main.{macro_name('test')}(CAST(? AS VARCHAR))", [value])
        assert mask_value(RULES[1], value, KEY) == engine == mask_hash(KEY, value)
    assert mask_value(RULES[1], 42, KEY) == one(f"SELECT hd_keys.main.{macro_name('test')}(CAST(42 AS VARCHAR))")
    partial = one("SELECT '***' || right(CAST(? AS VARCHAR), 4)", ["ana@example.com"])
    assert mask_value(RULES[0], "ana@example.com", KEY) == partial == "***.com"
    assert mask_value(MaskRule("p0", ORG, "t.t", "c", MaskFunction.PARTIAL, 0), "secret", KEY) == "***"
    assert mask_value(MaskRule("f", ORG, "t.t", "c", MaskFunction.FULL), "secret", KEY) == "***"
    assert mask_value(RULES[2], "555-0100", KEY) is None
    assert mask_value(RULES[1], None, KEY) is None
    # A value whose text DuckDB may spell differently, or no key: redacted, never shown.
    assert mask_value(RULES[1], 1.5, KEY) == redact_all("ssn", 1.5)
    assert mask_value(RULES[1], "123-45-6789", None) == redact_all("ssn", "123-45-6789")


def test_a_statements_redactor_shows_masks_and_redacts_by_column() -> None:
    masking = ReplayMasking(PolicySnapshot(1, masks=RULES), CATALOG.get, SUBJECT, KEY)
    names = ["name", "email", "ssn", "notes", "total"]
    render = masking.for_statement("select name, email, ssn, notes, 1.0 * id as total from crm.customers", names)
    row: dict[str, Any] = {"name": "Ana", "email": "ana@example.com", "ssn": "123-45-6789", "notes": "diabetic",
                           "total": 3}
    shown = {name: render(name, value) for name, value in row.items()}
    assert shown == {"name": "Ana", "email": "***.com", "ssn": mask_hash(KEY, "123-45-6789"),
                     "notes": redact_all("notes", "diabetic"), "total": redact_all("total", 3)}
    # Two result columns of one name that render differently: that name is redacted.
    render = masking.for_statement("select name, ssn as name from crm.customers", ["name", "name"])
    assert render("name", "Ana") == redact_all("name", "Ana")
