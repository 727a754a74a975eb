"""A fleet incident: many instances sharing one role isolated at once. The role's deny policy is a
read-modify-write (IAM has no conditional write); the role's lease in the service's table serializes it,
so no isolation loses another's entry.

moto answers requests from many threads without AWS's per-request atomicity (its DynamoDB restores a
whole-table copy on a cancelled transaction): each request here is answered under one lock, as if atomic,
which is AWS's guarantee for a single request. The window between reading the role's policy and writing
it back is widened (a few milliseconds after every GetRolePolicy), as a real IAM round trip would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from tests.conftest import Stack, one_request_at_a_time
from tests.integration.test_worker import isolate, record_of, request_isolation
from tests.support.aws import Faults, Member
from tests.support.events import sqs_event

from shared.store.role_leases import role_key
from worker.steps.credentials import INLINE_POLICY_LIMIT, POLICY_NAME, compact_size

FLEET = 60


@pytest.fixture
def atomic_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every moto request (IAM's included: the policy's read-modify-write races there) one at a time."""
    from moto.core.responses import BaseResponse

    one_request_at_a_time(monkeypatch, BaseResponse)


@pytest.fixture
def real_waits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The lease's waits really wait (a little): the holder must get on with it."""
    monkeypatch.setattr("worker.consistency.pause", lambda seconds: time.sleep(min(seconds, 0.05)))
    yield


def _fleet(stack: Stack, member: Member, faults: Faults, size: int) -> tuple[list[str], list[str]]:
    """`size` instances on role "fleet", requested (the worker warmed by one isolation first); their
    instance ids and isolation ids."""
    vpc = member.vpc()
    warm = member.instance(vpc, enis=1, profile="fleet", data_volumes=0)
    assert isolate(stack, member, warm)["status"] == "ISOLATED"
    instances = [member.instance(vpc, enis=1, profile="fleet", data_volumes=0) for _ in range(size)]
    ids = [request_isolation(stack, member, instance) for instance in instances]
    faults.hook("after-call.iam.GetRolePolicy", lambda **_: time.sleep(0.005))
    return [warm, *instances], ids


def _run_at_once(stack: Stack, size: int) -> None:
    """Every queued message handled at the same time, one thread each; then retries until done."""
    from worker.app import contain_messages
    from worker.sqs_batch import Message

    messages: list[dict[str, Any]] = []
    while len(messages) < size:
        batch = stack.receive()
        assert batch, f"{len(messages)} of {size} messages"
        messages.extend(batch)
    one_each = [[Message.of(raw)] for raw in sqs_event(messages, stack.queue_arn)["Records"]]

    def handle(batch: list[Message]) -> None:
        contain_messages(batch)  # a failed message is retried through the queue, as Lambda would

    with ThreadPoolExecutor(max_workers=size) as pool:
        list(pool.map(handle, one_each))
    stack.sqs.purge_queue(QueueUrl=stack.queue_url)
    for message in messages:  # what failed comes back (a retry delay, over at once)
        stack.send(message["Body"])
    stack.drain(rounds=20)


def test_sixty_instances_sharing_a_role_isolated_at_once_are_all_denied(
    stack: Stack, member: Member, faults: Faults, atomic_requests: None, real_waits: None, figures: Any
) -> None:
    # Given 60 instances on one role, each with an isolation queued
    instances, ids = _fleet(stack, member, faults, FLEET)

    # When the worker handles all 60 at the same time
    started = time.monotonic()
    _run_at_once(stack, FLEET)
    seconds = time.monotonic() - started

    # Then every isolation ended ISOLATED and the role's one deny policy lists every instance
    records = [record_of(stack, isolation_id) for isolation_id in ids]
    assert [r["status"] for r in records] == ["ISOLATED"] * FLEET, [r["error"] for r in records]
    denied = member.denied_instances("fleet")
    assert sorted(denied) == sorted(member.instance_arn(i) for i in instances)
    # And the lease is free again
    lease = stack.store.item(role_key(member.account_id, "fleet"))
    assert lease is not None and "lease_owner" not in lease
    size = compact_size(
        member.iam.get_role_policy(RoleName="fleet", PolicyName=POLICY_NAME)["PolicyDocument"]
    )
    retried = sum(1 for r in records if r["attempts"] > 1)
    figures(
        "shared role: 60 instances isolated at once",
        f"{FLEET} isolations at once (+1 before), one role: {len(denied)} instances denied in one policy, "
        f"{retried} waited past the in-process budget and were retried through the queue, {seconds:.1f} s; "
        f"the policy is {size} of the role's {INLINE_POLICY_LIMIT} characters",
    )


def test_without_the_lease_concurrent_isolations_lose_entries(
    stack: Stack,
    member: Member,
    faults: Faults,
    atomic_requests: None,
    real_waits: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the same fleet, and a role lease that never holds anyone back (what IAM alone gives)
    from shared.store import IsolationStore

    monkeypatch.setattr(IsolationStore, "take_role_lease", lambda *args, **kwargs: True)
    monkeypatch.setattr(IsolationStore, "release_role_lease", lambda *args, **kwargs: None)
    instances, _ = _fleet(stack, member, faults, 20)

    # When they are isolated at once
    _run_at_once(stack, 20)

    # Then entries were lost: what the lease is for (each isolation saw its own entry written, so none
    # knows it was overwritten)
    assert len(member.denied_instances("fleet")) < len(instances)
