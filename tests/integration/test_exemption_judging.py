"""Exemptions as the worker judges them: only the service's own exemptions (POST /exemptions) exempt an
instance from trigger-started isolations; the instance's tags never do. A trigger is judged in this
order: join an isolation in flight, coalesce, exemption, blast-radius budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conftest import SECURITY_ACCOUNT, Stack
from tests.integration.test_worker import assert_isolated, isolate, records_for, request_isolation
from tests.support.aws import Member

from local_stack.sample_events import guardduty_finding, security_hub_custom_action, tag_change
from shared.config import worker_settings

Trigger = Callable[[Member, str], dict[str, Any]]


def _finding(member: Member, instance_id: str) -> dict[str, Any]:
    return guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance_id)


def _tag_event(member: Member, instance_id: str) -> dict[str, Any]:
    return tag_change(account_id=member.account_id, region=member.region, instance_id=instance_id)


def _security_hub(member: Member, instance_id: str) -> dict[str, Any]:
    arn = f"arn:aws:ec2:{member.region}:{member.account_id}:instance/{instance_id}"
    return security_hub_custom_action(
        action_account=SECURITY_ACCOUNT, action_region=member.region, resources=[("AwsEc2Instance", arn)]
    )


TRIGGERS = pytest.mark.parametrize(
    "trigger", [_finding, _tag_event, _security_hub], ids=["guardduty", "tag", "securityhub"]
)


def exempt(stack: Stack, member: Member, instance_id: str, **fields: Any) -> dict[str, Any]:
    """POST /exemptions for a member's instance (201); the exemption."""
    body = {
        "account_id": member.account_id,
        "instance_id": instance_id,
        "reason": "load test of the payment service",
        "expires_at": (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **fields,
    }
    status, answer = stack.api("POST", "/exemptions", body=body)
    assert status == 201, answer
    return answer


# --- the attack: the instance's own tag ---------------------------------------------------------------


@TRIGGERS
def test_an_instance_tagged_exempt_by_its_account_is_isolated_by_a_trigger(
    stack: Stack, member: Member, trigger: Trigger
) -> None:
    # Given a member principal with ec2:CreateTags that tagged its compromised instance exempt
    vpc = member.vpc()
    instance = member.instance(vpc, tags={"ec2-isolation:exempt": "true"})

    # When a trigger names the instance
    stack.send(trigger(member, instance))
    stack.drain()

    # Then the tag is not honoured: the instance is isolated
    [record] = records_for(stack, instance)
    assert record["status"] == "ISOLATED", record
    assert "check-exemption" not in [step["name"] for step in record["steps"]]
    assert_isolated(member, instance, vpc.id)


# --- the service's own exemptions -----------------------------------------------------------------------


def _untouched(member: Member, instance: str, before: dict[str, list[str]]) -> None:
    assert member.eni_groups(instance) == before
    assert member.profile_of(instance).endswith("/app")
    assert not any(key.startswith("ec2-isolation:") for key in member.tags(instance))


@TRIGGERS
def test_a_trigger_for_an_exempted_instance_is_skipped_naming_the_exemption(
    stack: Stack, member: Member, trigger: Trigger
) -> None:
    # Given an instance the security account exempted
    instance = member.instance(member.vpc())
    before = member.eni_groups(instance)
    exemption = exempt(stack, member, instance)

    # When a trigger names it
    stack.send(trigger(member, instance))
    stack.drain()

    # Then its record is SKIPPED, its one step naming the exemption and its reason; the instance untouched
    [record] = records_for(stack, instance)
    assert record["status"] == "SKIPPED" and record["error"] is None
    [step] = record["steps"]
    assert step["name"] == "check-exemption" and step["status"] == "skipped"
    assert exemption["exemption_id"] in step["detail"] and exemption["reason"] in step["detail"]
    _untouched(member, instance, before)


def test_a_person_and_a_deleted_or_expired_exemption_isolate_it(stack: Stack, member: Member) -> None:
    # Given an exempted instance
    vpc = member.vpc()
    instance = member.instance(vpc)
    exemption = exempt(stack, member, instance)

    # When a person asks for it through the webhook, it is isolated anyway
    assert isolate(stack, member, instance)["status"] == "ISOLATED"
    assert_isolated(member, instance, vpc.id)

    # And once an exemption is deleted, a trigger isolates its instance
    other = member.instance(vpc)
    second = exempt(stack, member, other)
    assert stack.api("DELETE", f"/exemptions/{second['exemption_id']}")[0] == 204
    stack.send(_finding(member, other))
    stack.drain()
    assert [r["status"] for r in records_for(stack, other)] == ["ISOLATED"]
    assert exemption["exemption_id"] != second["exemption_id"]


def test_an_expired_exemption_exempts_nothing(stack: Stack, member: Member) -> None:
    # Given an exemption of the instance that expired a moment ago
    from shared.exemptions import Exemption
    from shared.store.exemptions import ExemptionStore

    instance = member.instance(member.vpc())
    past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    store = ExemptionStore(worker_settings().EXEMPTION_TABLE_NAME)
    store.create(
        Exemption(
            exemption_id="exm-" + "b" * 32,
            account_id=member.account_id,
            instance_id=instance,
            reason="over",
            expires_at=past,
            created_at=past,
        )
    )

    # When a finding names the instance, it is isolated
    stack.send(_finding(member, instance))
    stack.drain()
    assert [r["status"] for r in records_for(stack, instance)] == ["ISOLATED"]


def test_an_exemption_of_another_account_exempts_nothing(stack: Stack, member: Member) -> None:
    # Given the same instance id exempted in another account
    instance = member.instance(member.vpc())
    exempt(stack, member, instance, account_id="999999999999")

    # When a finding names the instance in its own account, it is isolated
    stack.send(_finding(member, instance))
    stack.drain()
    assert [r["status"] for r in records_for(stack, instance)] == ["ISOLATED"]


# --- the order: join, coalesce, exemption, budget ---------------------------------------------------------


def test_a_trigger_joins_an_isolation_in_flight_before_its_exemption_is_judged(
    stack: Stack, member: Member
) -> None:
    # Given a person's isolation of the instance in flight (queued), then an exemption of it
    instance = member.instance(member.vpc())
    isolation_id = request_isolation(stack, member, instance)
    exempt(stack, member, instance)

    # When a finding names it
    stack.send(_finding(member, instance))
    stack.drain()

    # Then the finding joined the isolation in flight: no record of its own, nothing skipped
    assert [(r["isolation_id"], r["status"]) for r in records_for(stack, instance)] == [
        (isolation_id, "ISOLATED")
    ]


def test_a_trigger_is_coalesced_before_its_exemption_is_judged(stack: Stack, member: Member) -> None:
    # Given an instance a person isolated a moment ago, then exempted
    instance = member.instance(member.vpc())
    first = isolate(stack, member, instance)
    exempt(stack, member, instance)

    # When a finding names it
    stack.send(_finding(member, instance))
    stack.drain()

    # Then it is coalesced with the isolation (the instance is isolated: that is what the record says)
    latest = records_for(stack, instance)[0]
    assert latest["status"] == "ISOLATED" and latest["source"] == "guardduty"
    assert [step["name"] for step in latest["steps"]] == ["coalesced"]
    assert latest["inherits_from"] == first["isolation_id"]


def test_an_exempted_trigger_spends_no_budget_and_is_judged_before_it(
    stack: Stack, member: Member, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a budget of one trigger-started isolation per hour, and two exempted instances
    monkeypatch.setenv("MAX_AUTO_ISOLATIONS_PER_HOUR", "1")
    worker_settings.cache_clear()
    vpc = member.vpc()
    exempted = [member.instance(vpc) for _ in range(2)]
    normal = [member.instance(vpc) for _ in range(2)]
    for instance in exempted:
        exempt(stack, member, instance)

    # When the first exempted instance's finding comes, then a normal one's
    stack.send(_finding(member, exempted[0]))
    stack.drain()
    stack.send(_finding(member, normal[0]))
    stack.drain()

    # Then the exempted one is SKIPPED and the normal one isolated: the exemption spent no budget
    assert [r["status"] for r in records_for(stack, exempted[0])] == ["SKIPPED"]
    assert [r["status"] for r in records_for(stack, normal[0])] == ["ISOLATED"]

    # And with the budget spent, an exempted instance is SKIPPED for its exemption, not the budget
    stack.send(_finding(member, exempted[1]))
    stack.send(_finding(member, normal[1]))
    stack.drain()
    [record] = records_for(stack, exempted[1])
    assert record["status"] == "SKIPPED" and record["error"] is None
    assert record["steps"][0]["name"] == "check-exemption"
    [limited] = records_for(stack, normal[1])
    assert limited["status"] == "SKIPPED" and limited["error"]["code"] == "RateLimited"


def test_the_records_transaction_refuses_an_exempted_trigger_and_spends_nothing(
    stack: Stack, member: Member
) -> None:
    # Given an exempted instance
    instance = member.instance(member.vpc())
    exemption = exempt(stack, member, instance)

    # When a finding names it, and the worker writes its record
    from shared.models import IsolationRecord, Source, Target, new_isolation_id

    record = IsolationRecord.queued(
        isolation_id=new_isolation_id(),
        source=Source.GUARDDUTY,
        target=Target(account_id=member.account_id, region=member.region, instance_id=instance),
    )
    from shared.store import Exempted, slot_key
    from shared.store.rate_limits import budget_key

    outcome = stack.store.create_queued(
        record,
        lease_seconds=60,
        coalesce_window_seconds=900,
        budget=5,
        exemptions_table=worker_settings().EXEMPTION_TABLE_NAME,
    )

    # Then the transaction itself (a consistent condition check) refused it, naming the exemption;
    # nothing was written: no record, no slot, no budget spent
    assert isinstance(outcome, Exempted) and outcome.exemption.exemption_id == exemption["exemption_id"]
    assert stack.store.get(record.isolation_id) is None
    assert stack.store.item(slot_key(record.target)) is None
    assert stack.store.item(budget_key(member.account_id, "guardduty", time.time())) is None
