"""Whether KMS rotates the deployment's customer-managed keys (issue 19): checked by the daily lifecycle job.

Symmetric customer-managed keys are expected to rotate automatically (yearly, set by the CDK app);
someone could turn that off by hand. The daily job asks KMS for each configured key's rotation
status (`KeyRotationInspector`, GetKeyRotationStatus in AWS), records the answers in the control store
(setting `kms.rotation_status`, with the time), and the job's metric counts the keys with rotation
off, which alarms. Asymmetric keys cannot rotate in KMS: the JWT signing keys rotate on our own
schedule (hd_core.signing_keys), so they are recorded as such, never as "off". A key KMS cannot
describe is recorded with the reason and counted as not rotating: a check that cannot see a key
must not pass it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from hd_core.iam_audit import format_audit_time
from hd_core.ports import SettingsStore

ROTATION_STATUS_SETTING = "kms.rotation_status"


@dataclass(frozen=True)
class KeyRotationStatus:
    """What KMS says about one key's rotation."""

    key_id: str
    # True / False from GetKeyRotationStatus; None where KMS cannot rotate the key (asymmetric) or was not asked.
    rotation_enabled: bool | None
    key_spec: str | None = None
    rotation_period_days: int | None = None
    note: str = ""  # why rotation_enabled is None, or what went wrong

    @property
    def needs_attention(self) -> bool:
        """Rotation is off, or the key could not be checked (anything but on, or asymmetric by design)."""
        if self.rotation_enabled is None:
            return self.key_spec is None or self.key_spec == "SYMMETRIC_DEFAULT"
        return not self.rotation_enabled

    def as_dict(self) -> dict[str, object]:
        return {"key_id": self.key_id, "rotation_enabled": self.rotation_enabled, "key_spec": self.key_spec,
                "rotation_period_days": self.rotation_period_days, "note": self.note,
                "needs_attention": self.needs_attention}


class KeyRotationInspector(Protocol):
    """Asks the key service about one key's rotation; never raises (a failure is a status with a note)."""

    def rotation_status(self, key_id: str) -> KeyRotationStatus:
        ...


def check_key_rotation(
    inspector: KeyRotationInspector, key_ids: Iterable[str], store: SettingsStore, now: datetime,
) -> list[KeyRotationStatus]:
    """Ask about every key in `key_ids`, record the answers with `now` in the store, return them."""
    statuses = [inspector.rotation_status(key_id) for key_id in dict.fromkeys(key_ids) if key_id]
    store.put_setting(ROTATION_STATUS_SETTING, json.dumps(
        {"checked_at": format_audit_time(now), "keys": [status.as_dict() for status in statuses]}, sort_keys=True))
    return statuses
