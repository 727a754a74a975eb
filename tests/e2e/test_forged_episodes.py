"""The forged-pointer attack through the local stack (the API served over HTTP, the rules made from
template.yaml, the worker polling the queues): a workload that tags its instance with another instance's
isolation id gets nothing of that isolation, by webhook or by a GuardDuty finding."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from local_stack.stack import LocalStack
from local_stack.workloads import DemoInstance
from tests.e2e.helpers import assert_isolated, member_clients, sample_event

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    environment = {"POWERTOOLS_METRICS_DISABLED": "true"}
    with LocalStack(seed_demo=True, region="eu-west-1", environment=environment) as local:
        yield local


def _isolate(stack: LocalStack, instance: DemoInstance) -> dict[str, Any]:
    status, body = stack.request(
        "POST",
        "/isolate",
        {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region},
    )
    assert status == 202, body
    return stack.wait_for(body["isolation_id"])


def _forge(instance: DemoInstance, isolation_id: str) -> None:
    """What anyone with ec2:CreateTags on the instance can write."""
    ec2, _ = member_clients(instance)
    ec2.create_tags(
        Resources=[instance.instance_id], Tags=[{"Key": "ec2-isolation:id", "Value": isolation_id}]
    )


def _volumes(instance: DemoInstance) -> set[str]:
    ec2, _ = member_clients(instance)
    described = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0]
    return {m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"] if "Ebs" in m}


def _own_episode(record: dict[str, Any], instance: DemoInstance, source: str) -> None:
    assert_isolated(instance, record, source=source)
    assert record["inherits_from"] is None
    assert record["prior_state"]["instance_profile_arn"] == instance.instance_profile_arn
    assert {s["volume_id"] for s in record["evidence"]["snapshots"]} == _volumes(instance)


def test_a_webhook_isolation_of_an_instance_tagged_with_anothers_isolation_is_its_own(
    stack: LocalStack,
) -> None:
    # Given an isolated instance with a profile, and a second whose workload tags it with that isolation
    first, victim = stack.demo.instance("web-1", 0), stack.demo.instance("web-2", 0)  # type: ignore[union-attr]
    isolated = _isolate(stack, first)
    assert isolated["status"] == "ISOLATED", isolated
    _forge(victim, isolated["isolation_id"])

    # When a responder isolates the second over HTTP
    record = _isolate(stack, victim)

    # Then it is an episode of its own: its own prior state and snapshots, its tag rewritten
    _own_episode(record, victim, "webhook")


def test_a_finding_about_an_instance_tagged_with_anothers_isolation_is_its_own_and_releases_to_its_own(
    stack: LocalStack,
) -> None:
    # Given an isolated instance with a profile, and one without a profile tagged with its isolation id
    first, victim = stack.demo.instance("web-3", 0), stack.demo.instance("no-profile", 0)  # type: ignore[union-attr]
    isolated = _isolate(stack, first)
    assert isolated["status"] == "ISOLATED", isolated
    _forge(victim, isolated["isolation_id"])

    # When GuardDuty reports the second
    stack.put_event(sample_event("guardduty-finding-ec2-high.json", victim))
    record = stack.wait_for_instance(victim.instance_id, victim.account_id, timeout=60)

    # Then it is isolated from its own state (no profile before), never the first one's
    _own_episode(record, victim, "guardduty")
    assert record["prior_state"]["instance_profile_arn"] is None
    # And its release leaves it without a profile (the first one's is not attached)
    status, body = stack.request("POST", f"/isolations/{record['isolation_id']}/release", {})
    assert status == 202, body
    released = stack.wait_for(record["isolation_id"], statuses={"RELEASED", "RELEASE_FAILED"}, timeout=60)
    assert released["status"] == "RELEASED", released
    ec2, _ = member_clients(victim)
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [victim.instance_id]}]
    )["IamInstanceProfileAssociations"]
    assert [a for a in associations if a["State"] in ("associating", "associated")] == []
