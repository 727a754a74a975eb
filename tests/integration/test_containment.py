"""Containment that holds, against moto: the instance's credentials denied on its role, out of Auto
Scaling and its load balancers, nothing that can destroy it, evidence taken once per episode.

Where moto is more lenient than AWS the test injects AWS's answer (each place says which gap)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.conftest import MEMBER_ACCOUNT, Stack, build_stack
from tests.integration.test_worker import (
    assert_isolated,
    detail,
    in_plan_order,
    isolate,
    record_of,
    request_isolation,
    steps,
)
from tests.support.aws import (
    ISOLATION_NAME,
    Faults,
    Member,
    Vpc,
    classic_instances,
    client_error,
    group_of,
    targets,
    web_tier,
)

from worker.steps import PLAN, forget_caches
from worker.steps.credentials import INLINE_POLICY_LIMIT, POLICY_NAME

DENY = "deny-instance-credentials"
LEAVE = "leave-auto-scaling-and-load-balancers"


def assert_contained(member: Member, instance: str, vpc: Vpc, *, role: str | None = "app") -> None:
    """What isolated means now: the network and API cut, plus the credentials denied, nothing that can
    destroy the instance, and its volumes' snapshots."""
    assert_isolated(member, instance, vpc.id)
    if role is not None:
        assert member.instance_arn(instance) in member.denied_instances(role)
    autoscaling = member.session.client("autoscaling")
    assert autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"] == []
    assert member.attribute(instance, "instanceInitiatedShutdownBehavior") == "stop"
    assert member.attribute(instance, "disableApiStop") is True
    assert not any(member.volumes(instance).values()), "every volume kept on termination"
    snapshots = member.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:ec2-isolation:instance-id", "Values": [instance]}]
    )["Snapshots"]
    assert {s["VolumeId"] for s in snapshots} == set(member.volumes(instance))


# --- the whole thing ----------------------------------------------------------------------------------


def test_instance_in_an_auto_scaling_group_behind_load_balancers_is_contained(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given two instances of a web tier sharing role "app": in an Auto Scaling group, registered with its
    # target group and classic load balancer and (by address) with an `ip` target group
    vpc = member.vpc()
    instance, sibling = member.instance(vpc, enis=1), member.instance(vpc, enis=1)
    tier = web_tier(member, vpc, [instance, sibling])
    address = member.described(instance)["NetworkInterfaces"][0]["PrivateIpAddress"]
    desired = group_of(member, tier.group)["DesiredCapacity"]
    faults.count()

    # When the first is isolated
    record = isolate(stack, member, instance)

    # Then every step is done, the network cut first
    assert record["status"] == "ISOLATED", record
    assert in_plan_order(record)
    assert set(steps(record).values()) == {"done"}
    assert_contained(member, instance, vpc)
    # And it left the group, which keeps its capacity (a replacement), and every load balancer
    group = group_of(member, tier.group)
    assert group["DesiredCapacity"] == desired
    assert instance not in {i["InstanceId"] for i in group["Instances"]}
    assert instance not in targets(member, tier.target_group_arn)  # moto: DetachInstances leaves it there
    assert address not in targets(member, tier.ip_target_group_arn)
    assert instance not in classic_instances(member, tier.classic)
    # And its sibling on the same role and group is untouched
    assert member.denied_instances("app") == [member.instance_arn(instance)]
    assert sibling in targets(member, tier.target_group_arn)
    assert sibling in {i["InstanceId"] for i in group_of(member, tier.group)["Instances"]}
    # And the prior state holds what a release needs
    prior = record["prior_state"]
    assert prior["role_name"] == "app" and prior["autoscaling_group"] == tier.group
    assert sorted((t["arn"], t["id"], t["port"]) for t in prior["target_groups"]) == sorted(
        [(tier.target_group_arn, instance, 80), (tier.ip_target_group_arn, address, 8080)]
    )
    assert prior["load_balancers"] == [tier.classic]
    # And the calls were the ones docs/record.md lists, the detach keeping the desired capacity
    assert faults.calls["auto-scaling.DetachInstances"] == 1
    assert faults.calls["ec2.CreateSnapshots"] == 1


def test_a_second_isolation_of_the_episode_inherits_and_changes_nothing(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance isolated in an Auto Scaling group (so its current state is the isolated one)
    vpc = member.vpc()
    instance = member.instance(vpc)
    web_tier(member, vpc, [instance])
    first = isolate(stack, member, instance)
    policy = member.iam.get_role_policy(RoleName="app", PolicyName=POLICY_NAME)["PolicyDocument"]
    forget_caches()

    # When someone asks again (a second webhook past the coalesce window)
    faults.count()
    second = isolate(stack, member, instance)

    # Then it carries the episode's prior state and evidence, names the first, and changes nothing
    assert second["status"] == "ISOLATED", second
    assert second["inherits_from"] == first["isolation_id"]
    assert second["prior_state"] == first["prior_state"]
    assert second["prior_state"]["instance_profile_arn"].endswith("/app"), "never the isolation profile"
    assert second["evidence"] == first["evidence"]
    assert steps(second) == {step.name: "already" for step in PLAN} | {"tag-instance": "done"}
    changes = [
        c
        for c in faults.calls
        if c.split(".")[1].startswith(("Put", "Detach", "Deregister", "Create"))
        and not c.startswith("eventbridge.")  # the outcome event, on the service's own bus
    ]
    assert changes == ["ec2.CreateTags"]
    assert member.iam.get_role_policy(RoleName="app", PolicyName=POLICY_NAME)["PolicyDocument"] == policy


def test_an_instance_tagged_by_an_unknown_isolation_is_not_an_episode(stack: Stack, member: Member) -> None:
    # Given an instance tagged with an isolation id this service has no record of
    vpc = member.vpc()
    instance = member.instance(vpc, tags={"ec2-isolation:id": "iso-" + "f" * 32})

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then it is isolated from what it looks like now
    assert record["status"] == "ISOLATED" and record["inherits_from"] is None
    assert record["prior_state"]["instance_profile_arn"].endswith("/app")
    assert_contained(member, instance, vpc)


# --- credentials --------------------------------------------------------------------------------------


def test_the_deny_names_only_this_instance_and_keeps_the_roles_other_policies(
    stack: Stack, member: Member
) -> None:
    # Given a role with an inline policy of its own, shared by two instances
    vpc = member.vpc()
    instance, other = member.instance(vpc), member.instance(vpc)
    own = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}],
    }
    member.iam.put_role_policy(RoleName="app", PolicyName="app-data", PolicyDocument=json.dumps(own))

    # When one is isolated
    record = isolate(stack, member, instance)

    # Then the role denies everything to that instance's sessions only (moto evaluates no condition:
    # the document is the behaviour), in a policy named ec2-isolation...; its own policy is untouched
    assert record["status"] == "ISOLATED"
    document = member.iam.get_role_policy(RoleName="app", PolicyName=POLICY_NAME)["PolicyDocument"]
    assert document == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyIsolatedInstances",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"ArnEquals": {"ec2:SourceInstanceARN": [member.instance_arn(instance)]}},
            }
        ],
    }
    assert POLICY_NAME.startswith("ec2-isolation")
    assert member.iam.get_role_policy(RoleName="app", PolicyName="app-data")["PolicyDocument"] == own
    assert member.instance_arn(other) not in member.denied_instances("app")
    assert "1 instance(s)" in detail(record, DENY)


@pytest.mark.parametrize(
    ("setup", "env", "reason"),
    [
        ("service-linked", {}, "service-linked"),
        ("protected", {"PROTECTED_ROLE_ARNS": f"arn:aws:iam::{MEMBER_ACCOUNT}:role/pay*"}, "protected"),
        ("guarded", {}, "protected"),
        ("off", {"CUT_INSTANCE_CREDENTIALS": "false"}, "turned off"),
        ("isolation-profile", {}, "isolation profile"),
    ],
)
def test_credentials_step_skips_with_the_reason(
    aws_mock: None,
    template: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    setup: str,
    env: dict[str, str],
    reason: str,
) -> None:
    # Given an instance whose role must not (or cannot) be changed, or the step turned off
    stack = build_stack(template, monkeypatch, **env)
    member = Member(MEMBER_ACCOUNT, "eu-west-1")
    member.install_isolation_profile()
    vpc = member.vpc()
    roles = {
        "service-linked": ("AWSServiceRoleForApp", "/aws-service-role/app.amazonaws.com/"),
        "protected": ("payments", "/"),
        "guarded": ("stacksets-exec-1234", "/"),
        "off": ("app", "/"),
    }
    if setup == "isolation-profile":
        profile = ISOLATION_NAME
    else:
        role, path = roles[setup]
        member.iam.create_role(RoleName=role, Path=path, AssumeRolePolicyDocument="{}")
        member.iam.create_instance_profile(InstanceProfileName=role)
        member.iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
        profile = role
    instance = member.instance(vpc, profile=profile)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the credentials step is skipped saying why, no role has a deny policy, the rest is done
    assert record["status"] == "ISOLATED", record
    assert steps(record)[DENY] == "skipped" and reason in detail(record, DENY)
    for role, _ in roles.values():
        if setup != "isolation-profile" and role == roles[setup][0]:
            assert member.iam.list_role_policies(RoleName=role)["PolicyNames"] == []
    assert_isolated(member, instance, vpc.id)


def test_a_role_without_room_ends_failed_credentials_not_cut_with_everything_else_done(
    stack: Stack, member: Member
) -> None:
    # Given a role whose inline policies leave no room for one more instance ARN
    vpc = member.vpc()
    instance = member.instance(vpc)
    filler = "arn:aws:s3:::" + "x" * (INLINE_POLICY_LIMIT - 200)
    big = {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "a", "Effect": "Deny", "Action": "s3:X", "Resource": filler}],
    }
    member.iam.put_role_policy(RoleName="app", PolicyName="big", PolicyDocument=json.dumps(big))

    # When the instance is isolated (IAM refuses the deny: LimitExceeded; the suite makes moto refuse it too)
    record = isolate(stack, member, instance)

    # Then FAILED CredentialsNotCut, contained, and every other step done
    assert record["status"] == "FAILED", record
    assert record["error"]["code"] == "CredentialsNotCut"
    assert "10240" in record["error"]["message"] and "LimitExceeded" in record["error"]["message"]
    assert record["contained_at"] is not None
    assert steps(record) == {step.name: "done" for step in PLAN} | {DENY: "failed", LEAVE: "skipped"}
    assert member.denied_instances("app") == []
    assert_isolated(member, instance, vpc.id)
    assert member.tags(instance)["ec2-isolation:id"] == record["isolation_id"]


def test_iam_counting_past_the_limit_is_credentials_not_cut_too(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given IAM refuses the policy as too large (AWS: LimitExceeded; moto never does)
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("iam", "PutRolePolicy", "LimitExceeded", times=None, status=409)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED CredentialsNotCut, the rest done
    assert record["status"] == "FAILED" and record["error"]["code"] == "CredentialsNotCut"
    assert steps(record)["tag-instance"] == "done" and steps(record)[DENY] == "failed"


def test_access_denied_on_the_role_fails_the_isolation(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the member role denies writing this role (a ProtectedRoleArns the worker was not told about)
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("iam", "PutRolePolicy", "AccessDenied", times=None, status=403)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED AccessDenied, after the network cut, the step recorded failed
    assert record["status"] == "FAILED" and record["error"]["code"] == "AccessDenied"
    assert record["contained_at"] is not None and steps(record)[DENY] == "failed"


def test_a_deleted_prior_profile_is_credentials_not_cut(stack: Stack, member: Member) -> None:
    # Given an instance whose profile was deleted since launch (its credentials may still be valid)
    vpc = member.vpc()
    instance = member.instance(vpc, profile="gone")
    member.iam.remove_role_from_instance_profile(InstanceProfileName="gone", RoleName="gone")
    member.iam.delete_instance_profile(InstanceProfileName="gone")

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the role cannot be found: FAILED CredentialsNotCut, everything else in place
    assert record["status"] == "FAILED" and record["error"]["code"] == "CredentialsNotCut"
    assert "no longer exists" in record["error"]["message"]
    assert_isolated(member, instance, vpc.id)


# --- Auto Scaling and load balancers -------------------------------------------------------------------


def test_deregistration_already_done_by_the_detach_is_fine(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given AWS's behaviour after DetachInstances: the group's target group no longer has the instance,
    # so deregistering it answers InvalidTarget (moto deregisters nothing: injected)
    vpc = member.vpc()
    instance = member.instance(vpc)
    tier = web_tier(member, vpc, [instance])
    refused = faults.inject(
        "elastic-load-balancing-v2",  # botocore's event name of elbv2
        "DeregisterTargets",
        "InvalidTarget",
        times=None,
        when=lambda params: params["TargetGroupArn"] == tier.target_group_arn,
    )

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then that is fine: ISOLATED, the rest deregistered
    assert record["status"] == "ISOLATED", record
    assert refused.raised == 1
    assert instance not in classic_instances(member, tier.classic)


def test_a_detaching_instance_counts_as_detached(stack: Stack, member: Member, faults: Faults) -> None:
    # Given an instance the group is detaching (AWS keeps it `Detaching` for the deregistration delay)
    vpc = member.vpc()
    instance = member.instance(vpc)
    tier = web_tier(member, vpc, [instance])

    def detaching(parsed: dict[str, Any], **_: Any) -> None:
        for found in parsed.get("AutoScalingInstances", []):
            found["LifecycleState"] = "Detaching"

    faults.hook("after-call.auto-scaling.DescribeAutoScalingInstances", detaching)
    faults.count()

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then nothing waits and nothing detaches it again; it still leaves the load balancers (the calls:
    # moto re-registers a group's instances with its classic load balancer, Detaching or not)
    assert record["status"] == "ISOLATED", record
    assert faults.calls["auto-scaling.DetachInstances"] == 0
    assert record["prior_state"]["autoscaling_group"] == tier.group
    assert faults.calls["elastic-load-balancing.DeregisterInstancesFromLoadBalancer"] == 1
    assert faults.calls["elastic-load-balancing-v2.DeregisterTargets"] == 2


def test_detached_meanwhile_is_fine(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the instance leaves the group between the look and the detach (AWS then answers a
    # ValidationError; moto answers nothing for a non-member: injected)
    vpc = member.vpc()
    instance = member.instance(vpc)
    web_tier(member, vpc, [instance])

    def not_a_member(**_: Any) -> None:
        message = f"The instance {instance} is not part of Auto Scaling group web."
        raise client_error("ValidationError", "DetachInstances", message=message)

    faults.hook("before-parameter-build.auto-scaling.DetachInstances", not_a_member)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then that counts as detached
    assert record["status"] == "ISOLATED", record


def test_another_detach_error_fails_the_isolation(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the group refuses the detach (e.g. the instance is Pending in a lifecycle hook)
    vpc = member.vpc()
    instance = member.instance(vpc)
    web_tier(member, vpc, [instance])
    faults.inject("auto-scaling", "DetachInstances", "ValidationError", times=None)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED with that error, after the cut
    assert record["status"] == "FAILED" and record["error"]["code"] == "ValidationError"
    assert record["contained_at"] is not None and steps(record)[LEAVE] == "failed"


def test_target_groups_are_listed_once_per_warm_worker(stack: Stack, member: Member, faults: Faults) -> None:
    # Given a web tier of two instances
    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    web_tier(member, vpc, [first, second])
    faults.count()

    # When both are isolated by one warm worker
    isolate(stack, member, first)
    record = isolate(stack, member, second)

    # Then the account's target groups were listed once, each candidate's targets read per isolation
    assert record["status"] == "ISOLATED"
    assert faults.calls["elastic-load-balancing-v2.DescribeTargetGroups"] == 1
    assert faults.calls["elastic-load-balancing-v2.DescribeTargetHealth"] == 4


# --- nothing destroys it -------------------------------------------------------------------------------


def test_shutdown_behaviour_uses_the_attribute_form_and_keeps_the_groups(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a one-interface instance with shutdown behaviour terminate (moto 5.2.5 empties the groups of
    # such an instance on ModifyInstanceAttribute(InstanceInitiatedShutdownBehavior={"Value": ...}))
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    sent: list[dict[str, Any]] = []
    faults.hook("before-parameter-build.ec2.ModifyInstanceAttribute", lambda params, **_: sent.append(params))

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the shutdown behaviour went by Attribute/Value, and the interface keeps only the isolation group
    assert {"InstanceId": instance, "Attribute": "instanceInitiatedShutdownBehavior", "Value": "stop"} in sent
    assert record["prior_state"]["shutdown_behavior"] == "terminate"
    assert_contained(member, instance, vpc)


def test_spot_instance_protections_ec2_refuses_are_skipped(stack: Stack, member: Member) -> None:
    # Given a Spot instance (EC2 refuses termination and stop protection on those; moto does not)
    vpc = member.vpc()
    instance = member.instance(vpc, spot=True)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then both are skipped with the reason, the rest done, ISOLATED
    assert record["status"] == "ISOLATED", record
    for name in ("enable-stop-protection", "enable-termination-protection"):
        assert steps(record)[name] == "skipped" and "Spot" in detail(record, name)
    assert steps(record)["stop-on-shutdown"] == "done" and steps(record)["keep-volumes"] == "done"
    assert not member.termination_protected(instance)


# --- evidence -------------------------------------------------------------------------------------------


def test_snapshots_are_tagged_on_creation_one_per_volume(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance with two volumes
    vpc = member.vpc()
    instance = member.instance(vpc)
    sent: list[dict[str, Any]] = []
    faults.hook("before-parameter-build.ec2.CreateSnapshots", lambda params, **_: sent.append(params))

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then one CreateSnapshots, tagged on creation, one snapshot per volume in the evidence
    assert len(sent) == 1 and sent[0]["InstanceSpecification"]["InstanceId"] == instance
    evidence = {s["volume_id"]: s["snapshot_id"] for s in record["evidence"]["snapshots"]}
    assert set(evidence) == set(member.volumes(instance)) and len(evidence) == 2
    for snapshot in member.ec2.describe_snapshots(SnapshotIds=list(evidence.values()))["Snapshots"]:
        tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
        assert tags["ec2-isolation:id"] == record["isolation_id"]
        assert tags["ec2-isolation:instance-id"] == instance
        assert "ec2-isolation:at" in tags


def test_snapshots_off_records_empty_evidence(
    aws_mock: None, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, faults: Faults
) -> None:
    stack = build_stack(template, monkeypatch, SNAPSHOT_VOLUMES="false")
    member = Member(MEMBER_ACCOUNT, "eu-west-1")
    member.install_isolation_profile()
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.count()

    record = isolate(stack, member, instance)

    assert record["status"] == "ISOLATED"
    assert record["evidence"] == {"snapshots": []}
    assert steps(record)["snapshot-volumes"] == "skipped"
    assert faults.calls["ec2.CreateSnapshots"] == 0


def test_snapshots_are_locked_when_asked(
    aws_mock: None, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch, faults: Faults
) -> None:
    # Given a 7-day governance lock (moto has no LockSnapshot: its answer is AWS's shape, faked)
    stack = build_stack(template, monkeypatch, SNAPSHOT_LOCK_DAYS="7")
    member = Member(MEMBER_ACCOUNT, "eu-west-1")
    member.install_isolation_profile()
    vpc = member.vpc()
    instance = member.instance(vpc)
    locked: list[dict[str, Any]] = []

    class Ok:
        status_code = 200

    def lock(params: dict[str, Any], **_: Any) -> None:
        locked.append(params)

    faults.hook("before-parameter-build.ec2.LockSnapshot", lock)
    faults.hook(
        "before-call.ec2.LockSnapshot",
        lambda **_: (Ok(), {"SnapshotId": locked[-1]["SnapshotId"], "LockState": "governance"}),
    )

    record = isolate(stack, member, instance)

    assert record["status"] == "ISOLATED", record
    assert sorted(p["SnapshotId"] for p in locked) == sorted(
        s["snapshot_id"] for s in record["evidence"]["snapshots"]
    )
    assert all(p["LockMode"] == "governance" and p["LockDuration"] == 7 for p in locked)


def test_concurrent_snapshot_limit_is_retried(stack: Stack, member: Member, faults: Faults) -> None:
    # Given EC2 answers ConcurrentSnapshotLimitExceeded once
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("ec2", "CreateSnapshots", "ConcurrentSnapshotLimitExceeded", times=1)

    record = isolate(stack, member, instance)

    # Then the follow-up queue retries it and it ends ISOLATED with one snapshot per volume (one attempt:
    # the follow-up's receives are not attempts of the record)
    assert record["status"] == "ISOLATED" and record["attempts"] == 1
    assert len(record["evidence"]["snapshots"]) == 2


def test_a_crash_after_the_snapshots_takes_no_second_one(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given the worker dies after CreateSnapshots, before it recorded them
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)

    def die(**_: Any) -> None:
        raise RuntimeError("worker lost")

    faults.hook("after-call.ec2.CreateSnapshots", die)
    stack.drain(rounds=1)
    faults.clear()
    faults.count()

    # When the message comes back
    stack.let_time_pass()
    stack.drain()

    # Then the snapshots of the first attempt are found by their tag and recorded; none is taken again
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED", record
    assert faults.calls["ec2.CreateSnapshots"] == 0
    taken = member.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:ec2-isolation:instance-id", "Values": [instance]}]
    )["Snapshots"]
    assert len(taken) == 2
    assert "earlier attempt" in detail(record, "snapshot-volumes")


def test_no_ebs_volume_is_skipped(stack: Stack, member: Member, faults: Faults) -> None:
    # Given an instance DescribeInstances shows without EBS volumes (instance store only)
    vpc = member.vpc()
    instance = member.instance(vpc)

    def no_volumes(parsed: dict[str, Any], **_: Any) -> None:
        for reservation in parsed.get("Reservations", []):
            for described in reservation["Instances"]:
                described["BlockDeviceMappings"] = []

    faults.hook("after-call.ec2.DescribeInstances", no_volumes)

    record = isolate(stack, member, instance)

    assert record["status"] == "ISOLATED"
    assert steps(record)["snapshot-volumes"] == "skipped" and steps(record)["keep-volumes"] == "skipped"
    assert record["evidence"] == {"snapshots": []}
