"""The trigger rules as deployed: tests/events samples put on the local stack's bus, through the rules
created from template.yaml's own event patterns, to the queue and the worker (or nowhere)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from local_stack.sample_events import cloudtrail_call, groups_changed, security_hub_custom_action
from local_stack.stack import LocalStack
from local_stack.workloads import DemoInstance
from tests.e2e.helpers import assert_isolated, member_clients, sample_event

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(90)]

# moto delivers a matched event to the queue within PutEvents: what is not there at once never comes.
# The wait is a margin, not a necessity.
QUIET_SECONDS = 0.75


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # Not POWERTOOLS_LOG_LEVEL: the shared Logger keeps the level it was created with, for later suites too.
    environment = {"POWERTOOLS_METRICS_DISABLED": "true"}
    with LocalStack(seed_demo=True, region="eu-west-1", worker=False, environment=environment) as local:
        yield local


@pytest.fixture
def paused(stack: LocalStack) -> LocalStack:
    """The stack with its worker stopped: what the rules deliver stays on the queue to be counted."""
    stack.pause_worker()
    assert stack.queue_depth() == 0
    return stack


def _tag(instance: DemoInstance, tags: dict[str, str]) -> None:
    ec2, _ = member_clients(instance)
    ec2.create_tags(Resources=[instance.instance_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


def _stays_empty(stack: LocalStack) -> None:
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        assert stack.queue_depth() == 0
        time.sleep(0.25)


def _no_record_after_worker_runs(stack: LocalStack, instance: DemoInstance) -> None:
    stack.resume_worker()
    time.sleep(0.5)
    assert stack.records(instance.instance_id, instance.account_id) == []
    assert stack.queue_depth(dead_letter=True) == 0


def _isolated_by(stack: LocalStack, instance: DemoInstance, source: str) -> dict[str, Any]:
    assert stack.queue_depth() == 1  # the rule matched: the event is on the queue, unchanged
    stack.resume_worker()
    record = stack.wait_for_instance(instance.instance_id, instance.account_id, timeout=30)
    assert_isolated(instance, record, source=source)
    return record


def _isolated_through_the_webhook(stack: LocalStack, instance: DemoInstance) -> dict[str, Any]:
    stack.resume_worker()
    status, body = stack.request(
        "POST",
        "/isolate",
        {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region},
    )
    assert status == 202, body
    record = stack.wait_for(body["isolation_id"])
    assert record["status"] == "ISOLATED"
    return record


def test_high_severity_ec2_finding_isolates(paused: LocalStack) -> None:
    # Given a severity-8 GuardDuty finding about a demo instance
    instance = paused.demo.instance("web-1", 0)
    event = sample_event("guardduty-finding-ec2-high.json", instance)

    # When GuardDuty publishes it on the (delegated administrator's) bus
    paused.put_event(event)

    # Then the rule sends it to the queue and the worker isolates the instance, recording the finding
    record = _isolated_by(paused, instance, "guardduty")
    assert record["trigger"]["finding_id"] == event["detail"]["id"]
    assert record["trigger"]["severity"] == 8


def test_low_severity_finding_does_not_isolate(paused: LocalStack) -> None:
    instance = paused.demo.instance("web-2", 0)
    paused.put_event(sample_event("guardduty-finding-ec2-low.json", instance))
    _stays_empty(paused)
    _no_record_after_worker_runs(paused, instance)


@pytest.mark.parametrize("sample", ["guardduty-finding-iam-accesskey.json", "guardduty-finding-s3.json"])
def test_finding_about_another_resource_does_not_isolate(paused: LocalStack, sample: str) -> None:
    # A high-severity finding, but not about an instance (the instance id in its text is a red herring)
    instance = paused.demo.instance("web-2", 0)
    event = sample_event(sample, instance)
    assert event["detail"]["severity"] >= 7
    paused.put_event(event)
    _stays_empty(paused)
    _no_record_after_worker_runs(paused, instance)


def test_isolate_true_tag_isolates(paused: LocalStack) -> None:
    # Given a demo instance tagged isolate=true in its account
    instance = paused.demo.instance("web-1", 1)
    _tag(instance, {"isolate": "true"})

    # When the tag change event arrives on the bus
    event = sample_event("tag-isolate-true.json", instance)
    paused.put_event(event)

    # Then it is isolated, the record says so
    record = _isolated_by(paused, instance, "tag")
    assert record["trigger"]["resource_arn"] == event["resources"][0]


@pytest.mark.parametrize(
    ("sample", "tags"),
    [
        ("tag-isolate-false.json", {"isolate": "false"}),
        ("tag-other-tag-while-isolate-true.json", {"isolate": "true", "team": "platform"}),
        (
            "tag-ec2-isolation-tags.json",
            {
                "isolate": "true",
                "ec2-isolation:source": "tag",
                "ec2-isolation:at": "2026-11-26T10:20:03.412Z",
            },
        ),
    ],
    ids=["isolate-false", "other-tag-changed", "service-own-tags"],
)
def test_tag_changes_that_must_not_isolate(paused: LocalStack, sample: str, tags: dict[str, str]) -> None:
    instance = paused.demo.instance("web-2", 1)
    _tag(instance, tags)
    paused.put_event(sample_event(sample, instance))
    _stays_empty(paused)
    _no_record_after_worker_runs(paused, instance)


def test_finding_for_exempt_instance_is_skipped(paused: LocalStack) -> None:
    # Given the instance the demo exempted: in the stack's own exemptions, nothing on the instance
    instance = paused.demo.instance("exempt", 0)
    assert instance.exempt
    status, listed = paused.request("GET", f"/exemptions?account_id={instance.account_id}")
    [exemption] = [e for e in listed["items"] if e["instance_id"] == instance.instance_id]
    ec2, _ = member_clients(instance)
    described = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]
    assert not [tag for tag in described.get("Tags", []) if tag["Key"].startswith("ec2-isolation:")]

    # When a high-severity finding names it
    paused.put_event(sample_event("guardduty-finding-ec2-high.json", instance))

    # Then the record says SKIPPED, naming the exemption, and the instance keeps its groups
    assert paused.queue_depth() == 1
    paused.resume_worker()
    record = paused.wait_for_instance(instance.instance_id, instance.account_id, timeout=30)
    assert record["status"] == "SKIPPED" and record["source"] == "guardduty"
    assert exemption["exemption_id"] in record["steps"][0]["detail"]
    interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=instance.eni_ids)["NetworkInterfaces"]
    assert sorted({g["GroupId"] for eni in interfaces for g in eni["Groups"]}) == instance.security_group_ids


def test_a_finding_naming_another_accounts_instance_never_isolates_it(paused: LocalStack) -> None:
    # Given a Security Hub finding imported by one member account (its AwsAccountId) that names one of
    # its own instances and one of another member account (Security Hub does not check the ARNs)
    own, foreign = paused.demo.instance("web-3", 0), paused.demo.instance("web-asg", 1)
    action = security_hub_custom_action(
        action_account=paused.account_id,
        action_region=paused.region,
        resources=[("AwsEc2Instance", own.arn)],
        finding_account=own.account_id,
    )
    action["detail"]["findings"][0]["Resources"].append(
        {"Type": "AwsEc2Instance", "Id": foreign.arn, "Partition": "aws"}
    )

    # When an analyst runs the custom action on it in the security account
    paused.put_event(action)

    # Then the importer's instance is isolated
    _isolated_by(paused, own, "securityhub")
    # And the other account's instance is refused on record (both accounts named) and left as it was
    [refused] = paused.records(foreign.instance_id, foreign.account_id)
    assert refused["status"] == "FAILED" and refused["error"]["code"] == "ForeignResource"
    assert own.account_id in refused["error"]["message"] and foreign.account_id in refused["error"]["message"]
    ec2, _ = member_clients(foreign)
    interfaces = ec2.describe_network_interfaces(NetworkInterfaceIds=foreign.eni_ids)["NetworkInterfaces"]
    assert sorted({g["GroupId"] for eni in interfaces for g in eni["Groups"]}) == foreign.security_group_ids
    assert paused.queue_depth(dead_letter=True) == 0


def test_an_instance_its_account_tagged_exempt_is_isolated(paused: LocalStack) -> None:
    # Given a member principal with ec2:CreateTags that tagged its compromised instance exempt
    instance = paused.demo.instance("ipv6-1", 0)
    _tag(instance, {"ec2-isolation:exempt": "true"})

    # When a high-severity finding names it
    paused.put_event(sample_event("guardduty-finding-ec2-high.json", instance))

    # Then the tag is not honoured: it is isolated
    record = _isolated_by(paused, instance, "guardduty")
    assert "check-exemption" not in [step["name"] for step in record["steps"]]


def test_an_isolation_undone_by_hand_is_undone_in_turn(paused: LocalStack) -> None:
    # Given a demo instance isolated through the webhook
    instance = paused.demo.instance("web-3", 1)
    first = _isolated_through_the_webhook(paused, instance)

    # When the member account's administrator (not the execution role) puts an interface back in its
    # old groups, and CloudTrail's event of that call reaches the stack's bus (moto has no CloudTrail)
    ec2, _ = member_clients(instance)
    eni = instance.eni_ids[0]
    ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=instance.security_group_ids)
    call = cloudtrail_call(
        source="aws.ec2",
        event_name="ModifyNetworkInterfaceAttribute",
        account_id=instance.account_id,
        region=instance.region,
        caller_role_arn=f"arn:aws:iam::{instance.account_id}:role/OrganizationAccountAccessRole",
        request_parameters=groups_changed(eni, instance.security_group_ids),
        response_elements={"_return": True},
    )
    paused.put_event(call)

    # Then the tamper function isolates it again, on a record of the same episode that names the call
    deadline = time.monotonic() + 30
    while (record := paused.records(instance.instance_id, instance.account_id)[0])["source"] != "tamper":
        assert time.monotonic() < deadline, "no tamper repair"
        time.sleep(0.2)
    record = paused.wait_for(record["isolation_id"])
    assert_isolated(instance, record, source="tamper")
    assert record["trigger"]["event_id"] == call["detail"]["eventID"]
    assert record["trigger"]["caller_arn"].endswith(":assumed-role/OrganizationAccountAccessRole/harness")
    assert record["inherits_from"] == first["isolation_id"]
    assert record["prior_state"] == first["prior_state"]


def test_an_isolation_group_untagged_then_opened_is_repaired_on_the_group(paused: LocalStack) -> None:
    # Given a demo instance isolated through the webhook, behind its VPC's isolation group
    instance = paused.demo.instance("ipv6-1", 1)
    first = _isolated_through_the_webhook(paused, instance)
    [group] = set(first["isolation_groups"].values())

    # When the member's administrator removes the group's managed tag, then opens its egress, and
    # CloudTrail's events of both calls reach the stack's bus
    ec2, _ = member_clients(instance)
    ec2.delete_tags(Resources=[group], Tags=[{"Key": "ec2-isolation:managed"}])
    ec2.authorize_security_group_egress(
        GroupId=group, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    admin = f"arn:aws:iam::{instance.account_id}:role/OrganizationAccountAccessRole"
    for event_name, request in (
        (
            "DeleteTags",
            {
                "resourcesSet": {"items": [{"resourceId": group}]},
                "tagSet": {"items": [{"key": "ec2-isolation:managed"}]},
            },
        ),
        ("AuthorizeSecurityGroupEgress", {"groupId": group}),
    ):
        paused.put_event(
            cloudtrail_call(
                source="aws.ec2",
                event_name=event_name,
                account_id=instance.account_id,
                region=instance.region,
                caller_role_arn=admin,
                request_parameters=request,
                response_elements={"_return": True},
            )
        )

    # Then the group is repaired: tagged again, no rule, the instance still behind it alone
    deadline = time.monotonic() + 45
    while True:
        [described] = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
        tagged = {"Key": "ec2-isolation:managed", "Value": "true"} in described.get("Tags", [])
        if tagged and not described["IpPermissionsEgress"] and not described["IpPermissions"]:
            break
        assert time.monotonic() < deadline, f"the group was not repaired: {described}"
        time.sleep(0.3)
    repairs = [
        r for r in paused.records(instance.instance_id, instance.account_id) if r["source"] == "tamper"
    ]
    assert repairs and {r["trigger"]["security_group_ids"][0] for r in repairs} == {group}
    latest = paused.wait_for(paused.records(instance.instance_id, instance.account_id)[0]["isolation_id"])
    assert_isolated(instance, latest, source=latest["source"])


def _guardrail_listener(stack: LocalStack) -> Any:
    """A queue hearing every guardrail event on the local stack's bus; returns a reader of it."""
    import json

    sqs, events = stack.client("sqs"), stack.client("events")
    assert stack.provisioned is not None
    bus = stack.provisioned.environment()["EVENT_BUS_NAME"]
    url = sqs.create_queue(QueueName="e2e-guardrail-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="e2e-guardrail-events",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["ec2-isolation"], "detail-type": ["EC2 Isolation Guardrail"]}),
    )
    events.put_targets(Rule="e2e-guardrail-events", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])

    def heard(wait: float) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            if found:
                return found
            time.sleep(0.2)
        return found

    return heard


def test_a_member_rewriting_the_execution_roles_trust_is_reported(paused: LocalStack) -> None:
    # Given a listener of the stack's guardrail events, and the worker (and guardrail function) running
    heard = _guardrail_listener(paused)
    paused.resume_worker()
    instance = paused.demo.instance("web-3", 0)
    # When CloudTrail's event of a member administrator's UpdateAssumeRolePolicy on the execution role
    # reaches the stack account's default bus (IAM's events: us-east-1; moto has no CloudTrail)
    call = sample_event("guardrail-update-assume-role-policy.json", instance)
    call["detail"]["recipientAccountId"] = instance.account_id
    paused.put_event(call)
    # Then the guardrail function reports it on the stack's bus: the call, the caller, the event id
    [event] = heard(30)
    detail = event["detail"]
    assert (detail["finding"], detail["resource"]) == (
        "UpdateAssumeRolePolicy",
        "role/ec2-isolation-execution",
    )
    assert detail["event_id"] == call["detail"]["eventID"] and detail["account_id"] == instance.account_id
    # And the same call made by the StackSet execution role (a deployment) reports nothing
    issuer = call["detail"]["userIdentity"]["sessionContext"]["sessionIssuer"]
    issuer["arn"] = f"arn:aws:iam::{instance.account_id}:role/stacksets-exec-0123456789abcdef0123456789abcdef"
    call["detail"]["eventID"] = "11111111-2222-4333-8444-555555555699"
    paused.put_event(call)
    assert heard(QUIET_SECONDS * 2) == []
