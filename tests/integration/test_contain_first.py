"""Contain first: a batch's instances are all cut before anything slower runs, and the rest of each
isolation runs later from its own message on the follow-up queue. One record tells both phases."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import assert_isolated, record_of, request_isolation, steps
from tests.support.aws import Faults, Member, web_tier
from tests.support.crashes import Crash

#: The calls of the follow-up phase (the API cut, protections, evidence, labels).
FOLLOW_UP_CALLS = frozenset(
    {
        "ec2.DescribeIamInstanceProfileAssociations",
        "ec2.ReplaceIamInstanceProfileAssociation",
        "ec2.AssociateIamInstanceProfile",
        "ec2.DescribeInstanceAttribute",
        "ec2.ModifyInstanceAttribute",
        "ec2.CreateSnapshots",
        "ec2.CreateTags",
    }
)
CUT = "ec2.ModifyNetworkInterfaceAttribute"


def test_a_batch_is_cut_everywhere_before_any_follow_up_call(
    stack: Stack, member: Member, other_member: Member, faults: Faults
) -> None:
    # Given four 2-ENI instances in two accounts, requested at once (one batch)
    vpc, other_vpc = member.vpc(), other_member.vpc()
    instances = [(member, member.instance(vpc)) for _ in range(3)] + [
        (other_member, other_member.instance(other_vpc))
    ]
    ids = [request_isolation(stack, account, instance) for account, instance in instances]
    faults.count()

    # When the worker takes the batch
    batch = stack.receive()
    assert len(batch) == 4
    response = stack.work(batch, follow_up=False)

    # Then every message succeeded, every ENI is cut, one DescribeInstances per account and region ran,
    # and no follow-up call was made
    assert response["batchItemFailures"] == [], [record_of(stack, i)["steps"] for i in ids]
    assert faults.calls[CUT] == 8
    assert faults.calls["ec2.DescribeInstances"] == 2
    assert not FOLLOW_UP_CALLS & set(faults.log)
    # And each record is contained, its credentials denied, still IN_PROGRESS: the follow-up is queued
    for isolation_id in ids:
        record = record_of(stack, isolation_id)
        assert record["status"] == "IN_PROGRESS" and record["contained_at"] is not None
        assert steps(record) == {
            "ensure-isolation-sg": steps(record)["ensure-isolation-sg"],
            "swap-security-groups": "done",
            "deny-instance-credentials": "done",
            "leave-auto-scaling-and-load-balancers": "skipped",
        }
    follow_ups = stack.receive(follow_up=True)
    assert sorted(json.loads(m["Body"])["isolation_id"] for m in follow_ups) == sorted(ids)

    # When the follow-up function takes them
    stack.follow_up(follow_ups)

    # Then every record ends ISOLATED, one attempt each, and every follow-up call came after the last cut
    last_cut = max(i for i, name in enumerate(faults.log) if name == CUT)
    first_follow_up = min(i for i, name in enumerate(faults.log) if name in FOLLOW_UP_CALLS)
    assert last_cut < first_follow_up
    for (account, instance), isolation_id in zip(instances, ids, strict=True):
        record = record_of(stack, isolation_id)
        assert record["status"] == "ISOLATED" and record["attempts"] == 1
        assert_isolated(account, instance, vpc.id if account is member else other_vpc.id)
    # And one isolation group was created per VPC, though three instances of one VPC were cut at once
    assert faults.calls["ec2.CreateSecurityGroup"] == 2


def _requested_in_a_web_tier(stack: Stack, member: Member) -> tuple[str, str]:
    """An instance with a role, in an Auto Scaling group behind load balancers, and its isolation id."""
    vpc = member.vpc()
    instance = member.instance(vpc)
    web_tier(member, vpc, [instance])
    return instance, request_isolation(stack, member, instance)


def test_the_credentials_deny_and_the_auto_scaling_detach_run_side_by_side(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance with a role, in an Auto Scaling group behind load balancers, whose role policy
    # write waits (a few seconds at most) for the Auto Scaling detach to begin
    instance, isolation_id = _requested_in_a_web_tier(stack, member)
    detaching, seen_by_the_deny = threading.Event(), []

    def detach(**_: Any) -> None:
        detaching.set()

    def deny(**_: Any) -> None:
        seen_by_the_deny.append(detaching.wait(timeout=5))

    faults.hook("before-call.auto-scaling.DetachInstances", detach)
    faults.hook("before-call.iam.PutRolePolicy", deny)

    # When the worker contains it
    stack.work(stack.receive(), follow_up=False)

    # Then the detach began while the deny was under way (one after the other, the wait runs out first)
    assert seen_by_the_deny == [True]
    # And the record lists both (in the order they were done), before the hand-over
    record = record_of(stack, isolation_id)
    assert sorted(s["name"] for s in record["steps"][2:]) == [
        "deny-instance-credentials",
        "leave-auto-scaling-and-load-balancers",
    ]
    assert steps(record)["deny-instance-credentials"] == "done"
    assert steps(record)["leave-auto-scaling-and-load-balancers"] == "done"


def test_when_one_hold_step_fails_what_the_other_did_is_on_record(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance in an Auto Scaling group whose role cannot be read (a permanent refusal)
    instance, isolation_id = _requested_in_a_web_tier(stack, member)
    faults.inject("iam", "GetInstanceProfile", "AccessDenied", times=None, status=403)

    # When the worker contains it
    stack.work(stack.receive(), follow_up=False)

    # Then the isolation ended FAILED on the deny, and the detach, done meanwhile, is on its record
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["contained_at"] is not None, record
    assert steps(record)["deny-instance-credentials"] == "failed"
    assert steps(record)["leave-auto-scaling-and-load-balancers"] == "done"
    autoscaling = member.session.client("autoscaling")
    assert autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"] == []


def test_a_hold_step_done_is_on_record_when_the_environment_dies_during_the_other(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance with a role, in an Auto Scaling group, whose environment dies (timeout, out of
    # memory) during the Auto Scaling detach, once the credentials deny is done
    instance, isolation_id = _requested_in_a_web_tier(stack, member)
    denied = threading.Event()

    def die_once_denied(**_: Any) -> None:
        assert denied.wait(timeout=5)
        raise Crash()

    faults.hook("after-call.iam.PutRolePolicy", lambda **_: denied.set())
    faults.hook("before-call.auto-scaling.DetachInstances", die_once_denied)

    # When the worker contains it, and dies
    with pytest.raises(Crash):
        stack.work(stack.receive(), follow_up=False)

    # Then the deny, in place, is on the record already (not waiting for a hand-over that never came)
    record = record_of(stack, isolation_id)
    assert record["status"] == "IN_PROGRESS" and record["contained_at"] is not None
    assert steps(record)["deny-instance-credentials"] == "done"
    assert "leave-auto-scaling-and-load-balancers" not in steps(record)


def test_one_bad_message_or_failed_isolation_never_fails_its_batch_mates(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a batch with garbage, a request for an unknown instance, one whose every cut is throttled and
    # a good one
    vpc = member.vpc()
    throttled, good = member.instance(vpc), member.instance(vpc)
    stack.send("not json {")
    unknown_id = request_isolation(stack, member, "i-0000000000000000f")
    throttled_id = request_isolation(stack, member, throttled)
    good_id = request_isolation(stack, member, good)
    throttled_enis = set(member.eni_groups(throttled))
    faults.inject(
        "ec2",
        "ModifyNetworkInterfaceAttribute",
        "RequestLimitExceeded",
        times=None,
        status=503,
        when=lambda params: params.get("NetworkInterfaceId") in throttled_enis,
    )

    # When the worker takes the batch
    batch = stack.receive()
    assert len(batch) == 4
    response = stack.work(batch)

    # Then only the garbage and the throttled request are returned to the queue
    by_id = {m["MessageId"]: m["Body"] for m in batch}
    failed = {by_id[item["itemIdentifier"]] for item in response["batchItemFailures"]}
    assert len(failed) == 2 and "not json {" in failed
    assert any(throttled_id in body for body in failed)
    # And the unknown instance ended FAILED, the good one ISOLATED, the throttled one waits for its retry
    assert record_of(stack, unknown_id)["error"]["code"] == "InstanceNotFound"
    assert record_of(stack, good_id)["status"] == "ISOLATED"
    waiting = record_of(stack, throttled_id)
    assert waiting["status"] == "IN_PROGRESS" and waiting["contained_at"] is None
    assert_isolated(member, good, vpc.id)


def test_a_follow_up_that_fails_on_its_last_receive_ends_the_record_failed_and_contained(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a contained isolation whose follow-up is throttled on every receive
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    faults.inject("ec2", "ModifyInstanceAttribute", "RequestLimitExceeded", times=None, status=503)

    # When the follow-up is received as often as the redrive policy allows
    stack.drain(rounds=stack.max_receive_count + 2)
    stack.receive(follow_up=True)  # the receive after the last one moves it to the follow-up DLQ

    # Then the record is FAILED with the last error, the network cut and the credentials deny recorded
    # done and in place, and the follow-up message is in the follow-up DLQ (resumable)
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["contained_at"] is not None
    assert record["error"]["code"] == "RequestLimitExceeded"
    assert f"after {stack.max_receive_count} receives" in record["error"]["message"]
    assert steps(record)["swap-security-groups"] == "done"
    assert steps(record)["deny-instance-credentials"] == "done"
    assert steps(record)["swap-instance-profile"] in ("done", "already")  # done on the first receive
    assert member.denied_instances("app") == [member.instance_arn(instance)]
    assert stack.dead_letters() == []
    [dead] = stack.dead_letters(follow_up=True)
    assert json.loads(dead["Body"])["isolation_id"] == isolation_id
    [event] = [e for e in stack.outcomes() if e["detail"]["isolation_id"] == isolation_id]
    assert event["detail"]["status"] == "FAILED"

    # When EC2 recovers and the follow-up DLQ is redriven
    faults.clear()
    stack.redrive(dead, follow_up=True)
    stack.drain()

    # Then the same record resumes its follow-up and ends ISOLATED
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED" and record["error"] is None
    assert_isolated(member, instance, vpc.id)
