"""Test helpers for AWS: member accounts in moto, and faults injected with the project's client hooks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from shared import aws
from shared.errors import error_code

ISOLATION_NAME = "ec2-isolation-deny-all"
AMI = "ami-12c6146b"  # one of moto's stock images


@dataclass
class Vpc:
    id: str
    subnet_ids: list[str]
    app_group_id: str


class Member:
    """A member account of the demo organization, reached the way the worker reaches it (AssumeRole)."""

    def __init__(self, account_id: str, region: str) -> None:
        self.account_id = account_id
        self.region = region
        credentials = boto3.client("sts", region_name=region).assume_role(
            RoleArn=f"arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole", RoleSessionName="tests"
        )["Credentials"]
        self.session = boto3.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            region_name=region,
        )
        self.ec2 = self.session.client("ec2")
        self.iam = self.session.client("iam")

    # --- building --------------------------------------------------------------------------------

    def vpc(self, cidr: str = "10.0.0.0/16", *, ipv6: bool = False, subnets: int = 1) -> Vpc:
        vpc_id = self.ec2.create_vpc(CidrBlock=cidr, AmazonProvidedIpv6CidrBlock=ipv6)["Vpc"]["VpcId"]
        base = cidr.split(".")
        subnet_ids = [
            self.ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"{base[0]}.{base[1]}.{i}.0/24")["Subnet"][
                "SubnetId"
            ]
            for i in range(subnets)
        ]
        group = self.ec2.create_security_group(GroupName="app", Description="app", VpcId=vpc_id)["GroupId"]
        self.ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
            ],
        )
        return Vpc(vpc_id, subnet_ids, group)

    def app_profile(self, name: str = "app") -> str:
        try:
            self.iam.create_role(
                RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
            )
            self.iam.create_instance_profile(InstanceProfileName=name)
            self.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        except ClientError as exc:
            if error_code(exc) != "EntityAlreadyExists":
                raise
        return name

    def install_isolation_profile(self, *, deny_all: bool = True) -> str:
        """What iam-execution-role.yml creates in every member account."""
        self.iam.create_role(
            RoleName=ISOLATION_NAME,
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "sts:AssumeRole",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                        }
                    ],
                }
            ),
        )
        if deny_all:
            self.iam.attach_role_policy(
                RoleName=ISOLATION_NAME, PolicyArn="arn:aws:iam::aws:policy/AWSDenyAll"
            )
        arn = self.iam.create_instance_profile(InstanceProfileName=ISOLATION_NAME)["InstanceProfile"]["Arn"]
        self.iam.add_role_to_instance_profile(InstanceProfileName=ISOLATION_NAME, RoleName=ISOLATION_NAME)
        return str(arn)

    def instance(
        self,
        vpc: Vpc,
        *,
        enis: int = 2,
        profile: str | None = "app",
        tags: dict[str, str] | None = None,
        extra_groups: list[str] | None = None,
        shutdown: str = "terminate",
        data_volumes: int = 1,
        spot: bool = False,
    ) -> str:
        """Launch with NetworkInterfaces=[...], so moto keeps per-ENI groups. By default as the instances
        worth isolating often are: shutdown behaviour `terminate`, a root and a data volume, both deleted
        on termination."""
        params: dict[str, Any] = {
            "ImageId": AMI,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": "t3.micro",
            "InstanceInitiatedShutdownBehavior": shutdown,
            "BlockDeviceMappings": [
                {"DeviceName": device, "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}}
                for device in ["/dev/sda1", *(f"/dev/sd{chr(ord('f') + i)}" for i in range(data_volumes))]
            ],
            "NetworkInterfaces": [
                {
                    "DeviceIndex": i,
                    "SubnetId": vpc.subnet_ids[i % len(vpc.subnet_ids)],
                    "Groups": [vpc.app_group_id, *(extra_groups or [])],
                }
                for i in range(enis)
            ],
        }
        if profile:
            params["IamInstanceProfile"] = {"Name": self.app_profile(profile)}
        if spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot"}
        if tags:
            params["TagSpecifications"] = [
                {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            ]
        return str(self.ec2.run_instances(**params)["Instances"][0]["InstanceId"])

    # --- observing -------------------------------------------------------------------------------

    def described(self, instance_id: str) -> dict[str, Any]:
        return self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]

    def eni_groups(self, instance_id: str) -> dict[str, list[str]]:
        return {
            eni["NetworkInterfaceId"]: [g["GroupId"] for g in eni["Groups"]]
            for eni in self.described(instance_id)["NetworkInterfaces"]
        }

    def isolation_groups(self, vpc_id: str) -> list[dict[str, Any]]:
        """The VPC's groups named as the service names its isolation groups (`ec2-isolation-<nonce>`)."""
        groups = self.ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
        return [g for g in groups["SecurityGroups"] if g["GroupName"].startswith("ec2-isolation-")]

    def profile_of(self, instance_id: str) -> str | None:
        """The associated profile, from the associations (moto's DescribeInstances lags a replace)."""
        associations = self.ec2.describe_iam_instance_profile_associations(
            Filters=[
                {"Name": "instance-id", "Values": [instance_id]},
                {"Name": "state", "Values": ["associated"]},
            ]
        )["IamInstanceProfileAssociations"]
        return associations[0]["IamInstanceProfile"]["Arn"] if associations else None

    def tags(self, instance_id: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.described(instance_id).get("Tags", [])}

    def attribute(self, instance_id: str, attribute: str) -> Any:
        """One attribute as DescribeInstanceAttribute answers it (`disableApiStop`, ...)."""
        answer = self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=attribute)
        return next(v["Value"] for k, v in answer.items() if isinstance(v, dict) and "Value" in v)

    def volumes(self, instance_id: str) -> dict[str, bool]:
        """Attached EBS volumes and their DeleteOnTermination."""
        return {
            m["Ebs"]["VolumeId"]: m["Ebs"]["DeleteOnTermination"]
            for m in self.described(instance_id).get("BlockDeviceMappings", [])
            if "Ebs" in m
        }

    def denied_instances(self, role: str) -> list[str]:
        """The instances the role's deny policy lists (empty without one)."""
        from worker.steps.credentials import POLICY_NAME

        try:
            document = self.iam.get_role_policy(RoleName=role, PolicyName=POLICY_NAME)["PolicyDocument"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchEntity":
                raise
            return []
        [statement] = document["Statement"]
        assert statement["Effect"] == "Deny" and statement["Action"] == "*" and statement["Resource"] == "*"
        return list(statement["Condition"]["ArnEquals"]["ec2:SourceInstanceARN"])

    def instance_arn(self, instance_id: str) -> str:
        return f"arn:aws:ec2:{self.region}:{self.account_id}:instance/{instance_id}"

    def termination_protected(self, instance_id: str) -> bool:
        return bool(
            self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="disableApiTermination")[
                "DisableApiTermination"
            ]["Value"]
        )


@dataclass
class WebTier:
    """An Auto Scaling group behind an ELBv2 target group and a classic load balancer."""

    group: str
    target_group_arn: str
    ip_target_group_arn: str
    classic: str


def web_tier(member: Member, vpc: Vpc, instances: list[str], *, name: str = "web") -> WebTier:
    """The group holds `instances` (attached: moto registers them with the group's target group and
    classic load balancer); an `ip` target group has each instance's first address on port 8080."""
    autoscaling = member.session.client("autoscaling")
    elbv2 = member.session.client("elbv2")
    elb = member.session.client("elb")
    target_group = elbv2.create_target_group(
        Name=name, Protocol="HTTP", Port=80, VpcId=vpc.id, TargetType="instance"
    )["TargetGroups"][0]["TargetGroupArn"]
    ip_group = elbv2.create_target_group(
        Name=f"{name}-ip", Protocol="HTTP", Port=8080, VpcId=vpc.id, TargetType="ip"
    )["TargetGroups"][0]["TargetGroupArn"]
    elb.create_load_balancer(
        LoadBalancerName=name,
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}],
        Subnets=vpc.subnet_ids,
    )
    member.ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": AMI, "InstanceType": "t3.micro"}
    )
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name},
        MinSize=0,
        MaxSize=len(instances) * 2 + 2,
        DesiredCapacity=0,
        VPCZoneIdentifier=vpc.subnet_ids[0],
        TargetGroupARNs=[target_group],
        LoadBalancerNames=[name],
    )
    autoscaling.attach_instances(InstanceIds=instances, AutoScalingGroupName=name)
    addresses = [member.described(i)["NetworkInterfaces"][0]["PrivateIpAddress"] for i in instances]
    elbv2.register_targets(TargetGroupArn=ip_group, Targets=[{"Id": a, "Port": 8080} for a in addresses])
    return WebTier(name, target_group, ip_group, name)


def targets(member: Member, target_group_arn: str) -> set[str]:
    health = member.session.client("elbv2").describe_target_health(TargetGroupArn=target_group_arn)
    return {d["Target"]["Id"] for d in health["TargetHealthDescriptions"]}


def classic_instances(member: Member, name: str) -> set[str]:
    (balancer,) = member.session.client("elb").describe_load_balancers(LoadBalancerNames=[name])[
        "LoadBalancerDescriptions"
    ]
    return {i["InstanceId"] for i in balancer["Instances"]}


def group_of(member: Member, group: str) -> dict[str, Any]:
    return dict(
        member.session.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
            "AutoScalingGroups"
        ][0]
    )


# --- faults and call counting ------------------------------------------------------------------------


def client_error(code: str, operation: str, status: int = 400, message: str = "injected") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


@dataclass
class Fault:
    """Raises `code` on the first `times` calls of `service.operation` (None: every call)."""

    service: str
    operation: str
    code: str
    times: int | None = 1
    status: int = 400
    when: Callable[[dict[str, Any]], bool] | None = None
    raised: int = 0
    seen: int = 0

    def __call__(self, params: dict[str, Any], **_: Any) -> None:
        if self.when is not None and not self.when(params):
            return
        self.seen += 1
        if self.times is None or self.raised < self.times:
            self.raised += 1
            raise client_error(self.code, self.operation, self.status)


@dataclass
class Faults:
    """Registered on every client the project builds (shared.aws.add_event_hook); removed after the test."""

    _removers: list[Callable[[], None]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)

    def inject(self, service: str, operation: str, code: str, **kwargs: Any) -> Fault:
        fault = Fault(service, operation, code, **kwargs)
        # before-parameter-build sees the API parameters as the code passed them; raising there fails
        # the call before anything is sent, as an AWS error would.
        self._removers.append(aws.add_event_hook(f"before-parameter-build.{service}.{operation}", fault))
        return fault

    def hook(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Any botocore hook (e.g. `after-call.ec2.CreateSecurityGroup`) on the project's clients."""
        self._removers.append(aws.add_event_hook(event_name, handler))

    def count(self) -> None:
        def record(event_name: str, **_: Any) -> None:
            name = ".".join(event_name.split(".")[1:3])
            self.calls[name] += 1
            self.log.append(name)

        self._removers.append(aws.add_event_hook("before-call", record))

    def clear(self) -> None:
        for remove in self._removers:
            remove()
        self._removers.clear()


@contextmanager
def counting() -> Iterator[Faults]:
    faults = Faults()
    faults.count()
    try:
        yield faults
    finally:
        faults.clear()
