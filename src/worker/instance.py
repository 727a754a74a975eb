"""The instance as DescribeInstances shows it: read once per attempt, handed to every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import PermanentError, classify, error_code
from shared.models import NetworkInterfaceState, PriorState, Target, VolumeState

PERMISSIONS = ("ec2:DescribeInstances",)
GONE_STATES = frozenset({"shutting-down", "terminated"})
_NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})


@dataclass(frozen=True)
class AttachedVolume:
    id: str
    device_name: str
    delete_on_termination: bool


@dataclass(frozen=True)
class Instance:
    """The instance now: its state as a record keeps it (`state`, the first attempt's is the record's
    `prior_state`), its tags, and what the steps need beside them."""

    instance_id: str
    state: PriorState
    tags: dict[str, str]
    #: Every private IPv4 and IPv6 address of every interface (`ip` target groups register these).
    addresses: frozenset[str] = frozenset()
    #: Attached EBS volumes, by device.
    volumes: tuple[AttachedVolume, ...] = ()
    #: "spot" for a Spot instance (EC2 refuses termination and stop protection on those).
    lifecycle: str | None = None
    #: "ebs" or "instance-store" (EC2 refuses stop protection on instance-store-backed instances).
    root_device_type: str = "ebs"
    #: The names of the security groups on its interfaces (the isolation group's marks an isolation).
    group_names: frozenset[str] = frozenset()


def describe(ec2: Any, target: Target) -> Instance:
    try:
        reservations = ec2.describe_instances(InstanceIds=[target.instance_id])["Reservations"]
    except ClientError as exc:
        if error_code(exc) in _NOT_FOUND:
            raise _not_found(target) from exc
        raise classify(exc, context="DescribeInstances") from exc
    instances = [i for r in reservations for i in r.get("Instances", [])]
    if not instances:
        raise _not_found(target)
    return instance_of(instances[0])


def describe_many(ec2: Any, targets: list[Target]) -> dict[str, Instance | PermanentError]:
    """Several instances of one account and region in one DescribeInstances: each id's instance, or the
    permanent error that ends its isolation (not found, terminated). AWS fails the whole call when one
    id does not exist (`InvalidInstanceID.NotFound`): then each is described on its own."""
    if len(targets) == 1:
        try:
            return {targets[0].instance_id: describe(ec2, targets[0])}
        except PermanentError as error:
            return {targets[0].instance_id: error}
    ids = list(dict.fromkeys(target.instance_id for target in targets))
    try:
        reservations = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    except ClientError as exc:
        if error_code(exc) in _NOT_FOUND:
            return {key: value for target in targets for key, value in describe_many(ec2, [target]).items()}
        raise classify(exc, context="DescribeInstances") from exc
    found: dict[str, Instance | PermanentError] = {}
    for described in (i for r in reservations for i in r.get("Instances", [])):
        try:
            found[described["InstanceId"]] = instance_of(described)
        except PermanentError as error:
            found[described["InstanceId"]] = error
    for target in targets:
        found.setdefault(target.instance_id, _not_found(target))
    return found


def instance_of(described: dict[str, Any]) -> Instance:
    instance_id = described["InstanceId"]
    state = described.get("State", {}).get("Name", "unknown")
    if state in GONE_STATES:
        raise PermanentError("InstanceTerminated", f"instance {instance_id} is {state}")
    interfaces = [
        NetworkInterfaceState(
            id=eni["NetworkInterfaceId"],
            security_group_ids=[g["GroupId"] for g in eni.get("Groups", [])],
            vpc_id=eni.get("VpcId") or described.get("VpcId", ""),
        )
        for eni in sorted(described.get("NetworkInterfaces", []), key=_device_index)
    ]
    if not interfaces:
        raise PermanentError("NoNetworkInterface", f"instance {instance_id} has no network interface")
    volumes = tuple(
        AttachedVolume(
            id=mapping["Ebs"]["VolumeId"],
            device_name=mapping["DeviceName"],
            delete_on_termination=bool(mapping["Ebs"].get("DeleteOnTermination")),
        )
        for mapping in described.get("BlockDeviceMappings", [])
        if mapping.get("Ebs", {}).get("VolumeId")
    )
    return Instance(
        instance_id=instance_id,
        state=PriorState(
            vpc_id=described.get("VpcId") or interfaces[0].vpc_id or "",
            network_interfaces=interfaces,
            instance_profile_arn=(described.get("IamInstanceProfile") or {}).get("Arn"),
            volumes=[VolumeState(id=v.id, delete_on_termination=v.delete_on_termination) for v in volumes],
        ),
        tags={t["Key"]: t["Value"] for t in described.get("Tags", [])},
        addresses=frozenset(_addresses(described.get("NetworkInterfaces", []))),
        volumes=volumes,
        lifecycle=described.get("InstanceLifecycle"),
        root_device_type=described.get("RootDeviceType", "ebs"),
        group_names=frozenset(
            g["GroupName"] for eni in described.get("NetworkInterfaces", []) for g in eni.get("Groups", [])
        ),
    )


def _addresses(interfaces: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for eni in interfaces:
        found.update(
            a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", []) if a.get("PrivateIpAddress")
        )
        if eni.get("PrivateIpAddress"):
            found.add(eni["PrivateIpAddress"])
        found.update(a["Ipv6Address"] for a in eni.get("Ipv6Addresses", []) if a.get("Ipv6Address"))
    return found


def _not_found(target: Target) -> PermanentError:
    return PermanentError(
        "InstanceNotFound", f"instance {target.instance_id} not found in {target.account_id}/{target.region}"
    )


def _device_index(eni: dict[str, Any]) -> int:
    return int(eni.get("Attachment", {}).get("DeviceIndex", 0))
