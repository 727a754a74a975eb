"""Release: an isolation undone from its recorded prior state, through the API and the worker (moto
in-process, real event shapes), compared with the instance as it was before its isolation.

Where moto is more lenient than AWS the test says which gap it works around."""

from __future__ import annotations

import io
import json
import logging
import uuid
from typing import Any

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import assert_isolated, isolate, record_of, request_isolation, steps
from tests.support.aws import Faults, Member, classic_instances, targets, web_tier

from local_stack.sample_events import guardduty_finding, tag_change
from shared.lifecycle import Status
from shared.models import Evidence, IsolationRecord, PriorState, Source, Target, new_isolation_id
from shared.observability import logger, metrics
from worker.journal import ReleaseJournal
from worker.steps import RELEASE

RELEASE_STEPS = [step.name for step in RELEASE]
ISOLATION_TAGS = ("ec2-isolation:id", "ec2-isolation:at", "ec2-isolation:source")


def ask_release(stack: Stack, isolation_id: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    return stack.api("POST", f"/isolations/{isolation_id}/release", **kwargs)


def release(stack: Stack, isolation_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST the release (accepted: 202 RELEASING), run the worker until the queue is empty; the record."""
    status, answer = ask_release(stack, isolation_id, body=body or {})
    assert status == 202, answer
    assert answer == {
        "isolation_id": isolation_id,
        "status": "RELEASING",
        "status_url": f"/isolations/{isolation_id}",
    }
    stack.drain()
    return record_of(stack, isolation_id)


def release_steps(record: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in record["release"]["steps"]}


def seen(member: Member, instance: str, tier: Any = None) -> dict[str, Any]:
    """What a release must put back, as the member account shows it."""
    state: dict[str, Any] = {
        "groups": member.eni_groups(instance),
        "profile": member.profile_of(instance),
        "denied on app": member.instance_arn(instance) in member.denied_instances("app"),
        "shutdown": member.attribute(instance, "instanceInitiatedShutdownBehavior"),
        "stop protection": member.attribute(instance, "disableApiStop"),
        "termination protection": member.termination_protected(instance),
        "volumes": member.volumes(instance),
        "isolation tags": {k for k in member.tags(instance) if k in ISOLATION_TAGS},
    }
    if tier is not None:
        autoscaling = member.session.client("autoscaling")
        found = autoscaling.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"]
        address = member.described(instance)["NetworkInterfaces"][0]["PrivateIpAddress"]
        state |= {
            "group": found[0]["AutoScalingGroupName"] if found else None,
            "target group": instance in targets(member, tier.target_group_arn),
            "ip target group": address in targets(member, tier.ip_target_group_arn),
            "classic": instance in classic_instances(member, tier.classic),
        }
    return state


# --- the whole thing ----------------------------------------------------------------------------------


def test_release_after_a_full_isolation_puts_back_everything_it_recorded(
    stack: Stack, member: Member
) -> None:
    # Given a web-tier instance (Auto Scaling group, target group, ip target group, classic load balancer,
    # profile "app" shared with a sibling), as it was before its isolation
    vpc = member.vpc()
    instance, sibling = member.instance(vpc, enis=1), member.instance(vpc, enis=1)
    tier = web_tier(member, vpc, [instance, sibling])
    before = seen(member, instance, tier)
    isolated = isolate(stack, member, instance)
    isolate(stack, member, sibling)
    assert isolated["status"] == "ISOLATED" and seen(member, instance, tier) != before
    stack.outcomes()

    # When a responder releases it
    record = release(stack, isolated["isolation_id"], {"reason": "false positive", "requested_by": "ana"})

    # Then it is RELEASED, each step in the contract's order, and the instance is as it was
    assert record["status"] == "RELEASED", record
    assert [s["name"] for s in record["release"]["steps"]] == RELEASE_STEPS
    assert "failed" not in release_steps(record).values()
    assert record["released_at"] >= record["release"]["requested_at"]
    assert (record["release"]["reason"], record["release"]["requested_by"]) == ("false positive", "ana")
    assert record["release"]["error"] is None
    after = seen(member, instance, tier)
    assert after == before
    assert member.tags(instance)["ec2-isolation:released-at"] <= record["released_at"]
    # And the sibling stays isolated, its deny kept on the shared role
    assert_isolated(member, sibling, vpc.id)
    assert member.denied_instances("app") == [member.instance_arn(sibling)]
    # And the snapshots are kept
    assert record["evidence"] == isolated["evidence"]
    # And one outcome event carries the record as served
    [event] = stack.outcomes()
    detail = event["detail"]
    assert detail.pop("summary").startswith(f"RELEASED {instance} in {member.account_id}")
    assert detail == record_of(stack, isolated["isolation_id"])


def test_release_of_a_failed_isolation_restores_what_it_changed(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an isolation that FAILED after the network cut (a permanent refusal of a later step)
    vpc = member.vpc()
    instance = member.instance(vpc)
    before = seen(member, instance)
    faults.inject("ec2", "CreateTags", "UnauthorizedOperation", times=None, status=403)
    failed = isolate(stack, member, instance)
    faults.clear()
    assert failed["status"] == "FAILED" and failed["prior_state"] is not None

    # When it is released
    record = release(stack, failed["isolation_id"])

    # Then what it changed is back
    assert record["status"] == "RELEASED", record
    assert seen(member, instance) == before
    assert release_steps(record)["rejoin-auto-scaling-group"] == "skipped"


def test_an_isolation_after_one_that_failed_before_its_tag_is_in_its_episode(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an isolation that changed the instance and FAILED before its tag (its last step), so the
    # instance is partly isolated and carries no `ec2-isolation:id`
    vpc = member.vpc()
    instance = member.instance(vpc)
    before = seen(member, instance)
    faults.inject("ec2", "CreateTags", "UnauthorizedOperation", times=None, status=403)
    failed = isolate(stack, member, instance)
    faults.clear()
    assert failed["status"] == "FAILED" and "ec2-isolation:id" not in member.tags(instance)
    assert seen(member, instance)["groups"] != before["groups"]

    # When it is isolated again
    second = isolate(stack, member, instance)

    # Then the second is in the first one's episode: the instance as it was before the first, not the
    # partly isolated one it found
    assert second["status"] == "ISOLATED", second
    assert second["inherits_from"] == failed["isolation_id"]
    assert second["prior_state"] == failed["prior_state"]
    # And a release through it puts back what the instance was before either
    assert release(stack, second["isolation_id"])["status"] == "RELEASED"
    assert seen(member, instance) == before


def test_an_instance_in_the_isolation_group_after_a_release_starts_a_new_episode(
    stack: Stack, member: Member
) -> None:
    # Given an isolation released, then the isolation group put on the instance by hand
    vpc = member.vpc()
    instance = member.instance(vpc)
    first = isolate(stack, member, instance)
    assert release(stack, first["isolation_id"])["status"] == "RELEASED"
    isolation_group = first["isolation_groups"][vpc.id]
    [eni] = member.described(instance)["NetworkInterfaces"][:1]
    member.ec2.modify_network_interface_attribute(
        NetworkInterfaceId=eni["NetworkInterfaceId"], Groups=[isolation_group]
    )

    # When it is isolated again
    second = isolate(stack, member, instance)

    # Then the released episode is over: the new one starts from the instance as it is now
    assert second["status"] == "ISOLATED" and second["inherits_from"] is None
    assert second["prior_state"]["network_interfaces"][0]["security_group_ids"] == [isolation_group]


# --- refused --------------------------------------------------------------------------------------------


def _stored(
    stack: Stack, member: Member, status: Status, *, instance_id: str | None = None, **fields: Any
) -> str:
    """A record of `status` written straight into the table (no worker needed to refuse it), for an
    instance of its own."""
    target = Target(
        account_id=member.account_id,
        region=member.region,
        instance_id=instance_id or f"i-{uuid.uuid4().hex[:17]}",
    )
    record = IsolationRecord.queued(isolation_id=new_isolation_id(), source=Source.WEBHOOK, target=target)
    record = record.model_copy(update={"status": status, **fields})
    assert stack.store.put_record(record)
    return record.isolation_id


PRIOR = PriorState(vpc_id="vpc-1", network_interfaces=[])
#: Every status a release is refused from, with what the record needs to be in it, and what the 409 says.
REFUSED = [
    (Status.QUEUED, {}, "is QUEUED"),
    (Status.IN_PROGRESS, {"prior_state": PRIOR}, "is IN_PROGRESS"),
    (Status.RELEASING, {"prior_state": PRIOR}, "is RELEASING"),
    (Status.RELEASED, {"prior_state": PRIOR}, "is RELEASED"),
    (Status.SKIPPED, {}, "is SKIPPED"),
    (Status.CHECKED, {"prior_state": PRIOR}, "is CHECKED"),
    (Status.FAILED, {}, "changed anything"),
]


def test_release_is_refused_from_every_other_status_and_for_bad_requests(
    stack: Stack, member: Member
) -> None:
    for status, fields, says in REFUSED:
        # Given a record in that status (one per instance)
        isolation_id = _stored(stack, member, status, **fields)
        # When its release is asked for
        code, answer = ask_release(stack, isolation_id)
        # Then 409 names the status, and the record is unchanged
        assert code == 409, (status, answer)
        assert answer["status"] == status.value and says in answer["message"], answer
        assert answer["errors"][0]["field"] == "isolation_id"
        assert record_of(stack, isolation_id)["status"] == status.value

    # Given a dry run's record, ISOLATED-looking, as stored (with the field dry runs carry)
    dry_run = _stored(stack, member, Status.ISOLATED, prior_state=PRIOR)
    stack.store.client.update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": dry_run}},
        UpdateExpression="SET dry_run = :yes",
        ExpressionAttributeValues={":yes": {"BOOL": True}},
    )
    # Then it is refused: it changed nothing
    code, answer = ask_release(stack, dry_run)
    assert code == 409 and "dry run" in answer["message"], answer

    # And unknown or malformed ids are 404, bad bodies 422 naming the field
    for unknown in ("iso-" + "0" * 32, "not-an-id"):
        assert ask_release(stack, unknown)[0] == 404
    isolated = _stored(stack, member, Status.ISOLATED, prior_state=PRIOR, instance_id="i-0123456789abcdef1")
    for body, field in (({"reason": "x", "force": True}, "force"), ({"reason": "x" * 1025}, "reason")):
        code, answer = ask_release(stack, isolated, body=body)
        assert code == 422 and answer["errors"][0]["field"] == field, answer
    code, answer = ask_release(stack, isolated, body="[]")
    assert code == 422, answer
    # And nothing was queued, nothing changed
    assert stack.queued() == 0 and record_of(stack, isolated)["status"] == "ISOLATED"


def test_only_the_episodes_latest_record_releases_it(stack: Stack, member: Member) -> None:
    # Given an instance isolated by a tag event, then coalesced with a GuardDuty finding
    vpc = member.vpc()
    instance = member.instance(vpc)
    stack.send(tag_change(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()
    coalesced, first = stack.api("GET", "/isolations", query={"instance_id": instance})[1]["items"]
    assert steps(coalesced) == {"coalesced": "already"}
    assert coalesced["inherits_from"] == first["isolation_id"]

    # When the first is released: 409 naming the latest
    code, answer = ask_release(stack, first["isolation_id"])
    assert code == 409 and answer["latest"] == coalesced["isolation_id"], answer

    # Then the release through the latest releases the episode, from the first one's prior state
    record = release(stack, coalesced["isolation_id"])
    assert record["status"] == "RELEASED", record
    assert member.eni_groups(instance) == {
        eni["id"]: eni["security_group_ids"] for eni in first["prior_state"]["network_interfaces"]
    }


# --- what no longer exists, failures, races -----------------------------------------------------------


def test_an_interface_detached_since_is_skipped_and_the_rest_restored(stack: Stack, member: Member) -> None:
    # Given an isolated two-interface instance without an instance profile, whose second interface was
    # detached since
    vpc = member.vpc()
    instance = member.instance(vpc, enis=2, profile=None)
    before = member.eni_groups(instance)
    isolated = isolate(stack, member, instance)
    (second,) = [
        eni
        for eni in member.described(instance)["NetworkInterfaces"]
        if eni["Attachment"]["DeviceIndex"] == 1
    ]
    member.ec2.detach_network_interface(AttachmentId=second["Attachment"]["AttachmentId"])

    # When it is released
    record = release(stack, isolated["isolation_id"])

    # Then the attached one has its groups back, the detached one is skipped with the reason
    assert record["status"] == "RELEASED", record
    primary = next(eni for eni in before if eni != second["NetworkInterfaceId"])
    assert member.eni_groups(instance) == {primary: before[primary]}
    network = next(s for s in record["release"]["steps"] if s["name"] == "restore-security-groups")
    assert network["status"] == "done"
    assert f"{second['NetworkInterfaceId']} is no longer attached" in network["detail"]
    # And it has no instance profile again, as before
    assert member.profile_of(instance) is None
    assert release_steps(record)["restore-instance-profile"] == "done"


def test_a_prior_profile_deleted_since_leaves_the_instance_with_none(stack: Stack, member: Member) -> None:
    # Given an isolated instance whose instance profile was deleted since (its role kept)
    vpc = member.vpc()
    instance = member.instance(vpc, profile="app")
    isolated = isolate(stack, member, instance)
    iam = member.session.client("iam")
    for role in iam.get_instance_profile(InstanceProfileName="app")["InstanceProfile"]["Roles"]:
        iam.remove_role_from_instance_profile(InstanceProfileName="app", RoleName=role["RoleName"])
    iam.delete_instance_profile(InstanceProfileName="app")

    # When it is released
    record = release(stack, isolated["isolation_id"])

    # Then it is RELEASED without the isolation profile nor any other, the step skipped saying why
    assert record["status"] == "RELEASED", record
    profile = next(s for s in record["release"]["steps"] if s["name"] == "restore-instance-profile")
    assert (profile["status"], profile["detail"]) == (
        "skipped",
        "instance profile app no longer exists: ec2-isolation-deny-all removed, none associated",
    )
    assert member.profile_of(instance) is None


def test_what_no_longer_exists_is_skipped_saying_why(stack: Stack, member: Member) -> None:
    # Given an isolated web-tier instance whose group, classic load balancer and ip target group were
    # deleted since
    vpc = member.vpc()
    instance = member.instance(vpc, enis=1)
    tier = web_tier(member, vpc, [instance])
    isolated = isolate(stack, member, instance)
    member.session.client("autoscaling").delete_auto_scaling_group(
        AutoScalingGroupName=tier.group, ForceDelete=True
    )
    member.session.client("elb").delete_load_balancer(LoadBalancerName=tier.classic)
    member.session.client("elbv2").delete_target_group(TargetGroupArn=tier.ip_target_group_arn)

    # When it is released
    record = release(stack, isolated["isolation_id"])

    # Then it is RELEASED: back in the target group that is left, the rest skipped with the reason
    assert record["status"] == "RELEASED", record
    assert instance in targets(member, tier.target_group_arn)
    balancers = next(s for s in record["release"]["steps"] if s["name"] == "rejoin-load-balancers")
    assert balancers["status"] == "done"
    assert "the target group no longer exists" in balancers["detail"]
    assert f"classic load balancer {tier.classic} no longer exists" in balancers["detail"]
    group = next(s for s in record["release"]["steps"] if s["name"] == "rejoin-auto-scaling-group")
    assert (group["status"], group["detail"]) == (
        "skipped",
        f"Auto Scaling group {tier.group} no longer exists",
    )


def test_a_failed_release_ends_release_failed_and_a_second_request_finishes_it(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an isolated instance, and the network change refused once (a permanent AWS error)
    vpc = member.vpc()
    instance = member.instance(vpc)
    before = seen(member, instance)
    isolated = isolate(stack, member, instance)
    stack.outcomes()
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "UnauthorizedOperation", status=403)

    # When it is released
    failed = release(stack, isolated["isolation_id"])

    # Then the release FAILED, saying why and what it did before; its event says so
    assert failed["status"] == "RELEASE_FAILED", failed
    assert failed["release"]["error"]["code"] == "UnauthorizedOperation"
    assert release_steps(failed) == {
        "restore-instance-profile": "done",
        "remove-credentials-deny": "done",
        "restore-security-groups": "failed",
    }
    [event] = stack.outcomes()
    assert (
        event["detail"]["status"] == "RELEASE_FAILED"
        and "UnauthorizedOperation" in event["detail"]["summary"]
    )

    # When a second release is asked for, it finishes: done steps are `already`
    record = release(stack, isolated["isolation_id"])
    assert record["status"] == "RELEASED", record
    assert release_steps(record)["restore-instance-profile"] == "already"
    assert seen(member, instance) == before


def test_a_release_counts_its_outcomes_as_releases_and_its_log_lines_name_it(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an isolated instance, with the metrics the worker counts and its log lines noted from now on
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolation_id = isolate(stack, member, instance)["isolation_id"]
    counted: list[str] = []
    monkeypatch.setattr(metrics, "add_metric", lambda *, name, unit, value: counted.append(name))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger._logger.addHandler(handler)
    try:
        # When its release fails (a permanent AWS error), then a second request finishes it
        faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "UnauthorizedOperation", status=403)
        assert release(stack, isolation_id)["status"] == "RELEASE_FAILED"
        assert release(stack, isolation_id)["status"] == "RELEASED"
        logger.info("after the release")
    finally:
        logger._logger.removeHandler(handler)

    # Then each receive counted its outcome as a release's (dashboards and alarms read these names), and
    # each step that ended as a release step's; nothing as an isolation's
    outcomes = [name for name in counted if name.startswith(("Release-", "Isolation-"))]
    assert outcomes == ["Release-release-failed", "Release-released"]
    assert "ReleaseStep-done" in counted
    # (the step that failed the first release too: a failure that ends a procedure is a step outcome)
    assert counted.count("ReleaseStep-failed") == 1
    assert not any(name.startswith(("Step-", "Isolation-")) for name in counted)
    # And the lines the release logged name it: the isolation, and that it is its release
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    about = [line for line in lines if line.get("phase") == "release"]
    assert all(line["isolation_id"] == isolation_id for line in about)
    failed = [line for line in about if line["message"] == "release failed"]
    assert failed and failed[0]["code"] == "UnauthorizedOperation"
    assert [line for line in about if line["message"] == "released"]
    # And the release's keys end with its receive
    assert lines[-1]["message"] == "after the release" and "phase" not in lines[-1]


def test_a_release_retried_on_every_receive_ends_release_failed_on_its_last(
    stack: Stack, member: Member, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an isolated instance whose release meets a throttled DescribeInstances on every receive
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolated = isolate(stack, member, instance)
    stack.outcomes()
    throttled = faults.inject("ec2", "DescribeInstances", "RequestLimitExceeded", status=503, times=100)
    counted: list[str] = []
    monkeypatch.setattr(metrics, "add_metric", lambda *, name, unit, value: counted.append(name))

    # When it is released and the worker has used every receive of its message
    assert ask_release(stack, isolated["isolation_id"], body={})[0] == 202
    stack.drain(rounds=stack.max_receive_count + 1)
    stack.receive()  # the receive after the last one moves it to the DLQ

    # Then each receive but the last gave its lease back (the next one began the release: every receive
    # met the throttle), and the last ended it RELEASE_FAILED with the last error, counted once, with one
    # outcome event; the instance is still isolated and its message is in the DLQ
    assert throttled.raised == stack.max_receive_count
    record = record_of(stack, isolated["isolation_id"])
    assert record["status"] == "RELEASE_FAILED", record
    assert record["release"]["error"]["code"] == "RequestLimitExceeded"
    assert record["release"]["error"]["message"].startswith(
        f"gave up on the last allowed receive of its message ({stack.max_receive_count})"
    )
    assert [name for name in counted if name.startswith(("Release-", "Isolation-"))] == [
        "Release-release-failed"
    ]
    [event] = stack.outcomes()
    assert event["detail"]["status"] == "RELEASE_FAILED"
    assert_isolated(member, instance, vpc.id)
    assert len(stack.dead_letters()) == 1


def test_a_release_step_never_writes_a_prior_state_or_evidence(stack: Stack, member: Member) -> None:
    # Given a release's journal (the notes its steps are given)
    isolation_id = _stored(stack, member, Status.RELEASING, prior_state=PRIOR)
    stored = stack.store.get(isolation_id)
    assert stored is not None
    journal = ReleaseJournal(stack.store, stored)

    # When a step would note a prior value or evidence, it is refused, and nothing is written
    for note in (
        lambda: journal.remember({"vpc_id": "vpc-2"}, []),
        lambda: journal.keep_evidence(Evidence()),
        lambda: journal.asking_snapshots("2026-01-01T00:00:00Z"),
        lambda: journal.will_ask_snapshots("2026-01-01T00:00:00Z"),
    ):
        with pytest.raises(AssertionError, match="a release step never"):
            note()
    assert stack.store.get(isolation_id) == stored


def test_a_release_whose_end_cannot_be_written_gives_its_lease_back_and_runs_again(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given a release asked for, the network change refused once (a permanent AWS error), and the
    # service's table throttling the write that would end the release RELEASE_FAILED
    vpc = member.vpc()
    instance = member.instance(vpc)
    before = seen(member, instance)
    isolated = isolate(stack, member, instance)
    assert ask_release(stack, isolated["isolation_id"], body={})[0] == 202
    faults.inject("ec2", "ModifyNetworkInterfaceAttribute", "UnauthorizedOperation", status=403)
    unwritten = faults.inject(
        "dynamodb",
        "TransactWriteItems",
        "ProvisionedThroughputExceededException",
        when=lambda params: "RELEASE_FAILED" in json.dumps(params),
    )

    # When the worker runs
    stack.drain()

    # Then the message came back with the release's lease given back, and its next receive released it
    record = record_of(stack, isolated["isolation_id"])
    assert unwritten.raised == 1
    assert record["status"] == "RELEASED", record
    assert seen(member, instance) == before


def test_an_isolation_requested_during_a_release_wins(stack: Stack, member: Member) -> None:
    # Given a release requested (not yet run), then an isolation of the same instance
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolated = isolate(stack, member, instance)
    code, _ = ask_release(stack, isolated["isolation_id"])
    assert code == 202
    again = request_isolation(stack, member, instance)

    # When the worker runs both
    stack.drain()

    # Then the release ended RELEASE_FAILED Superseded, the new isolation holds, in the same episode
    released = record_of(stack, isolated["isolation_id"])
    assert released["status"] == "RELEASE_FAILED" and released["release"]["error"]["code"] == "Superseded"
    record = record_of(stack, again)
    assert record["status"] == "ISOLATED", record
    assert record["inherits_from"] == isolated["isolation_id"]
    assert_isolated(member, instance, vpc.id)


def test_a_trigger_after_a_release_isolates_again(stack: Stack, member: Member) -> None:
    # Given an instance isolated by a finding, then released (well within the coalesce window)
    vpc = member.vpc()
    instance = member.instance(vpc)
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()
    [first] = stack.api("GET", "/isolations", query={"instance_id": instance})[1]["items"]
    assert release(stack, first["isolation_id"])["status"] == "RELEASED"

    # When another finding arrives
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()

    # Then it isolates the instance again, from its released state (a new episode), not coalesced
    latest = stack.api("GET", "/isolations", query={"instance_id": instance})[1]["items"][0]
    assert latest["status"] == "ISOLATED" and "coalesced" not in steps(latest), latest
    assert latest["inherits_from"] is None
    assert latest["prior_state"]["network_interfaces"] == first["prior_state"]["network_interfaces"]
    assert_isolated(member, instance, vpc.id)


def test_deployed_the_callers_arn_is_requested_by_and_a_lost_release_is_swept(
    stack: Stack, member: Member
) -> None:
    # Given an isolated record, and a SigV4-signed request (API Gateway fills in the caller's ARN)
    instance = "i-0123456789abcdef0"
    isolation_id = _stored(stack, member, Status.ISOLATED, prior_state=PRIOR, instance_id=instance)
    caller = "arn:aws:sts::123456789012:assumed-role/responder/ana"
    code, _ = ask_release(stack, isolation_id, body={"requested_by": "someone else"}, user_arn=caller)
    # Then the record names the authenticated caller, not what the body claims
    assert code == 202
    assert record_of(stack, isolation_id)["release"]["requested_by"] == caller

    # Given that the release's worker began its last attempt and died (its lease has expired)
    assert stack.store.begin_release(isolation_id, owner="dead", lease_seconds=-1, final=True)
    # When the sweeper runs
    swept = stack.sweep()
    # Then the release ended RELEASE_FAILED WorkerLost, and the instance's slot is free again
    assert swept["lost"] == [isolation_id]
    record = record_of(stack, isolation_id)
    assert record["status"] == "RELEASE_FAILED" and record["release"]["error"]["code"] == "WorkerLost"
    slot = stack.store.item(f"instance#{member.account_id}#{member.region}#{instance}") or {}
    assert "active_id" not in slot


def test_an_isolation_waits_for_a_running_release_to_stop(stack: Stack, member: Member) -> None:
    # Given an isolated instance whose release a worker is running (it holds the record's lease)
    vpc = member.vpc()
    instance = member.instance(vpc)
    isolated = isolate(stack, member, instance)
    assert ask_release(stack, isolated["isolation_id"])[0] == 202
    assert stack.store.begin_release(isolated["isolation_id"], owner="running", lease_seconds=60, final=False)

    # When an isolation is requested meanwhile
    again = request_isolation(stack, member, instance)
    stack.work()

    # Then it waits: the isolation has not begun (it comes back through the queue), nor has the release
    # message a second worker got (the lease is held)
    assert record_of(stack, again)["status"] == "QUEUED"
    assert record_of(stack, isolated["isolation_id"])["status"] == "RELEASING"

    # When the running release stops (it gives its lease back), and the messages come back
    stack.store.end_attempt(isolated["isolation_id"], "running", began=True)
    stack.let_time_pass()
    stack.drain()

    # Then the release ended Superseded and the isolation holds, from the episode's prior state
    released = record_of(stack, isolated["isolation_id"])
    assert released["status"] == "RELEASE_FAILED" and released["release"]["error"]["code"] == "Superseded"
    record = record_of(stack, again)
    assert record["status"] == "ISOLATED" and record["inherits_from"] == isolated["isolation_id"], record
    assert_isolated(member, instance, vpc.id)


# --- a release ends its whole episode -------------------------------------------------------------------


def listed_isolated(stack: Stack) -> set[str]:
    """The ids `GET /isolations?status=ISOLATED` lists."""
    code, body = stack.api("GET", "/isolations", query={"status": "ISOLATED", "limit": "100"})
    assert code == 200, body
    return {item["isolation_id"] for item in body["items"]}


def episode_of_three(stack: Stack, member: Member, instance: str) -> list[dict[str, Any]]:
    """A webhook isolation, a second webhook isolation in its episode, then a GuardDuty finding coalesced
    with the second: the three records, oldest first, each inheriting from the one before."""
    first = isolate(stack, member, instance)
    second = isolate(stack, member, instance)
    stack.send(guardduty_finding(account_id=member.account_id, region=member.region, instance_id=instance))
    stack.drain()
    coalesced = stack.api("GET", "/isolations", query={"instance_id": instance})[1]["items"][0]
    assert steps(coalesced) == {"coalesced": "already"}, coalesced
    assert second["inherits_from"] == first["isolation_id"]
    assert coalesced["inherits_from"] == second["isolation_id"]
    return [first, second, coalesced]


def test_a_release_ends_every_record_of_its_episode_with_one_outcome_event(
    stack: Stack, member: Member
) -> None:
    # Given an episode of three ISOLATED records (webhook, webhook, coalesced finding), all listed as
    # ISOLATED
    vpc = member.vpc()
    instance = member.instance(vpc)
    first, second, latest = episode_of_three(stack, member, instance)
    ids = {first["isolation_id"], second["isolation_id"], latest["isolation_id"]}
    assert ids <= listed_isolated(stack)
    stack.outcomes()

    # When it is released through its latest record
    released = release(stack, latest["isolation_id"])

    # Then every record of the episode reads RELEASED; the earlier ones name the releasing record and
    # carry its released_at; the releasing record names none
    assert released["status"] == "RELEASED", released
    assert released["released_by"] is None
    for earlier in (first, second):
        record = record_of(stack, earlier["isolation_id"])
        assert record["status"] == "RELEASED", record
        assert record["released_by"] == latest["isolation_id"]
        assert record["released_at"] == released["released_at"]
        assert record["release"] is None  # released with the episode, not by a release of its own
    # And none is listed as ISOLATED any more, and nothing is left for the sweeper
    assert not ids & listed_isolated(stack)
    assert stack.store.unended_episodes() == []
    # And the release published one outcome event, the releasing record's
    [event] = stack.outcomes()
    assert (event["detail"]["isolation_id"], event["detail"]["status"]) == (
        latest["isolation_id"],
        "RELEASED",
    )


def test_a_release_that_stops_before_its_earlier_records_are_ended_is_finished_by_the_sweeper(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an episode of three records, and the table refusing the write that would end the first one
    # (the release's worker stops after its own record ended RELEASED)
    vpc = member.vpc()
    instance = member.instance(vpc)
    first, second, latest = episode_of_three(stack, member, instance)
    stack.outcomes()
    refused = faults.inject(
        "dynamodb",
        "UpdateItem",
        "InternalServerError",
        times=None,
        status=500,
        when=lambda params: params["Key"]["pk"]["S"] == first["isolation_id"],
    )

    # When it is released
    released = release(stack, latest["isolation_id"])

    # Then the release is RELEASED (one outcome event) and the first record is not ended yet
    assert released["status"] == "RELEASED", released
    assert refused.raised >= 1
    assert record_of(stack, first["isolation_id"])["status"] == "ISOLATED"
    assert stack.store.unended_episodes() == [latest["isolation_id"]]
    [event] = stack.outcomes()
    assert event["detail"]["isolation_id"] == latest["isolation_id"]

    # When the table answers again and the sweeper runs
    faults.clear()
    stack.sweep()

    # Then the whole episode reads RELEASED, the earlier records naming the releasing one
    for earlier in (first, second):
        record = record_of(stack, earlier["isolation_id"])
        assert (record["status"], record["released_by"]) == ("RELEASED", latest["isolation_id"]), record
        assert record["released_at"] == released["released_at"]
    assert not {first["isolation_id"], second["isolation_id"]} & listed_isolated(stack)
    assert stack.store.unended_episodes() == []
    # And the sweeper published nothing (the release's event was the episode's one)
    assert stack.outcomes() == []
    # And a second run has nothing left to do: the records are as the first left them
    before = [record_of(stack, r["isolation_id"]) for r in (first, second, latest)]
    stack.sweep()
    assert [record_of(stack, r["isolation_id"]) for r in (first, second, latest)] == before


def test_a_release_ends_only_its_own_episode(stack: Stack, member: Member) -> None:
    # Given an instance whose first episode (two records) was released, and whose earlier record was
    # left ISOLATED as a version without episode ends left it
    vpc = member.vpc()
    instance = member.instance(vpc)
    old_first = isolate(stack, member, instance)
    old_latest = isolate(stack, member, instance)
    assert old_latest["inherits_from"] == old_first["isolation_id"]
    assert release(stack, old_latest["isolation_id"])["status"] == "RELEASED"
    assert record_of(stack, old_first["isolation_id"])["released_by"] == old_latest["isolation_id"]
    stack.store.client.update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": old_first["isolation_id"]}},
        UpdateExpression="SET #s = :isolated REMOVE released_at, released_by",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":isolated": {"S": "ISOLATED"}},
    )
    # And a dry run of it, an isolation that FAILED before it changed anything (no prior state), and
    # records of the same instance id in another account (one RELEASED, one ISOLATED)
    checked = isolate(stack, member, instance, dry_run=True)
    assert checked["status"] == "CHECKED", checked
    failed_early = _stored(stack, member, Status.FAILED, instance_id=instance)
    other_account = Target(account_id="999999999999", region=member.region, instance_id=instance)
    foreign = []
    for status in (Status.ISOLATED, Status.RELEASED):
        record = IsolationRecord.queued(
            isolation_id=new_isolation_id(), source=Source.WEBHOOK, target=other_account
        ).model_copy(update={"status": status, "prior_state": PRIOR})
        assert stack.store.put_record(record)
        foreign.append(record.isolation_id)
    # And a second episode of two records
    first = isolate(stack, member, instance)
    assert first["inherits_from"] is None
    latest = isolate(stack, member, instance)
    assert latest["inherits_from"] == first["isolation_id"]
    untouched = [old_first, old_latest, checked, {"isolation_id": failed_early}] + [
        {"isolation_id": i} for i in foreign
    ]
    before = {r["isolation_id"]: record_of(stack, r["isolation_id"]) for r in untouched}

    # When the second episode is released
    assert release(stack, latest["isolation_id"])["status"] == "RELEASED"

    # Then its earlier record is ended, and nothing else changed: the first episode's records (even the
    # one left ISOLATED), the dry run, the early failure, the other account's records
    record = record_of(stack, first["isolation_id"])
    assert (record["status"], record["released_by"]) == ("RELEASED", latest["isolation_id"]), record
    assert {i: record_of(stack, i) for i in before} == before


def test_an_earlier_record_is_ended_only_from_the_status_the_table_holds_now(
    stack: Stack, member: Member, faults: Faults
) -> None:
    # Given an episode of three records; the table holds the second IN_PROGRESS now (a write the
    # episode's end must not overwrite), and the by-instance index lags behind it: it shows the first
    # IN_PROGRESS (it reads ISOLATED) and the second still ISOLATED
    vpc = member.vpc()
    instance = member.instance(vpc)
    first, second, latest = episode_of_three(stack, member, instance)
    stack.store.client.update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": second["isolation_id"]}},
        UpdateExpression="SET #s = :running",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":running": {"S": "IN_PROGRESS"}},
    )
    shown = {first["isolation_id"]: "IN_PROGRESS", second["isolation_id"]: "ISOLATED"}

    def lagging(parsed: dict[str, Any], **_: Any) -> None:
        for item in parsed.get("Items", []):
            if item["pk"]["S"] in shown:
                item["status"] = {"S": shown[item["pk"]["S"]]}

    faults.hook("after-call.dynamodb.Query", lagging)

    # When the episode is released
    assert release(stack, latest["isolation_id"])["status"] == "RELEASED"

    # Then the first, ISOLATED in the table, is ended; the second, in flight in the table, is untouched
    record = record_of(stack, first["isolation_id"])
    assert (record["status"], record["released_by"]) == ("RELEASED", latest["isolation_id"]), record
    record = record_of(stack, second["isolation_id"])
    assert (record["status"], record["released_by"], record["released_at"]) == ("IN_PROGRESS", None, None)
