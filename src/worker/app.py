"""SQS Lambda: one isolation per message, partial batch failures.

- A valid message runs one `Attempt`; a permanent failure is recorded and acknowledged.
- A retryable failure fails only its item; the worker sets the message's visibility to the retry delay
  (exponential per receive, capped at SQS's 900 s), so IAM propagation is retried in seconds rather
  than after the queue's visibility timeout.
- A message that is not an isolation request fails its item with no delay, so SQS moves it to the DLQ
  after maxReceiveCount receives; it is logged with its message id and never blocks the batch.
- A matched event that isolates nothing (a sample finding) is acknowledged; a matched signal with no
  usable target is recorded FAILED and acknowledged (`worker.messages`).
- A release message (`POST /isolations/{id}/release`) runs one `worker.release.ReleaseAttempt`, with the
  same retry and last-receive handling.
- A Security Hub custom action asks for several isolations: they run one after another, each its own
  attempt; if one must be retried the message comes back, and the ones that ended are duplicates then.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from shared.aws import same_account_client
from shared.config import WorkerSettings, worker_settings
from shared.errors import RetryableError
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore
from worker.messages import Ignored, InvalidMessage, Unusable, parse, release_of
from worker.release import ReleaseAttempt
from worker.runner import Attempt, WorkerDeps

MAX_VISIBILITY_SECONDS = 900

processor = BatchProcessor(event_type=EventType.SQS)


def deps() -> WorkerDeps:
    settings = worker_settings()
    return WorkerDeps(settings=settings, store=IsolationStore(settings.TABLE_NAME))


def record_handler(record: SQSRecord) -> str:
    logger.append_keys(message_id=record.message_id)
    worker = deps()
    try:
        release = release_of(record.body)
        requested = (
            parse(record.body, container_findings=worker.settings.ISOLATE_CONTAINER_FINDINGS)
            if release is None
            else []
        )
    except InvalidMessage as exc:
        logger.error("not an isolation request: on to the DLQ", extra={"reason": str(exc)})
        _retry_after(record, 0)
        raise
    except Ignored as exc:
        logger.info("matched event that isolates nothing: acknowledged", extra={"reason": str(exc)})
        return "ignored"
    except Unusable as exc:
        logger.error("matched signal without a usable target: recorded FAILED", extra={"reason": str(exc)})
        worker.store.put_record(exc.record)
        worker.announce(exc.record.isolation_id)
        return "unusable"
    receive_count = int(record.attributes.approximate_receive_count or 1)
    attempts: list[Attempt | ReleaseAttempt] = (
        [ReleaseAttempt(release, worker, receive_count=receive_count)]
        if release is not None
        else [Attempt(isolation, worker, receive_count=receive_count) for isolation in requested]
    )
    try:
        return ",".join(attempt.run().value for attempt in attempts)
    except Exception as exc:
        # `Attempt.run` has recorded what it could; the message comes back after the retry delay (at
        # once on the last receive: SQS then moves it to the DLQ). Isolations of the same message that
        # ended already are duplicates on the next receive.
        last = attempts[0].final
        _retry_after(record, 0 if last else _retry_delay(exc, worker.settings, receive_count))
        raise
    finally:
        logger.remove_keys(["isolation_id", "account_id", "instance_id", "source", "step"])


def _retry_delay(exc: Exception, settings: WorkerSettings, receive_count: int) -> int:
    """Seconds until the retry: the settings' wait for a known cause, else exponential backoff."""
    wait = exc.wait if isinstance(exc, RetryableError) else None
    if wait == "consistency":
        return settings.CONSISTENCY_RETRY_SECONDS
    if wait == "in-flight":
        return settings.IN_FLIGHT_RETRY_SECONDS
    return min(MAX_VISIBILITY_SECONDS, settings.RETRY_BASE_DELAY_SECONDS * 2 ** max(0, receive_count - 1))


def _retry_after(record: SQSRecord, seconds: int) -> None:
    """Make the failed message visible again after `seconds` (instead of the visibility timeout)."""
    try:
        same_account_client("sqs").change_message_visibility(
            QueueUrl=worker_settings().QUEUE_URL,
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=min(MAX_VISIBILITY_SECONDS, max(0, int(seconds))),
        )
    except Exception:  # the queue's visibility timeout still brings it back
        logger.exception("could not set the retry delay")


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=len(event.get("Records") or []))
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
