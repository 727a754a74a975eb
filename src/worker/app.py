"""SQS Lambdas: the containment of a batch (isolation queue), and the follow-up of each isolation
(follow-up queue, `follow_up_handler`). Partial batch failures, per message, on both.

- `lambda_handler` parses every message of the batch, then contains all their isolations at once
  (`worker.batch`); each message then succeeds or fails on its own isolations' outcomes.
- A retryable failure fails only its item; the worker sets the message's visibility to the retry delay
  (exponential per receive, capped at SQS's 900 s), so IAM propagation is retried in seconds rather
  than after the queue's visibility timeout.
- A message that is not an isolation request fails its item with no delay, so SQS moves it to the DLQ
  after maxReceiveCount receives; it is logged with its message id and never blocks the batch.
- A matched event that isolates nothing (a sample finding) is acknowledged; a matched signal with no
  usable target is recorded FAILED and acknowledged (`worker.messages`).
- A Security Hub custom action asks for several isolations: each is its own attempt; if one must be
  retried the message comes back, and the ones that ended are duplicates then.
- A release message (`POST /isolations/{id}/release`) runs one `worker.release.ReleaseAttempt` (not part
  of the batch's containment), with the same retry and last-receive handling.
- `follow_up_handler` runs each follow-up message's `FollowUp`, which ends the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from pydantic import ValidationError

from shared.aws import same_account_client
from shared.config import WorkerSettings, worker_settings
from shared.errors import RetryableError
from shared.models import FollowUpMessage
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore
from worker.batch import contain
from worker.messages import Ignored, InvalidMessage, Unusable, parse, release_of
from worker.release import ReleaseAttempt
from worker.runner import Attempt, FollowUp, Outcome, WorkerDeps

MAX_VISIBILITY_SECONDS = 900

processor = BatchProcessor(event_type=EventType.SQS)
follow_up_processor = BatchProcessor(event_type=EventType.SQS)


def deps() -> WorkerDeps:
    settings = worker_settings()
    return WorkerDeps(settings=settings, store=IsolationStore(settings.TABLE_NAME))


@dataclass
class _Message:
    """One message of a containment batch: what parsing it gave, then its isolations' outcomes."""

    record: SQSRecord
    answer: str | None = None
    error: Exception | None = None
    attempts: list[Attempt] = field(default_factory=list)
    outcomes: list[Outcome | Exception] = field(default_factory=list)
    release: ReleaseAttempt | None = None


def _parse(record: SQSRecord, worker: WorkerDeps) -> _Message:
    message = _Message(record)
    logger.append_keys(message_id=record.message_id)
    try:
        release = release_of(record.body)
        requested = (
            parse(record.body, container_findings=worker.settings.ISOLATE_CONTAINER_FINDINGS)
            if release is None
            else []
        )
    except InvalidMessage as exc:
        logger.error("not an isolation request: on to the DLQ", extra={"reason": str(exc)})
        _retry_after(record, 0, worker.settings.QUEUE_URL)
        message.error = exc
        return message
    except Ignored as exc:
        logger.info("matched event that isolates nothing: acknowledged", extra={"reason": str(exc)})
        message.answer = "ignored"
        return message
    except Unusable as exc:
        logger.error("matched signal without a usable target: recorded FAILED", extra={"reason": str(exc)})
        try:
            worker.store.put_record(exc.record)
            worker.announce(exc.record.isolation_id)
        except Exception as unrecorded:
            message.error = unrecorded
            return message
        message.answer = "unusable"
        return message
    finally:
        logger.remove_keys(["message_id"])
    receive_count = int(record.attributes.approximate_receive_count or 1)
    if release is not None:
        message.release = ReleaseAttempt(release, worker, receive_count=receive_count)
    message.attempts = [Attempt(isolation, worker, receive_count=receive_count) for isolation in requested]
    return message


def _contain_batch(records: list[SQSRecord]) -> dict[str, _Message]:
    """Every message of the batch parsed, then every isolation of the batch contained at once."""
    worker = deps()
    messages = [_parse(record, worker) for record in records]
    attempts = [attempt for message in messages for attempt in message.attempts]
    outcomes = iter(contain(attempts, worker))
    for message in messages:
        message.outcomes = [next(outcomes) for _ in message.attempts]
    return {message.record.message_id: message for message in messages}


class _Batch:
    """The batch in progress, for the record handler Powertools calls once per message."""

    messages: dict[str, _Message] = {}  # noqa: RUF012 - one batch per invocation


def record_handler(record: SQSRecord) -> str:
    """A message's answer: its isolations' outcomes; raises when one of them must be retried."""
    message = _Batch.messages.get(record.message_id) or _contain_batch([record])[record.message_id]
    if message.error is not None:
        raise message.error
    if message.answer is not None:
        return message.answer
    if message.release is not None:
        return _release(record, message.release)
    failures = [outcome for outcome in message.outcomes if isinstance(outcome, Exception)]
    if failures:
        # Each attempt has recorded what it could; the message comes back after the retry delay (at once
        # on the last receive: SQS then moves it to the DLQ). Isolations of the same message that ended
        # already are duplicates on the next receive.
        worker = worker_settings()
        last = message.attempts[0].final
        receive_count = message.attempts[0].receive_count
        _retry_after(
            record, 0 if last else _retry_delay(failures[0], worker, receive_count), worker.QUEUE_URL
        )
        raise failures[0]
    return ",".join(outcome.value for outcome in message.outcomes if isinstance(outcome, Outcome))


def _release(record: SQSRecord, release: ReleaseAttempt) -> str:
    settings = worker_settings()
    logger.append_keys(message_id=record.message_id)
    try:
        return release.run().value
    except Exception as exc:
        delay = 0 if release.final else _retry_delay(exc, settings, release.receive_count)
        _retry_after(record, delay, settings.QUEUE_URL)
        raise
    finally:
        logger.remove_keys(["isolation_id", "account_id", "instance_id", "source", "step", "message_id"])


def follow_up_record_handler(record: SQSRecord) -> str:
    """One isolation's follow-up phase."""
    worker = deps()
    logger.append_keys(message_id=record.message_id)
    try:
        try:
            message = FollowUpMessage.model_validate_json(record.body)
        except ValidationError as exc:
            logger.error("not a follow-up message: on to the DLQ", extra={"reason": str(exc)})
            _retry_after(record, 0, worker.settings.FOLLOW_UP_QUEUE_URL)
            raise InvalidMessage("not a follow-up message") from exc
        receive_count = int(record.attributes.approximate_receive_count or 1)
        follow_up = FollowUp(message.record(), worker, receive_count=receive_count)
        try:
            return follow_up.run().value
        except Exception as exc:
            delay = 0 if follow_up.final else _retry_delay(exc, worker.settings, receive_count)
            _retry_after(record, delay, worker.settings.FOLLOW_UP_QUEUE_URL)
            raise
    finally:
        logger.remove_keys(["message_id"])


def _retry_delay(exc: Exception, settings: WorkerSettings, receive_count: int) -> int:
    """Seconds until the retry: the settings' wait for a known cause, else exponential backoff."""
    wait = exc.wait if isinstance(exc, RetryableError) else None
    if wait == "consistency":
        return settings.CONSISTENCY_RETRY_SECONDS
    if wait == "in-flight":
        return settings.IN_FLIGHT_RETRY_SECONDS
    return min(MAX_VISIBILITY_SECONDS, settings.RETRY_BASE_DELAY_SECONDS * 2 ** max(0, receive_count - 1))


def _retry_after(record: SQSRecord, seconds: int, queue_url: str) -> None:
    """Make the failed message visible again after `seconds` (instead of the visibility timeout)."""
    try:
        same_account_client("sqs").change_message_visibility(
            QueueUrl=queue_url,
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=min(MAX_VISIBILITY_SECONDS, max(0, int(seconds))),
        )
    except Exception:  # the queue's visibility timeout still brings it back
        logger.exception("could not set the retry delay")


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    records = [SQSRecord(raw) for raw in event.get("Records") or []]
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=len(records))
    _Batch.messages = _contain_batch(records)
    try:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        _Batch.messages = {}


@logger.inject_lambda_context
@metrics.log_metrics
def follow_up_handler(event: dict[str, Any], context: Any) -> Any:
    metrics.add_metric(name="FollowUpsReceived", unit=MetricUnit.Count, value=len(event.get("Records") or []))
    return process_partial_response(
        event=event,
        record_handler=follow_up_record_handler,
        processor=follow_up_processor,
        context=context,
    )
