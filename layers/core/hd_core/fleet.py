"""Fleet membership: the control plane's side of an engine host's heartbeat.

A heartbeat is answered only for a caller that AWS itself vouches for. The fleet function sits behind
API Gateway with IAM authorisation, so the caller's ARN comes from a verified SigV4 signature; an engine
host signs with its instance role, whose session name EC2 sets to the instance id. A caller that is not
that role, or whose session is not the host it reports for, is refused outright (`FleetCallerRejected`,
403); a request with no AWS identity at all was never authenticated (`FleetIdentityMissing`, 401).

For an authenticated host the answer is a verdict, positive or negative. EC2 supplies the facts the
host cannot forge: the instance exists, is pending or running, belongs to the fleet's Auto Scaling
group, and its account, region and launch time give the environment fingerprint we expect from it.

A positive verdict also records the host in the fleet registry (`accept_heartbeat`): the hosts that are
live, which a GDPR forget request waits for (hd_core/erasure_fleet.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hd_core.erasure_fleet import record_heartbeat
from hd_core.erasure_models import FleetErasureStore
from hd_core.errors import AuthenticationFailed, Forbidden, HdError
from hd_core.heartbeat import HeartbeatReport, HeartbeatVerdict, environment_fingerprint, evaluate_report
from hd_core.models import OrgStatus
from hd_core.ports import OrgStore

INSTANCE_ID_PATTERN = r"^i-[0-9a-f]{8,17}$"
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"
ASG_NAME_TAG = "aws:autoscaling:groupName"
LIVE_STATES = frozenset({"pending", "running"})

_ROLE_ARN = re.compile(r"^arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role/(?:[^/]+/)*(?P<name>[^/]+)$")
# An assumed-role ARN carries no role path: only the role's name and the session name.
_SESSION_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<name>[^/]+)/(?P<session>[^/]+)$"
)
_SHA256_HEX = re.compile(SHA256_HEX_PATTERN)


class FleetIdentityMissing(AuthenticationFailed):
    """The heartbeat carries no AWS identity: it was not SigV4-signed, or the route lacks IAM authorisation."""

    code = "HD_ERR_FLEET_IDENTITY_MISSING"
    generic_message = "the request carries no AWS identity: sign it with the engine host's instance role (SigV4)"

    def __init__(self, reason: str = "no requestContext.identity.userArn; is the route deployed with AWS_IAM?") -> None:
        super().__init__(reason)


class FleetCallerRejected(Forbidden):
    """The heartbeat's caller is not the fleet's instance role speaking for the host it reports on."""

    code = "HD_ERR_FLEET_CALLER_REJECTED"


class FleetLookupUnavailable(HdError):
    """EC2 could not be asked about an instance (throttling, an outage, missing permissions); worth a retry."""

    code = "HD_ERR_FLEET_LOOKUP_UNAVAILABLE"


@dataclass(frozen=True, kw_only=True)
class FleetInstance:
    """What EC2 says about one instance: the facts an environment fingerprint is computed from."""

    instance_id: str
    account_id: str  # the reservation's OwnerId
    region: str
    state: str  # EC2's state name: pending, running, stopping, stopped, shutting-down, terminated
    launch_time: datetime
    asg_name: str | None  # the aws:autoscaling:groupName tag, None when the instance has none


class FleetMembership(Protocol):
    """Port: look an instance up in this account and region."""

    def describe_instance(self, instance_id: str) -> FleetInstance | None:
        """The instance, or None if EC2 does not know it; raises `FleetLookupUnavailable` if EC2 cannot answer."""
        ...


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """What the control plane is configured to accept. Empty values match nothing (fail closed)."""

    role_arn: str
    asg_name: str
    allowed_code_hashes: frozenset[str]
    org_id: str  # the organisation this fleet serves: an instance cannot report for another one


def code_hash_allow_list(text: str) -> frozenset[str]:
    """The approved code hashes from a comma-separated list; entries that are not SHA-256 hex are dropped."""
    entries = (entry.strip().lower() for entry in text.split(","))
    return frozenset(entry for entry in entries if _SHA256_HEX.match(entry))


def verify_caller(caller_arn: str | None, *, fleet_role_arn: str, host_id: str) -> None:
    """Raise unless the caller is the fleet role's session for instance `host_id`.

    `FleetIdentityMissing` when there is no caller at all, `FleetCallerRejected` for any other caller.
    """
    if not caller_arn:
        raise FleetIdentityMissing()
    role = _ROLE_ARN.match(fleet_role_arn)
    if role is None:
        # Misconfiguration must not open the door: no caller can match a role that is not set.
        raise FleetCallerRejected("no engine host role is configured for this fleet; no host can be accepted")
    session = _SESSION_ARN.match(caller_arn)
    same_role = session is not None and all(
        session[part] == role[part] for part in ("partition", "account", "name")
    )
    if session is None or not same_role:
        raise FleetCallerRejected("the caller is not the engine hosts' instance role")
    if session["session"] != host_id:
        raise FleetCallerRejected("the caller's role session is not the instance named in host_id")


def fleet_fingerprint(org_id: str, instance: FleetInstance) -> str:
    """The environment fingerprint an honest host of `org_id` on this instance reports."""
    # EC2 reports launch times in whole seconds; the host truncates too, so sub-second noise cannot differ.
    launch_time = instance.launch_time.replace(microsecond=0)
    return environment_fingerprint(org_id, instance.instance_id, instance.account_id, instance.region, launch_time)


def membership_problem(instance: FleetInstance | None, host_id: str, asg_name: str) -> str | None:
    """Why the instance is not a live member of the fleet's Auto Scaling group, or None if it is."""
    if instance is None:
        return f"instance {host_id} does not exist in this account and region"
    if instance.state not in LIVE_STATES:
        return f"instance {host_id} is {instance.state}, not pending or running"
    if not asg_name or instance.asg_name != asg_name:
        return f"instance {host_id} is not a member of the engine fleet's Auto Scaling group"
    return None


def judge_heartbeat(
    report: HeartbeatReport,
    *,
    caller_arn: str | None,
    fleet: FleetConfig,
    membership: FleetMembership,
    store: OrgStore,
) -> HeartbeatVerdict:
    """The verdict on one heartbeat; a wrong caller raises (see `verify_caller`) before anything is looked up."""
    verify_caller(caller_arn, fleet_role_arn=fleet.role_arn, host_id=report.host_id)
    instance = membership.describe_instance(report.host_id)
    problem = membership_problem(instance, report.host_id, fleet.asg_name)
    if problem is None and report.org_id != fleet.org_id:
        problem = f"host {report.host_id} reports organisation {report.org_id!r}; this fleet serves {fleet.org_id!r}"
    expected = {fleet_fingerprint(report.org_id, instance)} if instance is not None and problem is None else set()
    org = store.get_org(report.org_id)
    verdict = evaluate_report(
        report,
        expected_fingerprints=expected,
        allowed_code_hashes=fleet.allowed_code_hashes,
        org_active=org is not None and org.status == OrgStatus.ACTIVE,
    )
    if problem is None:
        return verdict
    return HeartbeatVerdict(allowed=False, org_active=verdict.org_active, reason=f"{problem}; {verdict.reason}")


def accept_heartbeat(
    report: HeartbeatReport,
    *,
    caller_arn: str | None,
    fleet: FleetConfig,
    membership: FleetMembership,
    store: Any,  # OrgStore + FleetErasureStore
    at: datetime,
    heartbeat_seconds: int,
) -> HeartbeatVerdict:
    """`judge_heartbeat`, and for a positive verdict the host's entry in the fleet registry, seen `at`.

    A registry write that fails raises (the host retries its heartbeat): a host serving unregistered would
    not be waited for by a forget request.
    """
    verdict = judge_heartbeat(report, caller_arn=caller_arn, fleet=fleet, membership=membership, store=store)
    if verdict.positive:
        registry: FleetErasureStore = store
        record_heartbeat(registry, org_id=report.org_id, host_id=report.host_id, at=at,
                         heartbeat_seconds=heartbeat_seconds)
    return verdict
