"""Which CloudTrail calls are guardrail events (guardrail.calls.judge), from the documented shapes in
tests/events: the service's member roles, isolation profile and forwarding rules, any trail, and the
execution role writing anything but its credentials deny."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guardrail.calls import judge
from shared.config import GuardrailSettings
from worker.messages import Ignored, InvalidMessage
from worker.steps.credentials import is_credentials_deny, policy_document

EVENTS = Path(__file__).resolve().parents[1] / "events"
SETTINGS = GuardrailSettings(TABLE_NAME="t", TARGET_ROLE_NAME="ec2-isolation-execution")
INSTANCE = "arn:aws:ec2:eu-west-1:222222222222:instance/i-0123456789abcdef0"


def _call(name: str, **detail: Any) -> str:
    event = json.loads((EVENTS / name).read_text())
    request = detail.pop("requestParameters", None)
    if request is not None:
        event["detail"]["requestParameters"].update(request)
    event["detail"].update(detail)
    return json.dumps(event)


@pytest.mark.parametrize(
    ("request_parameters", "resource"),
    [
        ({"roleName": "ec2-isolation-forward-eu-west-1"}, "role/ec2-isolation-forward-eu-west-1"),
        ({"roleName": "ec2-isolation-deny-all"}, "role/ec2-isolation-deny-all"),
    ],
)
def test_the_forwarding_and_isolation_roles_are_the_services(request_parameters, resource) -> None:
    event = judge(_call("guardrail-detach-role-policy.json", requestParameters=request_parameters), SETTINGS)
    assert (event.finding, event.resource) == ("DetachRolePolicy", resource)


def test_the_isolation_profile_losing_its_role_is_reported() -> None:
    body = _call(
        "guardrail-detach-role-policy.json",
        eventName="RemoveRoleFromInstanceProfile",
        requestParameters={"instanceProfileName": "ec2-isolation-deny-all"},
    )
    assert judge(body, SETTINGS).resource == "instance-profile/ec2-isolation-deny-all"


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        # another role, another rule, another profile
        ("guardrail-detach-role-policy.json", {"requestParameters": {"roleName": "app"}}),
        ("guardrail-disable-rule.json", {"requestParameters": {"name": "team-rule"}}),
        # a failed call changed nothing
        ("guardrail-stop-logging.json", {"errorCode": "AccessDenied"}),
    ],
)
def test_what_cannot_switch_the_service_off_is_ignored(name: str, changes: dict[str, Any]) -> None:
    with pytest.raises(Ignored):
        judge(_call(name, **changes), SETTINGS)


def test_the_execution_roles_own_repairs_are_ignored_but_any_other_policy_is_not() -> None:
    # Given the execution role putting AWSDenyAll back on the isolation role (its own repair)
    execution = json.loads((EVENTS / "guardrail-put-role-policy-by-execution-role.json").read_text())
    identity = execution["detail"]["userIdentity"]
    attach = _call("guardrail-detach-role-policy.json", eventName="AttachRolePolicy", userIdentity=identity)
    with pytest.raises(Ignored):
        judge(attach, SETTINGS)
    # And writing its credentials deny: ignored; anything else: reported
    deny = json.dumps(policy_document([INSTANCE]))
    with pytest.raises(Ignored):
        judge(
            _call(
                "guardrail-put-role-policy-by-execution-role.json", requestParameters={"policyDocument": deny}
            ),
            SETTINGS,
        )
    event = judge(_call("guardrail-put-role-policy-by-execution-role.json"), SETTINGS)
    assert event.finding == "ExecutionRoleWrotePolicy" and event.resource == "role/app"
    # And the deny under another name is not the service's either
    other_name = {"policyDocument": deny, "policyName": "allow-everything"}
    assert judge(
        _call("guardrail-put-role-policy-by-execution-role.json", requestParameters=other_name), SETTINGS
    )


def test_a_self_managed_stackset_execution_role_is_the_deployments() -> None:
    identity = json.loads((EVENTS / "guardrail-update-assume-role-policy.json").read_text())["detail"][
        "userIdentity"
    ]
    identity["sessionContext"]["sessionIssuer"]["arn"] = (
        "arn:aws:iam::222222222222:role/AWSCloudFormationStackSetExecutionRole"
    )
    with pytest.raises(Ignored):
        judge(_call("guardrail-update-assume-role-policy.json", userIdentity=identity), SETTINGS)


def test_what_is_no_cloudtrail_call_is_invalid() -> None:
    with pytest.raises(InvalidMessage):
        judge('{"source": "ec2-isolation"}', SETTINGS)


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Deny", "Action": "*", "Resource": "*"},  # every session of the role
        {
            "Effect": "Allow",
            "Action": "*",
            "Resource": "*",
            "Condition": {"ArnEquals": {"ec2:SourceInstanceARN": [INSTANCE]}},
        },
        {
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"ArnEquals": {"aws:SourceArn": [INSTANCE]}},
        },
        {
            "Effect": "Deny",
            "NotAction": "s3:*",
            "Resource": "*",
            "Condition": {"ArnEquals": {"ec2:SourceInstanceARN": [INSTANCE]}},
        },
        {
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"ArnEquals": {"ec2:SourceInstanceARN": ["*"]}},
        },
    ],
)
def test_only_the_deny_of_listed_instances_is_the_credentials_deny(statement: dict[str, Any]) -> None:
    assert is_credentials_deny("ec2-isolation-deny-isolated-instances", policy_document([INSTANCE]))
    assert not is_credentials_deny("ec2-isolation-deny-isolated-instances", {"Statement": [statement]})
