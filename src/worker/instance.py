"""The instance as DescribeInstances shows it: read once per attempt, handed to every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.aws import classify, error_code
from shared.errors import PermanentError
from shared.models import NetworkInterfaceState, PriorState, Target

PERMISSIONS = ("ec2:DescribeInstances",)
GONE_STATES = frozenset({"shutting-down", "terminated"})


@dataclass(frozen=True)
class Interface:
    id: str
    vpc_id: str
    security_group_ids: tuple[str, ...]


@dataclass(frozen=True)
class InstanceFacts:
    instance_id: str
    state: str
    vpc_id: str
    interfaces: tuple[Interface, ...]
    profile_arn: str | None
    tags: dict[str, str]

    @property
    def vpc_ids(self) -> list[str]:
        """Every VPC the instance has an interface in (ENIs of several VPCs are possible), in order."""
        return list(dict.fromkeys(interface.vpc_id for interface in self.interfaces))

    def prior_state(self) -> PriorState:
        return PriorState(
            vpc_id=self.vpc_id,
            network_interfaces=[
                NetworkInterfaceState(id=i.id, security_group_ids=list(i.security_group_ids))
                for i in self.interfaces
            ],
            instance_profile_arn=self.profile_arn,
        )


def describe(ec2: Any, target: Target) -> InstanceFacts:
    try:
        reservations = ec2.describe_instances(InstanceIds=[target.instance_id])["Reservations"]
    except ClientError as exc:
        if error_code(exc) in ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"):
            raise PermanentError(
                "InstanceNotFound",
                f"instance {target.instance_id} not found in {target.account_id}/{target.region}",
            ) from exc
        raise classify(exc, context="DescribeInstances") from exc
    except BotoCoreError as exc:
        raise classify(exc, context="DescribeInstances") from exc
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if not instances:
        raise PermanentError(
            "InstanceNotFound",
            f"instance {target.instance_id} not found in {target.account_id}/{target.region}",
        )
    return facts_of(instances[0])


def facts_of(instance: dict[str, Any]) -> InstanceFacts:
    state = instance.get("State", {}).get("Name", "unknown")
    if state in GONE_STATES:
        raise PermanentError("InstanceTerminated", f"instance {instance['InstanceId']} is {state}")
    interfaces = tuple(
        Interface(
            id=eni["NetworkInterfaceId"],
            vpc_id=eni.get("VpcId") or instance.get("VpcId", ""),
            security_group_ids=tuple(g["GroupId"] for g in eni.get("Groups", [])),
        )
        for eni in sorted(instance.get("NetworkInterfaces", []), key=_device_index)
    )
    if not interfaces:
        raise PermanentError(
            "NoNetworkInterface", f"instance {instance['InstanceId']} has no network interface"
        )
    return InstanceFacts(
        instance_id=instance["InstanceId"],
        state=state,
        vpc_id=instance.get("VpcId") or interfaces[0].vpc_id,
        interfaces=interfaces,
        profile_arn=(instance.get("IamInstanceProfile") or {}).get("Arn"),
        tags={t["Key"]: t["Value"] for t in instance.get("Tags", [])},
    )


def _device_index(eni: dict[str, Any]) -> int:
    return int(eni.get("Attachment", {}).get("DeviceIndex", 0))
