"""A worker killed where a test wants it, on the message's last allowed receive, and time moved on."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.aws import Faults

if TYPE_CHECKING:
    from tests.conftest import Stack


class Crash(BaseException):
    """The process dies (timeout, out of memory): nothing in the handler gets to run after it."""


def die_on_the_last_receive(stack: Stack, faults: Faults, *calls: str) -> bool:
    """The worker takes the queue's one message on its last allowed receive and dies at the first of
    `calls` (`service.Operation`) it makes; SQS then moves the message to the DLQ. When the calls are
    the follow-up's, the containment ends well and the follow-up dies on its message's last receive
    (that message goes to the follow-up DLQ). Returns whether it died in the follow-up."""

    def die(**_: Any) -> None:
        raise Crash()

    for call in calls:
        faults.hook(f"before-parameter-build.{call}", die)
    [message] = stack.receive()
    message["Attributes"]["ApproximateReceiveCount"] = str(stack.max_receive_count)
    try:
        stack.work([message], follow_up=False)
    except Crash:
        faults.clear()
        stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
        stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=message["Body"])
        return False
    [follow_up] = stack.receive(follow_up=True)
    follow_up["Attributes"]["ApproximateReceiveCount"] = str(stack.max_receive_count)
    with pytest.raises(Crash):
        stack.follow_up([follow_up])
    faults.clear()
    stack.sqs.delete_message(QueueUrl=stack.follow_up_url, ReceiptHandle=follow_up["ReceiptHandle"])
    stack.sqs.send_message(QueueUrl=stack.follow_up_dlq_url, MessageBody=follow_up["Body"])
    return True


def time_passes(monkeypatch: pytest.MonkeyPatch, seconds: float = 600) -> None:
    """Every lease a crashed attempt left has expired (`time.time` moved on for everyone)."""
    real_time = time.time
    monkeypatch.setattr("time.time", lambda: real_time() + seconds)
