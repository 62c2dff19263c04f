"""`FleetMembership` over EC2 DescribeInstances, in the region of the client it is given."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from hd_core.fleet import ASG_NAME_TAG, FleetInstance, FleetLookupUnavailable

# EC2's answers for an id it does not know: "no such instance", not "EC2 is unavailable".
_UNKNOWN_INSTANCE_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


class Ec2FleetMembership:
    """Looks instances up with DescribeInstances; needs `ec2:DescribeInstances` and nothing else."""

    def __init__(self, ec2_client: Any) -> None:
        self._client = ec2_client

    def describe_instance(self, instance_id: str) -> FleetInstance | None:
        """The instance, or None if EC2 does not know it; raises `FleetLookupUnavailable` if EC2 cannot answer."""
        try:
            response = self._client.describe_instances(InstanceIds=[instance_id])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _UNKNOWN_INSTANCE_CODES:
                return None
            raise FleetLookupUnavailable(f"EC2 DescribeInstances failed: {error}") from error
        except BotoCoreError as error:
            raise FleetLookupUnavailable(f"EC2 DescribeInstances failed: {error}") from error
        for reservation in response.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                if instance.get("InstanceId") == instance_id:
                    return self._fleet_instance(reservation, instance)
        return None

    def _fleet_instance(self, reservation: dict[str, Any], instance: dict[str, Any]) -> FleetInstance:
        tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
        return FleetInstance(
            instance_id=instance["InstanceId"],
            account_id=reservation["OwnerId"],
            # DescribeInstances only sees the client's region, so that is the instance's region.
            region=self._client.meta.region_name,
            state=instance["State"]["Name"],
            launch_time=instance["LaunchTime"],
            asg_name=tags.get(ASG_NAME_TAG),
        )
