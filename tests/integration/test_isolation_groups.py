"""Isolation groups by identity, as the adversary sees them: a member with `ec2:CreateSecurityGroup`,
`ec2:AuthorizeSecurityGroup*`, `ec2:CreateTags` and `ec2:DeleteTags` makes look-alike groups, or
changes the service's own; nothing of it makes an isolation fail, use a group the service did not create,
or count a cut that lets traffic through.

moto evaluates no IAM: `as_the_member_role` answers the member role's refusals as AWS would (its revoke
statement needs the group's `ec2-isolation:managed` tag; its tag statement writes that one tag only)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import assert_isolated, detail, isolate, record_of, request_isolation
from tests.support.aws import Faults, Member, Vpc

from local_stack.isolation_check import isolation_problems
from shared.store.isolation_groups import claims_of, groups_key

OPEN = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
MANAGED = {"Key": "ec2-isolation:managed", "Value": "true"}


def as_the_member_role(faults: Faults, member: Member) -> None:
    """The execution role's refusals, which moto does not evaluate: revoking a rule of a group without
    the managed tag, and writing any other tag on a security group, answer UnauthorizedOperation."""

    def untagged(params: dict[str, Any]) -> bool:
        [group] = member.ec2.describe_security_groups(GroupIds=[params["GroupId"]])["SecurityGroups"]
        return MANAGED not in group.get("Tags", [])

    def other_tags(params: dict[str, Any]) -> bool:
        groups = [r for r in params["Resources"] if r.startswith("sg-")]
        return bool(groups) and params["Tags"] != [MANAGED]

    for operation in ("RevokeSecurityGroupEgress", "RevokeSecurityGroupIngress"):
        faults.inject("ec2", operation, "UnauthorizedOperation", status=403, times=None, when=untagged)
    faults.inject("ec2", "CreateTags", "UnauthorizedOperation", status=403, times=None, when=other_tags)


def table_groups(stack: Stack, member: Member) -> dict[str, str]:
    """The isolation groups the service's table names in the member's region: VPC -> group id."""
    item = stack.store.item(groups_key(member.account_id, member.region))
    return {vpc: claim.group_id for vpc, claim in claims_of(item).items() if claim.group_id}


def look_alike(member: Member, vpc_id: str, name: str, *, tagged: bool) -> dict[str, Any]:
    """A member-made group named like the service's, open both ways, tagged managed or not."""
    tags = [{"ResourceType": "security-group", "Tags": [MANAGED]}] if tagged else []
    group_id = member.ec2.create_security_group(
        GroupName=name, Description="not ours", VpcId=vpc_id, TagSpecifications=tags
    )["GroupId"]
    member.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=OPEN)
    return described(member, group_id)


def described(member: Member, group_id: str) -> dict[str, Any]:
    [group] = member.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    return group


@pytest.mark.parametrize("tagged", [False, True], ids=["untagged", "tagged-managed"])
def test_look_alike_groups_made_before_the_first_isolation_are_never_used(
    stack: Stack, member: Member, faults: Faults, tagged: bool
) -> None:
    # Given a VPC where the member made, before any isolation, a group named `ec2-isolation` and one named
    # like the service's groups now are, both open, with or without the managed tag
    as_the_member_role(faults, member)
    vpc = member.vpc()
    instance = member.instance(vpc)
    old_name = look_alike(member, vpc.id, "ec2-isolation", tagged=tagged)
    new_name = look_alike(member, vpc.id, "ec2-isolation-0123456789abcdef", tagged=tagged)

    # When the first isolation of the VPC runs
    record = isolate(stack, member, instance)

    # Then it isolates with a group of the service's own, which its table names, and the look-alikes are
    # exactly as the member left them
    assert record["status"] == "ISOLATED", record
    assert isolation_problems(member.ec2, member.iam, instance) == []
    [group_id] = {group for groups in member.eni_groups(instance).values() for group in groups}
    assert table_groups(stack, member) == {vpc.id: group_id}
    assert record["isolation_groups"] == {vpc.id: group_id}
    assert group_id not in (old_name["GroupId"], new_name["GroupId"])
    assert described(member, group_id)["GroupName"].startswith("ec2-isolation-")
    for group in (old_name, new_name):
        assert described(member, group["GroupId"]) == group


def test_the_services_group_with_a_rule_added_and_its_tag_removed_is_repaired_by_the_next_isolation(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given the service's group of a VPC (the worker warm: it knows the group), from which someone removed
    # the managed tag before adding an egress rule
    as_the_member_role(faults, member)
    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    assert isolate(stack, member, first)["status"] == "ISOLATED"
    group_id = table_groups(stack, member)[vpc.id]
    member.ec2.delete_tags(Resources=[group_id], Tags=[{"Key": "ec2-isolation:managed"}])
    member.ec2.authorize_security_group_egress(GroupId=group_id, IpPermissions=OPEN)

    # When the next isolation of the VPC runs
    record = isolate(stack, member, second)

    # Then it put the tag back, revoked the rule, counted the cut only then, and says so
    assert record["status"] == "ISOLATED", record
    said = detail(record, "swap-security-groups")
    assert f"1 rule(s) found on {group_id} revoked" in said
    assert f"tag ec2-isolation:managed of {group_id} restored" in said
    group = described(member, group_id)
    assert (group["IpPermissions"], group["IpPermissionsEgress"]) == ([], [])
    assert MANAGED in group["Tags"]
    assert assert_isolated(member, second, vpc.id) == group_id


def test_two_first_isolations_in_one_vpc_racing_make_one_group(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two workers (two Lambda environments: no lock or cache in common) whose first isolations of
    # one VPC claim it at the same moment
    import worker.steps.network as network

    locks = threading.local()

    def own_lock(key: Any) -> threading.Lock:  # one environment per thread
        mine: dict[Any, threading.Lock] = locks.__dict__.setdefault("locks", {})
        return mine.setdefault(key, threading.Lock())

    monkeypatch.setattr(network, "_group_lock", own_lock)
    monkeypatch.setattr(network, "_groups", _PerThread())
    together = threading.Barrier(2, timeout=10)

    def claiming(params: dict[str, Any], **_: Any) -> None:
        if params.get("UpdateExpression") == "SET #vpc = :claim":
            together.wait()

    faults.hook("before-parameter-build.dynamodb.UpdateItem", claiming)
    vpc = member.vpc()
    instances = [member.instance(vpc), member.instance(vpc)]
    ids = [request_isolation(stack, member, instance) for instance in instances]
    messages = stack.receive()
    assert len(messages) == 2
    faults.count()

    # When each worker runs one of them, at once
    workers = [
        threading.Thread(target=stack.work, args=([message],), kwargs={"follow_up": False})
        for message in messages
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stack.drain()

    # Then one group was created, the table names it, and both instances are isolated with it
    assert faults.calls["ec2.CreateSecurityGroup"] == 1
    [group] = member.isolation_groups(vpc.id)
    assert table_groups(stack, member) == {vpc.id: group["GroupId"]}
    for isolation_id, instance in zip(ids, instances, strict=True):
        assert record_of(stack, isolation_id)["status"] == "ISOLATED"
        assert assert_isolated(member, instance, vpc.id) == group["GroupId"]


class _PerThread(dict):  # type: ignore[type-arg]
    """A cache of one environment per thread (two Lambda environments share none)."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def _mine(self) -> dict[Any, Any]:
        mine: dict[Any, Any] = self._local.__dict__.setdefault("cache", {})
        return mine

    def get(self, key: Any, default: Any = None) -> Any:
        return self._mine().get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._mine()[key] = value

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._mine().pop(key, default)

    def __iter__(self) -> Any:
        return iter(self._mine())

    def clear(self) -> None:
        self._mine().clear()


def left_by_an_earlier_version(stack: Stack, member: Member, vpc: Vpc) -> str:
    """What a version without the groups table left in `vpc`: its group `ec2-isolation` (tagged managed)
    with an instance on it, and the ISOLATED record whose step names it. The group's id."""
    from shared.lifecycle import Status
    from shared.models import IsolationRecord, Source, StepRecord, Target, new_isolation_id

    old_group = str(look_alike(member, vpc.id, "ec2-isolation", tagged=True)["GroupId"])
    member.ec2.revoke_security_group_ingress(GroupId=old_group, IpPermissions=OPEN)
    isolated = member.instance(vpc, enis=1)
    for eni in member.eni_groups(isolated):
        member.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=[old_group])
    record = IsolationRecord.queued(
        isolation_id=new_isolation_id(),
        source=Source.WEBHOOK,
        target=Target(account_id=member.account_id, region=member.region, instance_id=isolated),
    ).model_copy(
        update={
            "status": Status.ISOLATED,
            "steps": [
                StepRecord.done(
                    "ensure-isolation-sg",
                    f"created {old_group} ({vpc.id}), its default rules revoked with the cut",
                )
            ],
        }
    )
    stack.store.put_record(record)
    return old_group


def test_an_upgraded_deployment_adopts_only_the_groups_its_own_records_name(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given what a version without the groups table left: in one VPC its group `ec2-isolation` (tagged
    # managed) with an instance on it, and the ISOLATED record whose step names it; in another VPC a group
    # of the same name and tag that no record names (a member's)
    ours_vpc, theirs_vpc = member.vpc("10.1.0.0/16"), member.vpc("10.2.0.0/16")
    old_group = left_by_an_earlier_version(stack, member, ours_vpc)
    theirs = look_alike(member, theirs_vpc.id, "ec2-isolation", tagged=True)
    faults.count()

    # When the upgraded version isolates an instance in each VPC
    first, second = member.instance(ours_vpc), member.instance(theirs_vpc)
    assert isolate(stack, member, first)["status"] == "ISOLATED"
    assert isolate(stack, member, second)["status"] == "ISOLATED"

    # Then the group its own record named is adopted and used; the other VPC gets a group of the service's
    # own, the member's group untouched
    groups = table_groups(stack, member)
    assert groups[ours_vpc.id] == old_group
    assert {g for gs in member.eni_groups(first).values() for g in gs} == {old_group}
    assert groups[theirs_vpc.id] != theirs["GroupId"]
    assert {g for gs in member.eni_groups(second).values() for g in gs} == {groups[theirs_vpc.id]}
    assert described(member, theirs["GroupId"]) == theirs
    assert faults.calls["ec2.CreateSecurityGroup"] == 1


def test_the_sweepers_pass_adopts_earlier_groups_everywhere_and_spares_each_first_claim_the_reads(
    stack: Stack, member: Member, other_member: Member, faults: Faults
) -> None:
    # Given an earlier version's group in a VPC of one account, named by its own ISOLATED record
    vpc = member.vpc("10.1.0.0/16")
    old_group = left_by_an_earlier_version(stack, member, vpc)

    # When the sweeper makes its first run after the upgrade, then instances are isolated there and in
    # another account and region the service has never isolated in
    stack.sweep()
    faults.count()
    first, elsewhere = member.instance(vpc), other_member.instance(other_member.vpc())
    assert isolate(stack, member, first)["status"] == "ISOLATED"
    assert isolate(stack, other_member, elsewhere)["status"] == "ISOLATED"

    # Then the sweeper adopted the earlier group, which the isolation uses, and neither isolation went
    # through the records to adopt groups (no Query of the table's history on a first claim)
    assert table_groups(stack, member)[vpc.id] == old_group
    assert {g for gs in member.eni_groups(first).values() for g in gs} == {old_group}
    assert faults.calls["dynamodb.Query"] == 0
