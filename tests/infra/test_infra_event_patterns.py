"""The rules' event patterns, read from the templates and evaluated by moto's EventBridge matcher (the
one the local stack runs), against events in the documented AWS shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.events.models import EventPattern
from tests.infra.resolver import event_pattern

INSTANCE_ARN = "arn:aws:ec2:eu-west-1:222222222222:instance/i-0123456789abcdef0"


def _finding(severity: float = 8.0, *, finding_type: str = "Backdoor:EC2/C&CActivity.B!DNS", resource_type: str = "Instance") -> dict[str, Any]:  # fmt: skip
    return {
        "version": "0",
        "id": "c8c4daa7-a20c-2f03-0070-b7393dd542ad",
        "detail-type": "GuardDuty Finding",
        "source": "aws.guardduty",
        "account": "111111111111",
        "time": "2026-11-01T10:00:00Z",
        "region": "eu-west-1",
        "resources": [],
        "detail": {
            "schemaVersion": "2.0",
            "accountId": "222222222222",
            "region": "eu-west-1",
            "id": "16afba5c5c43e07c9e3e5e2e544e95df",
            "type": finding_type,
            "severity": severity,
            "resource": {
                "resourceType": resource_type,
                "instanceDetails": {"instanceId": "i-0123456789abcdef0"},
            },
            "service": {"resourceRole": "TARGET"},
            "updatedAt": "2026-11-01T09:58:00Z",
        },
    }


def _tag_change(
    changed: list[str], tags: dict[str, str], *, resource_type: str = "instance"
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "ffd8a6fe-32f8-ef66-c85c-111111111111",
        "detail-type": "Tag Change on Resource",
        "source": "aws.tag",
        "account": "222222222222",
        "time": "2026-11-01T10:00:00Z",
        "region": "eu-west-1",
        "resources": [INSTANCE_ARN],
        "detail": {
            "changed-tag-keys": changed,
            "service": "ec2",
            "resource-type": resource_type,
            "version": 3,
            "tags": tags,
        },
    }


def _matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    # EventPattern.load parses the pattern as EventBridge's PutRule would receive it (a JSON string).
    return EventPattern.load(json.dumps(pattern)).matches_event(event)


def _only_simple_matchers(node: Any) -> bool:
    """Plain values, `prefix`, `numeric`, `exists` and `wildcard`: what both AWS and the local stack's moto
    evaluate alike (`exists: false` is how a pattern matches an absent field; `anything-but` never does)."""
    if isinstance(node, dict):
        return all(_only_simple_matchers(value) for value in node.values())
    assert isinstance(node, list) and node, node
    for item in node:
        if isinstance(item, dict):
            ((matcher, argument),) = item.items()
            if matcher == "prefix":
                assert isinstance(argument, str)
            elif matcher == "numeric":
                assert all(isinstance(v, (int, float)) for v in argument[1::2]), "numbers, not strings"
            elif matcher == "exists":
                assert isinstance(argument, bool)
            elif matcher == "wildcard":
                assert isinstance(argument, str) and "*" in argument
            else:
                return False
    return True


@pytest.fixture(scope="module")
def guardduty(deployed):
    def pattern(**overrides: str) -> dict[str, Any]:
        return event_pattern(deployed(**overrides)["Resources"]["GuardDutyFindingRule"])

    return pattern


@pytest.fixture(scope="module")
def tag_pattern(deployed) -> dict[str, Any]:
    return event_pattern(deployed()["Resources"]["TagChangeRule"])


@pytest.mark.parametrize(
    "overrides", [{}, {"FindingTypePrefixes": "Backdoor:EC2/,CryptoCurrency:EC2/", "MinSeverity": "4.5"}]
)
def test_patterns_use_only_simple_matchers(guardduty, tag_pattern, overrides) -> None:
    assert _only_simple_matchers(guardduty(**overrides))
    assert _only_simple_matchers(tag_pattern)


@pytest.mark.parametrize(
    ("severity", "isolates"),
    [(8.9, True), (7.0, True), (7, True), (6.9, False), (2.0, False)],
)
def test_guardduty_severity_threshold(guardduty, severity: float, isolates: bool) -> None:
    # Given the default threshold (7) and an EC2 finding of some severity
    # Then it reaches the queue only at or above the threshold
    assert _matches(guardduty(), _finding(severity)) is isolates


def test_guardduty_threshold_is_a_parameter(guardduty) -> None:
    assert _matches(guardduty(MinSeverity="4"), _finding(5.0))
    assert not _matches(guardduty(MinSeverity="8.5"), _finding(8.0))


@pytest.mark.parametrize("resource_type", ["AccessKey", "S3Bucket", "EKSCluster"])
def test_guardduty_findings_of_other_resources_are_ignored(guardduty, resource_type: str) -> None:
    assert not _matches(guardduty(), _finding(8.0, resource_type=resource_type))


def test_other_sources_are_ignored(guardduty) -> None:
    event = _finding(8.0)
    event["source"] = "custom.guardduty"
    assert not _matches(guardduty(), event)


def test_guardduty_finding_type_prefixes(guardduty) -> None:
    # Given a filter on two finding type prefixes
    pattern = guardduty(FindingTypePrefixes="Backdoor:EC2/,CryptoCurrency:EC2/")
    # Then findings of those types match and others do not
    assert _matches(pattern, _finding(finding_type="Backdoor:EC2/C&CActivity.B!DNS"))
    assert _matches(pattern, _finding(finding_type="CryptoCurrency:EC2/BitcoinTool.B"))
    assert not _matches(pattern, _finding(finding_type="Recon:EC2/PortProbeUnprotectedPort"))
    # And without the filter every type matches
    assert _matches(guardduty(), _finding(finding_type="Recon:EC2/PortProbeUnprotectedPort"))
    assert "type" not in guardduty()["detail"]


@pytest.mark.parametrize(
    ("changed", "tags", "resource_type", "isolates"),
    [
        (["isolate"], {"isolate": "true", "Name": "web"}, "instance", True),
        (["isolate", "Owner"], {"isolate": "true"}, "instance", True),
        (["isolate"], {"isolate": "false"}, "instance", False),
        (["isolate"], {"isolate": "True"}, "instance", False),
        # isolate=true already there, another tag changes
        (["Name"], {"isolate": "true", "Name": "web"}, "instance", False),
        # the service's own tags on an instance tagged isolate=true never trigger again
        (
            ["ec2-isolation:id", "ec2-isolation:at", "ec2-isolation:source"],
            {"isolate": "true"},
            "instance",
            False,
        ),
        # the isolate tag was deleted
        (["isolate"], {"Name": "web"}, "instance", False),
        (["isolate"], {"isolate": "true"}, "volume", False),
    ],
)
def test_tag_change_pattern(tag_pattern, changed, tags, resource_type, isolates: bool) -> None:
    assert _matches(tag_pattern, _tag_change(changed, tags, resource_type=resource_type)) is isolates


def test_member_accounts_forward_exactly_the_tag_pattern(deployed, member_stack) -> None:
    # Given the member account's forwarding rule (created when a central bus of another account is set)
    stack = member_stack(CentralEventBusArn="arn:aws:events:eu-west-1:111111111111:event-bus/default")
    forwarded = event_pattern(stack["Resources"]["TagForwardingRule"])
    # Then it forwards what the central TagChangeRule acts on, no more and no less
    assert forwarded == event_pattern(deployed()["Resources"]["TagChangeRule"])


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("", True),
        ("Backdoor:EC2/", True),
        ("Backdoor:EC2/C&CActivity.B!DNS,CryptoCurrency:EC2/", True),
        ('Backdoor"}]', False),  # would break out of the JSON pattern
        ("Backdoor:EC2/\\", False),
        ("Backdoor:EC2/, Recon:EC2/", False),
        ("Backdoor:EC2/,,Recon:EC2/", False),
        ("Backdoor:EC2/,", False),
    ],
)
def test_finding_type_prefixes_cannot_inject_into_the_pattern(
    sam_template, value: str, allowed: bool
) -> None:
    # The GuardDuty pattern is a JSON string built with Fn::Sub (a Ref to a Number parameter would be a
    # string, which EventBridge's numeric matcher rejects), so the parameter's pattern guards it.
    import re

    pattern = sam_template["Parameters"]["FindingTypePrefixes"]["AllowedPattern"]
    assert (re.fullmatch(pattern, value) is not None) is allowed


# --- the tamper watch -----------------------------------------------------------------------------------

EVENTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "events"
CLOUDTRAIL_EVENTS = sorted(p.name for p in EVENTS.glob("cloudtrail-*.json"))
EXECUTION_ROLE_ISSUER = "arn:aws:iam::{account}:role/ec2-isolation-execution"


def _call(name: str, **detail: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / name).read_text())
    event["detail"].update(detail)
    return event


@pytest.fixture(scope="module")
def tamper_pattern(deployed) -> dict[str, Any]:
    return event_pattern(deployed()["Resources"]["TamperRule"])


@pytest.mark.parametrize("name", CLOUDTRAIL_EVENTS)
def test_calls_that_may_undo_an_isolation_reach_the_tamper_queue(tamper_pattern, name: str) -> None:
    # Given a documented CloudTrail call event, made by a person's assumed role
    # Then the tamper rule matches it
    assert _matches(tamper_pattern, _call(name))


@pytest.mark.parametrize("name", CLOUDTRAIL_EVENTS)
def test_failed_calls_are_dropped(tamper_pattern, name: str) -> None:
    assert not _matches(tamper_pattern, _call(name, errorCode="Client.UnauthorizedOperation"))


@pytest.mark.parametrize("account", ["222222222222", "333333333333"])
def test_calls_of_the_execution_role_are_dropped_in_every_account(tamper_pattern, account: str) -> None:
    # Given a call made through the member execution role (the service's own repair) in any account
    event = _call("cloudtrail-modify-network-interface-attribute.json")
    issuer = event["detail"]["userIdentity"]["sessionContext"]["sessionIssuer"]
    issuer["arn"] = EXECUTION_ROLE_ISSUER.format(account=account)
    # Then the rule drops it
    assert not _matches(tamper_pattern, event)
    # And a role whose name only starts like it is not the execution role
    issuer["arn"] += "-admin"
    assert _matches(tamper_pattern, event)


def test_callers_without_a_session_issuer_are_watched(tamper_pattern) -> None:
    # Given an IAM user's call: no session context at all ("anything-but" never matches an absent field)
    event = _call(
        "cloudtrail-modify-instance-attribute.json",
        userIdentity={"type": "IAMUser", "arn": "arn:aws:iam::222222222222:user/ops", "userName": "ops"},
    )
    # Then the rule matches it
    assert _matches(tamper_pattern, event)


def test_only_the_services_role_policies_are_watched(tamper_pattern) -> None:
    event = _call("cloudtrail-delete-role-policy.json")
    event["detail"]["requestParameters"]["policyName"] = "app-s3-access"
    assert not _matches(tamper_pattern, event)


def test_other_calls_are_not_watched(tamper_pattern) -> None:
    assert not _matches(
        tamper_pattern, _call("cloudtrail-modify-instance-attribute.json", eventName="StartInstances")
    )


def test_member_accounts_forward_exactly_the_tamper_pattern(deployed, member_stack) -> None:
    # Given the member template's forwarding rule and the stack's tamper rules, default and renamed roles
    bus = "arn:aws:events:eu-west-1:111111111111:event-bus/ec2-isolation"
    for role in ("ec2-isolation-execution", "ir-exec"):
        forwarded = event_pattern(
            member_stack(CentralEventBusArn=bus, RoleName=role)["Resources"]["TamperForwardingRule"]
        )
        # Then it forwards what the stack's rules act on, no more and no less
        assert forwarded == event_pattern(deployed(TargetRoleName=role)["Resources"]["TamperRule"])
        assert forwarded == event_pattern(deployed(TargetRoleName=role)["Resources"]["TamperBusRule"])


def test_the_notification_rule_sends_outcomes_but_never_a_dry_runs(deployed) -> None:
    # Given the rule that sends each outcome's summary to NotificationTopicArn, and the outcome events the
    # worker puts on the bus (shared.outcomes.entry), of an isolation and of a dry run
    from shared import outcomes
    from shared.lifecycle import Status
    from shared.models import IsolationRecord, Source, Target

    stack = deployed(NotificationTopicArn="arn:aws:sns:us-east-1:123456789012:responders")
    pattern = event_pattern(stack["Resources"]["OutcomeNotificationRule"])
    target = Target(account_id="222222222222", region="eu-west-1", instance_id="i-0123456789abcdef0")

    def event(status: Status, *, dry_run: bool) -> dict[str, Any]:
        record = IsolationRecord.queued(
            isolation_id="iso-" + "1" * 32, source=Source.WEBHOOK, target=target, dry_run=dry_run
        ).model_copy(update={"status": status})
        entry = outcomes.entry(record, "ec2-isolation")
        return {
            "version": "0",
            "id": "e-1",
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "account": "123456789012",
            "time": "2026-11-01T10:00:00Z",
            "region": "us-east-1",
            "resources": entry["Resources"],
            "detail": json.loads(entry["Detail"]),
        }

    # Then the isolation's outcomes match, the dry run's do not
    assert _matches(pattern, event(Status.ISOLATED, dry_run=False))
    assert _matches(pattern, event(Status.FAILED, dry_run=False))
    assert not _matches(pattern, event(Status.CHECKED, dry_run=True))
    assert not _matches(pattern, event(Status.FAILED, dry_run=True))
    # And so does an event of a record from before dry runs existed (no dry_run field)
    older = event(Status.ISOLATED, dry_run=False)
    del older["detail"]["dry_run"]
    assert _matches(pattern, older)


# --- guardrail events -----------------------------------------------------------------------------------

GUARDRAIL_EVENTS = sorted(p.name for p in EVENTS.glob("guardrail-*.json"))
STACKSET_ISSUER = "arn:aws:iam::222222222222:role/stacksets-exec-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def guardrail_patterns(deployed) -> list[dict[str, Any]]:
    resources = deployed()["Resources"]
    return [event_pattern(resources["GuardrailRule"]), event_pattern(resources["GuardrailBusRule"])]


def _guardrail(name: str, **detail: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / name).read_text())
    event["detail"].update(detail)
    return event


def _issuer(event: dict[str, Any], arn: str) -> dict[str, Any]:
    event["detail"]["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"] = arn
    return event


@pytest.mark.parametrize("name", GUARDRAIL_EVENTS)
def test_calls_that_could_switch_the_service_off_reach_the_guardrail_queue(guardrail_patterns, name) -> None:
    # Given a documented CloudTrail call on the service's roles, profile, forwarding rules or a trail
    for pattern in guardrail_patterns:
        # Then both guardrail rules (default bus, stack's bus) match it
        assert _matches(pattern, _guardrail(name)), name
        # And a failed one changed nothing: no event
        assert not _matches(pattern, _guardrail(name, errorCode="AccessDenied")), name


@pytest.mark.parametrize("name", [n for n in GUARDRAIL_EVENTS if "execution-role" not in n])
def test_the_stackset_execution_role_deploys_without_a_guardrail_event(guardrail_patterns, name) -> None:
    # Given the same call made by the StackSet execution role (deploying or updating the member stack)
    event = _issuer(_guardrail(name), STACKSET_ISSUER)
    # Then no rule matches it
    assert not any(_matches(pattern, event) for pattern in guardrail_patterns)
    # And a role whose name merely contains it is watched
    event = _issuer(_guardrail(name), "arn:aws:iam::222222222222:role/admin-stacksets-exec-x")
    assert all(_matches(pattern, event) for pattern in guardrail_patterns)


def test_a_user_without_a_session_issuer_is_watched(guardrail_patterns) -> None:
    event = _guardrail(
        "guardrail-update-assume-role-policy.json",
        userIdentity={"type": "IAMUser", "arn": "arn:aws:iam::222222222222:user/ops", "userName": "ops"},
    )
    assert all(_matches(pattern, event) for pattern in guardrail_patterns)


@pytest.mark.parametrize(
    ("name", "request_parameters"),
    [
        ("guardrail-update-assume-role-policy.json", {"roleName": "app", "policyDocument": "{}"}),
        ("guardrail-detach-role-policy.json", {"roleName": "ec2-isolation-deny-all-x", "policyArn": "arn"}),
        ("guardrail-disable-rule.json", {"name": "my-team-rule"}),
    ],
)
def test_other_roles_and_rules_are_not_watched(guardrail_patterns, name, request_parameters) -> None:
    event = _guardrail(name, requestParameters=request_parameters)
    assert not any(_matches(pattern, event) for pattern in guardrail_patterns)


def test_a_deleterule_of_another_service_is_not_watched(guardrail_patterns) -> None:
    # Given ELB's DeleteRule (a listener rule), whose name is EventBridge's too
    event = _guardrail(
        "guardrail-disable-rule.json",
        eventName="DeleteRule",
        eventSource="elasticloadbalancing.amazonaws.com",
    )
    event["source"] = "aws.elasticloadbalancing"
    assert not any(_matches(pattern, event) for pattern in guardrail_patterns)


def test_every_putrolepolicy_of_the_execution_role_reaches_the_function(guardrail_patterns) -> None:
    # Given the execution role writing an inline policy on an application role (its credentials deny, or
    # anything else: the function reads the document)
    event = _guardrail("guardrail-put-role-policy-by-execution-role.json")
    assert all(_matches(pattern, event) for pattern in guardrail_patterns)
    # And its other calls (the isolation role and profile put back) never reach it
    event = _issuer(
        _guardrail("guardrail-detach-role-policy.json", eventName="AttachRolePolicy"),
        EXECUTION_ROLE_ISSUER.format(account="222222222222"),
    )
    assert all(_matches(pattern, event) for pattern in guardrail_patterns)  # the function drops it
    event = _guardrail("guardrail-put-role-policy-by-execution-role.json", eventName="DeleteRolePolicy")
    assert not any(_matches(pattern, event) for pattern in guardrail_patterns)


def test_member_accounts_forward_exactly_the_guardrail_pattern(deployed, member_stack) -> None:
    bus = "arn:aws:events:eu-west-1:111111111111:event-bus/ec2-isolation"
    for role in ("ec2-isolation-execution", "ir-exec"):
        member = member_stack(CentralEventBusArn=bus, RoleName=role)["Resources"]["GuardrailForwardingRule"]
        forwarded = event_pattern(member)
        assert member["Properties"]["Name"] == "ec2-isolation-forward-guardrail-us-east-1"
        stack = deployed(TargetRoleName=role)["Resources"]
        assert forwarded == event_pattern(stack["GuardrailRule"])
        assert forwarded == event_pattern(stack["GuardrailBusRule"])


@pytest.mark.parametrize("name", ["cloudtrail-create-tags.json", "cloudtrail-delete-tags.json"])
def test_tag_calls_are_watched_only_for_the_services_keys(tamper_pattern, name: str) -> None:
    # Given a CreateTags or DeleteTags call of an ec2-isolation: key (matched), and the same call of
    # other keys only: every tag change of the organization is not the tamper watch's
    event = _call(name)
    items = event["detail"]["requestParameters"]["tagSet"]["items"]
    assert _matches(tamper_pattern, event)
    for item in items:
        item["key"] = "Name"
    # Then only the first reaches the tamper queue
    assert not _matches(tamper_pattern, event)
    # And one call of both kinds of keys does
    items.append({"key": "ec2-isolation:source", "value": "x"})
    assert _matches(tamper_pattern, event)


def test_delete_tags_without_a_tag_list_is_watched_create_tags_without_one_is_not(tamper_pattern) -> None:
    # DeleteTags with no tag list removes every tag, the service's included
    assert _matches(tamper_pattern, _call("cloudtrail-delete-tags-all.json"))
    assert not _matches(tamper_pattern, _call("cloudtrail-delete-tags-all.json", eventName="CreateTags"))


def test_a_role_policy_call_on_another_policy_is_not_watched_even_among_tag_calls(tamper_pattern) -> None:
    event = _call("cloudtrail-delete-role-policy.json")
    event["detail"]["requestParameters"]["policyName"] = "app-s3-access"
    event["detail"]["requestParameters"]["tagSet"] = {"items": [{"key": "ec2-isolation:id"}]}
    assert not _matches(tamper_pattern, event)
