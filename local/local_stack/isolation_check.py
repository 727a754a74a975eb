"""What "isolated" and "released" mean, observed in the instance's account: the checks the demo's
outcomes and the test suites use.

Isolated: every network interface carries exactly one security group, the same one, with no ingress and
no egress rules; the instance has exactly one profile association, with the deny-all isolation profile,
whose role has only `AWSDenyAll`; the service's three tags are on it; termination protection is on.

Released: the instance looks as it did before its isolation (`release_problems` compares two
`observed_state`s): the same groups on each interface, profile, credentials (no deny naming it),
Auto Scaling group, load balancer registrations, attributes, volumes and tags (but
`ec2-isolation:released-at`, which the release adds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ISOLATION_PROFILE = "ec2-isolation-deny-all"
DENY_ALL = "arn:aws:iam::aws:policy/AWSDenyAll"
TAGS = ("ec2-isolation:id", "ec2-isolation:at", "ec2-isolation:source")


def isolation_problems(
    ec2: Any, iam: Any, instance_id: str, *, profile_name: str = ISOLATION_PROFILE
) -> list[str]:
    """What is not as isolation leaves an instance; empty when the instance is isolated."""
    problems = []
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    eni_ids = [eni["NetworkInterfaceId"] for eni in instance.get("NetworkInterfaces", [])]
    interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=eni_ids)["NetworkInterfaces"]
    groups = {tuple(group["GroupId"] for group in eni["Groups"]) for eni in interfaces}
    if len(groups) != 1 or len(next(iter(groups))) != 1:
        problems.append(f"interfaces do not share exactly one group: {sorted(groups)}")
    else:
        ((group_id,),) = groups
        group = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
        if group["IpPermissions"] or group["IpPermissionsEgress"]:
            problems.append(f"group {group_id} has rules")

    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[
            {"Name": "instance-id", "Values": [instance_id]},
            {"Name": "state", "Values": ["associated"]},
        ]
    )["IamInstanceProfileAssociations"]
    arns = [association["IamInstanceProfile"]["Arn"] for association in associations]
    if len(arns) != 1 or not arns[0].endswith(f":instance-profile/{profile_name}"):
        problems.append(f"instance profile associations: {arns}")
    profile = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
    roles = [role["RoleName"] for role in profile["Roles"]]
    attached = [
        [policy["PolicyArn"] for policy in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]]
        for role in roles
    ]
    if attached != [[DENY_ALL]]:
        problems.append(f"profile {profile_name} roles' policies: {attached}")

    tags = {tag["Key"] for tag in instance.get("Tags", [])}
    if missing := [tag for tag in TAGS if tag not in tags]:
        problems.append(f"tags missing: {missing}")
    protection = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="disableApiTermination")
    if protection["DisableApiTermination"]["Value"] is not True:
        problems.append("termination protection is off")
    stop = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="disableApiStop")
    if stop["DisableApiStop"]["Value"] is not True:
        problems.append("stop protection is off")
    shutdown = ec2.describe_instance_attribute(
        InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
    )
    if shutdown["InstanceInitiatedShutdownBehavior"]["Value"] != "stop":
        problems.append("a shutdown from inside the instance would not just stop it")
    deleted = [
        m["Ebs"]["VolumeId"]
        for m in instance.get("BlockDeviceMappings", [])
        if m["Ebs"].get("DeleteOnTermination")
    ]
    if deleted:
        problems.append(f"volumes deleted on termination: {deleted}")
    return problems


#: The tag a release adds; every other tag is as before the isolation.
RELEASED_AT_TAG = "ec2-isolation:released-at"
#: The prefix of the credentials deny's inline policy on the instance's role.
DENY_POLICY_PREFIX = "ec2-isolation"


def observed_state(clients: Callable[[str], Any], instance_id: str) -> dict[str, Any]:
    """What a release puts back, as the instance's account shows it. `clients(service)`: a client of the
    instance's account and region. Comparable with `==` (sorted lists)."""
    ec2 = clients("ec2")
    reservation = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    instance = reservation["Instances"][0]
    arn = f"arn:aws:ec2:{ec2.meta.region_name}:{reservation['OwnerId']}:instance/{instance_id}"
    eni_ids = [eni["NetworkInterfaceId"] for eni in instance.get("NetworkInterfaces", [])]
    interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=eni_ids)["NetworkInterfaces"]
    # moto's DescribeInstances lags a profile replacement: the associations are the truth.
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[
            {"Name": "instance-id", "Values": [instance_id]},
            {"Name": "state", "Values": ["associated"]},
        ]
    )["IamInstanceProfileAssociations"]
    profiles = sorted(association["IamInstanceProfile"]["Arn"] for association in associations)

    def attribute(name: str, key: str) -> Any:
        return ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=name)[key]["Value"]

    return {
        "security groups": {
            eni["NetworkInterfaceId"]: sorted(group["GroupId"] for group in eni["Groups"])
            for eni in interfaces
        },
        "instance profile": profiles,
        "credentials denied": _denied_on(clients("iam"), profiles, arn),
        "auto scaling group": sorted(
            membership["AutoScalingGroupName"]
            for membership in clients("autoscaling").describe_auto_scaling_instances(
                InstanceIds=[instance_id]
            )["AutoScalingInstances"]
            if membership["LifecycleState"] not in ("Detaching", "Detached")
        ),
        "target groups": _target_groups(clients("elbv2"), instance_id),
        "classic load balancers": sorted(
            balancer["LoadBalancerName"]
            for balancer in clients("elb").describe_load_balancers()["LoadBalancerDescriptions"]
            if any(member["InstanceId"] == instance_id for member in balancer["Instances"])
        ),
        "termination protection": attribute("disableApiTermination", "DisableApiTermination"),
        "stop protection": attribute("disableApiStop", "DisableApiStop"),
        "shutdown behaviour": attribute(
            "instanceInitiatedShutdownBehavior", "InstanceInitiatedShutdownBehavior"
        ),
        "delete on termination": {
            mapping["Ebs"]["VolumeId"]: bool(mapping["Ebs"]["DeleteOnTermination"])
            for mapping in instance.get("BlockDeviceMappings", [])
        },
        "tags": {
            tag["Key"]: tag["Value"] for tag in instance.get("Tags", []) if tag["Key"] != RELEASED_AT_TAG
        },
    }


def _denied_on(iam: Any, profile_arns: list[str], instance_arn: str) -> list[str]:
    """The `ec2-isolation` inline policies of the instance's roles that name it."""
    found = []
    for profile_arn in profile_arns:
        profile = iam.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[-1])[
            "InstanceProfile"
        ]
        for role in profile["Roles"]:
            for name in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
                if not name.startswith(DENY_POLICY_PREFIX):
                    continue
                document = iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)["PolicyDocument"]
                if instance_arn in str(document):
                    found.append(f"{role['RoleName']}/{name}")
    return sorted(found)


def _target_groups(elbv2: Any, instance_id: str) -> list[str]:
    """Its registrations by instance id (the demo's target groups are of type `instance`)."""
    registered = []
    for group in elbv2.describe_target_groups()["TargetGroups"]:
        health = elbv2.describe_target_health(TargetGroupArn=group["TargetGroupArn"])[
            "TargetHealthDescriptions"
        ]
        registered += [
            f"{group['TargetGroupArn']} {target['Target']['Id']}:{target['Target'].get('Port')}"
            for target in health
            if target["Target"]["Id"] == instance_id
        ]
    return sorted(registered)


def release_problems(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How a released instance differs from how it was before its isolation; empty when it looks the same."""
    return [
        f"{what}: {before[what]} before, {now.get(what)} now"
        for what in before
        if now.get(what) != before[what]
    ]
