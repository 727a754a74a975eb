"""The worker's partial batch response (`worker.sqs_batch`), on the SQS event Lambda delivers."""

from __future__ import annotations

import pytest

from local_stack.event_source import batch_event, failed_ids

QUEUE_ARN = "arn:aws:sqs:eu-west-1:111122223333:ec2-isolation-queue"


def _received(bodies: list[str], receive_count: int = 1) -> list[dict[str, object]]:
    """What ReceiveMessage gives, as the event source mapping reads it."""
    return [
        {
            "MessageId": f"m-{i}",
            "ReceiptHandle": f"handle-{i}",
            "Body": body,
            "MD5OfBody": "",
            "Attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": "1"},
        }
        for i, body in enumerate(bodies)
    ]


def test_a_message_is_read_from_the_lambda_record() -> None:
    from worker.sqs_batch import messages

    event = batch_event(_received(['{"a": 1}'], receive_count=3), queue_arn=QUEUE_ARN, region="eu-west-1")
    [message] = messages(event)
    assert (message.message_id, message.body, message.receipt_handle, message.receive_count) == (
        "m-0",
        '{"a": 1}',
        "handle-0",
        3,
    )


@pytest.mark.parametrize(
    ("bodies", "failing"),
    [(["ok", "bad", "ok"], {"m-1"}), (["ok", "ok"], set()), (["bad", "bad"], {"m-0", "m-1"})],
)
def test_only_the_messages_that_raised_come_back(bodies: list[str], failing: set[str]) -> None:
    from worker.sqs_batch import Message, messages, partial_response

    handled = []

    def handle(message: Message) -> str:
        handled.append(message)
        if message.body == "bad":
            raise RuntimeError("boom")
        return "done"

    batch = messages(batch_event(_received(bodies), queue_arn=QUEUE_ARN, region="eu-west-1"))
    response = partial_response(batch, handle)
    # Every message was handled, a failure never stops the batch
    assert len(handled) == len(bodies)
    # And Lambda leaves exactly the failed ones on the queue (a batch that all failed answers every id)
    assert failed_ids(response, [m.message_id for m in batch]) == failing
    assert [item["itemIdentifier"] for item in response["batchItemFailures"]] == sorted(failing)
