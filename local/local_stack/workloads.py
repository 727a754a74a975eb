"""The demo's workloads in a member account: an application instance profile with an S3 policy, two
VPCs (a plain IPv4 one and one with an Amazon-provided IPv6 block) with security groups open to 22/443,
and instances with two network interfaces each: with and without a profile, one in the IPv6 VPC, one
exempt (the stack exempts it in its own table, `local_stack.stack`: nothing on the instance says so),
one in an Auto Scaling group behind a classic load balancer and a
target group (shutdown behaviour `terminate`, a second EBS volume, the profile its siblings share).
`described` finds them again (by their tag)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared.errors import error_code
from worker.steps.instance_profile import EC2_TRUST_POLICY

DEMO_TAG = "ec2-isolation-demo"  # value: the instance's label
APP_PROFILE = "demo-app"


@dataclass(frozen=True)
class InstanceSpec:
    label: str
    vpc: str  # "main" (IPv4) or "ipv6"
    profile: bool = True
    #: Exempt from trigger-started isolations (an exemption the stack creates, never a tag).
    exempt: bool = False
    #: In the account's Auto Scaling group, behind its classic load balancer and target group, with
    #: shutdown behaviour `terminate` and a second EBS volume: what isolation must keep from destroying it.
    scaled: bool = False


#: The Auto Scaling group, classic load balancer and target group of the scaled demo instances.
SCALED_NAME = "demo-web-asg"

INSTANCES = (
    InstanceSpec("web-1", "main"),
    InstanceSpec("web-2", "main"),
    InstanceSpec("web-3", "main"),
    InstanceSpec("web-asg", "main", scaled=True),
    InstanceSpec("ipv6-1", "ipv6"),
    InstanceSpec("no-profile", "ipv6", profile=False),
    InstanceSpec("exempt", "main", exempt=True),
)


@dataclass
class DemoInstance:
    label: str
    account_id: str
    region: str
    instance_id: str
    vpc_id: str
    eni_ids: list[str]
    security_group_ids: list[str]
    instance_profile_arn: str | None
    exempt: bool

    @property
    def arn(self) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account_id}:instance/{self.instance_id}"


def _app_profile(iam: Any) -> str:
    """An application's instance profile: a role that can read one S3 bucket."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket"],
                "Resource": ["arn:aws:s3:::demo-app-assets", "arn:aws:s3:::demo-app-assets/*"],
            }
        ],
    }
    try:
        iam.create_role(RoleName=APP_PROFILE, AssumeRolePolicyDocument=EC2_TRUST_POLICY)
        iam.put_role_policy(RoleName=APP_PROFILE, PolicyName="read-assets", PolicyDocument=json.dumps(policy))
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
    try:
        arn = iam.create_instance_profile(InstanceProfileName=APP_PROFILE)["InstanceProfile"]["Arn"]
        iam.add_role_to_instance_profile(InstanceProfileName=APP_PROFILE, RoleName=APP_PROFILE)
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
        arn = iam.get_instance_profile(InstanceProfileName=APP_PROFILE)["InstanceProfile"]["Arn"]
    return str(arn)


def _tags(**tags: str) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _network(ec2: Any, region: str) -> dict[str, dict[str, Any]]:
    """Two VPCs, each with two subnets in one zone and two security groups; returns them by kind."""
    zone = f"{region}a"
    networks: dict[str, dict[str, Any]] = {}
    for kind, cidr, ipv6 in (("main", "10.0.0.0/16", False), ("ipv6", "10.1.0.0/16", True)):
        vpc = ec2.create_vpc(
            CidrBlock=cidr,
            AmazonProvidedIpv6CidrBlock=ipv6,
            TagSpecifications=[{"ResourceType": "vpc", "Tags": _tags(Name=f"demo-{kind}")}],
        )["Vpc"]
        vpc_id = vpc["VpcId"]
        ipv6_block = None
        if ipv6:
            described = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
            ipv6_block = described["Ipv6CidrBlockAssociationSet"][0]["Ipv6CidrBlock"]
        subnets = []
        for index in (1, 2):
            request: dict[str, Any] = {
                "VpcId": vpc_id,
                "CidrBlock": cidr.replace(".0.0/16", f".{index}.0/24"),
                "AvailabilityZone": zone,
            }
            if ipv6_block:
                request["Ipv6CidrBlock"] = _ipv6_subnet(ipv6_block, index)
            subnets.append(ec2.create_subnet(**request)["Subnet"]["SubnetId"])
        web = ec2.create_security_group(VpcId=vpc_id, GroupName="demo-web", Description="HTTPS from anywhere")
        admin = ec2.create_security_group(
            VpcId=vpc_id, GroupName="demo-admin", Description="SSH from the office"
        )
        https: dict[str, Any] = {
            "IpProtocol": "tcp",
            "FromPort": 443,
            "ToPort": 443,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        }
        if ipv6:
            https["Ipv6Ranges"] = [{"CidrIpv6": "::/0"}]
        ec2.authorize_security_group_ingress(GroupId=web["GroupId"], IpPermissions=[https])
        ec2.authorize_security_group_ingress(
            GroupId=admin["GroupId"],
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
            ],
        )
        networks[kind] = {
            "vpc_id": vpc_id,
            "subnets": subnets,
            "groups": [web["GroupId"], admin["GroupId"]],
            "ipv6": ipv6,
        }
    return networks


def _ipv6_subnet(vpc_block: str, index: int) -> str:
    """The index-th /64 of a VPC's /56."""
    network = ipaddress.ip_network(vpc_block)
    return str(ipaddress.ip_network((int(network.network_address) + (index << 64), 64)))


def _image(ec2: Any) -> str:
    images = ec2.describe_images(Owners=["amazon"])["Images"]
    if not images:
        raise RuntimeError("the endpoint has no Amazon images to launch demo instances from")
    return str(sorted(image["ImageId"] for image in images)[0])


def _launch(ec2: Any, spec: InstanceSpec, network: dict[str, Any], image_id: str, profile_arn: str) -> str:
    web, admin = network["groups"]
    interfaces = []
    for index, (subnet, groups) in enumerate(zip(network["subnets"], ([web, admin], [admin]), strict=True)):
        interface: dict[str, Any] = {"DeviceIndex": index, "SubnetId": subnet, "Groups": groups}
        if network["ipv6"]:
            interface["Ipv6AddressCount"] = 1
        interfaces.append(interface)
    tags = {"Name": f"demo-{spec.label}", DEMO_TAG: spec.label}
    request: dict[str, Any] = {
        "ImageId": image_id,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": "t3.micro",
        "NetworkInterfaces": interfaces,
        "TagSpecifications": [{"ResourceType": "instance", "Tags": _tags(**tags)}],
    }
    if spec.profile:
        request["IamInstanceProfile"] = {"Arn": profile_arn}
    if spec.scaled:
        request["InstanceInitiatedShutdownBehavior"] = "terminate"
        request["BlockDeviceMappings"] = [
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}}
        ]
    return str(ec2.run_instances(**request)["Instances"][0]["InstanceId"])


def _scale(session: boto3.Session, network: dict[str, Any], image_id: str, instance_ids: list[str]) -> None:
    """The Auto Scaling group (no instance of its own), its classic load balancer and target group, and
    `instance_ids` attached to it (moto then registers them with both, as AWS does)."""
    ec2, autoscaling = session.client("ec2"), session.client("autoscaling")
    template = ec2.create_launch_template(
        LaunchTemplateName=SCALED_NAME, LaunchTemplateData={"ImageId": image_id, "InstanceType": "t3.micro"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    session.client("elb").create_load_balancer(
        LoadBalancerName=SCALED_NAME,
        Listeners=[{"Protocol": "TCP", "LoadBalancerPort": 443, "InstancePort": 443}],
        Subnets=network["subnets"][:1],
    )
    target_group = session.client("elbv2").create_target_group(
        Name=SCALED_NAME, Protocol="TCP", Port=443, VpcId=network["vpc_id"], TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=SCALED_NAME,
        LaunchTemplate={"LaunchTemplateId": template},
        MinSize=0,
        MaxSize=len(instance_ids) + 2,
        DesiredCapacity=0,
        VPCZoneIdentifier=network["subnets"][0],
        LoadBalancerNames=[SCALED_NAME],
        TargetGroupARNs=[target_group],
    )
    autoscaling.attach_instances(AutoScalingGroupName=SCALED_NAME, InstanceIds=instance_ids)


def described(
    ec2: Any, account_id: str, region: str, specs: Sequence[InstanceSpec] = INSTANCES
) -> list[DemoInstance]:
    """The demo instances found in the account (running, tagged by the seed)."""
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag-key", "Values": [DEMO_TAG]},
            {"Name": "instance-state-name", "Values": ["running", "pending", "stopped"]},
        ]
    )
    exempt = {spec.label for spec in specs if spec.exempt}
    found = []
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
                interfaces = sorted(
                    instance.get("NetworkInterfaces", []), key=lambda eni: eni["Attachment"]["DeviceIndex"]
                )
                found.append(
                    DemoInstance(
                        label=tags[DEMO_TAG],
                        account_id=account_id,
                        region=region,
                        instance_id=instance["InstanceId"],
                        vpc_id=instance.get("VpcId", ""),
                        eni_ids=[eni["NetworkInterfaceId"] for eni in interfaces],
                        security_group_ids=sorted(
                            {group["GroupId"] for eni in interfaces for group in eni.get("Groups", [])}
                        ),
                        instance_profile_arn=(instance.get("IamInstanceProfile") or {}).get("Arn"),
                        exempt=tags[DEMO_TAG] in exempt,
                    )
                )
    order = [spec.label for spec in specs]
    return sorted(found, key=lambda i: order.index(i.label) if i.label in order else len(order))


def workloads(
    session: boto3.Session, account_id: str, region: str, specs: Sequence[InstanceSpec] = INSTANCES
) -> tuple[dict[str, str], list[DemoInstance]]:
    ec2 = session.client("ec2")
    existing = described(ec2, account_id, region, specs)
    if existing:
        vpcs = {}
        for instance in existing:
            spec = next((s for s in specs if s.label == instance.label), None)
            if spec is not None:
                vpcs[spec.vpc] = instance.vpc_id
        return vpcs, existing
    profile_arn = _app_profile(session.client("iam"))
    networks = _network(ec2, region)
    image_id = _image(ec2)
    launched = {spec.label: _launch(ec2, spec, networks[spec.vpc], image_id, profile_arn) for spec in specs}
    scaled = [launched[spec.label] for spec in specs if spec.scaled]
    if scaled:
        _scale(session, networks["main"], image_id, scaled)
    return {kind: network["vpc_id"] for kind, network in networks.items()}, described(
        ec2, account_id, region, specs
    )
