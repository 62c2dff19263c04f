"""The part of a session's identity a governed plan can depend on, so sessions that differ only elsewhere share plans.

A plan is computed from a `Subject` and cached under that subject's attributes. Agent ids, agent
frameworks, departments and regions vary per client, but at plan time a policy snapshot reads them
only in these places (hd_core/policy_eval.py, Governor._table_policy):

- a mask rule limited to agents (`agent_ids`, `agent_frameworks`) compares them for equality;
- a PHI grant limited to one agent compares `agent_id` for equality;
- a row filter substitutes the placeholders it names (`{agent_id}`, `{department}`, ...).

So an agent id that no mask rule or PHI grant of the snapshot names, and no row filter reads, gives
the same plan as no agent id at all (each comparison is exact equality, false either way). A
framework is kept whenever any mask is limited to frameworks or a row filter reads it; a department
or region whenever a row filter reads it. `plan_subject` replaces every other value by None and the
plan is then *computed* from the replaced subject, not only keyed by it: two sessions can share a
plan only when the subject the plan was computed from is the same. ABAC deny rules, which read
these attributes and the source address, run at every execution against the real subject, not here.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from hd_core.errors import RowFilterInvalid
from hd_core.policies import ROW_FILTER_PLACEHOLDERS, PolicySnapshot
from hd_core.policy_eval import Subject
from hd_core.row_filters import parse_row_filter, placeholders


@dataclass(frozen=True)
class PolicyReads:
    """Which identity values one policy snapshot's plan-time rules compare or substitute."""

    agent_ids: frozenset[str]
    # Whether some mask is limited to agent frameworks: then every framework keys the plan (masks fold and
    # trim framework names; keying on all of them leaves nothing to get wrong about how).
    framework_masks: bool
    placeholders: frozenset[str]


def policy_reads(snapshot: PolicySnapshot) -> PolicyReads:
    """What `snapshot` reads of a subject at plan time; a row filter that does not parse counts as reading all."""
    agent_ids = {agent for rule in snapshot.masks for agent in rule.agent_ids}
    agent_ids.update(grant.agent_id for grant in snapshot.phi_grants if grant.agent_id is not None)
    framework_masks = any(rule.agent_frameworks for rule in snapshot.masks)
    used: set[str] = set()
    for rule in snapshot.row_filters:
        try:
            used.update(placeholders(parse_row_filter(rule.filter)))
        except RowFilterInvalid:
            used.update(ROW_FILTER_PLACEHOLDERS)
    return PolicyReads(frozenset(agent_ids), framework_masks, frozenset(used))


def plan_subject(subject: Subject, reads: PolicyReads) -> Subject:
    """`subject` with each agent/department/region value the snapshot's plan-time rules cannot see set to None.

    The source address is cleared too: only ABAC conditions read it, and those run at execution.
    """
    agent_id = subject.agent_id
    if agent_id is not None and agent_id not in reads.agent_ids and "agent_id" not in reads.placeholders:
        agent_id = None
    keep_framework = reads.framework_masks or "agent_framework" in reads.placeholders
    framework = subject.agent_framework if keep_framework else None
    department = subject.department if "department" in reads.placeholders else None
    region = subject.region if "region" in reads.placeholders else None
    return dataclasses.replace(subject, agent_id=agent_id, agent_framework=framework, department=department,
                               region=region, source_ip=None)


class PolicyReadsCache:
    """`policy_reads` of the current snapshot, computed once per snapshot object."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: PolicySnapshot | None = None
        self._reads = PolicyReads(frozenset(), False, frozenset())

    def reads(self, snapshot: PolicySnapshot) -> PolicyReads:
        with self._lock:
            if self._snapshot is snapshot:
                return self._reads
        reads = policy_reads(snapshot)
        with self._lock:
            self._snapshot, self._reads = snapshot, reads
        return reads
