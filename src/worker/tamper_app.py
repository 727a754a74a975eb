"""SQS Lambda of the tamper queue: CloudTrail calls that may have undone part of an isolation.

Its own queue, dead-letter queue and function (the worker's code, its own event source and concurrency),
so that CloudTrail volume never delays a containment. Each message is one call (`worker.messages.
parse_tamper`); the calls that touch an instance whose latest isolation is ISOLATED become repairs
(`worker.tamper.repairs`), each an isolation of its own (`source` `tamper`) run by the same `Attempt` as
any other, one after another. The rest is acknowledged and logged. Failures are handled as in
`worker.app`: a retryable one brings the message back after its delay, on this queue.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from shared.aws import same_account_client
from shared.config import worker_settings
from shared.errors import RetryableError
from shared.observability import MetricUnit, logger, metrics
from worker.app import MAX_VISIBILITY_SECONDS, _retry_delay, deps
from worker.messages import Ignored, InvalidMessage, parse_tamper
from worker.runner import Attempt
from worker.tamper import repairs

processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> str:
    logger.append_keys(message_id=record.message_id)
    worker = deps()
    receive_count = int(record.attributes.approximate_receive_count or 1)
    try:
        call = parse_tamper(record.body)
        logger.append_keys(event_name=call.event_name, caller_arn=call.caller_arn)
        requested = repairs(call, worker)
    except InvalidMessage as exc:
        logger.error("not a CloudTrail call event: on to the DLQ", extra={"reason": str(exc)})
        _retry_after(record, 0)
        raise
    except Ignored as exc:
        logger.info("call that undoes no isolation: acknowledged", extra={"reason": str(exc)})
        return "ignored"
    except RetryableError as exc:
        logger.info("looked at again later", extra={"reason": exc.message})
        _retry_after(record, _retry_delay(exc, worker.settings, receive_count))
        raise
    except Exception as exc:
        logger.exception("could not find the isolations the call touches: retried")
        _retry_after(record, _retry_delay(exc, worker.settings, receive_count))
        raise
    attempts = [Attempt(isolation, worker, receive_count=receive_count) for isolation in requested]
    try:
        return ",".join(attempt.run().value for attempt in attempts)
    except Exception as exc:
        last = attempts[0].final
        _retry_after(record, 0 if last else _retry_delay(exc, worker.settings, receive_count))
        raise
    finally:
        logger.remove_keys(
            ["isolation_id", "account_id", "instance_id", "source", "step", "event_name", "caller_arn"]
        )


def _retry_after(record: SQSRecord, seconds: int) -> None:
    """Make the failed message visible again on the tamper queue after `seconds`."""
    try:
        same_account_client("sqs").change_message_visibility(
            QueueUrl=worker_settings().TAMPER_QUEUE_URL,
            ReceiptHandle=record.receipt_handle,
            VisibilityTimeout=min(MAX_VISIBILITY_SECONDS, max(0, int(seconds))),
        )
    except Exception:  # the queue's visibility timeout still brings it back
        logger.exception("could not set the retry delay")


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    metrics.add_metric(
        name="TamperCallsReceived", unit=MetricUnit.Count, value=len(event.get("Records") or [])
    )
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
