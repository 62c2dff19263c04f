"""HIPAA accounting of disclosures: what a query audit record says about the PHI it returned, and the lookup by patient.

Every query audit record lists the PHI-tagged columns the statement read unmasked when it returned
rows (`phi_columns_returned`: a column read anywhere in the statement counts, so the list may
over-report and never under-reports) and, in `phi_disclosure`, the grants it ran under and which
patients it disclosed, for tables that declare a patient-key column (a column tag with
`patient_key`). Patients are recorded only as keyed HMAC-SHA256 values of their key, never raw:
the audit trail is read by auditors and kept for years.

Which patients a result disclosed is known exactly when the patient key is itself a result
column (engine_host/pipeline/governance/phi_outputs.py); the record then carries the HMACs of the
distinct keys it returned, up to `MAX_PATIENT_KEYS` per record. Beyond that bound (a bulk
extract), or when the key is not in the result (an aggregate, a computed column), the record says
`over_limit` or `not_traceable` instead, and a lookup reports such a statement as a *possible*
disclosure of every patient of its tables in the window: an accounting must not miss a disclosure,
and re-running the statement later would read today's data, not what was returned then. The
redacted statement text in the same record shows an investigator what was asked.

The HMAC key is derived from the deployment's live hash-mask key (HMAC of a fixed label under it,
so neither key reveals the other): every engine host holds that key already, and the audit API
unwraps it with the key provider.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from hd_core.errors import InvalidRequest
from hd_core.ports import KeyProvider, QueryAuditArchive, SettingsStore

# Distinct patients one record may list; a result disclosing more is recorded as `over_limit`.
MAX_PATIENT_KEYS = 1000
MAX_LOOKUP_DAYS = 366
MAX_PATIENT_KEY_LENGTH = 256
_KEY_LABEL = b"hd-phi-disclosure-key-v1"
# The live hash-mask key as engine_host/engine/masking.py stores it (wrapped, or legacy plaintext in hd dev).
_MASK_KEY_WRAPPED = "mask_hash_key_wrapped.live"
_MASK_KEY_LEGACY = "mask_hash_key.live"
_MASK_KEY_CONTEXT = {"purpose": "hd-mask-hash", "env": "live"}

PatientKeys = Literal["recorded", "over_limit", "not_traceable", "no_patient_key"]
Match = Literal["recorded", "possible"]


def disclosure_key(live_mask_key: bytes) -> bytes:
    """The HMAC key of patient keys, derived from the deployment's live hash-mask key."""
    return hmac.new(live_mask_key, _KEY_LABEL, hashlib.sha256).digest()


def stored_disclosure_key(store: SettingsStore, keys: KeyProvider) -> bytes | None:
    """The disclosure key from the stored (wrapped) live mask key; None before any engine host made one."""
    legacy = store.get_setting(_MASK_KEY_LEGACY)
    if legacy is not None:
        return disclosure_key(base64.b64decode(legacy, validate=True))
    wrapped = store.get_setting(_MASK_KEY_WRAPPED)
    if wrapped is None:
        return None
    return disclosure_key(keys.decrypt_data_key(base64.b64decode(wrapped, validate=True), _MASK_KEY_CONTEXT))


def patient_key_hmac(key: bytes, patient_key: str) -> str:
    """The keyed HMAC-SHA256 hex a record stores for one patient key (its text as the result returned it)."""
    return hmac.new(key, patient_key.encode(), hashlib.sha256).hexdigest()


@dataclass
class DisclosedPatients:
    """The distinct patient keys a statement's result carried so far, as HMACs, bounded by `MAX_PATIENT_KEYS`."""

    key: bytes = field(repr=False)
    hmacs: set[str] = field(default_factory=set)
    over_limit: bool = False
    untraceable: bool = False  # a key value could not be read as text: which patients is unknown

    def add(self, values: Iterable[str]) -> None:
        """Take in patient keys seen in the result (raw values are hashed here and not kept)."""
        if self.over_limit:
            return
        for value in values:
            self.hmacs.add(patient_key_hmac(self.key, value))
            if len(self.hmacs) > MAX_PATIENT_KEYS:
                self.over_limit = True
                self.hmacs.clear()
                return


def disclosure_record(*, grant_ids: tuple[tuple[str, ...], tuple[str, ...]], traceable: bool, has_patient_key: bool,
                      patients: DisclosedPatients | None) -> dict[str, object]:
    """The record's `phi_disclosure` object for a statement that returned unmasked PHI."""
    status: PatientKeys
    if not has_patient_key:
        status = "no_patient_key"
    elif not traceable or patients is None or patients.untraceable:
        status = "not_traceable"
    elif patients.over_limit:
        status = "over_limit"
    else:
        status = "recorded"
    hmacs = sorted(patients.hmacs) if status == "recorded" and patients is not None else []
    return {"phi_grant_ids": list(grant_ids[0]), "jit_grant_ids": list(grant_ids[1]), "patient_keys": status,
            "patient_key_hmacs": hmacs, "patient_count": len(hmacs) if status == "recorded" else None}


# --- the lookup --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhiDisclosure:
    """One statement that disclosed (or may have disclosed) a patient's PHI: who, when, under which grant."""

    query_id: str
    ts: str
    user_id: str
    role: str | None
    key_id: str | None
    agent_id: str | None
    source_ip: str | None
    phi_grant_ids: list[str]
    jit_grant_ids: list[str]
    phi_columns: list[str]
    rows_returned: int
    match: Match
    reason: str

    def to_dict(self) -> dict[str, object]:
        """The JSON shape the audit API returns."""
        return dict(self.__dict__)


def find_phi_disclosures(archive: QueryAuditArchive, key: bytes | None, *, org_id: str, patient_key: str,
                         start: date, end: date) -> list[PhiDisclosure]:
    """Every statement of `org_id` in `start`..`end` that disclosed this patient's PHI, oldest first.

    `recorded` matches carry the patient's HMAC; `possible` ones returned PHI of a table with a
    patient key without recording which patients (over the bound, or not traceable).
    """
    if not patient_key or len(patient_key) > MAX_PATIENT_KEY_LENGTH:
        raise InvalidRequest(f"patient_key must be 1-{MAX_PATIENT_KEY_LENGTH} characters")
    if end < start:
        raise InvalidRequest(f"end ({end}) is before start ({start})")
    if (end - start).days + 1 > MAX_LOOKUP_DAYS:
        raise InvalidRequest(f"a disclosure lookup covers at most {MAX_LOOKUP_DAYS} days; split the range")
    wanted = patient_key_hmac(key, patient_key) if key is not None else None
    found: dict[str, PhiDisclosure] = {}
    day = start
    while day <= end:
        for record in archive.records(day):
            if record.get("org_id") != org_id:
                continue
            disclosure = _disclosure_of(record, wanted)
            # A streamed result has a first record and a completion record: the later one is complete.
            if disclosure is not None and (disclosure.query_id not in found
                                           or found[disclosure.query_id].ts <= disclosure.ts):
                found[disclosure.query_id] = disclosure
        day += timedelta(days=1)
    return sorted(found.values(), key=lambda d: (d.ts, d.query_id))


def lookup_phi_disclosures(archive: QueryAuditArchive, store: SettingsStore, keys: KeyProvider, *, org_id: str,
                           patient_key: str, start: date, end: date) -> list[PhiDisclosure]:
    """`find_phi_disclosures` with the deployment's disclosure key (none yet: only possible matches exist)."""
    return find_phi_disclosures(archive, stored_disclosure_key(store, keys), org_id=org_id, patient_key=patient_key,
                                start=start, end=end)


def _disclosure_of(record: Mapping[str, object], wanted: str | None) -> PhiDisclosure | None:
    columns = record.get("phi_columns_returned")
    details = record.get("phi_disclosure")
    if not isinstance(columns, list) or not columns or not isinstance(details, dict):
        return None
    status = details.get("patient_keys")
    hmacs = details.get("patient_key_hmacs")
    if status == "recorded" and isinstance(hmacs, list):
        if wanted is None or wanted not in hmacs:
            return None
        match: Match = "recorded"
        reason = "the patient's key is among those the result returned"
    elif status in ("over_limit", "not_traceable"):
        match = "possible"
        reason = ("the result returned more patients than a record lists" if status == "over_limit"
                  else "the result did not carry the patient key, so which patients it disclosed is unknown")
    else:
        return None  # no declared patient key: the record cannot be about a patient
    return PhiDisclosure(
        query_id=str(record.get("query_id")), ts=str(record.get("ts")), user_id=str(record.get("user_id")),
        role=_text(record.get("role")), key_id=_text(record.get("key_id")), agent_id=_text(record.get("agent_id")),
        source_ip=_text(record.get("source_ip")), phi_grant_ids=_texts(details.get("phi_grant_ids")),
        jit_grant_ids=_texts(details.get("jit_grant_ids")), phi_columns=_texts(columns),
        rows_returned=int(record.get("rows_returned") or 0), match=match, reason=reason,  # type: ignore[call-overload]
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _texts(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
