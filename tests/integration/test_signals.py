"""Signals as AWS sends them: GuardDuty sample findings never isolate, findings without the usual target
fields are used or recorded (never lost), findings about other resource types are ignored, the Security
Hub custom action isolates every EC2 instance of the selected findings, and tag values match exactly.

Each through the template's own rule pattern (moto's EventBridge matcher) and through the worker."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from moto.events.models import EventPattern
from tests.conftest import OTHER_ACCOUNT, ROOT, Stack
from tests.infra.resolver import event_pattern, resolve
from tests.integration.test_worker import assert_isolated, record_of, records_for
from tests.support.aws import ISOLATION_NAME, Faults, Member

from local_stack.sample_events import guardduty_finding, security_hub_custom_action, tag_change
from local_stack.templates import load_template
from shared.models import Source, trigger_isolation_id

EVENTS = Path(__file__).resolve().parent.parent / "events"
SECURITY_ACCOUNT = "123456789012"


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def pattern(rule: str, **parameters: str) -> EventPattern:
    template = resolve(
        load_template(ROOT / "template.yaml"), parameters, pseudo={"AWS::AccountId": SECURITY_ACCOUNT}
    )
    return EventPattern.load(json.dumps(event_pattern(template["Resources"][rule])))


def instance_arn(member: Member, instance_id: str) -> str:
    return f"arn:aws:ec2:{member.region}:{member.account_id}:instance/{instance_id}"


# --- the rules ---------------------------------------------------------------------------------------


def test_guardduty_rule_never_matches_a_sample_finding() -> None:
    rule = pattern("GuardDutyFindingRule")
    real, sample = event("guardduty-finding-ec2-high.json"), event("guardduty-finding-sample.json")
    assert rule.matches_event(real)
    assert not rule.matches_event(sample)
    # `sample` absent or false both match ("anything-but" would miss the absent field)
    explicit_false = copy.deepcopy(sample)
    explicit_false["detail"]["service"]["additionalInfo"]["sample"] = False
    assert rule.matches_event(explicit_false)


def test_guardduty_rule_acts_on_instance_findings_and_container_findings_only_when_asked() -> None:
    container = event("guardduty-finding-ec2-high.json")
    container["detail"]["resource"]["resourceType"] = "Container"
    assert not pattern("GuardDutyFindingRule").matches_event(container)
    assert pattern("GuardDutyFindingRule", IsolateContainerFindings="true").matches_event(container)
    s3 = event("guardduty-finding-s3.json")
    assert not pattern("GuardDutyFindingRule", IsolateContainerFindings="true").matches_event(s3)


def test_security_hub_rule_matches_this_accounts_action_in_any_region_only() -> None:
    rule = pattern("SecurityHubActionRule", EnableSecurityHubAction="true")
    action = event("securityhub-custom-action.json")
    assert rule.matches_event(action)
    elsewhere = copy.deepcopy(action)
    elsewhere["resources"] = [
        f"arn:aws:securityhub:ap-south-1:{SECURITY_ACCOUNT}:action/custom/IsolateInstance"
    ]
    assert rule.matches_event(elsewhere)
    # A member account's own custom action of the same name isolates nothing
    foreign = copy.deepcopy(action)
    foreign["resources"] = [f"arn:aws:securityhub:eu-west-1:{OTHER_ACCOUNT}:action/custom/IsolateInstance"]
    assert not rule.matches_event(foreign)


def test_security_hub_action_exists_only_when_enabled() -> None:
    template = resolve(load_template(ROOT / "template.yaml"))
    assert "SecurityHubAction" not in template["Resources"]
    enabled = resolve(load_template(ROOT / "template.yaml"), {"EnableSecurityHubAction": "true"})
    action = enabled["Resources"]["SecurityHubAction"]["Properties"]
    assert action["Id"] == "IsolateInstance" and action["Name"] == "Isolate instance"


@pytest.mark.parametrize("value", ["True", "TRUE", "yes", "1"])
def test_tag_values_match_exactly(value: str) -> None:
    tagged = event("tag-isolate-true.json")
    tagged["detail"]["tags"]["isolate"] = value
    assert not pattern("TagChangeRule").matches_event(tagged)


# --- the worker --------------------------------------------------------------------------------------


def test_sample_finding_for_a_real_instance_isolates_nothing(stack: Stack, member: Member) -> None:
    # Given a "Generate sample findings" finding that happens to name a real instance
    vpc = member.vpc()
    instance = member.instance(vpc)
    sample = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    sample["detail"]["service"]["additionalInfo"] = {"sample": True, "type": "default", "value": "{}"}

    # When it reaches the worker anyway (e.g. through a rule without the filter)
    stack.send(sample)
    stack.drain()

    # Then it is acknowledged, recorded nowhere and the instance untouched
    assert records_for(stack, instance) == []
    assert stack.queued() == 0 and stack.dead_letters() == []
    assert member.isolation_groups(vpc.id) == []


def test_finding_without_account_and_region_fields_uses_its_arn(stack: Stack, member: Member) -> None:
    # Given a finding shape without detail.accountId and detail.region, but with the finding's ARN
    vpc = member.vpc()
    instance = member.instance(vpc)
    finding = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    finding["account"] = SECURITY_ACCOUNT  # the administrator's bus: never the target
    del finding["detail"]["accountId"], finding["detail"]["region"]

    # When the worker runs
    stack.send(finding)
    stack.drain()

    # Then the instance is isolated in the account and region of the finding's ARN
    [record] = records_for(stack, instance)
    assert record["status"] == "ISOLATED" and record["account_id"] == member.account_id
    assert_isolated(member, instance, vpc.id)


def test_finding_with_no_usable_target_is_recorded_failed_not_lost(stack: Stack, member: Member) -> None:
    # Given a matched finding from which no account can be derived (no accountId, no ARN)
    instance = member.instance(member.vpc())
    finding = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    del finding["detail"]["accountId"], finding["detail"]["arn"]

    # When the worker runs
    stack.send(finding)
    stack.drain()

    # Then a FAILED record says which field is missing and names the event; the message is acknowledged
    [record] = records_for(stack, instance)
    assert record["status"] == "FAILED" and record["error"]["code"] == "UnusableSignal"
    assert "detail.accountId" in record["error"]["message"]
    assert record["trigger"]["event_id"] == finding["id"] and record["account_id"] == "unknown"
    assert stack.queued() == 0 and stack.dead_letters() == []


def test_finding_the_parser_cannot_read_is_recorded_failed(stack: Stack, member: Member) -> None:
    # Given a matched finding in a shape the parser does not know (no resource at all)
    finding = guardduty_finding(
        account_id=member.account_id, region=member.region, instance_id="i-0123456789abcdef0"
    )
    del finding["detail"]["resource"]

    # When the worker runs
    stack.send(finding)
    stack.drain()

    # Then it is on record (its id derives from the event's), FAILED, naming what could not be read
    record = record_of(stack, trigger_isolation_id(Source.GUARDDUTY, finding["id"]))
    assert record["status"] == "FAILED" and "resource" in record["error"]["message"]
    assert record["account_id"] == member.account_id and record["trigger"] == {"event_id": finding["id"]}
    assert stack.dead_letters() == []


@pytest.mark.parametrize("container_findings", [False, True])
def test_container_findings_isolate_their_host_only_when_asked(
    stack: Stack, member: Member, monkeypatch: pytest.MonkeyPatch, container_findings: bool
) -> None:
    # Given a Runtime Monitoring finding about a container on an EC2 host
    from shared.config import worker_settings

    monkeypatch.setenv("ISOLATE_CONTAINER_FINDINGS", str(container_findings).lower())
    worker_settings.cache_clear()
    vpc = member.vpc()
    instance = member.instance(vpc)
    finding = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    finding["detail"]["resource"]["resourceType"] = "Container"

    # When the worker runs
    stack.send(finding)
    stack.drain()

    # Then the host is isolated only when the setting asks for it; otherwise nothing is recorded
    records = records_for(stack, instance)
    if container_findings:
        assert [r["status"] for r in records] == ["ISOLATED"]
        assert_isolated(member, instance, vpc.id)
    else:
        assert records == [] and stack.dead_letters() == []


def test_security_hub_action_isolates_every_instance_of_the_findings(
    stack: Stack, member: Member, other_member: Member
) -> None:
    # Given an analyst's custom action on three findings: two instances in two accounts and an S3 bucket
    vpc, other_vpc = member.vpc(), other_member.vpc()
    first, second = member.instance(vpc), other_member.instance(other_vpc)
    action = security_hub_custom_action(
        action_account=SECURITY_ACCOUNT,
        action_region=member.region,
        resources=[
            ("AwsEc2Instance", instance_arn(member, first)),
            ("AwsEc2Instance", instance_arn(other_member, second)),
            ("AwsS3Bucket", "arn:aws:s3:::example-logs"),
        ],
    )

    # When the worker runs
    stack.send(action)
    stack.drain()

    # Then both instances are isolated, each with its own record naming the finding and the action
    for who, instance, where in ((member, first, vpc), (other_member, second, other_vpc)):
        [record] = records_for(stack, instance)
        assert record["status"] == "ISOLATED" and record["source"] == "securityhub"
        assert record["account_id"] == who.account_id
        assert record["trigger"]["action_name"] == "Isolate instance"
        assert record["trigger"]["event_id"] == action["id"] and record["trigger"]["title"]
        assert assert_isolated(who, instance, where.id)
    assert stack.dead_letters() == []

    # And the same event delivered again starts nothing new
    stack.send(action)
    stack.drain()
    assert len(records_for(stack, first)) == len(records_for(stack, second)) == 1


def test_a_finding_naming_another_accounts_instance_isolates_only_its_own(
    stack: Stack, member: Member, other_member: Member
) -> None:
    # Given a finding imported by one account (BatchImportFindings: its own AwsAccountId) that names an
    # instance of its own and one of another account (Security Hub does not check the resources' ARNs)
    vpc, other_vpc = member.vpc(), other_member.vpc()
    own, foreign = member.instance(vpc), other_member.instance(other_vpc)
    action = security_hub_custom_action(
        action_account=SECURITY_ACCOUNT,
        action_region=member.region,
        resources=[("AwsEc2Instance", instance_arn(member, own))],
        finding_account=member.account_id,
    )
    [finding] = action["detail"]["findings"]
    finding["Resources"].append(
        {"Type": "AwsEc2Instance", "Id": instance_arn(other_member, foreign), "Partition": "aws"}
    )

    # When an analyst runs the custom action on it
    stack.send(action)
    responses = stack.drain()

    # Then the importer's own instance is isolated
    [record] = records_for(stack, own)
    assert record["status"] == "ISOLATED" and record["source"] == "securityhub"
    assert_isolated(member, own, vpc.id)
    # And the other account's instance is never touched: FAILED ForeignResource, naming both accounts
    [refused] = records_for(stack, foreign)
    assert refused["status"] == "FAILED" and refused["source"] == "securityhub"
    assert refused["error"]["code"] == "ForeignResource"
    assert member.account_id in refused["error"]["message"]
    assert other_member.account_id in refused["error"]["message"]
    assert refused["account_id"] == other_member.account_id and refused["steps"] == []
    # And each record's outcome is published, the refusal's as FAILED
    outcomes = {e["detail"]["isolation_id"]: e["detail"]["status"] for e in stack.outcomes()}
    assert outcomes == {record["isolation_id"]: "ISOLATED", refused["isolation_id"]: "FAILED"}
    assert other_member.isolation_groups(other_vpc.id) == []
    assert other_member.profile_of(foreign) != (
        f"arn:aws:iam::{other_member.account_id}:instance-profile/{ISOLATION_NAME}"
    )
    # And the message is acknowledged, never retried into the DLQ
    assert responses and all(r["batchItemFailures"] == [] for r in responses)
    assert stack.dead_letters() == []

    # And the same event delivered again writes nothing new
    stack.send(action)
    stack.drain()
    assert len(records_for(stack, own)) == len(records_for(stack, foreign)) == 1


def test_a_finding_naming_only_another_accounts_instance_is_refused(
    stack: Stack, member: Member, other_member: Member
) -> None:
    # Given a finding imported by one account naming only another account's instance
    other_vpc = other_member.vpc()
    foreign = other_member.instance(other_vpc)
    action = security_hub_custom_action(
        action_account=SECURITY_ACCOUNT,
        action_region=member.region,
        resources=[("AwsEc2Instance", instance_arn(other_member, foreign))],
        finding_account=member.account_id,
    )
    # When the worker runs
    stack.send(action)
    responses = stack.drain()
    # Then it is refused on record, acknowledged, and the instance is untouched
    [refused] = records_for(stack, foreign)
    assert refused["status"] == "FAILED" and refused["error"]["code"] == "ForeignResource"
    assert responses and responses[0]["batchItemFailures"] == []
    assert stack.queued() == 0 and stack.dead_letters() == []
    assert other_member.isolation_groups(other_vpc.id) == []


def test_security_hub_action_without_an_instance_is_acknowledged(stack: Stack) -> None:
    # Given a custom action on an S3 finding only
    action = security_hub_custom_action(
        action_account=SECURITY_ACCOUNT,
        action_region="eu-west-1",
        resources=[("AwsS3Bucket", "arn:aws:s3:::example-logs")],
    )
    # When the worker runs
    stack.send(action)
    responses = stack.drain()
    # Then it is acknowledged (not retried into the DLQ)
    assert responses and responses[0]["batchItemFailures"] == []
    assert stack.queued() == 0 and stack.dead_letters() == []


def test_tag_value_other_than_true_is_acknowledged_without_isolating(stack: Stack, member: Member) -> None:
    vpc = member.vpc()
    instance = member.instance(vpc)
    stack.send(
        tag_change(
            account_id=member.account_id, region=member.region, instance_id=instance, tags={"isolate": "True"}
        )
    )
    stack.drain()
    assert records_for(stack, instance) == [] and stack.dead_letters() == []
    assert member.isolation_groups(vpc.id) == []


def test_a_made_up_region_fails_at_once_without_a_call(stack: Stack, member: Member, faults: Faults) -> None:
    # Given a finding naming a region of the right form that does not exist
    faults.count()
    finding = guardduty_finding(
        account_id=member.account_id, region="eu-wset-1", instance_id="i-0123456789abcdef0"
    )

    # When the worker runs
    stack.send(finding)
    stack.drain()

    # Then the record is FAILED UnknownRegion on the first receive, and no call went to any account
    record = record_of(stack, trigger_isolation_id(Source.GUARDDUTY, finding["id"]))
    assert record["status"] == "FAILED" and record["error"]["code"] == "UnknownRegion"
    assert record["attempts"] == 1 and stack.dead_letters() == []
    assert not [call for call in faults.calls if call.startswith(("sts.", "ec2.", "iam."))]
