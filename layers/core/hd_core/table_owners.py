"""Who owns each table: one organisation, recorded once, when the table comes into being.

A table's owner is its `TableBinding`. The engine host records it: the creator's organisation for
a table created over the wire (claimed before the CREATE runs), and the deployment's organisation
for tables registered from Parquet folders or an S3 prefix. Nothing else creates a binding, so a
name nobody has created cannot be claimed in advance, and a table that has an owner cannot be
taken by anyone else (changing a binding is `hd_core.policy_admin`'s, for the owner only).

The record is written compare-and-set against the policy version it was decided on, so two hosts
claiming the same new name at once cannot both win: the loser sees the winner's binding.
"""

from __future__ import annotations

from collections.abc import Iterable

from hd_core.errors import Conflict
from hd_core.models import new_id
from hd_core.policies import TableBinding
from hd_core.policy_eval import binding_for
from hd_core.ports import PolicyStore

# Each attempt loses only to another policy write landing in between; a few always suffice.
_ATTEMPTS = 8


def record_owner(store: PolicyStore, table: str, org_id: str) -> TableBinding:
    """The binding `table` has: an existing one, or one made now for `org_id` if it had none."""
    for _ in range(_ATTEMPTS):
        snapshot = store.policy_snapshot()
        existing = binding_for(snapshot, table)
        if existing is not None:
            return existing
        binding = TableBinding(binding_id=new_id("tbl"), table=table, org_id=org_id)
        try:
            store.put_policy(binding, if_version=snapshot.version)
        except Conflict:
            continue  # another policy write landed first: decide again on the new snapshot
        return binding
    raise Conflict(f"policies changed too often to record the owner of {table}; try again")


def record_registered_owners(store: PolicyStore, tables: Iterable[str], deployment_org_id: str) -> list[str]:
    """Give every registered table that has no owner yet the deployment's organisation; returns those tables."""
    bound = {binding.table for binding in store.policy_snapshot().table_bindings}
    recorded = []
    for table in sorted(set(tables) - bound):
        if record_owner(store, table, deployment_org_id).org_id == deployment_org_id:
            recorded.append(table)
    return recorded

