"""Through the local stack: a worker environment that dies at any point of a message's last receive
leaves a record that the scheduled sweeper ends FAILED, and a DLQ redrive then finishes the isolation.
The local stack runs the sweeper on the template's schedule; the test runs that schedule at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from local_stack.event_source import EnvironmentDied
from local_stack.stack import LocalStack
from shared import aws

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(240)]

#: Where the containment's environment dies: before the attempt's first write, after the network cut,
#: between the hand-over and the follow-up's message (the record handed over, no follow-up queued).
DEATHS = {
    "before the first write": "before-parameter-build.ec2.DescribeInstances",
    "after the network cut": "before-parameter-build.auto-scaling.DescribeAutoScalingInstances",
    "after the hand-over": "before-parameter-build.sqs.SendMessageBatch",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # In this process: the test kills the environment from a hook it registers here.
    with LocalStack(seed_demo=True, region="eu-west-1", worker=False, environments="thread") as local:
        yield local


def _last_receive(stack: LocalStack) -> list[dict[str, Any]]:
    """Receive the queue's one message as often as the redrive policy allows but once: what is
    received next is its last allowed receive."""
    assert stack.provisioned is not None and stack.event_source is not None
    sqs = stack.client("sqs")
    for _ in range(stack.provisioned.max_receive_count - 1):
        [message] = stack.event_source.receive(sqs, wait_seconds=1)
        sqs.change_message_visibility(
            QueueUrl=stack.provisioned.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
    return stack.event_source.receive(sqs, wait_seconds=1)


@pytest.mark.parametrize("where", DEATHS)
def test_a_worker_dying_on_the_last_receive_is_swept_then_redriven(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    assert stack.demo is not None and stack.provisioned is not None and stack.event_source is not None
    import worker.receive

    monkeypatch.setattr(worker.receive, "LEASE_SECONDS", 0)  # its lease is over as soon as it dies
    sqs = stack.client("sqs")
    instance = next(i for i in stack.demo.instances if not i.exempt and i.label != "chaos-terminated")
    # Given a webhook request whose message is on its last allowed receive
    status, accepted = stack.request(
        "POST",
        "/isolate",
        {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region},
    )
    assert status in (200, 202), accepted
    isolation_id = accepted["isolation_id"]
    batch = _last_receive(stack)
    assert json.loads(batch[0]["Body"])["isolation_id"] == isolation_id

    # When the worker's environment dies at this point
    def die(**_: Any) -> None:
        raise EnvironmentDied(where)

    remove = aws.add_event_hook(DEATHS[where], die)
    try:
        outcome = stack.event_source.process(sqs, batch)
    finally:
        remove()
    assert outcome.error and "environment died" in outcome.error
    # and SQS moves the message to the DLQ on its next receive
    sqs.change_message_visibility(
        QueueUrl=stack.provisioned.queue_url, ReceiptHandle=batch[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    assert stack.event_source.receive(sqs, wait_seconds=1) == []

    # Then reads change nothing, and the scheduled sweeper ends it FAILED, saying why
    assert stack.request("GET", f"/isolations/{isolation_id}")[1]["status"] in ("QUEUED", "IN_PROGRESS")
    [swept] = stack.run_schedules()
    assert isolation_id in swept["lost"] + swept["dead_lettered"]
    record = stack.request("GET", f"/isolations/{isolation_id}")[1]
    assert record["status"] == "FAILED" and record["error"]["code"] in ("WorkerLost", "DeadLettered")

    # When the DLQ is redriven
    [dead] = sqs.receive_message(QueueUrl=stack.provisioned.dead_letter_queue_url, WaitTimeSeconds=1)[
        "Messages"
    ]
    sqs.delete_message(QueueUrl=stack.provisioned.dead_letter_queue_url, ReceiptHandle=dead["ReceiptHandle"])
    sqs.send_message(QueueUrl=stack.provisioned.queue_url, MessageBody=dead["Body"])
    assert stack.follow_up_source is not None
    while stack.event_source.poll_once(sqs, wait_seconds=1) is not None:
        pass
    while stack.follow_up_source.poll_once(sqs, wait_seconds=1) is not None:
        pass

    # Then the same isolation ends ISOLATED
    record = stack.request("GET", f"/isolations/{isolation_id}")[1]
    assert record["status"] == "ISOLATED" and record["error"] is None
