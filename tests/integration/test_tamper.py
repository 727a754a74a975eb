"""The tamper watch, in-process: a person (another principal than the execution role) undoes part of an
isolation, the CloudTrail call (AWS's shape, the call's real fields) is put on the stack's default bus,
the real tamper rule routes it to the tamper queue, and the tamper function isolates the instance again,
on a record that names the call; an automation that keeps undoing it meets TamperLoop."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from tests.conftest import STACK_REGION, Stack
from tests.integration.test_worker import assert_isolated, isolate, records_for
from tests.support.aws import Member
from tests.support.events import lambda_context, sqs_event

from local_stack.sample_events import cloudtrail_call, groups_changed
from shared.config import worker_settings

HARNESS_ROLE = "arn:aws:iam::{account}:role/OrganizationAccountAccessRole"
EXECUTION_ROLE = "arn:aws:iam::{account}:role/ec2-isolation-execution"


class TamperQueue:
    """The stack's tamper queue, as the template deployed it, and its function."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sqs = stack.sqs
        (self.url,) = [
            url
            for url in self.sqs.list_queues()["QueueUrls"]
            if "TamperQueue" in url and "DeadLetter" not in url
        ]
        self.arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.events = boto3.client("events", region_name=STACK_REGION)
        #: Messages the tamper function was invoked with.
        self.received = 0

    def put(self, event: dict[str, Any]) -> None:
        """On the stack's default bus, as a member's forwarding rule (or this account's trail) puts it."""
        # moto accepts an `aws.` source from PutEvents (AWS does not): the only way to play CloudTrail.
        answer = self.events.put_events(
            Entries=[
                {
                    "Source": event["source"],
                    "DetailType": event["detail-type"],
                    "Detail": json.dumps(event["detail"]),
                    "Resources": event["resources"],
                }
            ]
        )
        assert answer["FailedEntryCount"] == 0

    def messages(self) -> list[dict[str, Any]]:
        return self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])

    def work(self) -> list[str]:
        """One invocation of the tamper function with what the queue holds; the successes deleted; then
        the follow-up function on the repairs' follow-ups."""
        from worker.tamper_app import lambda_handler

        batch = self.messages()
        if not batch:
            return []
        self.received += len(batch)
        response = lambda_handler(sqs_event(batch, self.arn), lambda_context())
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for message in batch:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        self.stack.follow_up()
        return [m["MessageId"] for m in batch if m["MessageId"] in failed]


@pytest.fixture
def tamper(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> TamperQueue:
    queue = TamperQueue(stack)
    monkeypatch.setenv("TAMPER_QUEUE_URL", queue.url)
    worker_settings.cache_clear()
    return queue


def _put_back(member: Member, instance: str, group: str, *, drop_tag: bool = False) -> list[dict[str, Any]]:
    """A person undoes the isolation's network cut (the member account's admin role, not the service's)
    and the CloudTrail calls it makes."""
    calls = []
    for eni in member.eni_groups(instance):
        member.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=[group])
        calls.append(
            cloudtrail_call(
                source="aws.ec2",
                event_name="ModifyNetworkInterfaceAttribute",
                account_id=member.account_id,
                region=member.region,
                caller_role_arn=HARNESS_ROLE.format(account=member.account_id),
                request_parameters=groups_changed(eni, [group]),
                response_elements={"requestId": "r", "_return": True},
            )
        )
    if drop_tag:
        member.ec2.delete_tags(Resources=[instance], Tags=[{"Key": "ec2-isolation:id"}])
    return calls


def test_an_undone_isolation_is_isolated_again_and_the_record_names_the_call(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolated instance (exempt from triggers: a person isolated it)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2, tags={"ec2-isolation:exempt": "true"})
    first = isolate(stack, member, instance)
    assert first["status"] == "ISOLATED"

    # When a person puts its interfaces back in their old group and removes the isolation's tag
    calls = _put_back(member, instance, vpc.app_group_id, drop_tag=True)
    assert all(groups == [vpc.app_group_id] for groups in member.eni_groups(instance).values())
    tamper.put(calls[0])
    assert tamper.work() == [] and tamper.received == 1

    # Then the instance is isolated again, by a tamper record that names the call, in the same episode
    assert_isolated(member, instance, vpc.id)
    latest = records_for(stack, instance)[0]
    assert latest["source"] == "tamper" and latest["status"] == "ISOLATED"
    assert latest["trigger"] == {
        "event_name": "ModifyNetworkInterfaceAttribute",
        "caller_arn": f"arn:aws:sts::{member.account_id}:assumed-role/OrganizationAccountAccessRole/harness",
        "event_id": calls[0]["detail"]["eventID"],
        "event_time": calls[0]["detail"]["eventTime"],
    }
    assert latest["inherits_from"] == first["isolation_id"]
    assert latest["prior_state"] == first["prior_state"]
    assert latest["evidence"] == first["evidence"]
    # And the other interface's call, later, finds nothing left to repair beyond a record of its own
    tamper.put(calls[1])
    assert tamper.work() == []
    assert [r["source"] for r in records_for(stack, instance)] == ["tamper", "tamper", "webhook"]
    assert_isolated(member, instance, vpc.id)


def test_a_rule_added_to_an_isolation_group_is_revoked(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given two isolated instances in one VPC
    vpc = member.vpc()
    instances = [member.instance(vpc, enis=1) for _ in range(2)]
    for instance in instances:
        isolate(stack, member, instance)
    group = assert_isolated(member, instances[0], vpc.id)

    # When someone opens SSH on the isolation group
    permission = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    member.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[permission])
    tamper.put(
        cloudtrail_call(
            source="aws.ec2",
            event_name="AuthorizeSecurityGroupIngress",
            account_id=member.account_id,
            region=member.region,
            caller_role_arn=HARNESS_ROLE.format(account=member.account_id),
            request_parameters={
                "groupId": group,
                "ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 22, "toPort": 22}]},
            },
        )
    )
    assert tamper.work() == []

    # Then the rule is gone and each isolated instance of the VPC has a repair on record
    (described,) = member.isolation_groups(vpc.id)
    assert described["IpPermissions"] == [] and described["IpPermissionsEgress"] == []
    for instance in instances:
        assert [r["source"] for r in records_for(stack, instance)] == ["tamper", "webhook"]


def test_an_automation_that_keeps_undoing_meets_tamper_loop(
    stack: Stack, member: Member, tamper: TamperQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given at most one repair per instance and hour, and an isolated instance
    monkeypatch.setenv("TAMPER_REPAIRS_PER_HOUR", "1")
    worker_settings.cache_clear()
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)
    stack.outcomes()

    # When an automation undoes the isolation twice
    for _ in range(2):
        (call,) = _put_back(member, instance, vpc.app_group_id)
        tamper.put(call)
        assert tamper.work() == []

    # Then the first was repaired, the second ended FAILED TamperLoop and left the instance alone
    repair, looped = records_for(stack, instance)[1], records_for(stack, instance)[0]
    assert repair["status"] == "ISOLATED" and repair["source"] == "tamper"
    assert looped["status"] == "FAILED" and looped["error"]["code"] == "TamperLoop"
    assert "TamperRepairsPerHour" in looped["error"]["message"]
    assert list(member.eni_groups(instance).values()) == [[vpc.app_group_id]]
    # And an outcome event says so
    outcomes = {(e["detail"]["isolation_id"], e["detail"]["status"]) for e in stack.outcomes()}
    assert (looped["isolation_id"], "FAILED") in outcomes
    # And a later call is left alone: the instance's latest isolation is no longer ISOLATED
    (call,) = _put_back(member, instance, vpc.app_group_id)
    tamper.put(call)
    assert tamper.work() == []
    assert len(records_for(stack, instance)) == 3


def test_only_other_principals_successful_calls_on_isolated_instances_are_repaired(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given calls made through the member execution role (the service's own), and a failed call
    own, failed = (
        cloudtrail_call(
            source="aws.ec2",
            event_name="ModifyNetworkInterfaceAttribute",
            account_id=member.account_id,
            region=member.region,
            caller_role_arn=role.format(account=member.account_id),
            request_parameters=groups_changed("eni-0123456789abcdef0", ["sg-0123456789abcdef0"]),
            error_code=error,
        )
        for role, error in ((EXECUTION_ROLE, None), (HARNESS_ROLE, "Client.UnauthorizedOperation"))
    )
    # When they are put on the stack's bus
    tamper.put(own)
    tamper.put(failed)
    # Then the tamper rule drops both
    assert tamper.messages() == []

    # Given an instance never isolated
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    # When its termination protection is turned off
    tamper.put(
        cloudtrail_call(
            source="aws.ec2",
            event_name="ModifyInstanceAttribute",
            account_id=member.account_id,
            region=member.region,
            caller_role_arn=HARNESS_ROLE.format(account=member.account_id),
            request_parameters={"instanceId": instance, "disableApiTermination": {"value": False}},
        )
    )
    # Then the call reaches the tamper function, is acknowledged and nothing is recorded
    assert tamper.work() == [] and tamper.received == 1
    assert records_for(stack, instance) == []
    assert tamper.messages() == []
