"""The `hd dev --demo` dataset: two fictional organisations' CRM, HR, sales and clinical tables as Parquet.

Every value is generated from a seeded `random.Random`, so the same seed always yields the same
rows and, with the pinned writer options below, byte-identical files. Sensitive-looking values are
fake by construction, never merely unlikely:

- SSNs use area numbers 900-999, which the SSA never issues, and group numbers 01-49, which no
  ITIN uses either.
- Card numbers are Luhn-valid 16-digit numbers under the issuers' published test BINs (411111,
  555555, 424242), so masking and PCI detectors see realistic input that no bank will honour.
- Phone numbers are in NANP area code 555, which is not assigned; e-mail addresses are under the
  reserved example.com / example.org domains (RFC 2606).

Each table has `rows_per_org` rows for each organisation, so a row filter on `org_id` visibly
halves every count.

Parquet tables are read-only. So that writes under a row filter can be tried (README, Governance),
one table, `sales.leads`, is a table of the engine's own database (`create_writable_demo_table`):
created once, then left as the user changed it.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from hd_core.files import write_file_atomically


@dataclass(frozen=True)
class DemoOrg:
    """A fictional tenant: its id, e-mail domain, id block and where its people mostly are."""

    org_id: str
    email_domain: str
    id_base: int
    region_weights: dict[str, int]


DEMO_ORGS: tuple[DemoOrg, ...] = (
    DemoOrg(
        "org_acme",
        "acme.example.com",
        1_000_000,
        {"us-east": 45, "us-west": 30, "eu-west": 15, "ap-southeast": 10},
    ),
    DemoOrg(
        "org_globex",
        "globex.example.org",
        2_000_000,
        {"eu-west": 40, "eu-central": 35, "us-east": 15, "ap-southeast": 10},
    ),
)

FILE_NAME = "part-0.parquet"

# Everything is placed in time relative to this fixed instant, never "now", so reruns agree.
_EPOCH = dt.datetime(2025, 6, 30, 12, 0, tzinfo=dt.UTC)

_FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Ana", "Arjun", "Beatriz", "Bo", "Carmen", "Chen", "Dara", "Diego",
    "Elena", "Emeka", "Farah", "Finn", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jamal", "Jin",
    "Kai", "Keiko", "Lars", "Leila", "Luca", "Maya", "Mateo", "Nadia", "Noah", "Olga", "Omar",
    "Priya", "Quinn", "Rosa", "Sam", "Sofia", "Tariq", "Uma", "Vera", "Wei", "Yusuf", "Zoe",
)  # fmt: skip
_LAST_NAMES = (
    "Abara", "Andersen", "Baptiste", "Becker", "Chowdhury", "Costa", "Dubois", "Eriksen", "Fischer",
    "Garcia", "Haddad", "Ito", "Jansen", "Kowalski", "Kumar", "Larsen", "Lopez", "Mbeki", "Moreau",
    "Nakamura", "Novak", "Okafor", "Olsen", "Park", "Patel", "Quispe", "Rossi", "Santos", "Schmidt",
    "Silva", "Tanaka", "Torres", "Umarov", "Varga", "Weber", "Xu", "Yilmaz", "Zhang",
)  # fmt: skip

_DEPARTMENTS = ("Engineering", "Sales", "Marketing", "Finance", "People", "Support", "Legal", "Operations")
_SALARY_BANDS = {  # (low, high) in whole currency units, per department
    "Executive": (240_000, 320_000),
    "Engineering": (95_000, 210_000),
    "Sales": (60_000, 160_000),
    "Marketing": (65_000, 140_000),
    "Finance": (70_000, 150_000),
    "People": (60_000, 125_000),
    "Support": (45_000, 85_000),
    "Legal": (90_000, 200_000),
    "Operations": (55_000, 120_000),
}
_CURRENCY_BY_REGION = {
    "us-east": "USD",
    "us-west": "USD",
    "eu-west": "GBP",
    "eu-central": "EUR",
    "ap-southeast": "SGD",
}
_ORDER_STATUSES = {"paid": 50, "shipped": 25, "pending": 12, "refunded": 8, "cancelled": 5}
_TEST_CARD_BINS = ("411111", "555555", "424242")
_DIAGNOSES = (
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("I10", "Essential (primary) hypertension"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
    ("M54.50", "Low back pain, unspecified"),
    ("F41.1", "Generalized anxiety disorder"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("J45.909", "Unspecified asthma, uncomplicated"),
    ("N39.0", "Urinary tract infection, site not specified"),
    ("R51.9", "Headache, unspecified"),
)
_ENCOUNTER_TYPES = ("outpatient", "telehealth", "emergency", "inpatient")

_MONEY = pa.decimal128(12, 2)
_TIMESTAMPTZ = pa.timestamp("us", tz="UTC")


def _col(name: str, type_: pa.DataType, *, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


SCHEMAS: dict[tuple[str, str], pa.Schema] = {
    ("crm", "customers"): pa.schema(
        [
            _col("customer_id", pa.int64()),
            _col("org_id", pa.string()),
            _col("full_name", pa.string()),
            _col("email", pa.string()),
            _col("ssn", pa.string()),
            _col("card_number", pa.string()),
            _col("phone", pa.string()),
            _col("department", pa.string()),
            _col("region", pa.string()),
            _col("created_at", _TIMESTAMPTZ),
            _col("lifetime_value", _MONEY),
        ]
    ),
    ("hr", "employees"): pa.schema(
        [
            _col("employee_id", pa.int64()),
            _col("org_id", pa.string()),
            _col("full_name", pa.string()),
            _col("email", pa.string()),
            _col("ssn", pa.string()),
            _col("phone", pa.string()),
            _col("department", pa.string()),
            _col("region", pa.string()),
            _col("salary", _MONEY),
            _col("hired_on", pa.date32()),
            _col("manager_id", pa.int64(), nullable=True),
        ]
    ),
    ("sales", "orders"): pa.schema(
        [
            _col("order_id", pa.int64()),
            _col("org_id", pa.string()),
            _col("customer_id", pa.int64()),
            _col("amount", _MONEY),
            _col("currency", pa.string()),
            _col("status", pa.string()),
            _col("ordered_at", _TIMESTAMPTZ),
            _col("region", pa.string()),
        ]
    ),
    ("clinical", "encounters"): pa.schema(
        [
            _col("encounter_id", pa.int64()),
            _col("org_id", pa.string()),
            _col("mrn", pa.string()),
            _col("patient_name", pa.string()),
            _col("date_of_birth", pa.date32()),
            _col("diagnosis_code", pa.string()),
            _col("diagnosis", pa.string()),
            _col("encounter_type", pa.string()),
            _col("provider", pa.string()),
            _col("encounter_at", _TIMESTAMPTZ),
            _col("region", pa.string()),
        ]
    ),
}

Row = dict[str, object]


def write_demo_dataset(data_dir: Path, *, rows_per_org: int = 500, seed: int = 7) -> list[tuple[str, str]]:
    """Write the demo tables under `data_dir/<schema>/<table>/part-0.parquet`; return the (schema, table) pairs.

    Idempotent: each table is exactly one file, replaced atomically, and left untouched (mtime
    included) when its content would not change.
    """
    if rows_per_org < 1:
        raise ValueError("rows_per_org must be at least 1")
    rows: dict[tuple[str, str], list[Row]] = {key: [] for key in SCHEMAS}
    for org in DEMO_ORGS:
        customers = _generate(_customer, org, rows_per_org, seed, "customers")
        orders = _orders(org, customers, rows_per_org, seed)
        _settle_lifetime_value(customers, orders)
        rows["crm", "customers"] += customers
        rows["sales", "orders"] += orders
        rows["hr", "employees"] += _employees(org, rows_per_org, seed)
        rows["clinical", "encounters"] += _generate(_encounter, org, rows_per_org, seed, "encounters")

    written = []
    for (schema, table), schema_rows in rows.items():
        table_data = pa.Table.from_pylist(schema_rows, schema=SCHEMAS[schema, table])
        _write_parquet_if_changed(data_dir / schema / table / FILE_NAME, table_data)
        written.append((schema, table))
    return written


WRITABLE_DEMO_TABLE = ("sales", "leads")
_LEAD_STAGES = {"new": 40, "qualified": 30, "proposal": 20, "won": 6, "lost": 4}
_LEADS_PER_ORG = 40


def create_writable_demo_table(database_path: Path, *, seed: int = 7) -> bool:
    """Create `sales.leads` in the engine's database file if it is not there yet; True if it was created.

    Runs before the engine host opens the file. A table the user changed or dropped is not recreated
    while the file keeps it; a fresh state directory starts from the same rows again.
    """
    schema, table = WRITABLE_DEMO_TABLE
    rows = [lead for org in DEMO_ORGS for lead in _generate(_lead, org, _LEADS_PER_ORG, seed, "leads")]
    con = duckdb.connect(str(database_path))
    try:
        exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                             "AND schema_name = ? AND table_name = ?", [schema, table]).fetchone()
        if exists is not None and exists[0]:
            return False
        con.execute("BEGIN TRANSACTION")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        con.execute(f"CREATE TABLE {schema}.{table} (lead_id BIGINT NOT NULL, org_id VARCHAR NOT NULL, "
                    "region VARCHAR NOT NULL, company VARCHAR NOT NULL, stage VARCHAR NOT NULL, "
                    "value DECIMAL(12,2) NOT NULL)")
        con.executemany(f"INSERT INTO {schema}.{table} VALUES (?, ?, ?, ?, ?, ?)",
                        [[r["lead_id"], r["org_id"], r["region"], r["company"], r["stage"], r["value"]]
                         for r in rows])
        con.execute("COMMIT")
        return True
    finally:
        con.close()


def _lead(rng: random.Random, org: DemoOrg, i: int) -> Row:
    return {
        "lead_id": org.id_base + 900_000 + i,
        "org_id": org.org_id,
        "region": _region(rng, org),
        "company": f"{rng.choice(_LAST_NAMES)} {rng.choice(('Labs', 'Logistics', 'Foods', 'Partners', 'Works'))}",
        "stage": _weighted(rng, _LEAD_STAGES),
        "value": _money(rng, 1_000, 90_000),
    }


def _rng(seed: int, org: DemoOrg, table: str) -> random.Random:
    # One stream per (org, table): changing how one table is generated leaves the others' values
    # unchanged. String seeds are hashed with SHA-512, so this is stable across processes.
    return random.Random(f"{seed}:{org.org_id}:{table}")  # noqa: S311 - reproducible fake data, not secrets


def _generate(
    make: Callable[[random.Random, DemoOrg, int], Row], org: DemoOrg, count: int, seed: int, table: str
) -> list[Row]:
    rng = _rng(seed, org, table)
    return [make(rng, org, i) for i in range(count)]


def _customer(rng: random.Random, org: DemoOrg, i: int) -> Row:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    customer_id = org.id_base + i + 1
    return {
        "customer_id": customer_id,
        "org_id": org.org_id,
        "full_name": f"{first} {last}",
        "email": f"{first}.{last}{i + 1}@{org.email_domain}".lower(),
        "ssn": _fake_ssn(rng),
        "card_number": _test_card_number(rng),
        "phone": _fake_phone(rng),
        "department": rng.choice(_DEPARTMENTS),
        "region": _region(rng, org),
        "created_at": _EPOCH - dt.timedelta(seconds=rng.randint(30 * 86_400, 4 * 365 * 86_400)),
        "lifetime_value": Decimal(0),  # settled from the orders once they exist
    }


def _orders(org: DemoOrg, customers: list[Row], count: int, seed: int) -> list[Row]:
    rng = _rng(seed, org, "orders")
    orders = []
    for i in range(count):
        customer = rng.choice(customers)
        created_at = customer["created_at"]
        assert isinstance(created_at, dt.datetime)
        span = int((_EPOCH - created_at).total_seconds())
        region = str(customer["region"])
        orders.append(
            {
                "order_id": org.id_base + i + 1,
                "org_id": org.org_id,
                "customer_id": customer["customer_id"],
                "amount": _money(rng, 5, 2_500),
                "currency": _CURRENCY_BY_REGION[region],
                "status": _weighted(rng, _ORDER_STATUSES),
                "ordered_at": created_at + dt.timedelta(seconds=rng.randint(0, span)),
                "region": region,
            }
        )
    return orders


def _settle_lifetime_value(customers: list[Row], orders: list[Row]) -> None:
    # Lifetime value is what the customer actually paid, so demo joins and aggregates agree.
    totals: dict[object, Decimal] = {}
    for order in orders:
        if order["status"] in ("paid", "shipped"):
            amount = order["amount"]
            assert isinstance(amount, Decimal)
            totals[order["customer_id"]] = totals.get(order["customer_id"], Decimal(0)) + amount
    for customer in customers:
        customer["lifetime_value"] = totals.get(customer["customer_id"], Decimal("0.00"))


def _employees(org: DemoOrg, count: int, seed: int) -> list[Row]:
    """A small hierarchy: employee 0 is the chief executive, the next few head a department each."""
    rng = _rng(seed, org, "employees")
    heads = min(len(_DEPARTMENTS), count - 1)
    head_of: dict[str, int] = {}
    employees = []
    for i in range(count):
        employee_id = org.id_base + i + 1
        if i == 0:
            department, manager_id = "Executive", None
        elif i <= heads:
            department, manager_id = _DEPARTMENTS[i - 1], org.id_base + 1
            head_of[department] = employee_id
        else:
            department = rng.choice(list(head_of))
            manager_id = head_of[department]
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        low, high = _SALARY_BANDS[department]
        employees.append(
            {
                "employee_id": employee_id,
                "org_id": org.org_id,
                "full_name": f"{first} {last}",
                "email": f"{first}.{last}.{i + 1}@{org.email_domain}".lower(),
                "ssn": _fake_ssn(rng),
                "phone": _fake_phone(rng),
                "department": department,
                "region": _region(rng, org),
                "salary": _money(rng, low, high),
                "hired_on": _EPOCH.date() - dt.timedelta(days=rng.randint(30, 13 * 365)),
                "manager_id": manager_id,
            }
        )
    return employees


def _encounter(rng: random.Random, org: DemoOrg, i: int) -> Row:
    code, description = rng.choice(_DIAGNOSES)
    return {
        "encounter_id": org.id_base + i + 1,
        "org_id": org.org_id,
        "mrn": f"MRN-{rng.randint(0, 99_999_999):08d}",
        "patient_name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
        "date_of_birth": dt.date(1940, 1, 1) + dt.timedelta(days=rng.randint(0, 80 * 365)),
        "diagnosis_code": code,
        "diagnosis": description,
        "encounter_type": rng.choice(_ENCOUNTER_TYPES),
        "provider": f"Dr. {rng.choice(_LAST_NAMES)}",
        "encounter_at": _EPOCH - dt.timedelta(seconds=rng.randint(0, 2 * 365 * 86_400)),
        "region": _region(rng, org),
    }


def _fake_ssn(rng: random.Random) -> str:
    return f"{rng.randint(900, 999)}-{rng.randint(1, 49):02d}-{rng.randint(1, 9999):04d}"


def _fake_phone(rng: random.Random) -> str:
    return f"+1-555-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"


def _test_card_number(rng: random.Random) -> str:
    body = rng.choice(_TEST_CARD_BINS) + "".join(str(rng.randint(0, 9)) for _ in range(9))
    return body + str(luhn_check_digit(body))


def luhn_check_digit(body: str) -> int:
    """The digit that makes `body` + digit pass the Luhn check."""
    total = 0
    # Walking from the right, the digit next to the (future) check digit is doubled first.
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def _region(rng: random.Random, org: DemoOrg) -> str:
    return _weighted(rng, org.region_weights)


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low * 100, high * 100)).scaleb(-2)


def _write_parquet_if_changed(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()
    # Pinned writer options: the output then depends only on the rows (and the pyarrow version,
    # which records itself in `created_by`), which is what makes reruns byte-identical.
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=3,
        use_dictionary=True,
        write_statistics=True,
        data_page_size=1 << 20,
        row_group_size=128 * 1024,
    )
    data = sink.getvalue().to_pybytes()
    if path.exists() and path.read_bytes() == data:
        return
    # A reader (a running engine's glob) sees either the old file or the new one, never half.
    write_file_atomically(path, data, durable=False)
