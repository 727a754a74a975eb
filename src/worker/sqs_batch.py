"""What the worker's three SQS handlers (containment, follow-up, tamper) share: the messages of a batch,
the partial batch response, and how a failed message comes back.

- The event source mappings have `ReportBatchItemFailures`: a handler answers the ids of the messages that
  failed, Lambda deletes the others. A batch whose every message failed answers every id (the same as
  raising, without an invocation error that would also count against the function).
- A failed message comes back after its retry delay, set on the message itself (ChangeMessageVisibility)
  rather than after the queue's visibility timeout: exponential per receive, or the settings' wait for a
  known cause (IAM propagation, an isolation in flight), capped at SQS's 900 s. On its last receive the
  delay is 0: SQS moves it to the DLQ at once.
- A message that only waits (for an isolation in flight to end) can instead be sent again, delayed, as a
  copy that carries when its wait began (`send_again`): SQS counts receives per message, so waiting that
  way spends none of them, and a long follow-up cannot push the message on to the DLQ undone.

Powertools' batch utility does the same job, but its import (asyncio, its event data classes) was the
largest avoidable part of the worker's cold start; this is all the worker needs of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.aws import same_account_client
from shared.config import WorkerSettings
from shared.errors import RetryableError
from shared.observability import logger

#: SQS's longest visibility timeout (and longest message delay).
MAX_VISIBILITY_SECONDS = 900
#: The message attribute of a copy sent again by `send_again`: when its wait began (epoch seconds).
WAITING_SINCE = "ec2-isolation-waiting-since"


@dataclass(frozen=True)
class Message:
    """One SQS message of a Lambda event."""

    message_id: str
    body: str
    receipt_handle: str
    #: How many times SQS has delivered it, this time included.
    receive_count: int
    #: When its wait began, for a copy sent again by `send_again` (epoch seconds).
    waiting_since: float | None = None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Message:
        return cls(
            message_id=str(raw["messageId"]),
            body=str(raw.get("body") or ""),
            receipt_handle=str(raw["receiptHandle"]),
            receive_count=int((raw.get("attributes") or {}).get("ApproximateReceiveCount") or 1),
            waiting_since=_number(
                ((raw.get("messageAttributes") or {}).get(WAITING_SINCE) or {}).get("stringValue")
            ),
        )


def _number(value: object) -> float | None:
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None


def messages(event: dict[str, Any]) -> list[Message]:
    return [Message.of(raw) for raw in event.get("Records") or []]


def partial_response(batch: list[Message], handle: Callable[[Message], object]) -> dict[str, Any]:
    """Each message handled in turn; the ones whose handling raised are the batch's item failures (the
    handler has logged why, and set their retry delay)."""
    failed = []
    for message in batch:
        try:
            handle(message)
        except Exception as exc:
            logger.info(
                "message not done: it comes back",
                extra={"message_id": message.message_id, "error": repr(exc)},
            )
            failed.append({"itemIdentifier": message.message_id})
    return {"batchItemFailures": failed}


def retry_delay(exc: Exception, settings: WorkerSettings, receive_count: int) -> int:
    """Seconds until the retry: the settings' wait for a known cause, else exponential backoff."""
    wait = exc.wait if isinstance(exc, RetryableError) else None
    if wait == "consistency":
        return settings.CONSISTENCY_RETRY_SECONDS
    if wait == "in-flight":
        return settings.IN_FLIGHT_RETRY_SECONDS
    return min(MAX_VISIBILITY_SECONDS, settings.RETRY_BASE_DELAY_SECONDS * 2 ** max(0, receive_count - 1))


def bring_back(
    message: Message, exc: Exception, settings: WorkerSettings, queue_url: str, *, final: bool
) -> None:
    """The failed message's retry delay for `exc`; none on its last receive (on to the DLQ at once)."""
    retry_after(message, 0 if final else retry_delay(exc, settings, message.receive_count), queue_url)


def send_again(message: Message, seconds: int, queue_url: str, *, waiting_since: float) -> bool:
    """A copy of the message on `queue_url`, delivered after `seconds`, carrying `waiting_since`; the
    caller then acknowledges the message itself. False when the copy could not be sent (the caller brings
    the message back instead)."""
    try:
        same_account_client("sqs").send_message(
            QueueUrl=queue_url,
            MessageBody=message.body,
            DelaySeconds=min(MAX_VISIBILITY_SECONDS, max(0, int(seconds))),
            MessageAttributes={WAITING_SINCE: {"DataType": "Number", "StringValue": f"{waiting_since:.3f}"}},
        )
    except Exception:
        logger.exception("could not send the message again: it comes back instead")
        return False
    return True


def retry_after(message: Message, seconds: int, queue_url: str) -> None:
    """Make the failed message visible again after `seconds` (instead of the visibility timeout)."""
    try:
        same_account_client("sqs").change_message_visibility(
            QueueUrl=queue_url,
            ReceiptHandle=message.receipt_handle,
            VisibilityTimeout=min(MAX_VISIBILITY_SECONDS, max(0, int(seconds))),
        )
    except Exception:  # the queue's visibility timeout still brings it back
        logger.exception("could not set the retry delay")
