"""SQS Lambdas: the containment of a batch (isolation queue), and the follow-up of each isolation
(follow-up queue, `follow_up_handler`). Partial batch failures, per message, on both.

- `lambda_handler` parses every message of the batch, then contains all their isolations at once
  (`worker.batch`); each message then succeeds or fails on its own isolations' outcomes.
- A retryable failure fails only its item (`worker.sqs_batch`: the partial batch response, and the
  message's retry delay, so that IAM propagation is retried in seconds rather than after the queue's
  visibility timeout).
- A message that is not an isolation request fails its item with no delay, so SQS moves it to the DLQ
  after maxReceiveCount receives; it is logged with its message id and never blocks the batch.
- A matched event that isolates nothing (a sample finding) is acknowledged; a matched signal with no
  usable target, and an isolation a signal may not ask for (a Security Hub finding naming another
  account's instance), are recorded FAILED and acknowledged (`worker.messages`).
- A Security Hub custom action asks for several isolations: each is its own attempt; if one must be
  retried the message comes back, and the ones that ended are duplicates then.
- A release message (`POST /isolations/{id}/release`) runs one `worker.release.ReleaseAttempt` (not part
  of the batch's containment): a receive like the others (`worker.receive`), with the same retry and
  last-receive handling.
- `follow_up_handler` runs each follow-up message's `FollowUp`, which ends the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared.ahead_of_time import prepare_ahead_of_time
from shared.config import worker_settings
from shared.lifecycle import Status
from shared.models import FollowUpMessage, IsolationRecord
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore
from worker.batch import contain
from worker.messages import Ignored, InvalidMessage, Unusable, parse, release_of
from worker.receive import Outcome, WorkerDeps
from worker.release import ReleaseAttempt
from worker.runner import Attempt, FollowUp
from worker.sqs_batch import Message, bring_back, messages, partial_response, retry_after


def deps() -> WorkerDeps:
    settings = worker_settings()
    return WorkerDeps(settings=settings, store=IsolationStore(settings.TABLE_NAME))


@dataclass
class _Parsed:
    """One message of a containment batch: what parsing it gave, then its isolations' outcomes."""

    message: Message
    answer: str | None = None
    error: Exception | None = None
    attempts: list[Attempt] = field(default_factory=list)
    outcomes: list[Outcome | Exception] = field(default_factory=list)
    release: ReleaseAttempt | None = None


def _parse(message: Message, worker: WorkerDeps) -> _Parsed:
    parsed = _Parsed(message)
    logger.append_keys(message_id=message.message_id)
    try:
        release = release_of(message.body)
        requested = (
            parse(message.body, container_findings=worker.settings.ISOLATE_CONTAINER_FINDINGS)
            if release is None
            else []
        )
    except InvalidMessage as exc:
        logger.error("not an isolation request: on to the DLQ", extra={"reason": str(exc)})
        retry_after(message, 0, worker.settings.QUEUE_URL)
        parsed.error = exc
        return parsed
    except Ignored as exc:
        logger.info("matched event that isolates nothing: acknowledged", extra={"reason": str(exc)})
        parsed.answer = "ignored"
        return parsed
    except Unusable as exc:
        logger.error("matched signal without a usable target: recorded FAILED", extra={"reason": str(exc)})
        try:
            worker.store.put_record(exc.record)
            worker.announce(exc.record.isolation_id)
        except Exception as unrecorded:
            parsed.error = unrecorded
            return parsed
        parsed.answer = "unusable"
        return parsed
    finally:
        logger.remove_keys(["message_id"])
    if release is not None:
        parsed.release = ReleaseAttempt(release, deps=worker, receive_count=message.receive_count)
    refused = [isolation for isolation in requested if isolation.status is Status.FAILED]
    try:
        _record_refused(refused, worker)
    except Exception as unrecorded:
        parsed.error = unrecorded
        return parsed
    parsed.attempts = [
        Attempt(isolation, deps=worker, receive_count=message.receive_count)
        for isolation in requested
        if isolation.status is not Status.FAILED
    ]
    if refused and not parsed.attempts:
        parsed.answer = "refused"
    return parsed


def _record_refused(refused: list[IsolationRecord], worker: WorkerDeps) -> None:
    """The isolations a signal asked for that are never run (a Security Hub finding naming another
    account's instance): on record, FAILED, with their outcome events."""
    for record in refused:
        logger.error(
            "refused: recorded FAILED",
            extra={
                "isolation_id": record.isolation_id,
                "reason": record.error.message if record.error else None,
            },
        )
        worker.store.put_record(record)
        worker.announce(record.isolation_id)


def contain_messages(batch: list[Message]) -> dict[str, Any]:
    """Every message of the batch parsed, every isolation of the batch contained at once; then each
    message's answer (the partial batch response)."""
    worker = deps()
    parsed = {message.message_id: _parse(message, worker) for message in batch}
    attempts = [attempt for one in parsed.values() for attempt in one.attempts]
    outcomes = iter(contain(attempts, worker))
    for one in parsed.values():
        one.outcomes = [next(outcomes) for _ in one.attempts]
    return partial_response(batch, lambda message: _answer(parsed[message.message_id], worker))


def _answer(parsed: _Parsed, worker: WorkerDeps) -> str:
    """A message's answer: its isolations' outcomes; raises when one of them must be retried."""
    if parsed.error is not None:
        raise parsed.error
    if parsed.answer is not None:
        return parsed.answer
    if parsed.release is not None:
        return _release(parsed.message, parsed.release, worker)
    failures = [outcome for outcome in parsed.outcomes if isinstance(outcome, Exception)]
    if failures:
        # Each attempt has recorded what it could; the message comes back after the retry delay (at once
        # on the last receive: SQS then moves it to the DLQ). Isolations of the same message that ended
        # already are duplicates on the next receive.
        final = parsed.attempts[0].final
        bring_back(parsed.message, failures[0], worker.settings, worker.settings.QUEUE_URL, final=final)
        raise failures[0]
    return ",".join(outcome.value for outcome in parsed.outcomes if isinstance(outcome, Outcome))


def _release(message: Message, release: ReleaseAttempt, worker: WorkerDeps) -> str:
    logger.append_keys(message_id=message.message_id)
    try:
        return release.run().value
    except Exception as exc:
        bring_back(message, exc, worker.settings, worker.settings.QUEUE_URL, final=release.final)
        raise
    finally:
        logger.remove_keys(["message_id"])


def _follow_up(message: Message) -> str:
    """One isolation's follow-up phase."""
    worker = deps()
    queue_url = worker.settings.FOLLOW_UP_QUEUE_URL
    logger.append_keys(message_id=message.message_id)
    try:
        try:
            handed_over = FollowUpMessage.model_validate_json(message.body)
        except ValidationError as exc:
            logger.error("not a follow-up message: on to the DLQ", extra={"reason": str(exc)})
            retry_after(message, 0, queue_url)
            raise InvalidMessage("not a follow-up message") from exc
        follow_up = FollowUp(handed_over, deps=worker, receive_count=message.receive_count)
        try:
            return follow_up.run().value
        except Exception as exc:
            bring_back(message, exc, worker.settings, queue_url, final=follow_up.final)
            raise
    finally:
        logger.remove_keys(["message_id"])


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    batch = messages(event)
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=len(batch))
    return contain_messages(batch)


@logger.inject_lambda_context
@metrics.log_metrics
def follow_up_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    batch = messages(event)
    metrics.add_metric(name="FollowUpsReceived", unit=MetricUnit.Count, value=len(batch))
    return partial_response(batch, _follow_up)


# The containment, hold and follow-up calls; the outcome event.
prepare_ahead_of_time("sts", "ec2", "dynamodb", "sqs", "iam", "autoscaling", "elbv2", "elb", "events")
