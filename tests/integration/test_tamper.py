"""The tamper watch, in-process: a person (another principal than the execution role) undoes part of an
isolation, the CloudTrail call (AWS's shape, the call's real fields) is put on the stack's default bus,
the real tamper rule routes it to the tamper queue, and the tamper function isolates the instance again,
on a record that names the call; an automation that keeps undoing it meets TamperLoop."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from tests.conftest import STACK_REGION, Stack
from tests.integration.test_isolation_groups import as_the_member_role
from tests.integration.test_worker import (
    assert_isolated,
    detail,
    isolate,
    record_of,
    records_for,
    request_isolation,
    steps,
)
from tests.support.aws import Faults, Member
from tests.support.crashes import Crash, time_passes
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
        (self.dlq_url,) = [url for url in self.sqs.list_queues()["QueueUrls"] if "TamperDeadLetter" in url]
        self.events = boto3.client("events", region_name=STACK_REGION)
        #: Messages the tamper function was invoked with.
        self.received = 0
        #: The messages the last invocation failed (they come back after their retry delay).
        self.retrying: list[dict[str, Any]] = []

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
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    def dies_on_the_last_receive(self, crash_at: str, faults: Faults) -> None:
        """The tamper function takes the queue's one message on its last allowed receive and dies at the
        first `crash_at` call (`service.Operation`); SQS then moves the message to the tamper DLQ."""
        from worker.tamper_app import lambda_handler

        def die(**_: Any) -> None:
            raise Crash()

        faults.hook(f"before-parameter-build.{crash_at}", die)
        [message] = self.messages()
        message["Attributes"]["ApproximateReceiveCount"] = str(self.stack.max_receive_count)
        with pytest.raises(Crash):
            lambda_handler(sqs_event([message], self.arn), lambda_context())
        faults.clear()
        self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])
        self.sqs.send_message(QueueUrl=self.dlq_url, MessageBody=message["Body"])

    def work(self, *, follow_up: bool = True) -> list[str]:
        """One invocation of the tamper function with what the queue holds; the successes deleted; then
        (`follow_up`) the follow-up function on the follow-ups (the repairs' and any other's)."""
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
        if follow_up:
            self.stack.follow_up()
        self.retrying = [m for m in batch if m["MessageId"] in failed]
        return [m["MessageId"] for m in self.retrying]

    def let_time_pass(self) -> None:
        """The retry delays the function set on the failed messages are over: they are visible again."""
        for message in self.retrying:
            self.sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )


@pytest.fixture
def tamper(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> TamperQueue:
    queue = TamperQueue(stack)
    monkeypatch.setenv("TAMPER_QUEUE_URL", queue.url)
    # A call sent again to wait for an isolation in flight is visible at once (as `let_time_pass` makes a
    # retry's delay pass).
    monkeypatch.setenv("IN_FLIGHT_RETRY_SECONDS", "0")
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


def _rule_added(member: Member, group: str) -> dict[str, Any]:
    """Someone opens SSH on an isolation group, and the CloudTrail call it makes."""
    permission = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    member.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[permission])
    return cloudtrail_call(
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


def test_an_undone_isolation_is_isolated_again_and_the_record_names_the_call(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolated instance (a person isolated it), exempted from triggers since: a tamper repair is
    # never exempted
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2)
    first = isolate(stack, member, instance)
    assert first["status"] == "ISOLATED"
    status, _ = stack.api(
        "POST",
        "/exemptions",
        body={
            "account_id": member.account_id,
            "instance_id": instance,
            "reason": "maintenance",
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    assert status == 201

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
    tamper.put(_rule_added(member, group))
    assert tamper.work() == []

    # Then the rule is gone, repaired once on the group: one repair on record, through one isolated
    # instance behind it, naming the group (not one re-isolation per instance)
    (described,) = member.isolation_groups(vpc.id)
    assert described["IpPermissions"] == [] and described["IpPermissionsEgress"] == []
    repairs = [r for instance in instances for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert len(repairs) == 1 and repairs[0]["status"] == "ISOLATED"
    assert repairs[0]["instance_id"] == min(instances)
    assert repairs[0]["trigger"]["security_group_ids"] == [group]
    assert (
        "1 rule(s) found on"
        in [st for st in repairs[0]["steps"] if st["name"] == "swap-security-groups"][-1]["detail"]
    )


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

    # Then the first was repaired; the second ended FAILED TamperLoop, past the budget, with its network
    # cut repaired all the same (and only that)
    repair, looped = records_for(stack, instance)[1], records_for(stack, instance)[0]
    assert repair["status"] == "ISOLATED" and repair["source"] == "tamper"
    assert looped["status"] == "FAILED" and looped["error"]["code"] == "TamperLoop"
    assert "TamperRepairsPerHour" in looped["error"]["message"]
    assert looped["contained_at"] is not None
    assert [st["name"] for st in looped["steps"]] == [
        "check-tamper-repairs",
        "ensure-isolation-sg",
        "swap-security-groups",
    ]
    group = assert_isolated(member, instance, vpc.id)
    assert list(member.eni_groups(instance).values()) == [[group]]
    # And an outcome event says so
    outcomes = {(e["detail"]["isolation_id"], e["detail"]["status"]) for e in stack.outcomes()}
    assert (looped["isolation_id"], "FAILED") in outcomes
    # And later calls that reopen its network, on the interface or on the isolation group, are repaired
    # all the same (the network cut is always repaired), the network only, each on a record of its own
    (call,) = _put_back(member, instance, vpc.app_group_id)
    tamper.put(call)
    assert tamper.work() == []
    tamper.put(_rule_added(member, group))
    assert tamper.work() == []
    later = records_for(stack, instance)[:2]
    assert [(r["source"], r["status"], r["error"]["code"]) for r in later] == [
        ("tamper", "FAILED", "TamperLoop")
    ] * 2
    assert [r["inherits_from"] for r in later] == [later[1]["isolation_id"], looped["isolation_id"]]
    assert list(member.eni_groups(instance).values()) == [[group]]
    (described,) = member.isolation_groups(vpc.id)
    assert described["IpPermissions"] == [] and described["IpPermissionsEgress"] == []


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


@pytest.mark.parametrize("call", ["on the instance", "on its isolation group"])
def test_a_repair_whose_function_dies_on_the_last_receive_is_swept_and_the_instance_stays_watched(
    stack: Stack,
    member: Member,
    tamper: TamperQueue,
    faults: Faults,
    monkeypatch: pytest.MonkeyPatch,
    call: str,
) -> None:
    # Given an isolated instance whose isolation someone undoes, and a tamper function that dies on the
    # call's last receive after the repair's record was written, before it changed anything
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)
    if call == "on the instance":
        (undone,) = _put_back(member, instance, vpc.app_group_id)
    else:
        undone = _rule_added(member, assert_isolated(member, instance, vpc.id))
    tamper.put(undone)
    tamper.dies_on_the_last_receive("ec2.DescribeInstances", faults)
    [repair] = [r for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert repair["status"] == "QUEUED"

    # When its lease would have expired and the sweeper runs
    time_passes(monkeypatch)
    swept = stack.sweep()

    # Then the repair is ended FAILED, resumable, its call left in the tamper DLQ for a redrive
    [repair] = [r for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert swept["dead_lettered"] == [repair["isolation_id"]]
    assert repair["status"] == "FAILED" and repair["error"]["code"] == "DeadLettered"
    assert tamper.sqs.receive_message(QueueUrl=tamper.dlq_url).get("Messages")
    # And the instance is watched again: the operator's redrive of the call repairs it
    tamper.put(undone)
    assert tamper.work() == []
    assert records_for(stack, instance)[0]["status"] == "ISOLATED"
    assert_isolated(member, instance, vpc.id)


def test_a_repair_that_fails_for_a_moment_is_finished_by_the_next_receive(
    stack: Stack, member: Member, tamper: TamperQueue, faults: Faults
) -> None:
    # Given an isolated instance whose network cut someone undoes, and a repair whose first cut fails
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)
    (undone,) = _put_back(member, instance, vpc.app_group_id)
    tamper.put(undone)
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "InternalError", status=500, times=1)
    assert len(tamper.work()) == 1  # the message comes back

    # When the call comes back (its retry delay over)
    tamper.let_time_pass()
    assert tamper.work() == []

    # Then its own repair, not a new one, is finished: the instance is isolated again
    repairs = [r for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert [r["status"] for r in repairs] == ["ISOLATED"] and repairs[0]["attempts"] == 2
    assert_isolated(member, instance, vpc.id)


def test_a_call_made_while_the_isolation_is_in_flight_waits_for_it_however_long_it_takes(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolation contained, its follow-up slower than the tamper queue's retries (still in flight)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolation_id = request_isolation(stack, member, instance)
    stack.work(follow_up=False)
    assert record_of(stack, isolation_id)["status"] == "IN_PROGRESS"

    # When someone undoes its network cut meanwhile, and the call meets the isolation in flight more
    # times than the queue allows receives
    (undone,) = _put_back(member, instance, vpc.app_group_id)
    tamper.put(undone)
    for _ in range(stack.max_receive_count + 1):
        assert tamper.work(follow_up=False) == []

    # Then the call is still on the queue, waiting since its first look, in no DLQ and unrepaired yet
    [waiting] = tamper.messages()
    assert waiting["Attributes"]["ApproximateReceiveCount"] == "1"
    assert float(waiting["MessageAttributes"]["ec2-isolation-waiting-since"]["StringValue"]) > 0
    assert tamper.sqs.receive_message(QueueUrl=tamper.dlq_url).get("Messages") is None
    assert [r["source"] for r in records_for(stack, instance)] == ["webhook"]
    # And once the isolation ends ISOLATED, the call repairs the instance
    tamper.sqs.change_message_visibility(
        QueueUrl=tamper.url, ReceiptHandle=waiting["ReceiptHandle"], VisibilityTimeout=0
    )
    stack.follow_up()
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"
    assert tamper.work() == []
    [repair, _] = records_for(stack, instance)
    assert repair["source"] == "tamper" and repair["status"] == "ISOLATED"
    assert repair["inherits_from"] == isolation_id
    assert_isolated(member, instance, vpc.id)
    assert tamper.messages() == []


def test_a_call_that_waited_longer_than_any_isolation_flies_spends_its_receives_again(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolation in flight, and a call on its instance that has waited for it for seven hours
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    request_isolation(stack, member, instance)
    stack.work(follow_up=False)
    (undone,) = _put_back(member, instance, vpc.app_group_id)
    tamper.sqs.send_message(
        QueueUrl=tamper.url,
        MessageBody=json.dumps(undone),
        MessageAttributes={
            "ec2-isolation-waiting-since": {
                "DataType": "Number",
                "StringValue": str((datetime.now(UTC) - timedelta(hours=7)).timestamp()),
            }
        },
    )

    # When the tamper function looks at it
    failed = tamper.work(follow_up=False)

    # Then it is not sent again: it comes back as any failure does (its receives count, the DLQ and its
    # alarm are next)
    assert len(failed) == 1
    tamper.let_time_pass()
    [again] = tamper.messages()
    assert again["Attributes"]["ApproximateReceiveCount"] == "2"


# --- isolation groups and tags, by identity ---------------------------------------------------------------


def _on_group(member: Member, event_name: str, group: str, request: dict[str, Any]) -> dict[str, Any]:
    return cloudtrail_call(
        source="aws.ec2",
        event_name=event_name,
        account_id=member.account_id,
        region=member.region,
        caller_role_arn=HARNESS_ROLE.format(account=member.account_id),
        request_parameters=request,
    )


def test_untagging_the_live_isolation_group_then_opening_its_egress_is_repaired(
    stack: Stack, member: Member, tamper: TamperQueue, faults: Faults
) -> None:
    # Given two isolated instances behind one isolation group (the member role may revoke rules of tagged
    # groups only, as AWS would answer it)
    as_the_member_role(faults, member)
    vpc = member.vpc()
    instances = [member.instance(vpc, enis=1) for _ in range(2)]
    for instance in instances:
        assert isolate(stack, member, instance)["status"] == "ISOLATED"
    group = assert_isolated(member, instances[0], vpc.id)

    # When someone removes the group's managed tag, then opens its egress to everything
    member.ec2.delete_tags(Resources=[group], Tags=[{"Key": "ec2-isolation:managed"}])
    member.ec2.authorize_security_group_egress(
        GroupId=group, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    untag = _on_group(
        member,
        "DeleteTags",
        group,
        {
            "resourcesSet": {"items": [{"resourceId": group}]},
            "tagSet": {"items": [{"key": "ec2-isolation:managed"}]},
        },
    )
    opened = _on_group(
        member,
        "AuthorizeSecurityGroupEgress",
        group,
        {
            "groupId": group,
            "ipPermissions": {
                "items": [{"ipProtocol": "-1", "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]
            },
        },
    )
    tamper.put(untag)
    tamper.put(opened)
    # (the second call waits for the first one's repair, in flight on the same instance, to end)
    for _ in range(3):
        tamper.work()
        tamper.let_time_pass()
    assert tamper.messages() == []

    # Then the group is the service's again: tagged, with no rule, and the instances are isolated
    [described] = member.ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    assert (described["IpPermissions"], described["IpPermissionsEgress"]) == ([], [])
    assert {"Key": "ec2-isolation:managed", "Value": "true"} in described["Tags"]
    for instance in instances:
        assert assert_isolated(member, instance, vpc.id) == group
    # And each call was repaired once, on the group, through one instance behind it
    repairs = [r for instance in instances for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert sorted(r["trigger"]["event_name"] for r in repairs) == [
        "AuthorizeSecurityGroupEgress",
        "DeleteTags",
    ]
    assert {r["instance_id"] for r in repairs} == {min(instances)}
    assert all(r["status"] == "ISOLATED" for r in repairs)


def test_a_changed_rule_of_the_isolation_group_is_repaired(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolated instance, and its isolation group given a rule that someone then modifies
    # (ModifySecurityGroupRules names the group in a nested request, as CloudTrail records it)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)
    group = assert_isolated(member, instance, vpc.id)
    member.ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )
    modified = _on_group(
        member,
        "ModifySecurityGroupRules",
        group,
        {
            "ModifySecurityGroupRulesRequest": {
                "GroupId": group,
                "SecurityGroupRule": {
                    "SecurityGroupRuleId": "sgr-0123456789abcdef0",
                    "SecurityGroupRule": {
                        "IpProtocol": "-1",
                        "FromPort": -1,
                        "ToPort": -1,
                        "CidrIpv4": "0.0.0.0/0",
                    },
                },
            }
        },
    )

    # When the call reaches the tamper watch
    tamper.put(modified)
    assert tamper.work() == []

    # Then the group has no rule again, and the repair says so
    [described] = member.ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"]
    assert (described["IpPermissions"], described["IpPermissionsEgress"]) == ([], [])
    [repair] = [r for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert repair["status"] == "ISOLATED" and repair["trigger"]["event_name"] == "ModifySecurityGroupRules"


@pytest.mark.parametrize("removal", ["its id tag", "every tag"])
def test_an_isolated_instances_tags_removed_are_written_again(
    stack: Stack, member: Member, tamper: TamperQueue, removal: str
) -> None:
    # Given an isolated instance
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)

    # When someone removes its ec2-isolation:id tag (or every tag: DeleteTags with no tag list)
    request: dict[str, Any] = {"resourcesSet": {"items": [{"resourceId": instance}]}}
    if removal == "its id tag":
        member.ec2.delete_tags(Resources=[instance], Tags=[{"Key": "ec2-isolation:id"}])
        request["tagSet"] = {"items": [{"key": "ec2-isolation:id"}]}
    else:
        member.ec2.delete_tags(Resources=[instance])
    tamper.put(_on_group(member, "DeleteTags", instance, request))
    assert tamper.work() == []

    # Then a repair wrote them again
    [repair] = [r for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert repair["status"] == "ISOLATED"
    tags = {t["Key"]: t["Value"] for t in member.described(instance).get("Tags", [])}
    assert tags.get("ec2-isolation:id") and tags.get("ec2-isolation:source")
    assert_isolated(member, instance, vpc.id)


def test_a_look_alike_group_or_another_tag_change_asks_for_no_repair(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolated instance, and a member-made group tagged managed in its VPC
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)
    decoy = member.ec2.create_security_group(
        GroupName="ec2-isolation-decoy",
        Description="not ours",
        VpcId=vpc.id,
        TagSpecifications=[
            {"ResourceType": "security-group", "Tags": [{"Key": "ec2-isolation:managed", "Value": "true"}]}
        ],
    )["GroupId"]

    # When a rule is added to the decoy
    tamper.put(_on_group(member, "AuthorizeSecurityGroupIngress", decoy, {"groupId": decoy}))
    assert tamper.work() == []

    # Then no repair is asked for (the table does not name it: tags are labels)
    assert [r["source"] for r in records_for(stack, instance)] == ["webhook"]


def test_a_deleted_snapshot_of_the_evidence_is_taken_again(
    stack: Stack, member: Member, tamper: TamperQueue
) -> None:
    # Given an isolated instance with two volumes: its evidence, one snapshot of each
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)
    kept = {s["snapshot_id"] for s in first["evidence"]["snapshots"]}
    assert len(kept) == 2

    # When a person deletes one of them (DeleteSnapshot, as CloudTrail records it)
    deleted = sorted(kept)[0]
    member.ec2.delete_snapshot(SnapshotId=deleted)
    tamper.put(_on_group(member, "DeleteSnapshot", deleted, {"snapshotId": deleted}))
    assert tamper.work() == []

    # Then a repair took the instance's snapshots again, tagged with its own id, and its evidence names
    # them instead
    [repair] = [r for r in records_for(stack, instance) if r["source"] == "tamper"]
    assert repair["status"] == "ISOLATED", repair
    assert steps(repair)["snapshot-volumes"] == "done"
    assert detail(repair, "snapshot-volumes").startswith(f"{deleted} deleted: snapshots again: ")
    again = {s["volume_id"]: s["snapshot_id"] for s in repair["evidence"]["snapshots"]}
    assert set(again) == set(member.volumes(instance)) and not set(again.values()) & kept
    for snapshot in member.ec2.describe_snapshots(SnapshotIds=list(again.values()))["Snapshots"]:
        tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
        assert tags["ec2-isolation:id"] == repair["isolation_id"]
