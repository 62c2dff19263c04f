"""PHI accounting: the patient-key declaration, the bounded HMAC set, and the lookup over stored records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest

from hd_core.errors import InvalidRequest, PolicyInvalid
from hd_core.phi_disclosures import (
    MAX_PATIENT_KEYS,
    DisclosedPatients,
    disclosure_key,
    disclosure_record,
    find_phi_disclosures,
    patient_key_hmac,
)
from hd_core.policies import ColumnTag, PiiType, PolicySnapshot
from hd_core.policy_eval import patient_key_column
from hd_core.policy_validation import validate_policy

KEY = disclosure_key(b"k" * 32)
DAY = date(2026, 3, 1)


def test_a_table_declares_one_patient_key_column() -> None:
    first = ColumnTag("tag_a", "org_a", "clinical.visits", "mrn", PiiType.MRN, patient_key=True)
    snapshot = PolicySnapshot(1, column_tags=(first,))
    assert patient_key_column(snapshot, "org_a", "clinical.visits") == "mrn"
    assert patient_key_column(snapshot, "org_b", "clinical.visits") is None
    second = ColumnTag("tag_b", "org_a", "clinical.visits", "patient_id", PiiType.MRN, patient_key=True)
    with pytest.raises(PolicyInvalid, match="one patient-key column"):
        validate_policy(second, snapshot)
    validate_policy(ColumnTag("tag_c", "org_b", "clinical.visits", "patient_id", PiiType.MRN, patient_key=True),
                    snapshot)  # another organisation's declaration is its own


def test_the_patient_set_keeps_hmacs_only_and_gives_up_beyond_the_bound() -> None:
    patients = DisclosedPatients(KEY)
    patients.add(["p1", "p2", "p1"])
    assert patients.hmacs == {patient_key_hmac(KEY, "p1"), patient_key_hmac(KEY, "p2")}
    patients.add(f"x{n}" for n in range(MAX_PATIENT_KEYS))
    assert patients.over_limit and not patients.hmacs
    record = disclosure_record(grant_ids=(("phi_1",), ()), traceable=True, has_patient_key=True, patients=patients)
    assert record["patient_keys"] == "over_limit" and record["patient_key_hmacs"] == []


class _Archive:
    def __init__(self, records: list[dict[str, object]]) -> None:
        self._records = records

    def records(self, day: date) -> Iterator[dict[str, object]]:
        yield from (r for r in self._records if str(r["ts"]).startswith(day.isoformat()))


def _record(query_id: str, ts: str, disclosure: dict[str, object] | None, org_id: str = "org_a") -> dict[str, object]:
    return {"query_id": query_id, "ts": ts, "org_id": org_id, "user_id": "usr_1", "role": "Analyst",
            "rows_returned": 2, "phi_columns_returned": ["clinical.visits.diagnosis"] if disclosure else [],
            "phi_disclosure": disclosure}


def _recorded(*patients: str) -> dict[str, object]:
    seen = DisclosedPatients(KEY)
    seen.add(patients)
    return disclosure_record(grant_ids=(("phi_1",), ("jit_1",)), traceable=True, has_patient_key=True,
                             patients=seen)


def test_the_lookup_finds_recorded_and_possible_disclosures_of_one_organisation() -> None:
    archive = _Archive([
        _record("q1", "2026-03-01T10:00:00.000Z", _recorded("p1", "p2")),
        _record("q2", "2026-03-01T11:00:00.000Z", _recorded("p3")),
        _record("q3", "2026-03-01T12:00:00.000Z", disclosure_record(
            grant_ids=((), ()), traceable=False, has_patient_key=True, patients=None)),
        _record("q4", "2026-03-01T13:00:00.000Z", _recorded("p1"), org_id="org_b"),
        _record("q5", "2026-03-01T14:00:00.000Z", None),
    ])
    found = find_phi_disclosures(archive, KEY, org_id="org_a", patient_key="p1", start=DAY, end=DAY)
    assert [(d.query_id, d.match) for d in found] == [("q1", "recorded"), ("q3", "possible")]
    assert found[0].phi_grant_ids == ["phi_1"] and found[0].jit_grant_ids == ["jit_1"]


def test_a_lookup_range_is_bounded() -> None:
    with pytest.raises(InvalidRequest):
        find_phi_disclosures(_Archive([]), KEY, org_id="org_a", patient_key="p1", start=DAY, end=date(2027, 6, 1))
