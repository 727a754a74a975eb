"""A demo organization to isolate instances in: `ec2-isolation serve --seed-demo` and `demo`.

In the stack's own (security) account: an organization and the worker's role. In each of two member
accounts: `iam-execution-role.yml` deployed through CloudFormation (the execution role trusting the
worker's role, the deny-all isolation role and profile), an application instance profile with an S3
policy, two VPCs (a plain IPv4 one and one with an Amazon-provided IPv6 block) with security groups
open to 22/443, and instances with two network interfaces each: with and without a profile, one in
the IPv6 VPC, one tagged `ec2-isolation:exempt=true`.

Idempotent: against an endpoint that already has the demo organization, it is found and reused.

moto's CloudFormation creates the template's roles and profile but ignores `ManagedPolicyArns`; what
it skips is completed with IAM calls from the template's resolved properties (and if a stack cannot
be created at all, every IAM resource of the template is created that way). The stacks are deployed
without `CentralEventBusArn`: moto's cross-account event forwarding drops the event's `resources`,
so tag events are put on the stack's own bus directly (as they arrive there once forwarded).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from local_stack import cfn

log = logging.getLogger("local_stack.seed")

WORKER_ROLE_NAME = "ec2-isolation-worker-local"
EXECUTION_STACK = "ec2-isolation-execution"
MEMBER_ACCOUNT_NAMES = ("demo-workloads-a", "demo-workloads-b")
ACCESS_ROLE = "OrganizationAccountAccessRole"
DEMO_TAG = "ec2-isolation-demo"  # value: the instance's label
EXEMPT_TAG = "ec2-isolation:exempt"
APP_PROFILE = "demo-app"


@dataclass(frozen=True)
class InstanceSpec:
    label: str
    vpc: str  # "main" (IPv4) or "ipv6"
    profile: bool = True
    exempt: bool = False


INSTANCES = (
    InstanceSpec("web-1", "main"),
    InstanceSpec("web-2", "main"),
    InstanceSpec("web-3", "main"),
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


@dataclass
class DemoAccount:
    name: str
    account_id: str
    execution_role_arn: str
    deployment: str  # how the execution role got there
    vpcs: dict[str, str] = field(default_factory=dict)  # "main"/"ipv6" -> vpc id
    instances: list[DemoInstance] = field(default_factory=list)


@dataclass
class DemoOrg:
    organization_id: str
    security_account_id: str
    region: str
    worker_role_arn: str
    accounts: list[DemoAccount]

    @property
    def instances(self) -> list[DemoInstance]:
        return [instance for account in self.accounts for instance in account.instances]

    def instance(self, label: str, account: int = 0) -> DemoInstance:
        for instance in self.accounts[account].instances:
            if instance.label == label:
                return instance
        raise KeyError(f"no demo instance {label!r} in account {account}")


# --- sessions -------------------------------------------------------------------------------------------


def member_session(account_id: str, region: str, *, base: boto3.Session | None = None) -> boto3.Session:
    """A session in a member account (moto lets the caller assume any role of any account)."""
    sts = (base or boto3.Session()).client("sts", region_name=region)
    credentials = sts.assume_role(
        RoleArn=f"arn:aws:iam::{account_id}:role/{ACCESS_ROLE}", RoleSessionName="ec2-isolation-seed"
    )["Credentials"]
    return boto3.Session(
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        region_name=region,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# --- organization ---------------------------------------------------------------------------------------


def _organization(org: Any) -> str:
    try:
        return str(org.create_organization(FeatureSet="ALL")["Organization"]["Id"])
    except ClientError as exc:
        if _code(exc) != "AlreadyInOrganizationException":
            raise
        return str(org.describe_organization()["Organization"]["Id"])


def _member_accounts(org: Any, names: Sequence[str] = MEMBER_ACCOUNT_NAMES) -> list[tuple[str, str]]:
    existing = {
        account["Name"]: account["Id"]
        for page in org.get_paginator("list_accounts").paginate()
        for account in page["Accounts"]
    }
    members = []
    for name in names:
        if name not in existing:
            status = org.create_account(Email=f"{name}@example.com", AccountName=name)["CreateAccountStatus"]
            for _ in range(50):
                if status["State"] != "IN_PROGRESS":
                    break
                time.sleep(0.1)
                status = org.describe_create_account_status(CreateAccountRequestId=status["Id"])[
                    "CreateAccountStatus"
                ]
            if status["State"] != "SUCCEEDED":
                raise RuntimeError(f"could not create account {name}: {status.get('FailureReason')}")
            existing[name] = status["AccountId"]
        members.append((name, existing[name]))
    return members


def _worker_role(iam: Any) -> str:
    """The local worker's role in the security account: what member accounts trust."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    try:
        return str(
            iam.create_role(RoleName=WORKER_ROLE_NAME, AssumeRolePolicyDocument=json.dumps(trust))["Role"][
                "Arn"
            ]
        )
    except ClientError as exc:
        if _code(exc) != "EntityAlreadyExists":
            raise
        return str(iam.get_role(RoleName=WORKER_ROLE_NAME)["Role"]["Arn"])


# --- the execution role in a member account -------------------------------------------------------------


def _execution_role(
    session: boto3.Session, account_id: str, region: str, template_path: Path, parameters: dict[str, str]
) -> tuple[str, str]:
    """Deploy iam-execution-role.yml in the account; returns (execution role ARN, how it was deployed)."""
    template = cfn.load_template(template_path)
    pseudo = {"AWS::AccountId": account_id, "AWS::Region": region, "AWS::StackName": EXECUTION_STACK}
    resolved = cfn.resolve(template, parameters, pseudo=pseudo)
    resolved = cfn.resolve(template, parameters, pseudo=pseudo, resources=_iam_names(resolved, account_id))
    cloudformation = session.client("cloudformation")
    try:
        cloudformation.create_stack(
            StackName=EXECUTION_STACK,
            TemplateBody=template_path.read_text(encoding="utf-8"),
            Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
            Capabilities=["CAPABILITY_NAMED_IAM"],
        )
        status = _wait_for_stack(cloudformation)
        deployment = "CloudFormation" if status == "CREATE_COMPLETE" else f"IAM calls (stack {status})"
    except ClientError as exc:
        if _code(exc) == "AlreadyExistsException":
            deployment = "CloudFormation (existing stack)"
        else:
            log.warning("CloudFormation could not deploy %s (%s): IAM calls instead", template_path.name, exc)
            deployment = "IAM calls (CloudFormation failed)"
    completed = _ensure_iam(session.client("iam"), resolved)
    if completed and deployment.startswith("CloudFormation"):
        deployment += f" + IAM calls for what moto skips ({', '.join(completed)})"
    return f"arn:aws:iam::{account_id}:role/{parameters['RoleName']}", deployment


def _wait_for_stack(cloudformation: Any) -> str:
    for _ in range(100):
        status = cloudformation.describe_stacks(StackName=EXECUTION_STACK)["Stacks"][0]["StackStatus"]
        if not status.endswith("IN_PROGRESS"):
            return str(status)
        time.sleep(0.1)
    return "TIMEOUT"


def _iam_names(resolved: dict[str, Any], account_id: str) -> dict[str, dict[str, str]]:
    """Ref/Arn of the template's named roles and profiles, so references between them resolve."""
    names: dict[str, dict[str, str]] = {}
    for logical_id, resource in resolved["Resources"].items():
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::IAM::Role" and isinstance(props.get("RoleName"), str):
            name = props["RoleName"]
            names[logical_id] = {"Ref": name, "Arn": f"arn:aws:iam::{account_id}:role/{name}"}
        elif resource["Type"] == "AWS::IAM::InstanceProfile" and isinstance(
            props.get("InstanceProfileName"), str
        ):
            name = props["InstanceProfileName"]
            names[logical_id] = {"Ref": name, "Arn": f"arn:aws:iam::{account_id}:instance-profile/{name}"}
    return names


def _ensure_iam(iam: Any, resolved: dict[str, Any]) -> list[str]:
    """Create or complete the template's named IAM roles and profiles; returns what had to be done."""
    done: list[str] = []
    for logical_id, resource in resolved["Resources"].items():
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::IAM::Role" and isinstance(props.get("RoleName"), str):
            done += _ensure_role(iam, logical_id, props)
    for logical_id, resource in resolved["Resources"].items():
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::IAM::InstanceProfile" and isinstance(
            props.get("InstanceProfileName"), str
        ):
            done += _ensure_profile(iam, logical_id, props)
    return done


def _ensure_role(iam: Any, logical_id: str, props: dict[str, Any]) -> list[str]:
    done = []
    name = props["RoleName"]
    try:
        iam.get_role(RoleName=name)
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]),
            Description=str(props.get("Description", "")),
            MaxSessionDuration=int(props.get("MaxSessionDuration", 3600)),
        )
        done.append(logical_id)
    inline = set(iam.list_role_policies(RoleName=name)["PolicyNames"])
    for policy in props.get("Policies") or []:
        if policy["PolicyName"] not in inline:
            iam.put_role_policy(
                RoleName=name,
                PolicyName=policy["PolicyName"],
                PolicyDocument=json.dumps(policy["PolicyDocument"]),
            )
            done.append(f"{logical_id}.Policies")
    attached = {p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]}
    for arn in props.get("ManagedPolicyArns") or []:
        if arn in attached:
            continue
        try:
            iam.attach_role_policy(RoleName=name, PolicyArn=arn)
        except ClientError as exc:
            if _code(exc) != "NoSuchEntity":
                raise
            # A moto server started without MOTO_IAM_LOAD_MANAGED_POLICIES=true has no AWS managed policies.
            log.warning("the endpoint has no policy %s: role %s is left without it", arn, name)
            continue
        done.append(f"{logical_id}.ManagedPolicyArns")
    return done


def _ensure_profile(iam: Any, logical_id: str, props: dict[str, Any]) -> list[str]:
    done = []
    name = props["InstanceProfileName"]
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        done.append(logical_id)
    present = {role["RoleName"] for role in profile.get("Roles", [])}
    for role in props.get("Roles") or []:
        if isinstance(role, str) and role not in present:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=role)
            done.append(f"{logical_id}.Roles")
    return done


# --- workloads ------------------------------------------------------------------------------------------


def _app_profile(iam: Any) -> str:
    """An application's instance profile: a role that can read one S3 bucket."""
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
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
        iam.create_role(RoleName=APP_PROFILE, AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=APP_PROFILE, PolicyName="read-assets", PolicyDocument=json.dumps(policy))
    except ClientError as exc:
        if _code(exc) != "EntityAlreadyExists":
            raise
    try:
        arn = iam.create_instance_profile(InstanceProfileName=APP_PROFILE)["InstanceProfile"]["Arn"]
        iam.add_role_to_instance_profile(InstanceProfileName=APP_PROFILE, RoleName=APP_PROFILE)
    except ClientError as exc:
        if _code(exc) != "EntityAlreadyExists":
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
    if spec.exempt:
        tags[EXEMPT_TAG] = "true"
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
    return str(ec2.run_instances(**request)["Instances"][0]["InstanceId"])


def _described(
    ec2: Any, account_id: str, region: str, specs: Sequence[InstanceSpec] = INSTANCES
) -> list[DemoInstance]:
    """The demo instances found in the account (running, tagged by the seed)."""
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag-key", "Values": [DEMO_TAG]},
            {"Name": "instance-state-name", "Values": ["running", "pending", "stopped"]},
        ]
    )
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
                        exempt=tags.get(EXEMPT_TAG) == "true",
                    )
                )
    order = [spec.label for spec in specs]
    return sorted(found, key=lambda i: order.index(i.label) if i.label in order else len(order))


def _workloads(
    session: boto3.Session, account_id: str, region: str, specs: Sequence[InstanceSpec] = INSTANCES
) -> tuple[dict[str, str], list[DemoInstance]]:
    ec2 = session.client("ec2")
    existing = _described(ec2, account_id, region, specs)
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
    for spec in specs:
        _launch(ec2, spec, networks[spec.vpc], image_id, profile_arn)
    return {kind: network["vpc_id"] for kind, network in networks.items()}, _described(
        ec2, account_id, region, specs
    )


# --- the whole organization -----------------------------------------------------------------------------


def seed_demo(
    *,
    region: str,
    execution_template: Path,
    target_role_name: str,
    external_id: str | None = None,
    base: boto3.Session | None = None,
    account_names: Sequence[str] = MEMBER_ACCOUNT_NAMES,
    instances: Sequence[InstanceSpec] = INSTANCES,
) -> DemoOrg:
    """Create the demo organization (or find the one already there) in the endpoint.

    `account_names` and `instances` default to the demo's two accounts of six instances each; a larger
    organization (the chaos test's) names more accounts and instances (every account gets them all).
    """
    base = base or boto3.Session(region_name=region)
    security_account = str(base.client("sts", region_name=region).get_caller_identity()["Account"])
    org = base.client("organizations", region_name=region)
    organization_id = _organization(org)
    worker_role_arn = _worker_role(base.client("iam", region_name=region))
    parameters = {"WorkerRoleArn": worker_role_arn, "RoleName": target_role_name}
    if external_id:
        parameters["ExternalId"] = external_id
    accounts = []
    for name, account_id in _member_accounts(org, account_names):
        session = member_session(account_id, region, base=base)
        role_arn, deployment = _execution_role(session, account_id, region, execution_template, parameters)
        vpcs, launched = _workloads(session, account_id, region, instances)
        accounts.append(DemoAccount(name, account_id, role_arn, deployment, vpcs, launched))
    return DemoOrg(organization_id, security_account, region, worker_role_arn, accounts)


def find_demo(*, region: str, target_role_name: str, base: boto3.Session | None = None) -> DemoOrg:
    """The demo organization an earlier `seed_demo` left in the endpoint (read only)."""
    base = base or boto3.Session(region_name=region)
    security_account = str(base.client("sts", region_name=region).get_caller_identity()["Account"])
    org = base.client("organizations", region_name=region)
    organization_id = str(org.describe_organization()["Organization"]["Id"])
    by_name = {
        account["Name"]: account["Id"]
        for page in org.get_paginator("list_accounts").paginate()
        for account in page["Accounts"]
    }
    accounts = []
    for name in MEMBER_ACCOUNT_NAMES:
        account_id = by_name[name]
        ec2 = member_session(account_id, region, base=base).client("ec2")
        instances = _described(ec2, account_id, region)
        vpcs = {spec.vpc: i.vpc_id for i in instances for spec in INSTANCES if spec.label == i.label}
        role_arn = f"arn:aws:iam::{account_id}:role/{target_role_name}"
        accounts.append(DemoAccount(name, account_id, role_arn, "found", vpcs, instances))
    worker_role_arn = f"arn:aws:iam::{security_account}:role/{WORKER_ROLE_NAME}"
    return DemoOrg(organization_id, security_account, region, worker_role_arn, accounts)


def summary(org: DemoOrg, *, api_url: str, api_key: str) -> str:
    """The demo organization's ids and ready-to-paste curl commands."""
    lines = [
        f"demo organization {org.organization_id} (security account {org.security_account_id}, "
        f"region {org.region})",
        f"worker role: {org.worker_role_arn}",
    ]
    for account in org.accounts:
        lines.append(
            f"account {account.account_id} ({account.name}): execution role {account.execution_role_arn}"
        )
        lines.append(f"  deployed with {account.deployment}")
        lines.append(f"  vpcs: {', '.join(f'{kind} {vpc}' for kind, vpc in account.vpcs.items())}")
        for instance in account.instances:
            notes = []
            if instance.instance_profile_arn is None:
                notes.append("no profile")
            if instance.exempt:
                notes.append("exempt")
            lines.append(
                f"  {instance.label:<10} {instance.instance_id}  vpc {instance.vpc_id}  "
                f"enis {','.join(instance.eni_ids)}" + (f"  ({', '.join(notes)})" if notes else "")
            )
    target = org.instance("web-1")
    body = json.dumps(
        {
            "instance_id": target.instance_id,
            "account_id": target.account_id,
            "region": target.region,
            "reason": "demo",
        }
    )
    lines += [
        "",
        "isolate a demo instance:",
        f"  curl -s -X POST {api_url}/isolate -H 'x-api-key: {api_key}' "
        f"-H 'content-type: application/json' -d '{body}'",
        "then follow it (isolation_id from the answer):",
        f"  curl -s {api_url}/isolations/ISOLATION_ID -H 'x-api-key: {api_key}'",
        f"  curl -s '{api_url}/isolations?instance_id={target.instance_id}' -H 'x-api-key: {api_key}'",
    ]
    return "\n".join(lines)
