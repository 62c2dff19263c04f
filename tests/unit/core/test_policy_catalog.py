"""The recorded catalog (hd_core.catalog_schemas) and the policy check against it (hd_core.policy_catalog)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hd_core.adapters.sqlite_store import SqliteControlStore
from hd_core.bootstrap import DEFAULT_ORG_SETTING
from hd_core.catalog_schemas import CatalogRecorder, table_schema
from hd_core.errors import UnknownColumn, UnknownTable
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    ColumnTag,
    MaskFunction,
    MaskRule,
    PiiType,
    RowFilter,
    TableBinding,
)
from hd_core.policy_catalog import check_against_catalog

DEPLOYMENT, OTHER = "org_deploy", "org_other"
ORDERS = [("order_id", "BIGINT"), ("region", "VARCHAR"), ("amount", "DECIMAL(12,2)")]


class CountingStore(SqliteControlStore):
    """A real SQLite store that counts setting writes."""

    puts = 0

    def put_setting(self, name: str, value: str) -> None:
        self.puts += 1
        super().put_setting(name, value)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    opened = CountingStore(tmp_path / "control.sqlite3")
    opened.put_setting(DEFAULT_ORG_SETTING, DEPLOYMENT)
    opened.puts = 0
    yield opened
    opened.close()


def test_a_recorder_writes_only_what_changed_and_marks_what_it_served_before_as_dropped(store: CountingStore) -> None:
    recorder = CatalogRecorder(store)

    assert recorder.record({"sales.orders": ORDERS, "Sales.Leads": [("ID", "INTEGER")]}) == ["sales.leads",
                                                                                             "sales.orders"]
    assert recorder.record({"sales.orders": ORDERS, "sales.leads": [("id", "INTEGER")]}) == []
    assert store.puts == 2
    assert recorder.record({"sales.orders": [*ORDERS, ("status", "VARCHAR")]}) == ["sales.leads", "sales.orders"]

    assert table_schema(store, "sales.leads") is None
    schema = table_schema(store, "sales.orders")
    assert schema is not None and schema.column_names() == ("order_id", "region", "amount", "status")
    # A second host (or a restart) reads the records once and writes nothing that is already there.
    store.puts = 0
    assert CatalogRecorder(store).record({"sales.orders": [*ORDERS, ("status", "VARCHAR")]}) == []
    assert store.puts == 0


def test_an_unknown_table_needs_pending_and_an_unknown_column_is_refused_even_then(store: CountingStore) -> None:
    CatalogRecorder(store).record({"sales.orders": ORDERS})
    snapshot = store.policy_snapshot()

    with pytest.raises(UnknownTable, match=r"sales\.ordrs"):
        check_against_catalog(store, snapshot, MaskRule("m1", DEPLOYMENT, "sales.ordrs", "amount", MaskFunction.FULL))
    check_against_catalog(store, snapshot, MaskRule("m1", DEPLOYMENT, "sales.ordrs", "amount", MaskFunction.FULL,
                                                    pending=True))
    with pytest.raises(UnknownColumn, match="amuont"):
        check_against_catalog(store, snapshot, MaskRule("m1", DEPLOYMENT, "sales.orders", "amuont",
                                                        MaskFunction.FULL, pending=True))
    with pytest.raises(UnknownColumn, match=r"sales\.orders has no column regoin"):
        check_against_catalog(store, snapshot, RowFilter("r1", DEPLOYMENT, "sales.orders", "regoin = {region}"))
    check_against_catalog(store, snapshot, RowFilter("r1", DEPLOYMENT, "sales.orders", "region = {region}"))
    check_against_catalog(store, snapshot, ColumnTag("t1", DEPLOYMENT, "sales.orders", "region", PiiType.PHONE))


def test_another_organisations_table_is_refused_exactly_like_a_missing_one_and_a_shared_one_is_everyones(
        store: CountingStore) -> None:
    CatalogRecorder(store).record({"sales.orders": ORDERS, "shared.events": [("org_id", "VARCHAR")]})
    store.put_policy(TableBinding("tbl_events", "shared.events", org_id=None, tenant_column="org_id"))
    snapshot = store.policy_snapshot()

    with pytest.raises(UnknownTable) as theirs:
        check_against_catalog(store, snapshot, MaskRule("m1", OTHER, "sales.orders", "amount", MaskFunction.FULL))
    with pytest.raises(UnknownTable) as missing:
        check_against_catalog(store, snapshot, MaskRule("m1", OTHER, "sales.orderz", "amount", MaskFunction.FULL))
    assert str(theirs.value).replace("orders", "X") == str(missing.value).replace("orderz", "X")
    check_against_catalog(store, snapshot, MaskRule("m2", OTHER, "shared.events", "org_id", MaskFunction.FULL))


def test_an_abac_deny_naming_a_missing_table_is_refused_unless_pending_and_patterns_are_not_checked(
        store: CountingStore) -> None:
    CatalogRecorder(store).record({"sales.orders": ORDERS})
    snapshot = store.policy_snapshot()

    def deny(resources: tuple[str, ...], tables: tuple[str, ...] = (), pending: bool = False) -> AbacPolicy:
        return AbacPolicy("a1", DEPLOYMENT, "deny", "deny", ("select",), resources,
                          AbacConditions(tables=tables), pending=pending)

    with pytest.raises(UnknownTable, match=r"sales\.ordrs \(resources\)"):
        check_against_catalog(store, snapshot, deny(("sales.ordrs",)))
    with pytest.raises(UnknownTable, match=r"hr\.people \(conditions\.tables\)"):
        check_against_catalog(store, snapshot, deny(("*",), ("hr.people",)))
    check_against_catalog(store, snapshot, deny(("sales.orders", "hr.*", "*")))
    check_against_catalog(store, snapshot, deny(("sales.ordrs",), pending=True))
