"""Outcome events: every record that ends puts one `EC2 Isolation Outcome` event on the stack's bus,
carrying the record as the API serves it and a one-line summary, after the record is written; a failure
to publish never changes the outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conftest import Stack
from tests.integration.test_sweeper import CRASH_POINTS
from tests.integration.test_worker import isolate, record_of, request_isolation
from tests.support.aws import Faults, Member
from tests.support.crashes import die_on_the_last_receive, time_passes

from local_stack.sample_events import guardduty_finding
from shared import outcomes
from shared.models import IsolationRecord


def only_outcome(stack: Stack) -> dict[str, Any]:
    [event] = stack.outcomes()
    assert event["source"] == "ec2-isolation" and event["detail-type"] == "EC2 Isolation Outcome"
    return event


def test_isolated_record_is_published_as_served(stack: Stack, member: Member) -> None:
    # Given an instance isolated through the webhook
    instance = member.instance(member.vpc())
    record = isolate(stack, member, instance)

    # Then one event carries the record exactly as GET serves it, the instance ARN and a summary
    event = only_outcome(stack)
    detail = event["detail"]
    summary = detail.pop("summary")
    assert detail == record_of(stack, record["isolation_id"])
    assert event["resources"] == [f"arn:aws:ec2:{member.region}:{member.account_id}:instance/{instance}"]
    assert summary.startswith(f"ISOLATED {instance} in {member.account_id} {member.region} by webhook in ")
    assert summary.endswith(" s")


def test_failed_and_skipped_records_are_published(stack: Stack, member: Member) -> None:
    # Given a request for an instance that does not exist, and a finding for an exempt instance
    isolate(stack, member, "i-0000000000000000f")
    failed = only_outcome(stack)["detail"]
    exempt = member.instance(member.vpc())
    status, exemption = stack.api(
        "POST",
        "/exemptions",
        body={
            "account_id": member.account_id,
            "instance_id": exempt,
            "reason": "load test",
            "expires_at": (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    assert status == 201
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=exempt))
    stack.drain()
    skipped = only_outcome(stack)["detail"]

    # Then each has its event, saying why in its summary
    assert failed["status"] == "FAILED" and "InstanceNotFound" in failed["summary"]
    assert skipped["status"] == "SKIPPED" and exemption["exemption_id"] in skipped["summary"]


def test_a_redelivered_event_publishes_nothing_new(stack: Stack, member: Member) -> None:
    # Given a finding delivered twice (EventBridge delivers at least once)
    instance = member.instance(member.vpc())
    finding = guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)
    for _ in range(2):
        stack.send(finding)
    stack.drain()
    # Then one isolation, one event
    assert only_outcome(stack)["detail"]["status"] == "ISOLATED"


def test_a_swept_record_is_published(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker lost on the last receive, swept once its lease expired
    instance = member.instance(member.vpc())
    isolation_id = request_isolation(stack, member, instance)
    die_on_the_last_receive(stack, faults, CRASH_POINTS["after the cut"])
    time_passes(monkeypatch)
    stack.sweep()
    # Then the FAILED record's event says so
    detail = only_outcome(stack)["detail"]
    assert detail["isolation_id"] == isolation_id and detail["error"]["code"] == "WorkerLost"


def test_the_outcome_stands_when_the_bus_is_unavailable(stack: Stack, member: Member, faults: Faults) -> None:
    # Given the bus refusing every put
    refused = faults.inject("eventbridge", "PutEvents", "InternalException", times=None, status=500)
    instance = member.instance(member.vpc())

    # When the instance is isolated
    record = isolate(stack, member, instance)

    # Then the record is ISOLATED and the message acknowledged all the same; nothing was published
    assert record["status"] == "ISOLATED"
    assert stack.queued() == 0 and stack.dead_letters() == [] and stack.outcomes() == []
    assert refused.raised == outcomes.ATTEMPTS


class _Bus:
    """A PutEvents that fails its entry `failures` times, then takes it."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.calls += 1
        if self.calls <= self.failures:
            return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "x"}]}
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "e-1"}]}


def _record() -> IsolationRecord:
    from shared.models import Source, Target

    return IsolationRecord.queued(
        isolation_id="iso-" + "2" * 32,
        source=Source.WEBHOOK,
        target=Target(account_id="111122223333", region="eu-west-1", instance_id="i-0123456789abcdef0"),
    )


@pytest.mark.parametrize(("failures", "published", "calls"), [(0, True, 1), (2, True, 3), (5, False, 3)])
def test_failed_entries_are_retried_then_given_up(failures: int, published: bool, calls: int) -> None:
    bus = _Bus(failures)
    slept: list[float] = []
    assert outcomes.publish(_record(), events=bus, bus="b", sleep=slept.append) is published
    assert bus.calls == calls and len(slept) == calls - 1
