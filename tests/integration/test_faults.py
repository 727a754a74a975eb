"""Faults on the worst day: crashes between steps, duplicate and concurrent deliveries, AWS errors
injected with their real codes. For each, the final record and the final EC2 state."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from botocore.parsers import ResponseParserError
from tests.conftest import Stack
from tests.integration.test_release import release
from tests.integration.test_worker import (
    assert_isolated,
    isolate,
    record_of,
    records_for,
    request_isolation,
    steps,
)
from tests.support.aws import ISOLATION_NAME, Faults, Member
from tests.support.crashes import Crash, die_on_the_last_receive, time_passes

from local_stack.sample_events import guardduty_finding
from shared.models import NetworkInterfaceState, PriorState, Status


def test_crash_between_the_network_cut_and_the_profile_swap_resumes(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker dies right after the security groups are swapped, before the profile swap
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)

    def die(**_: Any) -> None:
        raise Crash()

    faults.hook("before-parameter-build.ec2.DescribeIamInstanceProfileAssociations", die)
    # (the deny's first IAM call of its own: the instance profile's role is read ahead with the Auto
    # Scaling group, before either step changes anything)
    faults.hook("before-parameter-build.iam.GetRolePolicy", die)
    [message] = stack.receive()
    with pytest.raises(Crash):
        stack.work([message])

    # Then the record shows where it stopped: contained, the Auto Scaling check done beside the deny that
    # died, profile not swapped, still IN_PROGRESS
    record = record_of(stack, isolation_id)
    assert record["status"] == "IN_PROGRESS"
    assert record["contained_at"] is not None
    assert steps(record) == {
        "ensure-isolation-sg": "done",
        "swap-security-groups": "done",
        "leave-auto-scaling-and-load-balancers": "skipped",
    }
    assert member.profile_of(instance).endswith("/app")
    assert all(
        groups == [member.isolation_groups(vpc.id)[0]["GroupId"]]
        for groups in member.eni_groups(instance).values()
    )

    # When the message comes back after the visibility timeout, and the dead attempt's lease has expired
    faults.clear()
    real_time = time.time
    monkeypatch.setattr("shared.store.records.time.time", lambda: real_time() + 600)
    stack.sqs.change_message_visibility(
        QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )
    stack.drain()

    # Then it finishes: what was done is `already`, the rest is done, the prior state is the original one
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED" and record["attempts"] == 2
    done = [(s["name"], s["status"]) for s in record["steps"]]
    assert done[:5] == [
        ("ensure-isolation-sg", "done"),
        ("swap-security-groups", "done"),
        ("leave-auto-scaling-and-load-balancers", "skipped"),
        ("ensure-isolation-sg", "already"),
        ("swap-security-groups", "already"),
    ]
    # (the two steps that run side by side, in the order they were done)
    assert sorted(done[5:7]) == [
        ("deny-instance-credentials", "done"),
        ("leave-auto-scaling-and-load-balancers", "skipped"),
    ]
    assert done[7:] == [
        ("swap-instance-profile", "done"),
        ("stop-on-shutdown", "done"),
        ("keep-volumes", "done"),
        ("enable-stop-protection", "done"),
        ("enable-termination-protection", "done"),
        ("snapshot-volumes", "done"),
        ("tag-instance", "done"),
    ]
    assert record["prior_state"]["network_interfaces"][0]["security_group_ids"] == [vpc.app_group_id]
    assert assert_isolated(member, instance, vpc.id)


def _crash_after(faults: Faults, call: str, *, nth: int = 1) -> None:
    """The worker dies right after the `nth` answer to `call` (`service.Operation`): the change made,
    no outcome of it written."""
    answered = 0
    lock = threading.Lock()

    def die(**_: Any) -> None:
        nonlocal answered
        with lock:
            answered += 1
            if answered == nth:
                raise Crash()

    faults.hook(f"after-call.{call}", die)


def _die_mid_cut(
    stack: Stack, member: Member, faults: Faults, instance: str, *, last: bool = False
) -> tuple[str, dict[str, Any]]:
    """The worker dies once both interfaces of `instance` are cut, before the cut's outcome is written
    (on the message's last allowed receive when `last`: the message then goes on to the DLQ). Returns the
    isolation id and the message."""
    isolation_id = request_isolation(stack, member, instance)
    _crash_after(faults, "ec2.ModifyNetworkInterfaceAttribute", nth=2)
    [message] = stack.receive()
    if last:
        message["Attributes"]["ApproximateReceiveCount"] = str(stack.max_receive_count)
    with pytest.raises(Crash):
        stack.work([message], follow_up=False)
    faults.clear()
    if last:
        stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
        stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=message["Body"])
    return isolation_id, message


def _retry(stack: Stack, monkeypatch: pytest.MonkeyPatch, faults: Faults, message: dict[str, Any]) -> None:
    """The crashed attempt's message back once its lease has expired, and every message processed."""
    faults.clear()
    time_passes(monkeypatch)
    stack.sqs.change_message_visibility(
        QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )
    stack.drain()


def test_a_crash_mid_cut_leaves_the_cut_planned_on_record_and_the_retry_records_it_done(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker dies once both interfaces of the instance are cut, before the cut's outcome is
    # written
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2)
    isolation_id, message = _die_mid_cut(stack, member, faults, instance)

    # Then no outcome says so, but the record names the cut as planned (stored, never served) beside the
    # prior state, both written by the begin, before the first change
    record = record_of(stack, isolation_id)
    assert record["status"] == "IN_PROGRESS" and record["steps"] == []
    assert record["prior_state"]["network_interfaces"]
    assert "planned" not in record
    stored = stack.store.item(isolation_id)
    assert stored is not None and stored["planned"] == ["swap-security-groups"]
    isolation_group = member.isolation_groups(vpc.id)[0]["GroupId"]
    assert all(groups == [isolation_group] for groups in member.eni_groups(instance).values())

    # When the message comes back
    _retry(stack, monkeypatch, faults, message)

    # Then the retry records the cut it finds in place as done (by the attempt that planned it), not as
    # found already in place
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED" and record["attempts"] == 2
    [swap] = [step for step in record["steps"] if step["name"] == "swap-security-groups"]
    assert swap["status"] == "done"
    assert "made by an earlier attempt" in swap["detail"]
    assert assert_isolated(member, instance, vpc.id)


def test_a_crash_after_the_credentials_deny_is_recorded_done_by_the_retry(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker dies right after it wrote the instance's role's deny policy
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    _crash_after(faults, "iam.PutRolePolicy")
    [message] = stack.receive()
    with pytest.raises(Crash):
        stack.work([message])

    # Then the hold's plans are on record (written with the role's name, before the deny), its outcome
    # is not
    stored = stack.store.item(isolation_id)
    assert stored is not None and "deny-instance-credentials" in stored["planned"]
    assert stored["prior_state"]["role_name"]
    assert "deny-instance-credentials" not in steps(record_of(stack, isolation_id))

    # When the message comes back
    _retry(stack, monkeypatch, faults, message)

    # Then the deny is recorded done, and what the crashed attempt had recorded stays as it was
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED"
    outcomes = [(s["name"], s["status"]) for s in record["steps"]]
    assert ("deny-instance-credentials", "done") in outcomes
    assert ("deny-instance-credentials", "already") not in outcomes
    assert outcomes[:2] == [("ensure-isolation-sg", "done"), ("swap-security-groups", "done")]
    # (the cut's outcome was on record: the retry finds it in place, as the record says)
    assert ("swap-security-groups", "already") in outcomes


def test_a_worker_lost_mid_cut_is_reported_with_the_cut_it_planned_and_released_from_its_prior_state(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker dies on the message's last allowed receive once both interfaces are cut, before the
    # cut's outcome is written (the message then goes on to the DLQ)
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2)
    before = member.eni_groups(instance)
    isolation_id, _ = _die_mid_cut(stack, member, faults, instance, last=True)

    # When the sweeper ends it
    time_passes(monkeypatch)
    assert stack.sweep()["lost"] == [isolation_id]

    # Then the record, with no step recorded, says the cut was planned and may be in place
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["error"]["code"] == "WorkerLost"
    assert record["steps"] == [] and record["prior_state"]
    assert "perhaps in place with no outcome recorded: swap-security-groups" in record["error"]["message"]

    # And a release puts the interfaces back as they were
    assert release(stack, isolation_id)["status"] == "RELEASED"
    assert member.eni_groups(instance) == before


def test_retries_exhausted_after_a_crash_mid_cut_say_the_cut_may_be_in_place(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker died once both interfaces were cut, before the cut's outcome was written
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2)
    isolation_id, message = _die_mid_cut(stack, member, faults, instance)

    # When the message's last allowed receive is throttled before it reaches the instance
    faults.inject("ec2", "DescribeInstances", "RequestLimitExceeded", status=503)
    time_passes(monkeypatch)
    message["Attributes"]["ApproximateReceiveCount"] = str(stack.max_receive_count)
    stack.work([message], follow_up=False)

    # Then the record ends FAILED with the last error, and says the cut an earlier attempt planned may be
    # in place (nothing in its steps does)
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["error"]["code"] == "RequestLimitExceeded"
    assert record["steps"] == []
    assert "perhaps in place with no outcome recorded: swap-security-groups" in record["error"]["message"]


def test_a_copy_delivered_while_another_runs_backs_off_without_touching_anything(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given another worker holds the isolation (the same message delivered twice, one copy running)
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    stack.store.begin_attempt(isolation_id, owner="the-other-worker", lease_seconds=120, prior_state=None)
    faults.count()

    # When this copy is processed
    response = stack.work()

    # Then it fails its item for a later look, changing neither the record's steps nor EC2
    assert len(response["batchItemFailures"]) == 1
    assert not [c for c in faults.calls if c.startswith("ec2.Modify") or c.startswith("ec2.Create")]
    assert record_of(stack, isolation_id)["steps"] == []

    # And once the other worker has finished, the copy is acknowledged as a duplicate
    stack.store.finish(stack.store.get(isolation_id), Status.ISOLATED)
    stack.let_time_pass()
    stack.drain()
    assert stack.queued() == 0
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"


def test_a_first_receive_that_finds_its_record_begun_by_an_attempt_that_died_carries_that_ones_prior_state(
    stack: Stack, member: Member
) -> None:
    # Given an attempt that began the record and died (its lease expired) with the instance as it found
    # it on record (a message seen by an earlier environment: this copy is the first receive SQS counts)
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    queued = stack.store.get(isolation_id)
    assert queued is not None
    found = PriorState(
        vpc_id=vpc.id,
        network_interfaces=[
            NetworkInterfaceState(id="eni-0123456789abcdef0", security_group_ids=["sg-0123456789abcdef0"])
        ],
    )
    stack.store.begin_attempt(isolation_id, owner="the-dead-worker", lease_seconds=0, prior_state=found)

    # When the worker begins it on that first receive, knowing the record as queued
    begun = stack.store.begin_attempt(
        isolation_id,
        owner="this-worker",
        lease_seconds=120,
        prior_state=None,
        target=queued.target,
        queued=queued,
    )

    # Then its view is the record as stored: the second attempt, the dead attempt's prior state
    assert begun.attempts == 2
    assert begun.prior_state == found
    assert begun == stack.store.get(isolation_id)


def test_two_copies_processed_concurrently_isolate_once(
    stack: Stack, member: Member, serial_dynamodb: None
) -> None:
    # Given one message received twice at the same time (SQS at-least-once delivery)
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    [message] = stack.receive()
    stack.sqs.change_message_visibility(
        QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )
    [copy] = stack.receive()
    assert copy["MessageId"] == message["MessageId"]

    # When two workers run them concurrently
    results: list[dict[str, Any]] = []
    workers = [threading.Thread(target=lambda m=m: results.append(stack.work([m]))) for m in (message, copy)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    stack.let_time_pass()
    stack.drain()

    # Then the instance is isolated once: one group, one set of steps that all succeeded
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED"
    assert len(member.isolation_groups(vpc.id)) == 1
    assert [s["name"] for s in record["steps"] if s["status"] == "done"].count("swap-security-groups") == 1
    assert_isolated(member, instance, vpc.id)


@pytest.mark.parametrize(
    "service,operation,code,status",
    [
        ("ec2", "DescribeInstances", "RequestLimitExceeded", 503),
        ("ec2", "ModifyNetworkInterfaceAttribute", "InternalError", 500),
        ("ec2", "CreateSecurityGroup", "ServiceUnavailable", 503),
        ("sts", "AssumeRole", "Throttling", 400),
        ("ec2", "CreateTags", "RequestLimitExceeded", 503),
    ],
)
def test_transient_errors_on_any_call_end_isolated(
    stack: Stack, member: Member, faults: Faults, service: str, operation: str, code: str, status: int
) -> None:
    # Given a transient AWS error outlasting botocore's own retries on the first receive
    vpc = member.vpc()
    instance = member.instance(vpc)
    fault = faults.inject(service, operation, code, status=status, times=4)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then the retry through the queue finishes it
    assert fault.raised == 4
    assert record["status"] == "ISOLATED", record
    assert record["error"] is None
    assert_isolated(member, instance, vpc.id)


def test_incorrect_instance_state_is_permanent(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the instance is terminated between the describe and the network call
    vpc = member.vpc()
    instance = member.instance(vpc)
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "IncorrectInstanceState", times=None)

    # When it is isolated
    record = isolate(stack, member, instance)

    # Then FAILED with the AWS code, the failed step recorded, not retried
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "IncorrectInstanceState"
    assert steps(record)["swap-security-groups"] == "failed"
    assert stack.queued() == 0


def test_expired_credentials_are_dropped_and_renewed(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the cached session's credentials are refused once
    vpc = member.vpc()
    first, second = member.instance(vpc), member.instance(vpc)
    isolate(stack, member, first)
    faults.inject("ec2", "DescribeInstances", "ExpiredToken", times=1)
    faults.count()

    # When the next isolation runs
    record = isolate(stack, member, second)

    # Then the session was assumed again and the isolation finished
    assert record["status"] == "ISOLATED"
    assert faults.calls["sts.AssumeRole"] == 1


def test_isolation_profile_holding_another_role_is_reported(stack: Stack, member: Member) -> None:
    # Given someone replaced the role in the isolation profile
    member.iam.remove_role_from_instance_profile(InstanceProfileName=ISOLATION_NAME, RoleName=ISOLATION_NAME)
    member.iam.create_role(RoleName="admin", AssumeRolePolicyDocument="{}")
    member.iam.add_role_to_instance_profile(InstanceProfileName=ISOLATION_NAME, RoleName="admin")
    vpc = member.vpc()
    instance = member.instance(vpc)

    # When an instance is isolated
    record = isolate(stack, member, instance)

    # Then the profile is not used (it would grant the admin role), the network cut stands, FAILED says why
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "IsolationProfileMisconfigured"
    assert record["contained_at"] is not None
    assert member.profile_of(instance).endswith("/app")


def test_own_table_throttling_is_retried_through_the_queue(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given the service's own table throttles the worker's first writes
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    # (4 times: more than botocore's own 3 attempts, so the message itself must come back)
    throttled = faults.inject(
        "dynamodb", "UpdateItem", "ProvisionedThroughputExceededException", status=400, times=4
    )

    # When the worker runs (botocore retries, then the queue)
    responses = stack.drain()

    # Then the first receive failed its item, and the isolation ends ISOLATED all the same
    assert throttled.raised == 4
    assert len(responses[0]["batchItemFailures"]) == 1
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"
    assert_isolated(member, instance, vpc.id)


def test_own_table_failing_on_every_receive_still_ends_the_record(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given the prior-state write to the service's table fails every time
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    # (the begin is one transaction: the record's lease and prior state, and the instance's slot naming it)
    faults.inject(
        "dynamodb", "TransactWriteItems", "InternalServerError", status=500, times=None,
        when=lambda params: any(
            "lease_owner = :owner" in (item.get("Update") or {}).get("UpdateExpression", "")
            and "prior_state" in (item.get("Update") or {}).get("UpdateExpression", "")
            for item in params.get("TransactItems", [])
        ),
    )  # fmt: skip

    # When the worker has used every receive
    stack.drain(rounds=stack.max_receive_count + 2)
    stack.receive()

    # Then the record is FAILED with the last error (not left QUEUED), the message in the DLQ, the
    # instance untouched (nothing is changed before the prior state is written)
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["error"]["code"] == "InternalServerError"
    assert len(stack.dead_letters()) == 1
    assert member.isolation_groups(vpc.id) == []


def test_final_write_throttled_is_retried_and_frees_the_slot(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given the final write (the record's end and the slot's release, one transaction) throttled past
    # botocore's retries on every receive but the last
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = request_isolation(stack, member, instance)
    faults.inject(
        "dynamodb", "TransactWriteItems", "ProvisionedThroughputExceededException", status=400,
        times=stack.max_receive_count - 1,
    )  # fmt: skip

    # When the worker runs until the queue is empty
    stack.drain(rounds=stack.max_receive_count + 2)

    # Then the record is ISOLATED, the record and the slot were never out of step: a new request for
    # the instance is a new isolation, not a join of the one that ended
    assert record_of(stack, first)["status"] == "ISOLATED"
    assert stack.dead_letters() == []
    assert request_isolation(stack, member, instance) != first


def _crash_on_the_last_receive(stack: Stack, member: Member, faults: Faults, instance: str) -> str:
    """The worker dies after the network cut during the message's last allowed receive; the message
    goes on to the DLQ (as SQS does on the next receive). Returns the isolation id."""
    isolation_id = request_isolation(stack, member, instance)
    die_on_the_last_receive(
        stack, faults, "ec2.DescribeIamInstanceProfileAssociations", "iam.GetInstanceProfile"
    )
    return isolation_id


def test_worker_lost_on_the_last_receive_is_reported_failed_and_a_redrive_resumes_it(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the worker died during the last allowed receive, after the network cut
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = _crash_on_the_last_receive(stack, member, faults, instance)

    # Then while its lease runs, the record is IN_PROGRESS (the attempt may still be alive)
    assert record_of(stack, isolation_id)["status"] == "IN_PROGRESS"

    # And reading it changes nothing, even once the lease has expired
    time_passes(monkeypatch)
    assert record_of(stack, isolation_id)["status"] == "IN_PROGRESS"

    # When the sweeper runs (no worker will touch it again: the message is in the DLQ)
    assert stack.sweep()["lost"] == [isolation_id]

    # Then a reader sees it FAILED, saying why, with the steps that are in place
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED" and record["error"]["code"] == "WorkerLost"
    assert "dead-letter queue" in record["error"]["message"]
    assert record["contained_at"] and steps(record)["swap-security-groups"] == "done"
    status, listed = stack.api("GET", "/isolations", query={"instance_id": instance})
    assert status == 200 and [r["status"] for r in listed["items"]] == ["FAILED"]

    # When the DLQ is redriven to the queue
    [dead] = stack.dead_letters()
    stack.send(dead["Body"])
    stack.drain()

    # Then the same isolation resumes and ends ISOLATED
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED" and record["error"] is None
    assert_isolated(member, instance, vpc.id)


def test_request_for_an_instance_whose_worker_was_lost_is_a_new_isolation(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an isolation whose worker was lost on the last receive, its lease expired, nobody read it
    vpc = member.vpc()
    instance = member.instance(vpc)
    lost = _crash_on_the_last_receive(stack, member, faults, instance)
    time_passes(monkeypatch)

    # When a person asks again
    isolation_id = request_isolation(stack, member, instance)

    # Then it is a new isolation (202, not a join of the lost one), which isolates the instance
    assert isolation_id != lost
    stack.drain()
    assert record_of(stack, isolation_id)["status"] == "ISOLATED"
    assert record_of(stack, lost)["error"]["code"] == "WorkerLost"
    assert_isolated(member, instance, vpc.id)


def test_trigger_whose_record_cannot_be_written_ends_failed_on_the_last_receive(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a GuardDuty finding, and the service's table throttling every transaction on every receive,
    # and the last receive's final write twice more
    vpc = member.vpc()
    instance = member.instance(vpc)
    event = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    throttled = faults.inject(
        "dynamodb", "TransactWriteItems", "ProvisionedThroughputExceededException", status=400,
        times=stack.max_receive_count + 2,
    )  # fmt: skip

    # When the worker has used every receive
    stack.send(event)
    stack.drain(rounds=stack.max_receive_count + 2)
    stack.receive()

    # Then the finding is not lost: its record is FAILED with the last error, its message in the DLQ,
    # and the instance untouched
    assert throttled.raised == stack.max_receive_count + 2
    [record] = records_for(stack, instance)
    assert record["status"] == "FAILED" and record["source"] == "guardduty"
    assert record["error"]["code"] == "ProvisionedThroughputExceededException"
    assert record["error"]["message"].startswith(f"gave up after {stack.max_receive_count} attempts")
    assert len(stack.dead_letters()) == 1
    assert member.isolation_groups(vpc.id) == []


def test_an_unexpected_exception_is_retried_then_recorded_and_frees_the_instance(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given EC2 answering what botocore cannot parse (an HTML error page) on every call: not an AWS
    # error, not a network error, an exception nobody planned for
    vpc = member.vpc()
    instance = member.instance(vpc)

    def unparsable(**_: Any) -> None:
        raise ResponseParserError("Unable to parse response (syntax error), invalid XML received")

    faults.hook("before-parameter-build.ec2.DescribeInstances", unparsable)
    isolation_id = request_isolation(stack, member, instance)

    # When the worker has used every receive
    stack.drain(rounds=stack.max_receive_count + 1)
    stack.receive()  # the receive after the last one moves it to the DLQ

    # Then the record is not left QUEUED: it is FAILED with the exception's type and message, every
    # attempt counted, and its message is in the DLQ
    record = record_of(stack, isolation_id)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "ResponseParserError"
    assert "invalid XML" in record["error"]["message"]
    assert record["attempts"] == stack.max_receive_count
    assert f"after {stack.max_receive_count} attempts" in record["error"]["message"]
    assert len(stack.dead_letters()) == 1

    # And a new request for the instance is a new isolation (the slot was freed), which isolates it
    faults.clear()
    again = request_isolation(stack, member, instance)
    assert again != isolation_id
    stack.drain()
    assert record_of(stack, again)["status"] == "ISOLATED"
    assert_isolated(member, instance, vpc.id)


def test_a_slot_left_held_by_an_ended_isolation_is_freed_by_the_next_request(
    stack: Stack, member: Member
) -> None:
    # Given an isolation that ended, whose slot release failed (the slot still names it)
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)["isolation_id"]
    stack.store.client.update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": f"instance#{member.account_id}#{member.region}#{instance}"}},
        UpdateExpression="SET active_id = :id, active_since = :now",
        ExpressionAttributeValues={":id": {"S": first}, ":now": {"N": str(time.time())}},
    )

    # When a person asks again
    second = request_isolation(stack, member, instance)

    # Then it is a new isolation (202), not a join of the one that is over
    assert second != first
    stack.drain()
    assert record_of(stack, second)["status"] == "ISOLATED"
