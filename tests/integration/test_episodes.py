"""Episodes come from the service's own records, never from the instance: the attacks of a member who can
tag the instance (`ec2:CreateTags`) or create snapshots, against moto in-process with real event shapes.

An isolation's episode is the instance's latest record that changed it, read consistently from the
instance's slot item; its `ec2-isolation:id` tag is a label, and a forged one is overwritten."""

from __future__ import annotations

from typing import Any

import pytest
from tests.conftest import Stack
from tests.integration.test_containment import assert_contained
from tests.integration.test_release import release, seen
from tests.integration.test_worker import isolate, record_of, request_isolation, steps
from tests.support.aws import Faults, Member

from local_stack.sample_events import guardduty_finding, tag_change
from shared.models import Target
from shared.store import episodes, slot_key
from shared.store.episodes import BACKFILLED, isolated_query

ID_TAG = "ec2-isolation:id"


def forge(member: Member, instance: str, **tags: str) -> None:
    """What anyone with ec2:CreateTags on the instance can write."""
    member.ec2.create_tags(Resources=[instance], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


def snapshots_of(member: Member, instance: str) -> dict[str, str]:
    """The isolation's snapshots of the instance's volumes: volume id -> snapshot id."""
    found = member.ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag:ec2-isolation:instance-id", "Values": [instance]}]
    )["Snapshots"]
    return {s["VolumeId"]: s["SnapshotId"] for s in found}


# --- a forged pointer: another instance's isolation ------------------------------------------------------


def test_an_instance_tagged_with_another_instances_isolation_is_isolated_from_its_own_state(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an instance isolated (role `app`), and a second instance (role `web`) whose workload tags it
    # with the first one's isolation id
    vpc = member.vpc()
    first = member.instance(vpc)
    victim = member.instance(vpc, profile="web")
    isolated = isolate(stack, member, first)
    before = seen(member, victim)
    forge(member, victim, **{ID_TAG: isolated["isolation_id"]})

    # When the second is isolated
    faults.count()
    record = isolate(stack, member, victim)

    # Then it is an episode of its own: its own prior state, its own snapshots, its credentials denied
    assert record["status"] == "ISOLATED", record
    assert record["inherits_from"] is None
    assert record["prior_state"]["instance_profile_arn"].endswith("/web")
    assert record["prior_state"] != isolated["prior_state"]
    assert faults.calls["ec2.CreateSnapshots"] == 1
    assert record["evidence"]["snapshots"] != isolated["evidence"]["snapshots"]
    assert {s["volume_id"] for s in record["evidence"]["snapshots"]} == set(member.volumes(victim))
    assert steps(record)["deny-instance-credentials"] == "done"
    assert_contained(member, victim, vpc, role="web")
    # And its tag now names its own isolation
    assert member.tags(victim)[ID_TAG] == record["isolation_id"]
    # And a release puts back its own profile, not the other instance's
    assert release(stack, record["isolation_id"])["status"] == "RELEASED"
    assert seen(member, victim) == before
    assert member.profile_of(victim) is not None and member.profile_of(victim).endswith("/web")


@pytest.mark.parametrize("trigger", ["guardduty", "tag"])
def test_a_forged_pointer_decides_nothing_for_a_trigger(stack: Stack, member: Member, trigger: str) -> None:
    # Given an isolated instance, and a second one tagged with its isolation id
    vpc = member.vpc()
    first = member.instance(vpc)
    victim = member.instance(vpc, profile="web")
    isolated = isolate(stack, member, first)
    forge(member, victim, **{ID_TAG: isolated["isolation_id"]})

    # When a trigger isolates the second
    if trigger == "guardduty":
        stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=victim))
    else:
        stack.send(tag_change(account_id=member.account_id, region=member.region, instance_id=victim))
    stack.drain()

    # Then it is isolated from its own state, in an episode of its own
    [record] = [r for r in _records(stack, victim)]
    assert record["status"] == "ISOLATED", record
    assert record["inherits_from"] is None
    assert record["prior_state"]["instance_profile_arn"].endswith("/web")
    assert {s["volume_id"] for s in record["evidence"]["snapshots"]} == set(member.volumes(victim))


# --- a forged pointer: not a record ----------------------------------------------------------------------


def _not_records(member: Member, instance: str) -> list[str]:
    target = Target(account_id=member.account_id, region=member.region, instance_id=instance)
    return [
        slot_key(target),  # the instance's own slot item: an item of the table, not a record
        "idempotency#" + "0" * 64,
        "iso-not-a-record",
        "#:" * 128,  # 256 characters, the most a tag value holds
    ]


@pytest.mark.parametrize("which", range(4))
def test_an_instance_tagged_with_a_key_that_is_not_a_record_is_contained_on_the_first_receive(
    stack: Stack, member: Member, which: int
) -> None:
    # Given an instance tagged with the key of an item that is not a record (or with garbage), and the
    # item existing when it is the instance's slot (an earlier isolation, released, made it)
    vpc = member.vpc()
    instance = member.instance(vpc)
    earlier = isolate(stack, member, instance)
    assert release(stack, earlier["isolation_id"])["status"] == "RELEASED"
    forge(member, instance, **{ID_TAG: _not_records(member, instance)[which]})

    # When it is isolated, on one receive only
    isolation_id = request_isolation(stack, member, instance)
    response = stack.work()

    # Then the first receive contains it, from what it is now (the released episode is over)
    assert response["batchItemFailures"] == []
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED", record
    assert record["inherits_from"] is None
    assert_contained(member, instance, vpc)


# --- labels ----------------------------------------------------------------------------------------------


def test_forged_isolation_tags_are_overwritten_with_the_records_values(stack: Stack, member: Member) -> None:
    # Given a requested isolation whose id the workload learned and wrote on the instance, with a forged
    # source and time beside it
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    forge(
        member,
        instance,
        **{ID_TAG: isolation_id, "ec2-isolation:source": "guardduty", "ec2-isolation:at": "1999-01-01"},
    )

    # When the worker runs it
    stack.drain()

    # Then the instance's labels are the record's
    record = record_of(stack, isolation_id)
    tags = member.tags(instance)
    assert record["status"] == "ISOLATED", record
    assert tags[ID_TAG] == isolation_id
    assert tags["ec2-isolation:source"] == "webhook"
    assert tags["ec2-isolation:at"] != "1999-01-01"
    assert steps(record)["tag-instance"] == "done"


# --- evidence ----------------------------------------------------------------------------------------------


def test_a_snapshot_forged_with_the_isolations_id_is_never_its_evidence(stack: Stack, member: Member) -> None:
    # Given a requested isolation whose id the member learned, and a snapshot the member made of another
    # instance's volume, tagged with that id (any principal with ec2:CreateSnapshot can)
    vpc = member.vpc()
    instance = member.instance(vpc)
    other = member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)
    other_volume = next(iter(member.volumes(other)))
    forged = member.ec2.create_snapshot(
        VolumeId=other_volume,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": ID_TAG, "Value": isolation_id},
                    {"Key": "ec2-isolation:instance-id", "Value": instance},
                ],
            }
        ],
    )["SnapshotId"]

    # When the worker runs it
    stack.drain()

    # Then its evidence is a snapshot of each of the instance's own volumes, taken by the service
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED", record
    evidence = {s["volume_id"]: s["snapshot_id"] for s in record["evidence"]["snapshots"]}
    assert set(evidence) == set(member.volumes(instance))
    assert forged not in evidence.values()


def _records(stack: Stack, instance: str) -> list[dict[str, Any]]:
    status, body = stack.api("GET", "/isolations", query={"instance_id": instance})
    assert status == 200
    return list(body["items"])


# --- isolated now ------------------------------------------------------------------------------------------


def test_isolated_now_holds_only_the_instances_isolated_now(stack: Stack, member: Member) -> None:
    # Given three instances: isolated, isolated then released, and isolated then isolated again
    vpc = member.vpc()
    kept, released, again = (member.instance(vpc, enis=1) for _ in range(3))
    isolated = isolate(stack, member, kept)
    assert release(stack, isolate(stack, member, released)["isolation_id"])["status"] == "RELEASED"
    isolate(stack, member, again)
    latest = isolate(stack, member, again)

    # When the tamper watch asks what is isolated now in the account (and in its region)
    everywhere = stack.store.isolated_now(member.account_id)
    here = stack.store.isolated_now(member.account_id, member.region)
    elsewhere = stack.store.isolated_now(member.account_id, "eu-north-1")

    # Then it gets each isolated instance's latest record, and nothing of history
    assert {r.isolation_id for r in everywhere} == {isolated["isolation_id"], latest["isolation_id"]}
    assert {r.isolation_id for r in here} == {isolated["isolation_id"], latest["isolation_id"]}
    assert elsewhere == []
    # And the index it reads holds those two slots only (history never enters it)
    slots = stack.store._query(isolated_query(stack.table_name, member.account_id, None), None)
    assert sorted(item["pk"] for item in slots) == sorted(
        slot_key(Target(account_id=member.account_id, region=member.region, instance_id=i))
        for i in (kept, again)
    )


def test_a_failed_isolation_takes_the_instance_out_of_isolated_now(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an isolated instance, then an isolation of it that fails after its begin
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    isolate(stack, member, instance)
    faults.inject("ec2", "CreateTags", "UnauthorizedOperation", times=None, status=403)
    failed = isolate(stack, member, instance)
    assert failed["status"] == "FAILED"

    # When the tamper watch asks what is isolated now
    # Then the instance is not (its latest record is FAILED), and that record is the episode's latest
    assert stack.store.isolated_now(member.account_id) == []
    target = Target(account_id=member.account_id, region=member.region, instance_id=instance)
    assert stack.store.latest_changed_id(target) == failed["isolation_id"]


# --- upgrade: records written by a version without the slot's pointer --------------------------------------


def _as_written_before(stack: Stack, member: Member, *instances: str) -> None:
    """The slots as the previous version left them: no latest record, not among those isolated now."""
    for instance in instances:
        target = Target(account_id=member.account_id, region=member.region, instance_id=instance)
        stack.store.client.update_item(
            TableName=stack.table_name,
            Key={"pk": {"S": slot_key(target)}},
            UpdateExpression="REMOVE latest_id, isolated_in",
        )
    stack.store.client.delete_item(TableName=stack.table_name, Key={"pk": {"S": BACKFILLED}})
    episodes._BACKFILLED_TABLES.discard(stack.table_name)


def test_an_upgraded_slot_keeps_its_episode(stack: Stack, member: Member) -> None:
    # Given an isolated instance whose slot is in the previous version's shape
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)
    _as_written_before(stack, member, instance)

    # When it is isolated again (before any backfill)
    second = isolate(stack, member, instance)

    # Then it is in the first one's episode (found once from the instance's records)
    assert second["status"] == "ISOLATED", second
    assert second["inherits_from"] == first["isolation_id"]
    assert second["prior_state"] == first["prior_state"]
    assert second["evidence"] == first["evidence"]
    # And the slot names the episode's latest record from now on
    target = Target(account_id=member.account_id, region=member.region, instance_id=instance)
    assert stack.store.latest_changed_id(target) == second["isolation_id"]
    # And a release through it restores the instance's own profile
    assert release(stack, second["isolation_id"])["status"] == "RELEASED"
    assert str(member.profile_of(instance)).endswith("/app")


def test_an_upgraded_deployments_isolated_instances_are_backfilled_once(stack: Stack, member: Member) -> None:
    # Given two isolated instances and a released one, their slots in the previous version's shape
    vpc = member.vpc()
    isolated = [member.instance(vpc, enis=1) for _ in range(2)]
    released = member.instance(vpc, enis=1)
    records = [isolate(stack, member, instance) for instance in isolated]
    assert release(stack, isolate(stack, member, released)["isolation_id"])["status"] == "RELEASED"
    _as_written_before(stack, member, *isolated, released)
    assert stack.store.isolated_now(member.account_id) == []

    # When the sweeper runs (twice: the second finds the backfill done)
    stack.sweep()
    stack.sweep()

    # Then the isolated instances are isolated now again, each with its latest record
    now = stack.store.isolated_now(member.account_id, member.region)
    assert sorted(r.isolation_id for r in now) == sorted(r["isolation_id"] for r in records)
    assert stack.store.item(BACKFILLED) is not None
    target = Target(account_id=member.account_id, region=member.region, instance_id=released)
    assert stack.store.latest(target) is not None
    assert stack.store.latest(target).status.value == "RELEASED"  # type: ignore[union-attr]


def test_a_retry_after_a_crash_takes_its_own_snapshots_never_a_forged_one(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an isolation whose worker died right after CreateSnapshots (the record says it asked), and a
    # snapshot the member then made of another instance's volume, tagged with the isolation's id
    vpc = member.vpc()
    instance, other = member.instance(vpc), member.instance(vpc)
    isolation_id = request_isolation(stack, member, instance)

    def die(**_: Any) -> None:
        raise RuntimeError("worker lost")

    faults.hook("after-call.ec2.CreateSnapshots", die)
    stack.drain(rounds=1)
    faults.clear()
    forged = member.ec2.create_snapshot(
        VolumeId=next(iter(member.volumes(other))),
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": ID_TAG, "Value": isolation_id}]}],
    )["SnapshotId"]

    # When the message comes back
    stack.let_time_pass()
    stack.drain()

    # Then the evidence is the snapshots the first attempt took of the instance's own volumes
    record = record_of(stack, isolation_id)
    assert record["status"] == "ISOLATED", record
    evidence = {s["volume_id"]: s["snapshot_id"] for s in record["evidence"]["snapshots"]}
    assert set(evidence) == set(member.volumes(instance))
    assert forged not in evidence.values()
    assert set(evidence.values()) <= set(snapshots_of(member, instance).values())
