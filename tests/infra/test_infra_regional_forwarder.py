"""regional-forwarder.yml: every other region's GuardDuty findings and Security Hub custom actions reach
the stack's bus, filtered exactly as the stack's own rules filter them, with nothing named (one stack per
region) and nothing dropped unseen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from moto.events.models import EventPattern
from tests.infra.resolver import event_pattern, resolve

from local_stack.templates import load_template

ROOT = Path(__file__).resolve().parents[2]
BUS = "arn:aws:events:eu-west-1:123456789012:event-bus/ec2-isolation"
EVENTS = ROOT / "tests" / "events"
PSEUDO = {"AWS::Region": "ap-south-1", "AWS::AccountId": "123456789012"}


def forwarder(**parameters: str) -> dict[str, Any]:
    return resolve(
        load_template(ROOT / "regional-forwarder.yml"),
        {"TargetEventBusArn": BUS, **parameters},
        pseudo=PSEUDO,
    )


def stack(**parameters: str) -> dict[str, Any]:
    return resolve(load_template(ROOT / "template.yaml"), parameters, pseudo=PSEUDO)


@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"MinSeverity": "4", "FindingTypePrefixes": "Backdoor:EC2/,CryptoCurrency:EC2/"},
        {"IsolateContainerFindings": "true"},
    ],
)
def test_guardduty_findings_are_filtered_as_the_stack_filters_them(parameters: dict[str, str]) -> None:
    forwarded = event_pattern(forwarder(**parameters)["Resources"]["GuardDutyForwardingRule"])
    assert forwarded == event_pattern(stack(**parameters)["Resources"]["GuardDutyFindingRule"])


def test_rules_forward_to_the_stacks_bus_with_a_role_named_for_the_region_and_a_dead_letter_queue() -> None:
    resources = forwarder(EnableSecurityHubAction="true")["Resources"]
    for name in ("GuardDutyForwardingRule", "SecurityHubForwardingRule"):
        properties = resources[name]["Properties"]
        assert properties["EventBusName"] == "default"
        (target,) = properties["Targets"]
        assert target["Arn"] == BUS
        assert target["RoleArn"] == {"Fn::GetAtt": ["ForwardingRole", "Arn"]}
        assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["ForwardingDeadLetterQueue", "Arn"]}}
    role = resources["ForwardingRole"]["Properties"]
    # Named with the region: the stack's bus admits findings and actions from this role only
    region = PSEUDO["AWS::Region"]
    assert role["RoleName"] == f"ec2-isolation-forward-findings-{region}"
    assert (
        resources["GuardDutyForwardingRule"]["Properties"]["Name"]
        == f"ec2-isolation-forward-findings-{region}"
    )
    assert (
        resources["SecurityHubForwardingRule"]["Properties"]["Name"]
        == f"ec2-isolation-forward-actions-{region}"
    )
    [policy] = role["Policies"]
    assert policy["PolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Action": "events:PutEvents", "Resource": BUS}
    ]
    # The only IAM resource is that role, its name the region's: one stack per region never collides
    assert [name for name, r in resources.items() if r["Type"].startswith("AWS::IAM::")] == ["ForwardingRole"]


def test_this_regions_custom_action_of_this_account_is_forwarded_and_no_other() -> None:
    rule = EventPattern.load(
        json.dumps(
            event_pattern(forwarder(EnableSecurityHubAction="true")["Resources"]["SecurityHubForwardingRule"])
        )
    )
    action = json.loads((EVENTS / "securityhub-custom-action.json").read_text())
    action["resources"] = ["arn:aws:securityhub:ap-south-1:123456789012:action/custom/IsolateInstance"]
    assert rule.matches_event(action)
    for other in (
        "arn:aws:securityhub:ap-south-1:444455556666:action/custom/IsolateInstance",
        "arn:aws:securityhub:ap-south-1:123456789012:action/custom/SomethingElse",
    ):
        assert not rule.matches_event({**action, "resources": [other]})


def test_security_hub_parts_exist_only_when_enabled() -> None:
    resources = forwarder()["Resources"]
    assert "SecurityHubAction" not in resources and "SecurityHubForwardingRule" not in resources
    enabled = forwarder(EnableSecurityHubAction="true")["Resources"]
    assert enabled["SecurityHubAction"]["Properties"] == {
        **stack(EnableSecurityHubAction="true")["Resources"]["SecurityHubAction"]["Properties"]
    }
