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


def die_on_the_last_receive(stack: Stack, faults: Faults, *calls: str) -> None:
    """The worker takes the queue's one message on its last allowed receive and dies at the first of
    `calls` (`service.Operation`) it makes; SQS then moves the message to the DLQ."""

    def die(**_: Any) -> None:
        raise Crash()

    for call in calls:
        faults.hook(f"before-parameter-build.{call}", die)
    [message] = stack.receive()
    message["Attributes"]["ApproximateReceiveCount"] = str(stack.max_receive_count)
    with pytest.raises(Crash):
        stack.work([message])
    faults.clear()
    stack.sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
    stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody=message["Body"])


def time_passes(monkeypatch: pytest.MonkeyPatch, seconds: float = 600) -> None:
    """Every lease a crashed attempt left has expired (`time.time` moved on for everyone)."""
    real_time = time.time
    monkeypatch.setattr("time.time", lambda: real_time() + seconds)
