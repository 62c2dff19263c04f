"""The kinds of change recorded in the hash-chained IAM audit trail: the seeds' 27, two instance events, JIT revocation.

The two instance events (`instance.wiped`, `instance.wipe_failed`) record the termination wipe hook's
cryptographic erase of an engine host's cache; `jit.revoked` ends an approved elevation before its expiry.

Every event carries the actor (a user id, or `system` for scheduled work), the target it changed,
before and after values (None where the target did not exist or no longer exists), the time and
the request id of the API call that caused it.
"""

from __future__ import annotations

from enum import StrEnum


class IamEventType(StrEnum):
    """What kind of administrative change an IAM audit event records."""

    # Organisations and environments
    ORG_CREATED = "org.created"
    ORG_SUSPENDED = "org.suspended"
    ORG_REACTIVATED = "org.reactivated"
    ORG_MFA_POLICY_CHANGED = "org.mfa_policy_changed"
    ENVIRONMENT_CREATED = "environment.created"
    # Users and roles
    USER_INVITED = "user.invited"
    USER_SUSPENDED = "user.suspended"
    USER_REACTIVATED = "user.reactivated"
    USER_REMOVED = "user.removed"
    USER_ROLE_CHANGED = "user.role_changed"
    USER_PASSWORD_SET = "user.password_set"  # noqa: S105 (an event name, not a password)
    USER_PASSWORD_RESET = "user.password_reset"  # noqa: S105 - an administrator set it; must change at login
    # SSO, MFA and federation
    USER_MFA_ENROLLED = "user.mfa_enrolled"
    USER_MFA_RESET = "user.mfa_reset"
    FEDERATED_IDENTITY_LINKED = "federation.identity_linked"
    FEDERATED_IDENTITY_UNLINKED = "federation.identity_unlinked"
    # API keys
    API_KEY_CREATED = "api_key.created"
    API_KEY_ROTATED = "api_key.rotated"
    API_KEY_REVOKED = "api_key.revoked"
    API_KEY_EXPIRED = "api_key.expired"
    API_KEY_EXPIRING = "api_key.expiring"  # a warning 7, 3 or 1 days before an expiry or a grace period's end
    API_KEY_ROTATION_DUE = "api_key.rotation_due"  # its rotation policy is due and it has no delivery target
    API_KEY_LIFECYCLE_CHANGED = "api_key.lifecycle_changed"  # its rotation policy or delivery target changed
    # Governance policies (masks, row filters, ABAC, column tags, PHI grants, bindings)
    POLICY_CREATED = "policy.created"
    POLICY_UPDATED = "policy.updated"
    POLICY_DELETED = "policy.deleted"
    # Just-in-time elevation
    JIT_REQUESTED = "jit.requested"
    JIT_APPROVED = "jit.approved"
    JIT_DENIED = "jit.denied"
    JIT_REVOKED = "jit.revoked"
    # Quotas
    QUOTA_CHANGED = "quota.changed"
    # Security signals
    REFRESH_TOKEN_REUSED = "auth.refresh_token_reused"  # noqa: S105 (an event name, not a token)
    # Brute-force throttling locked an account's sign-in or an API key id (once per lockout, not per attempt)
    AUTH_LOCKOUT = "auth.lockout"
    # Webhook endpoints (issue 19); their secrets are never part of the event
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_DELETED = "webhook.deleted"
    # An auditor exported a window of query audit records (issue 22): who, which environment, range and filters
    AUDIT_EXPORTED = "audit.exported"
    # GDPR right to erasure: the event carries the subject's HMAC, never its id
    FORGET_REQUESTED = "forget.requested"
    FORGET_COMPLETED = "forget.completed"
    FORGET_FAILED = "forget.failed"
    FORGET_RETRIED = "forget.retried"  # a caller asked a failed request to run again
    # Engine host lifecycle (the termination wipe hook)
    INSTANCE_WIPED = "instance.wiped"
    INSTANCE_WIPE_FAILED = "instance.wipe_failed"
    # Signing keys on their schedule (issue 19), on the deployment chain: a new current key, and the old
    # one disabled (its deletion scheduled) once its tokens have expired, then deleted.
    SIGNING_KEY_ROTATED = "signing_key.rotated"
    SIGNING_KEY_DISABLED = "signing_key.disabled"
    SIGNING_KEY_DELETED = "signing_key.deleted"
    # A new IAM checkpoint key: its public key, recorded here and signed by the key in force (the verifier's proof)
    CHECKPOINT_KEY_ADDED = "signing_key.checkpoint_key_added"


SYSTEM_ACTOR = "system"
