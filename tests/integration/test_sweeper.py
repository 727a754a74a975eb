"""The sweeper: a worker killed at any point of a message's last receive leaves a record that the
scheduled sweeper ends FAILED (resumable), and a redrive of the DLQ then finishes the isolation. Reads
never write, and a record merely waiting in the queue is never ended by a clock."""

from __future__ import annotations

import json

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import assert_isolated, record_of, records_for, request_isolation
from tests.support.aws import Faults, Member, counting
from tests.support.crashes import die_on_the_last_receive, time_passes

from local_stack.sample_events import guardduty_finding

#: Where the worker dies, as the first call it would make at that point (the last two are the
#: follow-up's: the containment ended well, the follow-up dies on its own message's last receive).
CRASH_POINTS = {
    "before anything": "sts.AssumeRole",
    "before the attempt's first write": "ec2.DescribeInstances",
    "after the first write, before the cut": "ec2.ModifyNetworkInterfaceAttribute",
    "after the cut, before the credentials deny": "iam.GetInstanceProfile",
    "after the cut": "ec2.DescribeIamInstanceProfileAssociations",
    "at the last step": "ec2.CreateTags",
    # a trigger's first transaction writes its record; a webhook's is the final write
    "at the first transaction": "dynamodb.TransactWriteItems",
}


@pytest.mark.parametrize("point", CRASH_POINTS)
@pytest.mark.parametrize("source", ["webhook", "guardduty"])
def test_a_worker_killed_anywhere_in_the_last_receive_is_swept_and_a_redrive_finishes(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch, source: str, point: str
) -> None:
    # Given an isolation whose worker dies at this point of its message's last receive
    vpc = member.vpc()
    instance = member.instance(vpc)
    if source == "webhook":
        request_isolation(stack, member, instance)
    else:
        stack.send(
            guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
        )
    in_follow_up = die_on_the_last_receive(stack, faults, CRASH_POINTS[point])

    # When the attempt's lease has expired and the sweeper runs
    time_passes(monkeypatch)
    swept = stack.sweep()

    # Then the isolation has a record, ended FAILED with a code that says why, and its message stays in
    # the DLQ for a redrive
    [record] = records_for(stack, instance)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] in ("WorkerLost", "DeadLettered")
    assert record["isolation_id"] in swept["lost"] + swept["dead_lettered"]
    assert "redrive" in record["error"]["message"]
    if in_follow_up:
        assert record["contained_at"] is not None
    [dead] = stack.dead_letters(follow_up=in_follow_up)

    # And a second run finds nothing more to do
    again = stack.sweep()
    assert again["lost"] == [] and again["dead_lettered"] == []

    # When the DLQ message is redriven to its queue
    stack.redrive(dead, follow_up=in_follow_up)
    stack.drain()

    # Then the same isolation resumes and ends ISOLATED
    [record] = records_for(stack, instance)
    assert record["status"] == "ISOLATED" and record["error"] is None
    assert_isolated(member, instance, vpc.id)


def test_a_dead_lettered_record_keeps_what_its_earlier_attempts_did(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an isolation whose first attempt began and failed at the cut (retried through the queue)
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "InternalError", status=500, times=1)
    [response] = stack.drain(rounds=1)
    assert response["batchItemFailures"]
    first = record_of(stack, isolation_id)
    assert first["attempts"] == 1 and first["prior_state"] is not None and first["steps"]
    stack.let_time_pass()
    # and whose worker then dies on the last receive before that attempt's first write
    die_on_the_last_receive(stack, faults, CRASH_POINTS["before the attempt's first write"])

    # When the sweeper ends it
    time_passes(monkeypatch)
    swept = stack.sweep()

    # Then its record is the stored one, ended: the attempt that reached the instance is counted, and
    # what it did is still there
    record = record_of(stack, isolation_id)
    assert swept["dead_lettered"] == [isolation_id]
    assert record["status"] == "FAILED" and record["error"]["code"] == "DeadLettered"
    assert record["attempts"] == 1
    assert "after 1 attempt(s) reached the instance" in record["error"]["message"]
    assert record["prior_state"] == first["prior_state"] and record["steps"] == first["steps"]


def test_a_record_waiting_in_the_queue_is_never_ended_by_a_clock(
    stack: Stack, member: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a request that waits in the queue behind a burst, for a very long time
    instance = member.instance(member.vpc())
    isolation_id = request_isolation(stack, member, instance)
    time_passes(monkeypatch, seconds=7 * 24 * 3600)

    # When the sweeper runs
    swept = stack.sweep()

    # Then the record is still QUEUED, and the worker isolates it when its turn comes
    assert swept == {"lost": [], "dead_lettered": [], "peeked": 0}
    assert record_of(stack, isolation_id)["status"] == "QUEUED"
    stack.drain()
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"


def test_a_live_last_attempt_is_left_alone(stack: Stack, member: Member, faults: Faults) -> None:
    # Given a worker that died on the last receive a moment ago (its lease still runs: it could be alive)
    instance = member.instance(member.vpc())
    isolation_id = request_isolation(stack, member, instance)
    die_on_the_last_receive(stack, faults, CRASH_POINTS["after the cut"])

    # When the sweeper runs
    swept = stack.sweep()

    # Then it waits for the lease to expire: the record is untouched
    assert swept["lost"] == [] and swept["dead_lettered"] == []
    assert record_of(stack, isolation_id)["status"] == "IN_PROGRESS"


def test_messages_in_the_dlq_that_are_not_requests_are_left_there(stack: Stack) -> None:
    # Given a DLQ holding something that is not an isolation request
    stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=json.dumps({"hello": "world"}))

    # When the sweeper runs
    swept = stack.sweep()

    # Then it looked, ended nothing, and deleted nothing
    assert swept == {"lost": [], "dead_lettered": [], "peeked": 1}
    assert len(stack.dead_letters()) == 1


def test_get_routes_never_write(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an isolation whose worker was lost on the last receive, its lease long expired, not yet swept
    instance = member.instance(member.vpc())
    isolation_id = request_isolation(stack, member, instance)
    die_on_the_last_receive(stack, faults, CRASH_POINTS["after the cut"])
    time_passes(monkeypatch)

    # When it is read by id and listed
    with counting() as calls:
        status, record = stack.api("GET", f"/isolations/{isolation_id}")
        listed_status, listed = stack.api("GET", "/isolations", query={"instance_id": instance})

    # Then the answers show it as it is, and the only calls made were reads
    assert status == 200 and record["status"] == "IN_PROGRESS"
    assert listed_status == 200 and [r["status"] for r in listed["items"]] == ["IN_PROGRESS"]
    assert calls.calls and set(calls.calls) <= {"dynamodb.GetItem", "dynamodb.Query"}
