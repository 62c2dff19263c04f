"""The `auth.lockout` IAM event: which chain a lockout belongs to, and what it records.

A lockout of a real account or key goes to its organisation's chain, targeting the user or key id.
One of a name nobody holds goes to the deployment chain under the subject's store key: a
hashed email, because what was typed into the email box may be a user's password.
"""

from __future__ import annotations

from hd_core.auth_throttle import LOGIN, Lockout
from hd_core.iam_audit import IamAuditTrail
from hd_core.iam_events import SYSTEM_ACTOR, IamEventType
from hd_core.models import IamEvent, new_id
from hd_core.ports import ControlStore
from hd_core.wipe import DEPLOYMENT_CHAIN_ID


def record_lockout(store: ControlStore, trail: IamAuditTrail, lockout: Lockout) -> IamEvent:
    """Append the `auth.lockout` event of `lockout` to the chain it belongs to."""
    chain_id, target = _attribution(store, lockout)
    return trail.record(
        chain_id,
        IamEventType.AUTH_LOCKOUT,
        actor=SYSTEM_ACTOR,
        target=target,
        before=None,
        after={
            "subject": lockout.subject.kind,
            "failures": lockout.failures,
            "locked_at": lockout.at,
            "locked_until": lockout.until,
            "source_ip": lockout.source_ip,
        },
        # A lockout happens inside a sign-in or a Postgres connection, not an administrative request.
        request_id=new_id("lockout"),
    )


def _attribution(store: ControlStore, lockout: Lockout) -> tuple[str, str]:
    """(chain id, target) of a lockout: the owning organisation's, or the deployment's for an unknown name."""
    subject = lockout.subject
    if subject.kind == LOGIN:
        user = store.get_user_by_email(subject.name)
        if user is not None:
            return user.org_id, user.user_id
    else:
        record = store.get_api_key(subject.name)
        if record is not None:
            return record.org_id, record.key_id
    return DEPLOYMENT_CHAIN_ID, subject.key
