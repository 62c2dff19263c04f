"""Fleet Lambda: an engine host's heartbeat, answered with whether the host may keep serving.

Deployed behind API Gateway with AWS_IAM authorisation: the caller is the SigV4-verified ARN in
`requestContext.identity.userArn`, never anything the body says. No identity is a 401 and a wrong
caller a 403; for the right one, a negative verdict is an answer (200), not an error, and is logged
with its reason. A positive one records the host as live in the fleet registry (GDPR erasure of the
hosts' writable tables waits for every live host).
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from pydantic import AwareDatetime, BaseModel, Field

from functions.shared.http import build_app, documented, error_response, request_id
from functions.shared.lambda_entry import function_logger, lambda_entry
from functions.shared.wiring import services
from hd_core import fleet
from hd_core.client_values import ID_PATTERN
from hd_core.control_settings import settings
from hd_core.heartbeat import HeartbeatReport
from hd_core.models import utc_now

SERVICE = "hd-fleet"

router = Router()
logger = function_logger(SERVICE)


class HeartbeatIn(BaseModel):
    """One heartbeat report, as an engine host sends it."""

    org_id: str = Field(pattern=ID_PATTERN)
    host_id: str = Field(pattern=fleet.INSTANCE_ID_PATTERN, description="The reporting host's EC2 instance id")
    fingerprint: str = Field(pattern=fleet.SHA256_HEX_PATTERN, description="SHA-256 hex of the environment")
    code_hash: str = Field(pattern=fleet.SHA256_HEX_PATTERN, description="SHA-256 hex of the engine code package")
    sent_at: AwareDatetime


class VerdictOut(BaseModel):
    """Whether the host may keep serving; `allowed` and `org_active` must both be true for that."""

    allowed: bool
    org_active: bool
    reason: str
    checked_at: datetime
    next_heartbeat_seconds: int


@lru_cache(maxsize=1)
def fleet_membership() -> fleet.FleetMembership:
    """The EC2 adapter, built on first use and kept for the container's life."""
    # boto3 is imported only here, like the rest of the AWS wiring: routes that never run pay nothing.
    import boto3

    from hd_core.adapters.ec2_fleet import Ec2FleetMembership

    return Ec2FleetMembership(boto3.client("ec2"))


def caller_arn() -> str | None:
    """The IAM identity API Gateway verified for this request, if any."""
    event = router.current_event
    assert isinstance(event, APIGatewayProxyEvent), "the control API takes API Gateway REST proxy events"
    return event.request_context.identity.user_arn or None


@router.post(
    "/v1/fleet/heartbeat",
    responses=documented(200, VerdictOut, "The verdict on this host, positive or negative"),
    summary="Report an engine host's heartbeat (IAM-authorised: the host's instance role, SigV4)",
)
def heartbeat(body: HeartbeatIn) -> VerdictOut:
    config = settings()
    caller = caller_arn()
    # Checked here as well as in the domain so a refused caller never gets as far as building an EC2 client.
    fleet.verify_caller(caller, fleet_role_arn=config.fleet_role_arn, host_id=body.host_id)
    report = HeartbeatReport(**body.model_dump())
    checked_at = utc_now()
    verdict = fleet.accept_heartbeat(
        report,
        caller_arn=caller,
        fleet=fleet.FleetConfig(
            role_arn=config.fleet_role_arn,
            asg_name=config.fleet_asg_name,
            allowed_code_hashes=fleet.code_hash_allow_list(config.allowed_code_hashes),
            org_id=config.fleet_org_id,
        ),
        membership=fleet_membership(),
        store=services().store,
        at=checked_at,
        heartbeat_seconds=config.heartbeat_interval_seconds,
    )
    if not verdict.positive:
        logger.warning("negative heartbeat verdict", extra={
            "org_id": report.org_id, "host_id": report.host_id, "reason": verdict.reason,
            "allowed": verdict.allowed, "org_active": verdict.org_active,
        })
    return VerdictOut(
        allowed=verdict.allowed,
        org_active=verdict.org_active,
        reason=verdict.reason,
        checked_at=checked_at,
        next_heartbeat_seconds=config.heartbeat_interval_seconds,
    )


app = build_app(router, service=SERVICE)


@app.exception_handler(fleet.FleetCallerRejected)
def _caller_rejected(error: fleet.FleetCallerRejected) -> Response:
    # A refused caller is a security signal: record who it was, which the shared handler does not.
    req_id = request_id(app)
    logger.warning("heartbeat caller rejected", extra={"caller_arn": caller_arn(), "reason": str(error),
                                                        "request_id": req_id})
    return error_response(403, error.code, str(error), req_id)


lambda_handler = lambda_entry(app, SERVICE)
