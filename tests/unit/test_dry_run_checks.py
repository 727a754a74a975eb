"""Dry-run permission checks (worker.steps.checks): EC2's DryRun answers and the IAM policy simulator's,
in the shapes AWS gives them (botocore Stubber: moto implements no simulator)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from tests.support.aws import client_error

from shared.errors import PermanentError
from shared.models import StepStatus
from worker.steps import PLAN, RELEASE
from worker.steps.base import Step
from worker.steps.checks import Action, PolicySimulator, ec2_dry_run, outcome

ROLE = "arn:aws:iam::111122223333:role/ec2-isolation-execution"
PASS_ROLE = Action(
    "iam:PassRole",
    ["arn:aws:iam::111122223333:role/ec2-isolation-deny-all"],
    "pass role ec2-isolation-deny-all to EC2",
    {"iam:PassedToService": "ec2.amazonaws.com"},
)


def test_every_step_of_the_plan_has_its_own_dry_run() -> None:
    # A step's dry run is its plan checked (Step.check), and its run the same plan applied (Step.run):
    # every step of an isolation and of a release plans, and none runs or checks in a way of its own.
    for step in PLAN + RELEASE:
        assert step.plan is not Step.plan, f"{step.name} does not plan"
        assert step.run is Step.run and step.check is Step.check, f"{step.name} runs or checks on its own"


def _raising(code: str) -> Any:
    def call(**params: Any) -> None:
        assert params["DryRun"] is True
        raise client_error(code, "ModifyInstanceAttribute", 412 if code == "DryRunOperation" else 403)

    return call


def test_ec2_dry_run_reads_awss_answers() -> None:
    # Given EC2's answers to a DryRun call: permitted, not permitted, another error
    would = ec2_dry_run("turn it on", _raising("DryRunOperation"))
    refused = ec2_dry_run("turn it on", _raising("UnauthorizedOperation"))
    # Then permitted is `would`, not permitted is `failed` with the code first (the record's error code)
    assert would.status is StepStatus.WOULD
    assert refused.status is StepStatus.FAILED and refused.detail.startswith("UnauthorizedOperation: ")
    # And any other error is the real call's, raised
    with pytest.raises(Exception, match="InvalidInstanceID.NotFound"):
        ec2_dry_run("turn it on", _raising("InvalidInstanceID.NotFound"))
    # And a call that did not honour DryRun is a permanent error, never `would`
    with pytest.raises(PermanentError, match="DryRun"):
        ec2_dry_run("turn it on", lambda **params: {})


@pytest.fixture
def iam() -> Any:
    return boto3.client("iam", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def _answer(*results: dict[str, Any]) -> dict[str, Any]:
    return {"EvaluationResults": list(results), "IsTruncated": False}


def test_the_simulator_asks_about_the_execution_role_with_the_conditions_context(iam: Any) -> None:
    # Given the simulator allowing the action (AWS's answer shape)
    with Stubber(iam) as stub:
        stub.add_response(
            "simulate_principal_policy",
            _answer(
                {
                    "EvalActionName": "iam:PassRole",
                    "EvalResourceName": PASS_ROLE.resources[0],
                    "EvalDecision": "allowed",
                    "MatchedStatements": [{"SourcePolicyId": "ec2-isolation"}],
                    "MissingContextValues": [],
                    "OrganizationsDecisionDetail": {"AllowedByOrganizations": True},
                }
            ),
            expected_params={
                "PolicySourceArn": ROLE,
                "ActionNames": ["iam:PassRole"],
                "ResourceArns": list(PASS_ROLE.resources),
                "ContextEntries": [
                    {
                        "ContextKeyName": "iam:PassedToService",
                        "ContextKeyValues": ["ec2.amazonaws.com"],
                        "ContextKeyType": "string",
                    }
                ],
            },
        )
        # When it is asked
        check = PolicySimulator(iam, ROLE).check(PASS_ROLE)
    # Then the step would work
    assert check.status is StepStatus.WOULD, check


def test_a_denial_names_the_resource_the_decision_and_why(iam: Any) -> None:
    # Given a denial of one of two resources, by a service control policy (per-resource results)
    detach = Action(
        "elasticloadbalancing:DeregisterTargets", ["arn:tg/a", "arn:tg/b"], "deregister from a, b"
    )
    with Stubber(iam) as stub:
        stub.add_response(
            "simulate_principal_policy",
            _answer(
                {
                    "EvalActionName": detach.name,
                    "EvalResourceName": "*",
                    "EvalDecision": "explicitDeny",
                    "OrganizationsDecisionDetail": {"AllowedByOrganizations": False},
                    "ResourceSpecificResults": [
                        {"EvalResourceName": "arn:tg/a", "EvalResourceDecision": "allowed"},
                        {"EvalResourceName": "arn:tg/b", "EvalResourceDecision": "implicitDeny"},
                    ],
                }
            ),
        )
        check = PolicySimulator(iam, ROLE).check(detach)
    # Then it failed, naming only the refused resource, the decision and the SCP
    assert check.status is StepStatus.FAILED
    assert check.detail.startswith("AccessDenied: ")
    assert "arn:tg/b: implicitDeny (denied by a service control policy)" in check.detail
    assert "arn:tg/a:" not in check.detail


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(NotImplementedError("not implemented"), id="moto in process"),
        pytest.param(
            client_error("AccessDenied", "SimulatePrincipalPolicy", 403), id="an older member stack"
        ),
    ],
)
def test_a_simulator_that_cannot_answer_leaves_the_step_unverified_and_is_asked_once(
    answer: Exception,
) -> None:
    # Given a simulator that cannot answer
    class Iam:
        calls = 0

        def get_paginator(self, name: str) -> Any:
            Iam.calls += 1
            raise answer

    simulator = PolicySimulator(Iam(), ROLE)
    # When two actions are checked
    first, second = simulator.check(PASS_ROLE), simulator.check(PASS_ROLE)
    # Then both are unverified, saying why, and the simulator was asked once
    assert first.status is second.status is StepStatus.UNVERIFIED
    assert first.unverified_because and Iam.calls == 1
    # And the step says why once
    step = outcome("swap-instance-profile", [first, second], "")
    assert step.status is StepStatus.UNVERIFIED and step.detail.count("not verified") == 1


def test_a_step_outcome_puts_its_first_failure_first() -> None:
    from worker.steps.checks import Check

    checks = [
        Check(StepStatus.WOULD, "would a"),
        Check(StepStatus.FAILED, "UnauthorizedOperation: cannot b"),
        Check(StepStatus.UNVERIFIED, "would c", "no simulator"),
    ]
    step = outcome("s", checks, "")
    assert step.status is StepStatus.FAILED and step.detail.startswith("UnauthorizedOperation: cannot b")
    assert outcome("s", [], "in place").status is StepStatus.ALREADY
