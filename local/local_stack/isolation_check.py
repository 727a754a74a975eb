"""What "isolated" means, observed in the instance's account: the one check the demo's outcomes and
the test suites use.

Every network interface carries exactly one security group, the same one, with no ingress and no
egress rules; the instance has exactly one profile association, with the deny-all isolation profile,
whose role has only `AWSDenyAll`; the service's three tags are on it; termination protection is on.
"""

from __future__ import annotations

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
