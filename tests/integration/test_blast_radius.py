"""Blast radius: a storm of trigger-started isolations in one account stops at MaxAutoIsolationsPerHour;
the excess is on record (SKIPPED, RateLimited), other accounts, other sources and people are not
limited."""

from __future__ import annotations

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import assert_isolated, records_for, request_isolation
from tests.support.aws import Member

from local_stack.sample_events import guardduty_finding, tag_change
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


def test_tags_a_member_writes_never_spend_guardduty_s_budget(
    stack: Stack, member: Member, budget: int
) -> None:
    # Given a member that tags more of its instances isolate=true than the budget allows
    vpc = member.vpc()
    tagged = [member.instance(vpc) for _ in range(budget + 1)]
    for instance in tagged:
        stack.send(tag_change(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()
    tag_statuses = [records_for(stack, instance)[0]["status"] for instance in tagged]
    assert tag_statuses.count("ISOLATED") == budget and tag_statuses.count("SKIPPED") == 1, tag_statuses
    [skipped] = [records_for(stack, i)[0] for i in tagged if records_for(stack, i)[0]["status"] == "SKIPPED"]
    assert skipped["error"]["code"] == "RateLimited" and "tag triggers" in skipped["error"]["message"]

    # When GuardDuty finds a compromised instance of the same account in the same hour
    compromised = member.instance(vpc)
    stack.send(finding(member, compromised))
    stack.drain()

    # Then it is isolated: each source has its own budget in the account
    [record] = records_for(stack, compromised)
    assert record["status"] == "ISOLATED" and record["source"] == "guardduty"
    assert_isolated(member, compromised, vpc.id)
