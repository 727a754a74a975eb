"""The worker, called as Lambda calls it (SQS batches), against moto: the record and the EC2 state."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conftest import MEMBER_ACCOUNT, OTHER_ACCOUNT, Stack, build_stack
from tests.support.aws import ISOLATION_NAME, Faults, Member

from local_stack.isolation_check import isolation_problems
from local_stack.sample_events import guardduty_finding, tag_change
from worker.steps import HOLD, PLAN


def request_isolation(stack: Stack, member: Member, instance_id: str, **fields: Any) -> str:
    """POST /isolate for a member's instance, accepted as a new isolation (202); its id."""
    status, body = stack.api(
        "POST",
        "/isolate",
        body={"instance_id": instance_id, "account_id": member.account_id, "region": member.region, **fields},
    )
    assert status == 202, body
    return str(body["isolation_id"])


def isolate(stack: Stack, member: Member, instance_id: str, **fields: Any) -> dict[str, Any]:
    """POST /isolate, run the worker until the queue is empty, return the record."""
    isolation_id = request_isolation(stack, member, instance_id, **fields)
    stack.drain()
    return record_of(stack, isolation_id)


def record_of(stack: Stack, isolation_id: str) -> dict[str, Any]:
    status, record = stack.api("GET", f"/isolations/{isolation_id}")
    assert status == 200, record
    return record


def records_for(stack: Stack, instance_id: str) -> list[dict[str, Any]]:
    status, body = stack.api("GET", "/isolations", query={"instance_id": instance_id})
    assert status == 200
    return body["items"]


def steps(record: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in record["steps"]}


def in_plan_order(record: dict[str, Any]) -> bool:
    """The record's steps are the plan's, in its order, except the steps of `HOLD` (next to each other in
    the plan), which run side by side: in the order they were done."""
    names = [step["name"] for step in record["steps"]]
    planned = [step.name for step in PLAN]
    together = [step.name for step in HOLD]
    start = planned.index(together[0])
    end = start + len(together)
    return (
        names[:start] == planned[:start]
        and sorted(names[start:end]) == sorted(together)
        and names[end:] == planned[end:]
    )


def detail(record: dict[str, Any], name: str) -> str:
    """The detail of the step's last outcome."""
    return str([step for step in record["steps"] if step["name"] == name][-1]["detail"])


def assert_isolated(member: Member, instance_id: str, vpc_id: str) -> str:
    """What isolated means, observed in the member account, with the VPC's one isolation group.
    Returns the isolation group id."""
    assert isolation_problems(member.ec2, member.iam, instance_id) == []
    groups = member.isolation_groups(vpc_id)
    assert len(groups) == 1, "one isolation group per VPC"
    group = groups[0]
    for eni, eni_groups in member.eni_groups(instance_id).items():
        assert eni_groups == [group["GroupId"]], f"{eni} must have only the isolation group"
    assert (
        member.profile_of(instance_id)
        == f"arn:aws:iam::{member.account_id}:instance-profile/{ISOLATION_NAME}"
    )
    return str(group["GroupId"])


# --- the happy paths ---------------------------------------------------------------------------------


def test_two_eni_instance_is_isolated_network_first_and_recorded(stack: Stack, member: Member) -> None:
    # Given a running instance with two ENIs, an application profile and an open security group
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2)
    before = member.eni_groups(instance)

    # When it is isolated through the webhook
    record = isolate(stack, member, instance, reason="C2 beaconing", requested_by="soc@example.com")

    # Then the record says ISOLATED with each step, network first, and keeps the prior state
    assert record["status"] == "ISOLATED", record
    assert in_plan_order(record)
    assert steps(record) == {step.name: "done" for step in PLAN} | {
        "leave-auto-scaling-and-load-balancers": "skipped"  # in no group, behind no load balancer
    }
    assert record["contained_at"] is not None
    assert record["created_at"] <= record["contained_at"] <= record["updated_at"]
    assert record["attempts"] == 1 and record["error"] is None
    prior = record["prior_state"]
    assert prior["vpc_id"] == vpc.id
    assert {eni["id"]: eni["security_group_ids"] for eni in prior["network_interfaces"]} == before
    assert prior["instance_profile_arn"] == f"arn:aws:iam::{MEMBER_ACCOUNT}:instance-profile/app"
    assert prior["role_name"] == "app"
    assert (prior["autoscaling_group"], prior["target_groups"], prior["load_balancers"]) == (None, [], [])
    assert prior["shutdown_behavior"] == "terminate"
    assert (prior["termination_protection"], prior["stop_protection"]) == (False, False)
    assert {v["id"]: v["delete_on_termination"] for v in prior["volumes"]} == {
        volume: True for volume in member.volumes(instance)
    }
    assert record["inherits_from"] is None
    assert {s["volume_id"] for s in record["evidence"]["snapshots"]} == set(member.volumes(instance))
    assert record["reason"] == "C2 beaconing" and record["requested_by"] == "soc@example.com"
    # And the instance is isolated as docs/record.md's steps say
    assert_isolated(member, instance, vpc.id)
    tags = member.tags(instance)
    assert tags["ec2-isolation:id"] == record["isolation_id"]
    assert tags["ec2-isolation:source"] == "webhook"
    assert all(key.startswith("ec2-isolation:") for key in tags)


def test_multi_eni_uses_the_per_interface_call_never_the_instance_call(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a 3-ENI instance, and the AWS refusal of ModifyInstanceAttribute(Groups) on multi-ENI instances
    vpc = member.vpc(subnets=2)
    instance = member.instance(vpc, enis=3)
    refusal = faults.inject(
        "ec2",
        "ModifyInstanceAttribute",
        "InvalidInstanceID",
        times=None,
        when=lambda params: "Groups" in params,
    )
    faults.count()

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then every ENI got the group through ModifyNetworkInterfaceAttribute, one call each
    assert record["status"] == "ISOLATED", record
    assert refusal.seen == 0
    assert faults.calls["ec2.ModifyNetworkInterfaceAttribute"] == 3
    assert_isolated(member, instance, vpc.id)


def test_non_default_ipv6_vpc_gets_a_group_without_any_egress(stack: Stack, member: Member) -> None:
    # Given an instance in a non-default VPC with an IPv6 CIDR, and a same-named group in another VPC
    decoy = member.vpc("10.9.0.0/16")
    member.ec2.create_security_group(GroupName="ec2-isolation", Description="decoy", VpcId=decoy.id)
    vpc = member.vpc("10.20.0.0/16", ipv6=True)
    instance = member.instance(vpc)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then its VPC has its own isolation group with no IPv4 or IPv6 egress, and the decoy is untouched
    assert record["status"] == "ISOLATED", record
    group_id = assert_isolated(member, instance, vpc.id)
    assert member.isolation_groups(decoy.id) == []
    assert group_id not in {
        g["GroupId"]
        for g in member.ec2.describe_security_groups()["SecurityGroups"]
        if g.get("VpcId") == decoy.id
    }
    assert "default rule(s) of the new group" in detail(record, "swap-security-groups")


def test_ipv6_default_egress_is_revoked_as_described(stack: Stack, member: Member, faults: Faults) -> None:
    # Given a VPC with an IPv6 CIDR, where a new group gets IPv4 and IPv6 allow-all egress
    vpc = member.vpc("10.30.0.0/16", ipv6=True)
    instance = member.instance(vpc)
    revoked: list[dict[str, Any]] = []
    faults.hook(
        "before-parameter-build.ec2.RevokeSecurityGroupEgress", lambda params, **_: revoked.append(params)
    )

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the IPv6 rule was revoked with the IPv4 one: the group has no egress at all
    assert record["status"] == "ISOLATED", record
    sent = [rule for call in revoked for rule in call["IpPermissions"]]
    assert any(rule.get("Ipv6Ranges") == [{"CidrIpv6": "::/0"}] for rule in sent)
    assert any(rule.get("IpRanges") == [{"CidrIp": "0.0.0.0/0"}] for rule in sent)
    assert_isolated(member, instance, vpc.id)


def test_a_new_groups_default_rules_are_revoked_while_the_interfaces_are_cut(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a VPC with no isolation group yet, and a revocation of egress that waits (a few seconds at
    # most) for an interface's cut to begin
    vpc = member.vpc("10.40.0.0/16", ipv6=True)
    instance = member.instance(vpc, enis=2)
    cutting, seen_by_the_revoke, revoked_at = threading.Event(), [], []
    faults.hook(
        "before-call.ec2.RevokeSecurityGroupEgress",
        lambda **_: seen_by_the_revoke.append(cutting.wait(timeout=5)),
    )
    faults.hook("after-call.ec2.RevokeSecurityGroupEgress", lambda **_: revoked_at.append(time.time()))
    faults.hook("before-call.ec2.ModifyNetworkInterfaceAttribute", lambda **_: cutting.set())

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the interfaces were cut while the rules were revoked (one after the other, the wait runs out),
    # the instance was contained only once they were gone, and the record says so
    assert seen_by_the_revoke[0] is True
    assert record["status"] == "ISOLATED" and record["attempts"] == 1
    contained_at = datetime.fromisoformat(record["contained_at"].replace("Z", "+00:00")).timestamp()
    assert contained_at + 0.001 >= revoked_at[-1]
    assert "2 default rule(s) of the new group" in detail(record, "swap-security-groups")
    assert_isolated(member, instance, vpc.id)


def test_a_new_group_that_keeps_its_rules_contains_nothing_and_is_repaired_next_time(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a VPC with no isolation group yet, and a role that may not revoke egress this time
    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    refusal = faults.inject("ec2", "RevokeSecurityGroupEgress", "UnauthorizedOperation", times=1, status=403)

    # When an instance is isolated
    record = isolate(stack, member, first)

    # Then it is not called contained: its interfaces have the group, but the group still lets traffic out
    assert refusal.raised == 1
    assert record["status"] == "FAILED" and record["contained_at"] is None
    assert record["error"]["code"] == "UnauthorizedOperation"
    assert steps(record)["swap-security-groups"] == "failed"
    [group] = member.isolation_groups(vpc.id)
    assert group["IpPermissionsEgress"], "the new group's default egress is still there"

    # And when the next instance of the VPC is isolated (the worker still warm), the group is not taken
    # from the cache as it is: its rules are revoked while the interfaces are cut
    faults.count()
    record = isolate(stack, member, second)
    assert record["status"] == "ISOLATED", record
    assert "rule(s) found on" in detail(record, "swap-security-groups")
    assert faults.calls["ec2.CreateSecurityGroup"] == 0
    assert_isolated(member, second, vpc.id)


def test_second_instance_in_the_same_vpc_reuses_the_group(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given one instance already isolated in a VPC
    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    isolate(stack, member, first)

    # When a second instance of that VPC is isolated (warm worker: cached group and credentials)
    faults.count()
    record = isolate(stack, member, second)

    # Then the same group serves both, found in the cache: no STS, no lookup; one describe of the group
    # by id (its check, while the interface is cut)
    assert record["status"] == "ISOLATED"
    assert steps(record)["ensure-isolation-sg"] == "already"
    assert assert_isolated(member, second, vpc.id) == assert_isolated(member, first, vpc.id)
    assert faults.calls["sts.AssumeRole"] == 0
    assert faults.calls["ec2.DescribeSecurityGroups"] == 1
    assert faults.calls["ec2.CreateSecurityGroup"] == 0


def test_cold_worker_finds_the_existing_group_by_vpc(stack: Stack, member: Member) -> None:
    # Given an isolation group made by an earlier (now cold) worker
    from worker.steps import forget_caches

    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    isolate(stack, member, first)
    forget_caches()

    # When another instance of the VPC is isolated
    record = isolate(stack, member, second)

    # Then the group is found by VPC and reused, not duplicated
    assert record["status"] == "ISOLATED"
    assert steps(record)["ensure-isolation-sg"] == "already"
    assert len(member.isolation_groups(vpc.id)) == 1


def test_a_cold_worker_looks_up_the_groups_while_it_describes_the_instance(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a worker that knows no isolation group of the account yet, a group made by an earlier worker,
    # and a DescribeInstances that waits (a few seconds at most) for a group lookup to begin
    from worker.steps import forget_caches

    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    isolate(stack, member, first)
    forget_caches()
    looking, seen_by_the_describe, group_reads = threading.Event(), [], []

    def read(params: dict[str, Any], **_: Any) -> None:
        if params["Key"]["pk"]["S"].startswith("groups#"):
            group_reads.append(params)
            looking.set()

    faults.hook(
        "before-call.ec2.DescribeInstances",
        lambda **_: seen_by_the_describe.append(looking.wait(timeout=5)),
    )
    faults.hook("before-parameter-build.dynamodb.GetItem", read)
    faults.count()

    # When it isolates another instance of the VPC
    record = isolate(stack, member, second)

    # Then the service's table was read for the region's groups while the instance was described (one
    # after the other, the wait runs out), once, and the group was reused: no lookup by name at all
    assert seen_by_the_describe[0] is True
    assert record["status"] == "ISOLATED"
    assert steps(record)["ensure-isolation-sg"] == "already"
    assert len(group_reads) == 1
    assert faults.calls["ec2.DescribeSecurityGroups"] == 1  # the check of the group, by id
    assert faults.calls["ec2.CreateSecurityGroup"] == 0
    assert_isolated(member, second, vpc.id)


def test_a_failed_look_ahead_leaves_the_lookup_to_the_step(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a first isolation whose read of the region's groups fails
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject(
        "dynamodb",
        "GetItem",
        "ProvisionedThroughputExceededException",
        times=1,
        when=lambda params: params["Key"]["pk"]["S"].startswith("groups#"),
    )
    faults.count()

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the step looked up its VPC's group itself, created it, and the instance is isolated at once
    assert record["status"] == "ISOLATED" and record["attempts"] == 1
    assert steps(record)["ensure-isolation-sg"] == "done"
    assert faults.calls["ec2.CreateSecurityGroup"] == 1
    assert_isolated(member, instance, vpc.id)


def test_tampered_group_is_repaired(stack: Stack, member: Member) -> None:
    # Given an isolation group someone added rules to
    from worker.steps import forget_caches

    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    isolate(stack, member, first)
    group_id = member.isolation_groups(vpc.id)[0]["GroupId"]
    member.ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )
    forget_caches()

    # When the next isolation in that VPC runs
    record = isolate(stack, member, second)

    # Then the rule is gone again, and the record says so
    assert record["status"] == "ISOLATED", record
    assert f"1 rule(s) found on {group_id} revoked" in detail(record, "swap-security-groups")
    assert_isolated(member, second, vpc.id)


def test_instance_without_a_profile_gets_the_isolation_profile(stack: Stack, member: Member) -> None:
    # Given an instance with no instance profile
    vpc = member.vpc()
    instance = member.instance(vpc, profile=None)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the isolation profile is associated, and the prior state says there was none
    assert record["status"] == "ISOLATED"
    assert record["prior_state"]["instance_profile_arn"] is None
    assert "had no profile" in detail(record, "swap-instance-profile")
    assert steps(record)["deny-instance-credentials"] == "skipped"
    assert "no instance profile" in detail(record, "deny-instance-credentials")
    assert_isolated(member, instance, vpc.id)


def test_missing_isolation_profile_is_created_with_deny_all(stack: Stack, aws_mock: None) -> None:
    # Given a member account where the StackSet did not create the isolation profile
    account = Member(OTHER_ACCOUNT, "eu-central-1")
    vpc = account.vpc()
    instance = account.instance(vpc)

    # When an instance there is isolated
    record = isolate(stack, account, instance)

    # Then the worker created the role (AWSDenyAll attached) and the profile, and used it
    assert record["status"] == "ISOLATED", record
    assert "created" in detail(record, "swap-instance-profile")
    policies = account.iam.list_attached_role_policies(RoleName=ISOLATION_NAME)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in policies] == ["arn:aws:iam::aws:policy/AWSDenyAll"]
    assert_isolated(account, instance, vpc.id)


def test_rerun_on_an_isolated_instance_changes_nothing(stack: Stack, member: Member, faults: Faults) -> None:
    # Given an isolated instance
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)
    state = (member.eni_groups(instance), member.profile_of(instance))

    # When the same isolation's message is delivered again
    faults.count()
    stack.send(
        {
            "kind": "webhook",
            "isolation_id": first["isolation_id"],
            "request": {"instance_id": instance, "account_id": member.account_id, "region": member.region},
        }
    )
    stack.drain()

    # Then it is acknowledged without touching the instance
    # (one read of the instance: the worker learns the record has ended from its only write before a change)
    assert [c for c in faults.calls if c.startswith(("ec2.", "iam."))] == ["ec2.DescribeInstances"]
    assert record_of(stack, first["isolation_id"]) == first
    assert (member.eni_groups(instance), member.profile_of(instance)) == state


def test_new_request_on_an_isolated_instance_records_already(stack: Stack, member: Member) -> None:
    # Given an isolated instance
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)
    from worker.steps import forget_caches

    forget_caches()

    # When someone asks again
    second = isolate(stack, member, instance)

    # Then every step is `already` (none applies that did not before), and the tags point at the newest
    assert second["status"] == "ISOLATED"
    assert steps(second) == {step.name: "already" for step in PLAN} | {
        "leave-auto-scaling-and-load-balancers": "skipped",
        "tag-instance": "done",
    }
    assert member.tags(instance)["ec2-isolation:id"] == second["isolation_id"]
    assert first["isolation_id"] in second["steps"][-1]["detail"]


# --- permanent errors: FAILED, acknowledged ----------------------------------------------------------


def test_unknown_instance_fails_permanently(stack: Stack, member: Member) -> None:
    # When an instance that does not exist is isolated
    record = isolate(stack, member, "i-0123456789abcdef0")

    # Then the record is FAILED with InstanceNotFound and the message is gone (not retried)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "InstanceNotFound"
    assert record["steps"] == [] and record["prior_state"] is None
    assert stack.queued() == 0 and stack.dead_letters() == []


def test_role_not_assumable_fails_permanently(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the member account's role refuses the worker
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("sts", "AssumeRole", "AccessDenied", times=None, status=403)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED with RoleNotAssumable, naming the role, and nothing changed in the account
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "RoleNotAssumable"
    assert "ec2-isolation-execution" in record["error"]["message"]
    assert member.isolation_groups(vpc.id) == []
    assert stack.queued() == 0


def test_unauthorized_step_fails_and_shows_what_was_done(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given the role lacks one permission (termination protection)
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject(
        "ec2",
        "ModifyInstanceAttribute",
        "UnauthorizedOperation",
        times=None,
        status=403,
        when=lambda params: "DisableApiTermination" in params,
    )

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED, with the steps before it done, and the failed step recorded
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "UnauthorizedOperation"
    assert steps(record) == {
        "ensure-isolation-sg": "done",
        "swap-security-groups": "done",
        "deny-instance-credentials": "done",
        "leave-auto-scaling-and-load-balancers": "skipped",
        "swap-instance-profile": "done",
        "stop-on-shutdown": "done",
        "keep-volumes": "done",
        "enable-stop-protection": "done",
        "enable-termination-protection": "failed",
    }
    assert record["contained_at"] is not None
    assert stack.queued() == 0


def test_terminated_instance_fails(stack: Stack, member: Member) -> None:
    # Given a terminated instance
    vpc = member.vpc()
    instance = member.instance(vpc)
    member.ec2.terminate_instances(InstanceIds=[instance])

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED: there is nothing to contain
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "InstanceTerminated"


def test_worker_enforces_the_allow_list(
    aws_mock: None, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker allowed only one account, and a message for another that did not come through ingest
    stack = build_stack(template, monkeypatch, ALLOWED_ACCOUNT_IDS="999999999999")
    member = Member(MEMBER_ACCOUNT, "eu-west-1")
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = "iso-" + "a" * 32
    stack.send(
        {
            "kind": "webhook",
            "isolation_id": isolation_id,
            "request": {"instance_id": instance, "account_id": MEMBER_ACCOUNT, "region": "eu-west-1"},
        }
    )

    # When the worker takes it
    stack.drain()

    # Then it is recorded FAILED and nothing was done in that account
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["error"]["code"] == "AccountNotAllowed"
    assert member.isolation_groups(vpc.id) == []


# --- transient errors: retried, bounded ---------------------------------------------------------------


def test_iam_propagation_is_waited_out_in_process(
    stack: Stack, member: Member, faults: Faults, _no_real_sleep: list[float]
) -> None:
    # Given IAM still propagating the profile for the first 3 attempts
    vpc = member.vpc()
    instance = member.instance(vpc)
    lag = faults.inject("ec2", "ReplaceIamInstanceProfileAssociation", "InvalidParameterValue", times=3)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the step backed off (exponentially) and succeeded within the same attempt
    assert record["status"] == "ISOLATED" and record["attempts"] == 1
    assert lag.raised == 3
    assert _no_real_sleep[:3] == [0.25, 0.5, 1.0]
    assert_isolated(member, instance, vpc.id)


def test_iam_propagation_past_the_bound_goes_back_to_the_queue(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given IAM propagation outlasting the in-process budget of one attempt
    vpc = member.vpc()
    instance = member.instance(vpc)
    lag = faults.inject("ec2", "ReplaceIamInstanceProfileAssociation", "InvalidParameterValue", times=6)
    isolation_id = request_isolation(stack, member, instance)

    # When the worker and then the follow-up run once
    assert stack.work(follow_up=False)["batchItemFailures"] == []
    [response] = stack.follow_up(rounds=1)

    # Then the follow-up's item failed (SQS will retry), the network is already cut, and the record says so
    assert len(response["batchItemFailures"]) == 1
    record = record_of(stack, isolation_id)
    assert record["status"] == "IN_PROGRESS"
    assert record["contained_at"] is not None
    assert steps(record)["swap-instance-profile"] == "failed"
    assert "will retry" in record["steps"][-1]["detail"]

    # And when the follow-up comes back after its retry delay, IAM has caught up and it finishes (the
    # containment's one attempt: the follow-up's receives are not attempts of the record)
    stack.let_time_pass()
    stack.drain()
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED" and record["attempts"] == 1
    assert lag.raised == 6
    assert_isolated(member, instance, vpc.id)


def test_group_not_yet_visible_after_create_is_retried(stack: Stack, member: Member, faults: Faults) -> None:
    # Given EC2's eventual consistency right after CreateSecurityGroup
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "InvalidGroup.NotFound", times=2)
    faults.inject("ec2", "RevokeSecurityGroupEgress", "InvalidGroup.NotFound", times=1)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then it is isolated in one attempt
    assert record["status"] == "ISOLATED" and record["attempts"] == 1
    assert_isolated(member, instance, vpc.id)


def test_throttling_is_retried_then_succeeds(stack: Stack, member: Member, faults: Faults) -> None:
    # Given EC2 throttling DescribeInstances (through botocore's own retries) on the first receive
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("ec2", "DescribeInstances", "RequestLimitExceeded", times=3, status=503)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the second receive isolates it
    assert record["status"] == "ISOLATED"
    assert_isolated(member, instance, vpc.id)


def test_retries_exhausted_end_failed_and_in_the_dlq(stack: Stack, member: Member, faults: Faults) -> None:
    # Given EC2 throttling every call to modify an interface
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "RequestLimitExceeded", times=None, status=503)

    # When the message is received as often as the redrive policy allows
    record = isolate(stack, member, instance)
    stack.receive()  # the receive after the last one moves it to the DLQ

    # Then the record is FAILED with the last error, nothing is left IN_PROGRESS, and the message is in the DLQ
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "RequestLimitExceeded"
    assert f"after {stack.max_receive_count} attempts" in record["error"]["message"]
    assert record["attempts"] == stack.max_receive_count
    assert record["prior_state"] is not None
    dead = stack.dead_letters()
    assert len(dead) == 1 and json.loads(dead[0]["Body"])["isolation_id"] == record["isolation_id"]

    # And a redrive of the DLQ message, once EC2 recovers, resumes the same record
    faults.clear()
    stack.send(dead[0]["Body"])
    stack.drain()
    record = record_of(stack, record["isolation_id"])
    assert record["status"] == "ISOLATED" and record["error"] is None
    assert_isolated(member, instance, vpc.id)


def test_invalid_message_goes_to_the_dlq_without_blocking_the_batch(stack: Stack, member: Member) -> None:
    # Given a batch with garbage, an unknown event and a real request
    vpc = member.vpc()
    instance = member.instance(vpc)
    stack.send("not json {")
    stack.send({"source": "aws.s3", "detail-type": "Object Created", "detail": {}})
    isolation_id = request_isolation(stack, member, instance)

    # When the worker runs until the queue is empty
    stack.drain(rounds=stack.max_receive_count + 3)
    stack.receive()

    # Then the request is isolated and both bad messages are in the DLQ
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"
    assert sorted(m["Body"][:10] for m in stack.dead_letters()) == sorted(["not json {", '{"source":'])


# --- triggers ----------------------------------------------------------------------------------------


def test_guardduty_finding_isolates_with_the_finding_on_record(stack: Stack, member: Member) -> None:
    # Given a GuardDuty finding about a member instance, delivered on the administrator's bus
    vpc = member.vpc()
    instance = member.instance(vpc)
    event = guardduty_finding(
        account_id=member.account_id,
        region=member.region,
        instance_id=instance,
        severity=8.5,
        finding_type="UnauthorizedAccess:EC2/SSHBruteForce",
        administrator_account="123456789012",
    )

    # When the worker takes it
    stack.send(event)
    stack.drain()

    # Then the instance is isolated, recorded with source guardduty and the finding
    [record] = records_for(stack, instance)
    assert record["status"] == "ISOLATED" and record["source"] == "guardduty"
    assert record["account_id"] == member.account_id  # from detail, not the envelope's administrator
    assert record["trigger"]["finding_id"] == event["detail"]["id"]
    assert record["trigger"]["finding_type"] == "UnauthorizedAccess:EC2/SSHBruteForce"
    assert record["trigger"]["severity"] == 8.5
    assert member.tags(instance)["ec2-isolation:source"] == "guardduty"
    assert_isolated(member, instance, vpc.id)


def test_findings_for_an_instance_in_flight_join_it(stack: Stack, member: Member) -> None:
    # Given an isolation of an instance queued by the webhook, its message not yet processed
    vpc = member.vpc()
    instance = member.instance(vpc)
    request_isolation(stack, member, instance)
    [webhook_message] = stack.receive()

    # When three findings about it are processed first
    for _ in range(3):
        stack.send(
            guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
        )
    stack.drain()

    # Then they joined it: no record of their own, and the one isolation runs when its message comes
    assert [r["source"] for r in records_for(stack, instance)] == ["webhook"]
    stack.work([webhook_message])
    [record] = records_for(stack, instance)
    assert record["status"] == "ISOLATED" and record["source"] == "webhook"


def test_finding_within_the_coalesce_window_is_recorded_without_calls(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance isolated a moment ago
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)

    # When GuardDuty re-publishes its finding
    faults.count()
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()

    # Then a record says ISOLATED with one `coalesced` step naming the earlier isolation, no call to the account
    newest = records_for(stack, instance)[0]
    assert newest["isolation_id"] != first["isolation_id"]
    assert newest["status"] == "ISOLATED" and newest["source"] == "guardduty"
    assert [(s["name"], s["status"]) for s in newest["steps"]] == [("coalesced", "already")]
    assert first["isolation_id"] in newest["steps"][0]["detail"]
    # (only the service's own table, queue and bus: its outcome event)
    assert not [c for c in faults.calls if not c.startswith(("dynamodb.", "sqs.", "eventbridge."))]


def test_the_same_event_delivered_twice_isolates_once(stack: Stack, member: Member) -> None:
    # Given one finding event delivered twice (at-least-once delivery)
    vpc = member.vpc()
    instance = member.instance(vpc)
    event = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    stack.send(event)
    stack.send(event)

    # When the worker runs
    stack.drain()

    # Then there is one record for it
    assert len(records_for(stack, instance)) == 1


def test_tag_event_isolates_from_the_arn(stack: Stack, member: Member) -> None:
    # Given an isolate=true tag event as moto delivers it (no envelope account)
    vpc = member.vpc()
    instance = member.instance(vpc)

    # When the worker takes it
    stack.send(
        tag_change(
            account_id=member.account_id, region=member.region, instance_id=instance, with_account=False
        )
    )
    stack.drain()

    # Then it is isolated with source tag
    [record] = records_for(stack, instance)
    assert record["status"] == "ISOLATED" and record["source"] == "tag"
    assert record["trigger"]["resource_arn"].endswith(instance)
    assert_isolated(member, instance, vpc.id)


def test_exempt_instance_is_skipped_for_triggers_but_not_for_a_person(stack: Stack, member: Member) -> None:
    # Given an instance the security account exempted (POST /exemptions; a tag exempts nothing)
    vpc = member.vpc()
    instance = member.instance(vpc)
    before = member.eni_groups(instance)
    status, exemption = stack.api(
        "POST",
        "/exemptions",
        body={
            "account_id": member.account_id,
            "instance_id": instance,
            "reason": "load test",
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    assert status == 201, exemption

    # When a finding names it
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()

    # Then it is SKIPPED, saying why, and untouched
    [skipped] = records_for(stack, instance)
    assert skipped["status"] == "SKIPPED"
    assert exemption["exemption_id"] in skipped["steps"][0]["detail"]
    assert member.eni_groups(instance) == before

    # And when a person asks through the webhook, it is isolated anyway
    record = isolate(stack, member, instance)
    assert record["status"] == "ISOLATED"
    assert_isolated(member, instance, vpc.id)


def test_warm_path_to_containment_is_describe_one_write_and_one_call_per_eni(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a warm worker (credentials and the VPC's isolation group cached) and a 2-ENI instance, in a
    # deployment whose slots all name their latest record (the sweeper's backfill is done)
    stack.sweep()
    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc, enis=2)
    isolate(stack, member, first)
    isolation_id = request_isolation(stack, member, second)

    # When the worker isolates it
    faults.count()
    stack.drain()

    # Then the calls up to the network cut are: one describe and, meanwhile, the consistent read of the
    # instance's slot (its episode, from the service's own table); the prior-state write (the record
    # becomes the instance's latest in the same transaction; on the message's first receive, the record
    # as it left it is known without a read); one call per ENI; and beside the cuts (begun with them, not
    # waited for before them) one describe of the group by id, its check
    calls = faults.log
    last_cut = max(i for i, call in enumerate(calls) if call == "ec2.ModifyNetworkInterfaceAttribute")
    up_to_the_cut = [call for call in calls[: last_cut + 1] if call != "ec2.DescribeSecurityGroups"]
    assert sorted(up_to_the_cut[:2]) == ["dynamodb.GetItem", "ec2.DescribeInstances"]
    assert up_to_the_cut[2:] == [
        "dynamodb.TransactWriteItems",
        "ec2.ModifyNetworkInterfaceAttribute",
        "ec2.ModifyNetworkInterfaceAttribute",
    ]
    assert calls.index("ec2.DescribeSecurityGroups") > calls.index("dynamodb.TransactWriteItems")
    assert calls.count("ec2.DescribeSecurityGroups") == 1
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"
