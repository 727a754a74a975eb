"""What one isolation costs in AWS calls, counted on the wire (every call of the service's own clients)
from the webhook to the outcome event: the webhook's, the containment's, the follow-up's and the outcome
event's. A bound, not a figure: it fails when a change adds calls (docs/performance.md has the figures)."""

from __future__ import annotations

from collections import Counter

from tests.conftest import Stack
from tests.integration.test_worker import isolate, record_of, request_isolation
from tests.support.aws import Faults, Member

#: One warm isolation (the account's session and the VPC's isolation group exist already) of a 2-ENI
#: instance with an instance profile.
MAX_CALLS = 36
MAX_DYNAMODB_CALLS = 12


def by_service(calls: list[str]) -> dict[str, Counter[str]]:
    services: dict[str, Counter[str]] = {}
    for call in calls:
        service, operation = call.split(".", 1)
        services.setdefault(service, Counter())[operation] += 1
    return services


def test_a_warm_isolation_of_a_two_interface_instance_with_a_profile_stays_within_its_calls(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a deployed stack (its sweeper has run) and a first isolation in the member's account and VPC
    # (its session and isolation group exist)
    stack.sweep()
    vpc = member.vpc(subnets=2)
    first, second = member.instance(vpc), member.instance(vpc)
    assert isolate(stack, member, first)["status"] == "ISOLATED"

    # When a second instance of the VPC, with two interfaces and a profile, is isolated through the webhook
    faults.count()
    isolation_id = request_isolation(stack, member, second)
    stack.drain()
    calls = list(faults.log)
    faults.clear()

    # Then it is isolated and its outcome event published
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED", record
    assert [e["detail"]["isolation_id"] for e in stack.outcomes()][-1:] == [isolation_id]
    # And it took no more calls than the bound, nor more DynamoDB calls
    services = by_service(calls)
    breakdown = {service: dict(operations) for service, operations in services.items()}
    assert len(calls) <= MAX_CALLS, (len(calls), breakdown)
    assert sum(services["dynamodb"].values()) <= MAX_DYNAMODB_CALLS, breakdown
