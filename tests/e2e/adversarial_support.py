"""What the adversarial suites share: targets, leak finders, both wire protocols, and a host with writable tables.

A statement is an attack template over one governed *target*: the demo's Parquet-backed shared table
`crm.customers` (tenant column `org_id`) or the writable `main.wpeople` (row filter on `department`,
`ssn` fully masked, `email` keyed-hashed). Tokens in a template are replaced per target:

    @T  the table, schema-qualified      @N  its bare name        @U  its bare name upper-cased
    @SCH its schema   @SU upper schema   @K  its id column        @S  fully masked column
    @M  keyed-hash masked column         @F  the column its row filter / tenant filter reads
    @P  `count(*), string_agg(@S), string_agg(@M), string_agg(@K)` over whatever FROM follows
    @DATA the host's data folder         @STATE the host's state folder

Ground truth never goes through the code under test: Parquet rows are read with pyarrow, the
writable rows are the constants below, written by the Owner.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.e2e.protocols import cursor
from tests.e2e.test_adversarial import (
    ACME,
    ANALYST,
    GLOBEX,
    GLOBEX_ANALYST,
    Secrets,
    Truth,
    cells,
    eventually,
    hd_policy,
    parquet_rows,
)
from tests.harness import EngineHostProcess, start_engine_host

__all__ = ["ACME", "ANALYST", "GLOBEX", "GLOBEX_ANALYST", "Truth", "cells", "parquet_rows"]  # re-exported

ADMIN, GLOBEX_ADMIN, OWNER = "acme-admin", "globex-admin", None
STATEMENT_TIMEOUT_MS = 20_000

# --- the writable tables (created by the Owner of org_acme; `globex_notes` by an Admin of org_globex) ---------

WPEOPLE_COLUMNS = ("id", "department", "ssn", "email", "note", "acme_kiwi")
WPEOPLE = (
    (1, "Sales", "811-11-1111", "ann.sales@wp-acme.test", "sales-note-1", 11),
    (2, "Sales", "812-12-1212", "bob.sales@wp-acme.test", "sales-note-2", 12),
    (3, "Sales", "813-13-1313", "cyd.sales@wp-acme.test", "sales-note-3", 13),
    (4, "Legal", "814-14-1414", "dee.legal@wp-acme.test", "legal-note-4", 14),
    (5, "Legal", "815-15-1515", "eve.legal@wp-acme.test", "legal-note-5", 15),
    (6, "Engineering", "816-16-1616", "fay.eng@wp-acme.test", "eng-note-6", 16),
    (7, "Engineering", "817-17-1717", "gus.eng@wp-acme.test", "eng-note-7", 17),
)
WSINK = ((1, "sink-1"), (2, "sink-2"), (3, "sink-3"), (4, "sink-4"))
GLOBEX_NOTES = ((1, "zebra-secret-of-globex", "877-77-7777"), (2, "zebra-second-secret", "878-78-7878"))
# Column names only org_globex's table has: no error text may ever show them to org_acme.
GLOBEX_ONLY_NAMES = ("zebra_note", "zebra_ssn", "globex_notes")
ACME_ONLY_NAMES = ("acme_kiwi", "wpeople", "wsink")
ANALYST_DEPARTMENT = "Sales"

WRITABLE_POLICIES = (
    {"kind": "row_filter", "rule_id": "rls_wpeople_department", "org_id": ACME, "table": "main.wpeople",
     "filter": "department = {department}", "exempt_roles": ["Owner"]},
    {"kind": "mask", "rule_id": "msk_wpeople_ssn", "org_id": ACME, "table": "main.wpeople", "column": "ssn",
     "function": "full", "exempt_roles": ["Owner"]},
    {"kind": "mask", "rule_id": "msk_wpeople_email", "org_id": ACME, "table": "main.wpeople", "column": "email",
     "function": "hash", "exempt_roles": ["Owner"]},
)

# Names of machinery a client must never see in results or errors; EXPLAIN may name the internal catalog and the
# rewrite's aliases (the plan of a governed statement is made of them), never file paths or the keys.
INTERNAL_MARKERS = ("__hd_src", "__hd_new", "hd_keys", "hd_mask", "hd_data", "hd_raw", "read_parquet",
                    "did you mean", "candidate tables", "from_hex(", "engine.main.", "engine.crm.")
PLAN_NAMES = ("__hd_src", "__hd_new", "hd_data", "hd_raw", "engine.main.", "engine.crm.", "read_parquet")


# --- leak finding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMaterial:
    """Every textual form of the per-environment hash-mask keys (read from the control store by the test)."""

    forms: tuple[str, ...]
    keys: tuple[bytes, ...]

    @classmethod
    def of(cls, host: EngineHostProcess) -> KeyMaterial:
        keys = tuple(host.mask_keys().values())
        forms: list[str] = []
        for key in keys:
            padded = key.ljust(64, b"\0")
            ipad, opad = bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)
            forms += [key.hex(), ipad.hex(), opad.hex(), base64.b64encode(key).decode()]
            # DuckDB prints BLOB constants (a folded `from_hex(...)`) as text with \xHH escapes.
            forms += [blob_text(part[i:i + 8]) for part in (key, ipad[:32], opad[:32]) for i in range(0, 32, 8)]
        return cls(tuple(forms), keys)

    def found_in(self, text: str) -> list[str]:
        """Key forms inside `text` (doubled backslashes of a printed repr collapsed first)."""
        low = text.replace("\\\\", "\\").lower()
        return [form for form in self.forms if form.lower() in low]


def blob_text(data: bytes) -> str:
    """How DuckDB renders a BLOB as text: printable ASCII as is, everything else (and backslash) as \\xHH."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02X}" for b in data)


_HEX_RUN = re.compile(r"[0-9a-fA-F]{64,}")
_ZERO_KEY_PADS = ("36" * 64, "5c" * 64)


def long_hex_constants(text: str) -> list[str]:
    """Hex runs that could be key material: longer than one SHA-256 output, or equal to a key (zero-key pads aside)."""
    return [run for run in _HEX_RUN.findall(text) if len(run) > 64 and run.lower() not in _ZERO_KEY_PADS]


class SecretFinder:
    """`Secrets.found` (every real ssn / card / phone / e-mail / salary, also reversed), fast on long texts.

    The digit runs of 500 keyed hashes are many; looking each one up by substring length keeps a 70 kB
    answer to a few milliseconds instead of a quarter of a second.
    """

    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets
        self.digits = frozenset(secrets.ssn_digits | secrets.card | secrets.phone_digits)
        self.lengths = sorted({len(d) for d in self.digits})

    def found(self, text: str) -> list[str]:
        s, hits = self.secrets, []
        for t in (text, text[::-1]):
            hits += [m for m in re.findall(r"\d{3}-\d{2}-\d{4}", t) if m in s.ssn]
            for run in re.findall(r"\d{9,}", t):
                hits += [run[i:i + n] for n in self.lengths for i in range(len(run) - n + 1)
                         if run[i:i + n] in self.digits]
            hits += [m for m in re.findall(r"\d{3}-\d{3}-\d{4}", t) if "+1-555-" + m[4:] in s.phone
                     or "+1-" + m in s.phone]
            if "@" in t:
                for candidate in re.findall(r"[\w.%+-]*@[\w.-]+", t):
                    hits += [e for e in s.email if e in candidate]
            hits += [m for m in re.findall(r"\d{5,6}\.\d\d", t) if m in s.salary]
        return hits


@dataclass
class Leaks:
    """Finds protected values, other tenants' data, key material and internal names in text a client received."""

    secrets: SecretFinder
    literals: tuple[str, ...]
    keys: KeyMaterial
    markers: tuple[str, ...] = INTERNAL_MARKERS
    paths: tuple[str, ...] = ()

    def found(self, text: str, sql: str = "") -> list[str]:
        """What `text` reveals that the statement `sql` did not itself contain."""
        low, asked = text.lower(), sql.lower().replace('"', "")
        hits = [h for h in self.secrets.found(text) if h.lower() not in asked]
        hits += [v for v in self.literals if v.lower() in low and v.lower() not in asked]
        hits += [f"key material {k[:12]}..." for k in self.keys.found_in(text)]
        plan = asked.lstrip().startswith("explain")
        hits += [m for m in self.markers if m in low and m not in asked and not (plan and m in PLAN_NAMES)]
        hits += [p for p in self.paths if p.lower() in low and p.lower() not in asked]
        hits += [f"hex constant {h[:16]}..." for h in long_hex_constants(text)]
        return hits


def writable_literals() -> tuple[str, ...]:
    """Every protected value of the writable host's own tables, in the forms a leak could take."""
    values: list[str] = []
    for row in WPEOPLE:
        values += [row[2], row[2].replace("-", ""), row[3]]
        if row[1] != ANALYST_DEPARTMENT:
            values.append(row[4])
    for row in GLOBEX_NOTES:
        values += [row[1], row[2], row[2].replace("-", "")]
    return tuple(values)


def truth_of(host: EngineHostProcess) -> Truth:
    d = host.state_dir
    return Truth(parquet_rows(d, "crm.customers"), parquet_rows(d, "hr.employees"), parquet_rows(d, "sales.orders"),
                 parquet_rows(d, "clinical.encounters"))


def leaks_of(host: EngineHostProcess, extra: Iterable[str] = ()) -> Leaks:
    state = str(host.state_dir)
    return Leaks(SecretFinder(truth_of(host).secrets), (*writable_literals(), *extra), KeyMaterial.of(host),
                 paths=(state, state.replace("/", "\\/"), "/data/crm/", "part-0.parquet", "control.sqlite3"))


# --- targets --------------------------------------------------------------------------------------

_TOKEN = re.compile(r"@(STATE|DATA|SCH|SU|P|T|N|U|K|S|M|F)\b")
PROJECTION = ("count(*) AS n, string_agg(CAST(@S AS VARCHAR), ',') AS s, string_agg(CAST(@M AS VARCHAR), ',') AS m, "
              "string_agg(CAST(@K AS VARCHAR), ',') AS k")


@dataclass(frozen=True)
class Target:
    """One governed table an attack template is instantiated over, with what the caller may see of it."""

    kind: str
    schema: str
    name: str
    key: str
    masked: str
    hashed: str
    filter_column: str
    visible_ids: frozenset[int]
    forbidden: tuple[str, ...]
    state_dir: Path = field(compare=False)

    @property
    def table(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def visible(self) -> int:
        return len(self.visible_ids)

    def sql(self, template: str) -> str:
        values = {"P": PROJECTION, "T": self.table, "N": self.name, "U": self.name.upper(), "SCH": self.schema,
                  "SU": self.schema.upper(), "K": self.key, "S": self.masked, "M": self.hashed,
                  "F": self.filter_column, "DATA": str(self.state_dir / "data"), "STATE": str(self.state_dir)}
        text = template
        for _ in range(2):  # @P expands to more tokens
            text = _TOKEN.sub(lambda m: values[m.group(1)], text)
        return text


def parquet_target(host: EngineHostProcess) -> Target:
    truth = truth_of(host)
    return Target("parquet", "crm", "customers", "customer_id", "ssn", "phone", "org_id",
                  frozenset(truth.ids("crm.customers", ACME)), (GLOBEX, "globex.example.org"), host.state_dir)


def writable_target(host: EngineHostProcess) -> Target:
    hidden = tuple(r[4] for r in WPEOPLE if r[1] != ANALYST_DEPARTMENT)
    return Target("writable", "main", "wpeople", "id", "ssn", "email", "department",
                  frozenset(r[0] for r in WPEOPLE if r[1] == ANALYST_DEPARTMENT),
                  ("Legal", "Engineering", *hidden, *GLOBEX_ONLY_NAMES[:2]), host.state_dir)


# --- running statements over both protocols -------------------------------------------------------


@dataclass
class Outcome:
    """What one statement did: rows (and column names) or the error it raised."""

    sql: str
    rows: list[tuple] | None = None
    columns: list[str] = field(default_factory=list)
    status: str | None = None
    error: psycopg.Error | None = None

    @property
    def refused(self) -> bool:
        return self.error is not None

    def text(self) -> str:
        if self.error is not None:
            diag = self.error.diag
            return " ".join(str(x or "") for x in (self.error, diag.message_detail, diag.message_hint,
                                                   diag.context))
        return " ".join([*self.columns, *cells(self.rows or [])])


def execute(conn: psycopg.Connection, sql: str, protocol: str, params: tuple | None = None) -> Outcome:
    """Run `sql` over the simple query protocol (client-side parameters) or the extended one (Parse/Bind/Execute)."""
    try:
        cur = cursor(conn, sql, protocol, params)
        rows = cur.fetchall() if cur.description else []
        return Outcome(sql, rows, [c.name for c in cur.description or []], cur.statusmessage)
    except psycopg.Error as exc:
        return Outcome(sql, error=exc)


class Sessions:
    """One open connection per (host, person, protocol, options), reopened only if the server dropped it."""

    def __init__(self) -> None:
        self._open: dict[tuple, psycopg.Connection] = {}

    def get(self, host: EngineHostProcess, person: str | None, protocol: str = "simple",
            dialect: str | None = None, tag: str = "") -> psycopg.Connection:
        """`tag` asks for a connection of its own (for statements that change session state)."""
        key = (host.port, person, protocol, dialect, tag)
        conn = self._open.get(key)
        if conn is None or conn.closed or conn.broken:
            options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
            if dialect:
                options += f" -c hd.dialect={dialect}"
            dsn = host.demo_dsn(person, options=options) if person else host.dsn(options=options)
            conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
            self._open[key] = conn
        return conn

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


@pytest.fixture(scope="module")
def sessions() -> Iterator[Sessions]:
    opened = Sessions()
    yield opened
    opened.close()


# --- assertions -----------------------------------------------------------------------------------


def assert_clean_refusal(outcome: Outcome, leaks: Leaks) -> None:
    """A refusal is a clear SQLSTATE (never XX000) with an HD_ERR code, and its text reveals nothing."""
    error = outcome.error
    assert error is not None
    detail = error.diag.message_detail or ""
    assert error.sqlstate and error.sqlstate != "XX000", f"internal error for {outcome.sql!r}: {error}"
    assert detail.startswith("HD_ERR_"), f"no HD_ERR code for {outcome.sql!r}: {error.sqlstate} {error}"
    text = outcome.text()
    assert "Traceback" not in text
    leaked = leaks.found(text, outcome.sql)
    assert not leaked, f"{outcome.sql!r} refused with {error.sqlstate} {detail} but the error reveals {leaked[:5]}"


def assert_reveals_nothing(outcome: Outcome, leaks: Leaks, forbidden: Iterable[str] = ()) -> None:
    """Every returned cell and column name is free of protected values, other tenants' data and internals."""
    text = outcome.text()
    leaked = leaks.found(text, outcome.sql)
    low = text.lower()
    leaked += [f for f in forbidden if f.lower() in low and f.lower() not in outcome.sql.lower()]
    assert not leaked, f"{outcome.sql!r} returned {leaked[:5]}"


def assert_still_usable(conn: psycopg.Connection) -> None:
    assert not conn.closed, "the server closed the connection after a refusal"
    assert conn.execute("SELECT 1", prepare=False).fetchall() == [(1,)]


def visible_ids_of(cell: object) -> set[int]:
    return {int(x) for x in str(cell or "").split(",") if x.strip()}


# --- the writable host ----------------------------------------------------------------------------

_SHARED: dict[str, EngineHostProcess] = {}


def add_org_admin(host: EngineHostProcess, org_id: str, person: str) -> None:
    """An Admin of `org_id` with a test key in `<state>/demo-keys/<person>.key` (the demo has none for org_globex)."""
    from hd_core.adapters.sqlite_store import SqliteControlStore
    from hd_core.api_keys import ApiKeyHasher, issue_api_key
    from hd_core.models import KeyEnv, Role, User, UserStatus, utc_now
    from hd_core.permissions import ROLE_SCOPES

    user_id = f"usr_demo_{person.replace('-', '_')}"
    with SqliteControlStore(host.state_dir / "control.sqlite3") as store:
        if store.get_user(user_id) is None:
            store.put_user(User(user_id, org_id, f"{person}@demo.example.com", Role.ADMIN, UserStatus.ACTIVE,
                                None, None, utc_now()))
        plaintext, _ = issue_api_key(store, ApiKeyHasher(), org_id=org_id, user_id=user_id, env=KeyEnv.TEST,
                                     scopes=tuple(sorted(ROLE_SCOPES[Role.ADMIN])), name=f"key of {person}")
    (host.state_dir / "demo-keys" / f"{person}.key").write_text(plaintext + "\n")


def reset_writable_tables(host: EngineHostProcess) -> None:
    """Put `wpeople` and `wsink` back to their constants (as the Owner)."""
    with psycopg.connect(host.dsn(), autocommit=True) as owner:
        owner.execute("DELETE FROM wpeople")
        owner.execute("DELETE FROM wsink")
        owner.cursor().executemany("INSERT INTO wpeople VALUES (%s, %s, %s, %s, %s, %s)", WPEOPLE)
        owner.cursor().executemany("INSERT INTO wsink VALUES (%s, %s)", WSINK)


def owner_rows(host: EngineHostProcess, sql: str) -> list[tuple]:
    """Rows as org_acme's Owner (exempt from every mask and filter of the writable tables)."""
    with psycopg.connect(host.dsn(), autocommit=True) as owner:
        return owner.execute(sql).fetchall()


def globex_notes_now(host: EngineHostProcess) -> list[tuple]:
    """`globex_notes` as org_globex's Admin reads it (org_acme's Owner cannot see it at all)."""
    with psycopg.connect(host.demo_dsn(GLOBEX_ADMIN), autocommit=True) as admin:
        return sorted(admin.execute("SELECT * FROM globex_notes").fetchall())


def _install_writable_tables(host: EngineHostProcess) -> None:
    with psycopg.connect(host.dsn(), autocommit=True) as owner:
        owner.execute("CREATE TABLE wpeople (id INTEGER, department VARCHAR, ssn VARCHAR, email VARCHAR, "
                      "note VARCHAR, acme_kiwi INTEGER)")
        owner.execute("CREATE TABLE wsink (id INTEGER, v VARCHAR)")
    reset_writable_tables(host)
    add_org_admin(host, GLOBEX, GLOBEX_ADMIN)
    with psycopg.connect(host.demo_dsn(GLOBEX_ADMIN), autocommit=True) as globex:
        globex.execute("CREATE TABLE globex_notes (id INTEGER, zebra_note VARCHAR, zebra_ssn VARCHAR)")
        globex.cursor().executemany("INSERT INTO globex_notes VALUES (%s, %s, %s)", GLOBEX_NOTES)
    for document in WRITABLE_POLICIES:
        done = hd_policy(host, "add", "--json", json.dumps(document))
        assert done.returncode == 0, done.stderr
    with psycopg.connect(host.demo_dsn(ANALYST), autocommit=True) as analyst:
        eventually(lambda: analyst.execute("SELECT count(*), min(ssn), max(ssn), count(DISTINCT email) = 3, "
                                           "bool_and(length(email) = 64) FROM wpeople").fetchall()
                   == [(3, "***", "***", True, True)])


def shared_writable_host(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory) -> EngineHostProcess:
    """One host per test session with `wpeople`, `wsink` (org_acme) and `globex_notes` (org_globex), policies set."""
    if "host" not in _SHARED:
        host = start_engine_host(tmp_path_factory.mktemp("hd-governance"), "--demo", "--insecure-plaintext")
        request.config.add_cleanup(host.stop)
        _install_writable_tables(host)
        _SHARED["host"] = host
    return _SHARED["host"]
