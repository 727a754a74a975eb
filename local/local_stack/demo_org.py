"""A demo organization to isolate instances in: `ec2-isolation serve --seed-demo` and `demo`.

In the stack's own (security) account: an organization and the worker's role
(`local_stack.organization`). In each member account: iam-execution-role.yml deployed through
CloudFormation (`local_stack.member_role`) and the demo's workloads (`local_stack.workloads`).

Idempotent: against an endpoint that already has the demo organization, it is found and reused. The
member stacks are deployed without `CentralEventBusArn`: moto's cross-account event forwarding drops
the event's `resources`, so tag events are put on the stack's own bus directly (as they arrive there
once forwarded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from local_stack.member_role import deploy_member_role
from local_stack.organization import (
    MEMBER_ACCOUNT_NAMES,
    accounts_by_name,
    member_accounts,
    member_session,
    organization,
)
from local_stack.workloads import INSTANCES, DemoInstance, InstanceSpec, described, workloads


@dataclass
class DemoAccount:
    name: str
    account_id: str
    execution_role_arn: str
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


def seed_demo(
    *,
    region: str,
    execution_template: Path,
    target_role_name: str,
    worker_role_arn: str,
    external_id: str | None = None,
    base: boto3.Session | None = None,
    account_names: Sequence[str] = MEMBER_ACCOUNT_NAMES,
    instances: Sequence[InstanceSpec] = INSTANCES,
) -> DemoOrg:
    """Create the demo organization (or find the one already there) in the endpoint.

    `worker_role_arn`: the stack's worker role, the principal every member's execution role trusts.
    `account_names` and `instances` default to the demo's two accounts of six instances each; a larger
    organization (the chaos test's) names more accounts and instances (every account gets them all).
    """
    base = base or boto3.Session(region_name=region)
    security_account = str(base.client("sts", region_name=region).get_caller_identity()["Account"])
    org = base.client("organizations", region_name=region)
    organization_id = organization(org)
    # The named IAM resources in this region (a StackSet's IamRegion): the demo has one region.
    parameters = {"WorkerRoleArn": worker_role_arn, "RoleName": target_role_name, "IamRegion": region}
    if external_id:
        parameters["ExternalId"] = external_id
    accounts = []
    for name, account_id in member_accounts(org, account_names):
        session = member_session(account_id, region, base=base)
        role_arn = deploy_member_role(session, execution_template, parameters)
        vpcs, launched = workloads(session, account_id, region, instances)
        accounts.append(DemoAccount(name, account_id, role_arn, vpcs, launched))
    return DemoOrg(organization_id, security_account, region, worker_role_arn, accounts)


def find_demo(*, region: str, target_role_name: str, base: boto3.Session | None = None) -> DemoOrg:
    """The demo organization an earlier `seed_demo` left in the endpoint (read only)."""
    base = base or boto3.Session(region_name=region)
    security_account = str(base.client("sts", region_name=region).get_caller_identity()["Account"])
    org = base.client("organizations", region_name=region)
    organization_id = str(org.describe_organization()["Organization"]["Id"])
    by_name = accounts_by_name(org)
    accounts = []
    for name in MEMBER_ACCOUNT_NAMES:
        account_id = by_name[name]
        ec2 = member_session(account_id, region, base=base).client("ec2")
        instances = described(ec2, account_id, region)
        vpcs = {spec.vpc: i.vpc_id for i in instances for spec in INSTANCES if spec.label == i.label}
        role_arn = f"arn:aws:iam::{account_id}:role/{target_role_name}"
        accounts.append(DemoAccount(name, account_id, role_arn, vpcs, instances))
    trust = (
        member_session(accounts[0].account_id, region, base=base)
        .client("iam")
        .get_role(RoleName=target_role_name)["Role"]["AssumeRolePolicyDocument"]
    )
    worker_role_arn = str(trust["Statement"][0]["Principal"]["AWS"])
    return DemoOrg(organization_id, security_account, region, worker_role_arn, accounts)
