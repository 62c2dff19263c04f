"""Each organisation's month-to-date credits against its monthly credit limit, for the quota gauges."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from engine_host.pipeline.policy_state import PolicyState
from hd_core import policy_eval
from hd_core.metering import UsageMeter
from hd_core.models import utc_now
from hd_core.policies import PolicySnapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrgQuotaUse:
    """Credits one organisation used this UTC month, and its monthly limit."""

    org_id: str
    used_credits: float
    limit_credits: float

    @property
    def ratio(self) -> float:
        """used / limit; a zero limit is fully used from the start (and overrun by any use)."""
        if self.limit_credits > 0:
            return self.used_credits / self.limit_credits
        return 1.0 if self.used_credits <= 0 else float("inf")


def quota_utilisation(snapshot: PolicySnapshot, meter: UsageMeter, now: datetime) -> list[OrgQuotaUse]:
    """Every organisation with a monthly credit limit in `snapshot`, ordered by org id.

    Uses the figure the quota check itself uses (`UsageMeter.month_to_date_credits`). An organisation
    whose usage cannot be read right now is left out (and logged) rather than reported as zero.
    """
    uses = []
    for org_id in sorted({quota.org_id for quota in snapshot.quotas}):
        quota = policy_eval.quota_for(snapshot, org_id)
        if quota is None or quota.monthly_credits is None:
            continue
        try:
            used = meter.month_to_date_credits(org_id, now)
        except Exception:  # the store is unreachable: no figure is better than a wrong one
            log.warning("month-to-date credits of %s could not be read", org_id, exc_info=True)
            continue
        uses.append(OrgQuotaUse(org_id, used, quota.monthly_credits))
    return uses


def quota_reader(policies: PolicyState, meter: UsageMeter,
                 now: Callable[[], datetime] = utc_now) -> Callable[[], list[OrgQuotaUse]]:
    """A `HostMetrics.bind_quota` callback: the current snapshot's utilisation (none until it is loaded)."""
    def read() -> list[OrgQuotaUse]:
        return quota_utilisation(policies.snapshot, meter, now()) if policies.ready else []

    return read
