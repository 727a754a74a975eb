"""Blast radius: a storm of trigger-started isolations in one account stops at MaxAutoIsolationsPerHour;
the excess is on record (SKIPPED, RateLimited), other accounts and people are not limited."""

from __future__ import annotations

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import assert_isolated, records_for, request_isolation
from tests.support.aws import Member

from local_stack.sample_events import guardduty_finding
from shared.config import worker_settings

LIMIT = 3


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("MAX_AUTO_ISOLATIONS_PER_HOUR", str(LIMIT))
    worker_settings.cache_clear()
    return LIMIT


def finding(member: Member, instance: str) -> dict:
    return guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance)


def test_triggers_past_the_budget_are_skipped_and_people_are_not(
    stack: Stack, member: Member, other_member: Member, budget: int
) -> None:
    # Given findings for five instances of one account (one of them twice) and one of another account
    vpc = member.vpc()
    instances = [member.instance(vpc) for _ in range(5)]
    other = other_member.instance(other_member.vpc())
    stack.send(finding(member, instances[0]))
    stack.drain()
    stack.send(finding(member, instances[0]))  # coalesced with the first: spends nothing
    for instance in instances[1:]:
        stack.send(finding(member, instance))
    stack.send(finding(other_member, other))

    # When the worker runs
    stack.drain()

    # Then the account's first `budget` isolations ran, the rest are SKIPPED (RateLimited), untouched
    statuses = {instance: [r["status"] for r in records_for(stack, instance)] for instance in instances}
    isolated = [i for i in instances if "ISOLATED" in statuses[i] and statuses[i][-1] != "SKIPPED"]
    skipped = [i for i in instances if statuses[i] == ["SKIPPED"]]
    assert len(isolated) == budget and len(skipped) == len(instances) - budget, statuses
    for instance in skipped:
        [record] = records_for(stack, instance)
        assert record["error"]["code"] == "RateLimited" and "webhook" in record["error"]["message"]
        assert record["steps"][0]["name"] == "check-blast-radius"
        assert member.profile_of(instance).endswith("/app")
    # And another account's budget is its own
    assert [r["status"] for r in records_for(stack, other)] == ["ISOLATED"]

    # When a person asks for a skipped instance through the webhook
    isolation_id = request_isolation(stack, member, skipped[0])
    stack.drain()

    # Then it is isolated: people are never limited
    assert [r["isolation_id"] for r in records_for(stack, skipped[0]) if r["status"] == "ISOLATED"] == [
        isolation_id
    ]
    assert_isolated(member, skipped[0], vpc.id)
