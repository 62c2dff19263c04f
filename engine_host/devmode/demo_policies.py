"""Example governance for `hd dev --demo`: two tenants, a few people and agents, and the policies they meet.

The demo tables hold rows of two organisations (`org_acme`, `org_globex`) told apart by their
`org_id` column, so they are bound as shared tables with that tenant column: every session sees
its own organisation's rows only, whatever its role. On top of that:

- crm.customers: `ssn` fully masked, `card_number` shows the last 4, `phone` keyed-hashed,
  `email` shows the last 4 to people and is fully masked for agents; Owners and Admins are exempt.
- hr.employees: Analysts see their own department only; `salary` reads as NULL except for
  Owners/Admins; `ssn` fully masked.
- sales.leads (the one writable demo table): Analysts see, update and delete the leads of their own
  region only, and cannot insert or move a lead into another region (the write aborts).
- clinical.encounters: `patient_name` and `diagnosis` are tagged PHI (reading them unmasked needs a
  phi_access grant), `mrn` is tagged mrn and shows its last 4.
- ABAC: agents may not UPDATE or DELETE anything; agents of framework `untrusted` may not read
  clinical data at all.
- org_globex has a monthly credit limit and a 10,000-row cap per query.

Each demo person gets an API key, written once to `<state>/demo-keys/<name>.key` (mode 0600).
Everything is created once; later starts leave it as the user may have changed it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine_host.devmode.demo import create_writable_demo_table
from hd_core.api_keys import ApiKeyHasher, issue_api_key
from hd_core.models import KeyEnv, Organization, OrgStatus, Role, User, UserStatus, utc_now
from hd_core.permissions import ROLE_SCOPES, SCOPE_BUNDLES
from hd_core.policies import (
    AbacConditions,
    AbacPolicy,
    ColumnTag,
    MaskFunction,
    MaskRule,
    PiiType,
    PolicyObject,
    QuotaLimit,
    RowFilter,
    TableBinding,
)
from hd_core.ports import ControlStore

ACME = "org_acme"
GLOBEX = "org_globex"
DEMO_TABLES = ("crm.customers", "hr.employees", "sales.orders", "clinical.encounters", "sales.leads")
_CREATED_SETTING = "demo.policies_created"
ENGINE_DATABASE_FILE = "engine.duckdb"  # the engine's own database in the state directory (runtime/local.py)
_ADMINS = (Role.OWNER, Role.ADMIN)


@dataclass(frozen=True)
class DemoPerson:
    name: str
    org_id: str
    role: Role
    department: str | None
    region: str | None
    agent: bool = False


DEMO_PEOPLE = (
    DemoPerson("acme-analyst", ACME, Role.ANALYST, "Sales", "us-east"),
    DemoPerson("acme-admin", ACME, Role.ADMIN, None, None),
    DemoPerson("acme-agent", ACME, Role.SERVICE_ACCOUNT, "Support", "us-east", agent=True),
    DemoPerson("acme-auditor", ACME, Role.AUDITOR, None, None),
    DemoPerson("globex-analyst", GLOBEX, Role.ANALYST, "Engineering", "eu-west"),
)


def demo_policies() -> list[PolicyObject]:
    """The demo's policy objects (fixed ids, so re-creating them replaces rather than duplicates)."""
    objects: list[PolicyObject] = [
        TableBinding(f"tbl_demo_{t.replace('.', '_')}", t, tenant_column="org_id") for t in DEMO_TABLES
    ]
    for org in (ACME, GLOBEX):
        objects += [
            MaskRule(f"msk_{org}_cust_ssn", org, "crm.customers", "ssn", MaskFunction.FULL, exempt_roles=_ADMINS),
            MaskRule(f"msk_{org}_cust_card", org, "crm.customers", "card_number", MaskFunction.PARTIAL, 4,
                     exempt_roles=_ADMINS),
            MaskRule(f"msk_{org}_cust_phone", org, "crm.customers", "phone", MaskFunction.HASH, exempt_roles=_ADMINS),
            MaskRule(f"msk_{org}_cust_email", org, "crm.customers", "email", MaskFunction.PARTIAL, 4,
                     exempt_roles=_ADMINS),
            MaskRule(f"msk_{org}_cust_email_agents", org, "crm.customers", "email", MaskFunction.FULL,
                     exempt_roles=_ADMINS, agent_frameworks=("langchain", "crewai", "autogen", "openai", "custom")),
            MaskRule(f"msk_{org}_emp_ssn", org, "hr.employees", "ssn", MaskFunction.FULL, exempt_roles=_ADMINS),
            MaskRule(f"msk_{org}_emp_salary", org, "hr.employees", "salary", MaskFunction.NULL, exempt_roles=_ADMINS),
            MaskRule(f"msk_{org}_enc_mrn", org, "clinical.encounters", "mrn", MaskFunction.PARTIAL, 4),
            RowFilter(f"rls_{org}_emp_department", org, "hr.employees", "department = {department}",
                      exempt_roles=(*_ADMINS, Role.AUDITOR)),
            RowFilter(f"rls_{org}_leads_region", org, "sales.leads", "region = {region}",
                      exempt_roles=(*_ADMINS, Role.AUDITOR)),
            ColumnTag(f"tag_{org}_enc_patient", org, "clinical.encounters", "patient_name", PiiType.PHI),
            ColumnTag(f"tag_{org}_enc_diagnosis", org, "clinical.encounters", "diagnosis", PiiType.PHI),
            ColumnTag(f"tag_{org}_enc_mrn", org, "clinical.encounters", "mrn", PiiType.MRN),
            ColumnTag(f"tag_{org}_cust_ssn", org, "crm.customers", "ssn", PiiType.SSN),
            ColumnTag(f"tag_{org}_cust_email", org, "crm.customers", "email", PiiType.EMAIL),
            ColumnTag(f"tag_{org}_cust_card", org, "crm.customers", "card_number", PiiType.CARD),
            AbacPolicy(f"abac_{org}_agents_read_only", org, "agents are read-only", "deny",
                       actions=("update", "delete", "insert"), resources=("*",),
                       conditions=AbacConditions(agents_only=True),
                       reason="AI agents may read but never change data"),
            AbacPolicy(f"abac_{org}_untrusted_no_clinical", org, "no clinical data for untrusted agents", "deny",
                       actions=("*",), resources=("clinical.*",),
                       conditions=AbacConditions(agent_frameworks=("untrusted",)),
                       reason="clinical data is off limits to unvetted agent frameworks"),
        ]
    objects.append(QuotaLimit("quota_org_globex", GLOBEX, monthly_credits=10_000.0, max_rows_per_query=10_000))
    return objects


def install_demo(store: ControlStore, hasher: ApiKeyHasher, state_dir: Path) -> dict[str, Path]:
    """Create the demo organisations, people, keys and policies once; return each person's key file."""
    key_dir = state_dir / "demo-keys"
    files = {p.name: key_dir / f"{p.name}.key" for p in DEMO_PEOPLE}
    if store.get_setting(_CREATED_SETTING) is not None:
        return files
    key_dir.mkdir(mode=0o700, exist_ok=True)
    now = utc_now()
    for org_id, name in ((ACME, "Acme Corp (demo)"), (GLOBEX, "Globex (demo)")):
        if store.get_org(org_id) is None:
            store.put_org(Organization(org_id, name, OrgStatus.ACTIVE, now))
    for person in DEMO_PEOPLE:
        user_id = f"usr_demo_{person.name.replace('-', '_')}"
        if store.get_user(user_id) is None:
            store.put_user(User(user_id, person.org_id, f"{person.name}@demo.example.com", person.role,
                                UserStatus.ACTIVE, person.department, person.region, now))
        scopes = SCOPE_BUNDLES["agent"] if person.agent else ROLE_SCOPES[person.role]
        plaintext, _ = issue_api_key(store, hasher, org_id=person.org_id, user_id=user_id, env=KeyEnv.TEST,
                                     scopes=tuple(sorted(scopes)), name=f"demo key for {person.name}")
        _write_secret(files[person.name], plaintext + "\n")
    for obj in demo_policies():
        store.put_policy(obj)
    # Created with its policies and only then: a writable copy of both tenants' rows must never exist
    # without the tenant binding and row filter that govern it.
    create_writable_demo_table(state_dir / ENGINE_DATABASE_FILE)
    store.put_setting(_CREATED_SETTING, now.isoformat())
    return files


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
