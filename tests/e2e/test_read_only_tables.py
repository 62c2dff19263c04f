"""Writes to Parquet tables are refused in one line with a hint; the writable demo table obeys its row filter."""

from __future__ import annotations

import psycopg
import pytest

WRITES = [
    ("UPDATE crm.customers SET name = name", "update"),
    ("DELETE FROM crm.customers WHERE customer_id = 1", "delete from"),
    ("INSERT INTO crm.customers SELECT * FROM crm.customers LIMIT 0", "insert into"),
    ("ALTER TABLE crm.customers ADD COLUMN z int", "alter"),
    ("DROP TABLE crm.customers", "drop"),
]


@pytest.mark.parametrize(("sql", "verb"), WRITES, ids=[v for _, v in WRITES])
def test_write_to_a_parquet_table_is_refused_by_name_with_a_hint(engine_host, sql, verb):
    with psycopg.connect(engine_host.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql)
        diag = caught.value.diag
        assert (diag.sqlstate, diag.message_detail) == ("42809", "HD_ERR_READ_ONLY_TABLE")
        assert diag.message_primary == (
            f'cannot {verb} table "crm.customers": it is read-only (its data are Parquet files)')
        assert "CREATE TABLE my_copy AS SELECT * FROM crm.customers" in diag.message_hint
        assert conn.execute("SELECT count(*) FROM crm.customers").fetchone()[0] > 0  # nothing changed, still usable


def test_demo_analyst_writes_only_inside_the_row_filter(engine_host):
    """README, Governance: UPDATE/DELETE touch only rows the filter allows; a row put outside it aborts."""
    with psycopg.connect(engine_host.demo_dsn("acme-analyst"), autocommit=True) as analyst, \
            psycopg.connect(engine_host.demo_dsn("acme-admin"), autocommit=True) as admin:
        regions = dict(admin.execute("SELECT region, count(*) FROM sales.leads GROUP BY 1").fetchall())
        assert len(regions) > 1 and "us-east" in regions  # the analyst's region, and others
        assert analyst.execute("SELECT DISTINCT region FROM sales.leads").fetchall() == [("us-east",)]

        updated = analyst.execute("UPDATE sales.leads SET company = company || ' (seen)'").rowcount
        assert updated == regions["us-east"]
        touched = dict(admin.execute(
            "SELECT region, count(*) FROM sales.leads WHERE company LIKE '% (seen)' GROUP BY 1").fetchall())
        assert touched == {"us-east": regions["us-east"]}

        for sql in ("INSERT INTO sales.leads VALUES (1, 'org_acme', 'eu-west', 'Elsewhere Ltd', 'new', 10)",
                    "UPDATE sales.leads SET region = 'eu-west'"):
            with pytest.raises(psycopg.Error) as caught:
                analyst.execute(sql)
            assert caught.value.diag.message_detail == "HD_ERR_ROW_FILTER_CHECK"
        assert dict(admin.execute("SELECT region, count(*) FROM sales.leads GROUP BY 1").fetchall()) == regions

        assert analyst.execute(
            "INSERT INTO sales.leads VALUES (2, 'org_acme', 'us-east', 'Mine Ltd', 'new', 10)").rowcount == 1
        assert analyst.execute("DELETE FROM sales.leads WHERE lead_id IN (2, %s)",
                               (admin.execute("SELECT min(lead_id) FROM sales.leads WHERE region <> 'us-east'")
                                .fetchone()[0],)).rowcount == 1  # its own row only
        admin.execute("UPDATE sales.leads SET company = replace(company, ' (seen)', '')")
