"""Dry runs: `POST /isolate` with `"dry_run": true` checks every step of an isolation against the member
account (EC2 DryRun, the IAM policy simulator) and changes nothing; it ends CHECKED or FAILED, takes no
instance slot and publishes its outcome with `dry_run: true`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from tests.conftest import Stack
from tests.integration.test_ingest_api import assert_client_error, assert_nothing_happened
from tests.integration.test_worker import isolate, record_of, request_isolation, steps
from tests.support.aws import Faults, Member, Vpc, WebTier, classic_instances, group_of, targets, web_tier

from shared import aws
from worker.steps import PLAN

#: What a dry run may say of a step that would work.
POSSIBLE = {"would", "already", "unverified", "skipped"}


def account_state(member: Member, instance: str, vpc: Vpc, tier: WebTier | None = None) -> dict[str, Any]:
    """Everything an isolation changes, as the member account shows it."""
    state: dict[str, Any] = {
        "instance": member.described(instance),
        "tags": member.tags(instance),
        "attributes": {
            name: member.attribute(instance, name)
            for name in ("disableApiStop", "disableApiTermination", "instanceInitiatedShutdownBehavior")
        },
        "profile": member.profile_of(instance),
        "security_groups": member.ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [vpc.id]}]
        )["SecurityGroups"],
        "role_policies": member.iam.list_role_policies(RoleName="app")["PolicyNames"],
        "snapshots": member.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"],
    }
    if tier is not None:
        state["auto_scaling"] = group_of(member, tier.group)["Instances"]
        state["targets"] = (targets(member, tier.target_group_arn), targets(member, tier.ip_target_group_arn))
        state["classic"] = classic_instances(member, tier.classic)
    return state


def dry_run(stack: Stack, member: Member, instance: str) -> dict[str, Any]:
    return isolate(stack, member, instance, dry_run=True)


# --- the simulator, answered as AWS answers (moto does not implement it) -------------------------------


@contextmanager
def simulations(decide: Callable[[str, str], tuple[str, bool]]) -> Iterator[list[dict[str, Any]]]:
    """Answer iam:SimulatePrincipalPolicy in AWS's response shape: `decide(action, resource)` gives the
    decision and whether the organization's SCPs allow it. Yields the requests it answered."""
    asked: list[dict[str, Any]] = []

    def remember(params: dict[str, Any], **_: Any) -> None:
        asked.append(dict(params))

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        params = asked[-1]
        results = []
        for action in params["ActionNames"]:
            for resource in params.get("ResourceArns", ["*"]):
                decision, by_organizations = decide(action, resource)
                results.append(
                    {
                        "EvalActionName": action,
                        "EvalResourceName": resource,
                        "EvalDecision": decision,
                        "MatchedStatements": [],
                        "MissingContextValues": [],
                        "OrganizationsDecisionDetail": {"AllowedByOrganizations": by_organizations},
                    }
                )
        response = AWSResponse("https://iam.amazonaws.com/", 200, {}, None)
        return response, {"EvaluationResults": results, "IsTruncated": False}

    removers = [
        aws.add_event_hook("before-parameter-build.iam.SimulatePrincipalPolicy", remember),
        aws.add_event_hook("before-call.iam.SimulatePrincipalPolicy", answer),
    ]
    try:
        yield asked
    finally:
        for remove in removers:
            remove()


@pytest.fixture
def allowed() -> Iterator[list[dict[str, Any]]]:
    with simulations(lambda action, resource: ("allowed", True)) as asked:
        yield asked


# --- tests ---------------------------------------------------------------------------------------------


def test_a_dry_run_checks_every_step_and_changes_nothing(stack: Stack, member: Member) -> None:
    # Given an instance of a web tier (Auto Scaling group, target groups, classic load balancer), with an
    # application role, in a VPC without an isolation group yet
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2)
    tier = web_tier(member, vpc, [instance])
    before = account_state(member, instance, vpc, tier)

    # When a dry run is asked for
    record = dry_run(stack, member, instance)

    # Then it ends CHECKED, each step of the plan in order would work (EC2 DryRun), or could not be
    # verified (moto has no IAM policy simulator)
    assert record["status"] == "CHECKED", record
    assert record["dry_run"] is True and record["error"] is None and record["contained_at"] is None
    assert [s["name"] for s in record["steps"]] == [step.name for step in PLAN]
    assert set(steps(record).values()) <= POSSIBLE
    assert steps(record) == {step.name: "would" for step in PLAN} | {
        "deny-instance-credentials": "unverified",
        "leave-auto-scaling-and-load-balancers": "unverified",
        "swap-instance-profile": "unverified",
    }
    assert "would create the isolation group of " + vpc.id in record["steps"][0]["detail"]
    assert "iam:SimulatePrincipalPolicy" in record["steps"][2]["detail"]
    # And it recorded the prior state a real run would record
    prior = record["prior_state"]
    assert prior["role_name"] == "app" and prior["autoscaling_group"] == tier.group
    assert prior["load_balancers"] == [tier.classic] and prior["shutdown_behavior"] == "terminate"
    # And nothing changed in the account: not even the isolation group was created; nor is a change
    # planned on record (only what a run will change is)
    assert account_state(member, instance, vpc, tier) == before
    assert member.isolation_groups(vpc.id) == []
    stored = stack.store.item(record["isolation_id"])
    assert stored is not None and "planned" not in stored
    # And its outcome event says CHECKED, dry run (which the notification rule excludes)
    [event] = stack.outcomes()
    assert event["detail"]["status"] == "CHECKED" and event["detail"]["dry_run"] is True
    assert event["detail"]["summary"].startswith(f"CHECKED {instance} in {member.account_id}")
    assert "(dry run: 8 would, 3 unverified)" in event["detail"]["summary"]


def test_a_permission_the_member_role_lacks_fails_the_dry_run_naming_it(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a member role that may not change network interfaces (EC2 answers DryRun with
    # UnauthorizedOperation, as AWS does)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    faults.inject(
        "ec2",
        "ModifyNetworkInterfaceAttribute",
        "UnauthorizedOperation",
        times=None,
        when=lambda params: params.get("DryRun") is True,
    )
    before = account_state(member, instance, vpc)

    # When a dry run is asked for
    record = dry_run(stack, member, instance)

    # Then it ends FAILED with the error the real run would meet, on that step; every step was checked
    assert record["status"] == "FAILED", record
    assert record["error"]["code"] == "UnauthorizedOperation"
    assert "swap-security-groups" in record["error"]["message"]
    assert [s["name"] for s in record["steps"]] == [step.name for step in PLAN]
    assert steps(record)["swap-security-groups"] == "failed"
    assert "UnauthorizedOperation" in record["steps"][1]["detail"]
    assert set(steps(record).values()) - {"failed"} <= POSSIBLE
    # And nothing changed; the outcome event says FAILED, dry run
    assert account_state(member, instance, vpc) == before
    [event] = stack.outcomes()
    assert (event["detail"]["status"], event["detail"]["dry_run"]) == ("FAILED", True)


def test_the_simulator_answers_would_for_every_action_it_allows(
    stack: Stack, member: Member, allowed: list[dict[str, Any]]
) -> None:
    # Given an IAM policy simulator that allows everything (AWS's answer shape)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    web_tier(member, vpc, [instance])

    # When a dry run is asked for
    record = dry_run(stack, member, instance)

    # Then every step would work, and the simulator was asked about the execution role itself
    assert record["status"] == "CHECKED", record
    assert steps(record) == {step.name: "would" for step in PLAN}
    role = f"arn:aws:iam::{member.account_id}:role/ec2-isolation-execution"
    assert {request["PolicySourceArn"] for request in allowed} == {role}
    simulated = {action for request in allowed for action in request["ActionNames"]}
    assert simulated == {
        "iam:PutRolePolicy",
        "autoscaling:DetachInstances",
        "elasticloadbalancing:DeregisterTargets",
        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
        "ec2:ReplaceIamInstanceProfileAssociation",
        "iam:PassRole",
    }
    [pass_role] = [r for r in allowed if r["ActionNames"] == ["iam:PassRole"]]
    assert pass_role["ContextEntries"] == [
        {
            "ContextKeyName": "iam:PassedToService",
            "ContextKeyValues": ["ec2.amazonaws.com"],
            "ContextKeyType": "string",
        }
    ]


def test_a_service_control_policy_denial_fails_the_step_naming_action_and_decision(
    stack: Stack, member: Member
) -> None:
    # Given an organization whose SCP denies leaving Auto Scaling groups (the simulator's answer)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    web_tier(member, vpc, [instance])

    def decide(action: str, resource: str) -> tuple[str, bool]:
        return ("explicitDeny", False) if action == "autoscaling:DetachInstances" else ("allowed", True)

    # When a dry run is asked for
    with simulations(decide):
        record = dry_run(stack, member, instance)

    # Then that step failed, naming the action, the decision and why; the others would work
    assert record["status"] == "FAILED", record
    assert record["error"]["code"] == "AccessDenied"
    assert steps(record) == {step.name: "would" for step in PLAN} | {
        "leave-auto-scaling-and-load-balancers": "failed"
    }
    step = next(s for s in record["steps"] if s["name"] == "leave-auto-scaling-and-load-balancers")
    assert "autoscaling:DetachInstances" in step["detail"]
    assert "explicitDeny (denied by a service control policy)" in step["detail"]


def test_a_dry_run_takes_no_slot_and_joins_nothing(stack: Stack, member: Member) -> None:
    # Given a dry run of an instance, accepted and not yet run
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    checking = request_isolation(stack, member, instance, dry_run=True)

    # When a real isolation of the instance is requested meanwhile, then another dry run
    real = request_isolation(stack, member, instance)
    second_check = request_isolation(stack, member, instance, dry_run=True)
    # Then neither joined the first dry run (each got its own record, 202)
    assert len({checking, real, second_check}) == 3
    # And a second real request joins the real one, never a dry run
    status, body = stack.api(
        "POST",
        "/isolate",
        body={"instance_id": instance, "account_id": member.account_id, "region": member.region},
    )
    assert (status, body["isolation_id"], body.get("deduplicated")) == (200, real, True)

    # And when the worker runs them, the real one isolates and the dry runs end checked
    stack.drain()
    assert record_of(stack, real)["status"] == "ISOLATED"
    assert {record_of(stack, checking)["status"], record_of(stack, second_check)["status"]} == {"CHECKED"}
    # And the instance's slot is free again: a new isolation is not joined with anything (202)
    assert request_isolation(stack, member, instance) not in {checking, real, second_check}


def test_dry_run_must_be_a_boolean(stack: Stack) -> None:
    body = {"instance_id": "i-0123456789abcdef0", "account_id": "111122223333", "region": "eu-west-1"}
    for value in ("true", 1, None, "false"):
        # Given a request whose dry_run is not a JSON boolean; When it is posted
        status, answer = stack.api("POST", "/isolate", body={**body, "dry_run": value})
        # Then it is refused, naming the field, and nothing is stored or enqueued
        assert_client_error(status, answer, 422, "dry_run")
        assert_nothing_happened(stack)


def test_an_idempotency_key_never_confuses_a_dry_run_with_an_isolation(stack: Stack, member: Member) -> None:
    # Given a dry run posted with an Idempotency-Key
    body = {"instance_id": "i-0123456789abcdef0", "account_id": member.account_id, "region": member.region}
    headers = {"Idempotency-Key": "k-1"}
    status, _ = stack.api("POST", "/isolate", body={**body, "dry_run": True}, headers=headers)
    assert status == 202
    # When the same key comes with the real request
    status, answer = stack.api("POST", "/isolate", body=body, headers=headers)
    # Then it is a conflict, not the dry run's answer
    assert status == 409, answer
