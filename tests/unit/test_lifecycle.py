"""The record's lifecycle: every transition, from every state a record can be in, through both renderings
of its condition (the DynamoDB expression, evaluated by a conditional write, and the Python check)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from shared import lifecycle
from shared.errors import error_code
from shared.lifecycle import FINAL, FOLLOW_UP, Status, Transition
from shared.models import IsolationRecord, Source, Target
from shared.store import IsolationStore
from shared.store.dynamo import Write, key, serialize

NOW = Decimal("1000.5")
ME = "attempt-me"

LEASES: dict[str, dict[str, Any]] = {
    "no lease": {},
    "expired lease": {"lease_owner": "attempt-other", "lease_until": Decimal("999")},
    "live lease of another attempt": {"lease_owner": "attempt-other", "lease_until": Decimal("1100")},
    "live lease of this attempt": {"lease_owner": ME, "lease_until": Decimal("1100")},
}


def states() -> Iterator[tuple[str, dict[str, Any]]]:
    for status, resumable, lease, final, handed_over in itertools.product(
        Status, (False, True), LEASES, (False, True), (False, True)
    ):
        item: dict[str, Any] = {"status": status.value, **LEASES[lease]}
        if resumable:
            item["resumable"] = True
        if final:
            item["final_attempt"] = FINAL
        if handed_over:
            item["phase"] = FOLLOW_UP
        name = (
            f"{status.value}{' resumable' if resumable else ''}, {lease}{', last receive' if final else ''}"
            f"{', follow-up' if handed_over else ''}"
        )
        yield name, item
    # Dry runs: every status and lease (never resumable here: the dimension is covered above).
    for status, lease in itertools.product(Status, LEASES):
        yield f"{status.value} dry run, {lease}", {"status": status.value, "dry_run": True, **LEASES[lease]}


def release_states() -> Iterator[tuple[str, dict[str, Any]]]:
    """What a release reads beside the status: whether the record wrote a prior state, and dry runs."""
    for status, prior, dry_run in itertools.product(Status, (False, True), (None, False, True)):
        item = {"status": status.value}
        if prior:
            item["prior_state"] = {"vpc_id": "vpc-1", "network_interfaces": []}
        if dry_run is not None:
            item["dry_run"] = dry_run
        yield f"{status.value}{' with prior state' if prior else ''}, dry_run {dry_run}, no lease", item


@pytest.fixture(scope="module")
def table() -> Iterator[Any]:
    """A table holding one item per state (its name as key): each transition's condition is checked
    against every one of them, and writes only `touched`, which no condition reads."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="lifecycle",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        every = [*states(), *release_states()]
        for start in range(0, len(every), 25):
            client.batch_write_item(
                RequestItems={
                    "lifecycle": [
                        {"PutRequest": {"Item": serialize({"pk": name, **item})}}
                        for name, item in every[start : start + 25]
                    ]
                }
            )
        yield client


def dynamodb_allows(client: Any, name: str, transition: Transition) -> bool:
    """Whether DynamoDB lets a write guarded by the transition's expression through, on the state `name`."""
    write = Write("touched = :yes", condition=transition.guard, params={"now": NOW, "owner": ME}, yes=True)
    try:
        client.update_item(TableName="lifecycle", Key=key(name), **write.request())
    except ClientError as exc:
        assert error_code(exc) == "ConditionalCheckFailedException"
        return False
    return True


@pytest.mark.parametrize("transition", lifecycle.TRANSITIONS, ids=lambda t: t.name)
def test_both_renderings_agree_from_every_state(table: Any, transition: Transition) -> None:
    allowed = []
    every = [*states(), *release_states()]
    for name, item in every:
        # Given a record in this state; When the transition's condition is checked both ways
        in_python = transition.guard.holds({"pk": "record", **item}, now=NOW, owner=ME)
        in_dynamodb = dynamodb_allows(table, name, transition)
        # Then they agree
        assert in_python == in_dynamodb, (
            f"{transition.name} from {name}: python {in_python}, dynamodb {in_dynamodb}"
        )
        if in_python:
            allowed.append(name)
    # And the transition is possible from some states and not from others
    assert allowed and len(allowed) < len(every)


def allowed_from(transition: Transition, *, release: bool = False, dry_runs: bool = False) -> set[str]:
    """The states the transition may leave (dry-run records only with `dry_runs`)."""
    every = [*states(), *release_states()] if release else list(states())
    return {
        name
        for name, item in every
        if transition.guard.holds({"pk": "r", **item}, now=NOW, owner=ME) and dry_runs == ("dry run" in name)
    }


def test_begin_runs_what_is_not_over_and_not_held_by_another_attempt() -> None:
    allowed = allowed_from(lifecycle.BEGIN)
    assert "QUEUED, no lease" in allowed
    assert "IN_PROGRESS, expired lease" in allowed
    assert "IN_PROGRESS, live lease of this attempt" in allowed
    assert "FAILED resumable, no lease" in allowed  # a DLQ redrive
    assert "IN_PROGRESS, live lease of another attempt" not in allowed
    assert not any(name.startswith(("ISOLATED,", "SKIPPED,", "FAILED,")) for name in allowed)


def test_end_comes_from_a_record_still_running_or_resumable_only() -> None:
    allowed = allowed_from(lifecycle.END)
    assert {name.split(",")[0] for name in allowed} == {"QUEUED", "IN_PROGRESS"} | {
        f"{status.value} resumable" for status in Status
    }
    assert lifecycle.END.to == {Status.ISOLATED, Status.FAILED, Status.SKIPPED}


def test_only_a_begun_dry_run_ends_checked() -> None:
    assert allowed_from(lifecycle.CHECK) == set()
    assert allowed_from(lifecycle.CHECK, dry_runs=True) == {
        f"IN_PROGRESS dry run, {lease}" for lease in LEASES
    }
    assert lifecycle.CHECK.to == {Status.CHECKED}
    assert Status.CHECKED not in lifecycle.END.to


def test_a_worker_is_lost_only_in_a_begun_last_attempt_whose_lease_expired() -> None:
    # (in either phase: a follow-up on its last receive is watched like a containment)
    assert allowed_from(lifecycle.END_LOST) == {
        f"IN_PROGRESS{resumable}, expired lease, last receive{phase}"
        for resumable in ("", " resumable")
        for phase in ("", ", follow-up")
    }


def test_only_the_containment_attempt_holding_the_lease_hands_over() -> None:
    allowed = allowed_from(lifecycle.HAND_OVER)
    assert allowed and all(
        name.startswith("IN_PROGRESS") and "live lease of this attempt" in name for name in allowed
    )
    assert "IN_PROGRESS, live lease of this attempt" in allowed


def test_a_follow_up_begins_only_once_handed_over_and_not_held_by_another_attempt() -> None:
    allowed = allowed_from(lifecycle.BEGIN_FOLLOW_UP)
    assert allowed and all(name.endswith("follow-up") for name in allowed)
    assert "IN_PROGRESS, no lease, follow-up" in allowed
    assert "IN_PROGRESS, expired lease, last receive, follow-up" in allowed  # a lost follow-up's retry
    assert "FAILED resumable, no lease, follow-up" in allowed  # a redrive of the follow-up DLQ
    assert "IN_PROGRESS, live lease of another attempt, follow-up" not in allowed  # the containment's
    assert "IN_PROGRESS, no lease" not in allowed  # not handed over yet
    assert not any(name.startswith(("ISOLATED,", "SKIPPED,", "FAILED,")) for name in allowed)


def test_a_dead_lettered_record_is_ended_only_while_no_attempt_holds_it() -> None:
    allowed = allowed_from(lifecycle.END_DEAD_LETTERED)
    assert allowed and all(name.startswith(("QUEUED", "IN_PROGRESS")) for name in allowed)
    assert not any("live lease" in name for name in allowed)


def test_abandon_is_for_a_queued_record_only() -> None:
    assert {name.split(",")[0] for name in allowed_from(lifecycle.ABANDON)} == {"QUEUED", "QUEUED resumable"}


def test_active_statuses_are_queued_and_in_progress() -> None:
    assert {s for s in Status if lifecycle.ACTIVE.holds({"status": s.value})} == {
        Status.QUEUED,
        Status.IN_PROGRESS,
    }
    assert lifecycle.ended({"status": "FAILED"}) and not lifecycle.ended(
        {"status": "FAILED", "resumable": True}
    )


def test_the_store_ends_a_record_only_in_the_statuses_of_the_transition(table: Any) -> None:
    # Given a record
    record = IsolationRecord.queued(
        isolation_id="iso-" + "1" * 32,
        source=Source.WEBHOOK,
        target=Target(account_id="111122223333", region="eu-west-1", instance_id="i-0123456789abcdef0"),
    )
    # When the store is asked to end it ISOLATED through end-lost (which only ends records FAILED)
    # Then it refuses before writing anything
    with pytest.raises(ValueError, match="end-lost cannot end a record ISOLATED"):
        IsolationStore("lifecycle", client=table).finish(
            record, Status.ISOLATED, transition=lifecycle.END_LOST
        )
    assert "Item" not in table.get_item(TableName="lifecycle", Key=key(record.isolation_id))


def test_a_release_is_requested_only_of_a_real_record_that_changed_the_instance() -> None:
    allowed = allowed_from(lifecycle.REQUEST_RELEASE, release=True)
    # ISOLATED and RELEASE_FAILED (whatever the lease fields say: ended records hold none), FAILED only
    # with a prior state; never a dry run
    assert {name.split(",")[0] for name in allowed} == {
        "ISOLATED",
        "ISOLATED resumable",
        "RELEASE_FAILED",
        "RELEASE_FAILED resumable",
        "ISOLATED with prior state",
        "RELEASE_FAILED with prior state",
        "FAILED with prior state",
    }
    assert not any("dry_run True" in name for name in allowed)
    assert "FAILED, dry_run None, no lease" not in allowed


def test_a_release_runs_once_at_a_time_and_ends_from_releasing_only() -> None:
    begin = allowed_from(lifecycle.BEGIN_RELEASE)
    assert begin and all(name.startswith("RELEASING") for name in begin)
    assert not any("live lease of another attempt" in name for name in begin)
    for transition in (
        lifecycle.END_RELEASE,
        lifecycle.SUPERSEDE_RELEASE,
        lifecycle.END_RELEASE_DEAD_LETTERED,
    ):
        assert {name.split(",")[0].split(" ")[0] for name in allowed_from(transition)} == {"RELEASING"}
    assert allowed_from(lifecycle.END_RELEASE_LOST) == {
        f"RELEASING{resumable}, expired lease, last receive{phase}"
        for resumable in ("", " resumable")
        for phase in ("", ", follow-up")  # (a released isolation had its follow-up phase)
    }
    assert not any("live lease" in name for name in allowed_from(lifecycle.END_RELEASE_DEAD_LETTERED))
