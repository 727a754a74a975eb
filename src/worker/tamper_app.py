"""SQS Lambda of the tamper queue: CloudTrail calls that may have undone part of an isolation.

Its own queue, dead-letter queue and function (the worker's code, its own event source and concurrency),
so that CloudTrail volume never delays a containment. Each message is one call (`worker.messages.
parse_tamper`); the calls that touch an instance whose latest isolation is ISOLATED become repairs
(`worker.tamper.repairs`), each an isolation of its own (`source` `tamper`) run by the same `Attempt` as
any other, one after another, each a batch of one (`worker.batch.contain_one`). The rest is acknowledged
and logged. Failures are handled as in `worker.app` (`worker.sqs_batch`): a retryable one brings the
message back after its delay, on this queue.

A call on an instance whose isolation is still in flight waits for it to end (that isolation may have
passed the step the call undid): it is sent again as a delayed copy, which spends none of its receives,
so that a follow-up slower than the queue's retries cannot push it on to the DLQ unrepaired. A wait
longer than any isolation stays in flight (`LONGEST_WAIT_SECONDS`) spends receives again, and ends in
the tamper DLQ and its alarm if it goes on.
"""

from __future__ import annotations

import time
from typing import Any

from shared.ahead_of_time import prepare_ahead_of_time
from shared.errors import RetryableError
from shared.observability import MetricUnit, logger, metrics
from worker.app import deps
from worker.batch import contain_one
from worker.messages import Ignored, InvalidMessage, parse_tamper
from worker.receive import WorkerDeps
from worker.runner import Attempt
from worker.sqs_batch import Message, bring_back, messages, partial_response, retry_after, send_again
from worker.tamper import repairs

#: Longer than an isolation stays in flight: its receives, each after a delay of at most 900 s, or the
#: sweeper ending it.
LONGEST_WAIT_SECONDS = 6 * 3600


def _repair(message: Message) -> str:
    logger.append_keys(message_id=message.message_id)
    try:
        return _repair_call(message)
    finally:
        logger.remove_keys(["message_id", "event_name", "caller_arn"])


def _repair_call(message: Message) -> str:
    worker = deps()
    queue_url = worker.settings.TAMPER_QUEUE_URL
    try:
        call = parse_tamper(message.body)
        logger.append_keys(event_name=call.event_name, caller_arn=call.caller_arn)
        requested = repairs(call, worker)
    except InvalidMessage as exc:
        logger.error("not a CloudTrail call event: on to the DLQ", extra={"reason": str(exc)})
        retry_after(message, 0, queue_url)
        raise
    except Ignored as exc:
        logger.info("call that undoes no isolation: acknowledged", extra={"reason": str(exc)})
        return "ignored"
    except Exception as exc:
        if _waits(message, exc, worker, queue_url):
            return "waiting"
        if isinstance(exc, RetryableError):
            logger.info("looked at again later", extra={"reason": exc.message})
        else:
            logger.exception("could not find the isolations the call touches: retried")
        bring_back(message, exc, worker.settings, queue_url, final=False)
        raise
    attempts = [
        Attempt(isolation, deps=worker, receive_count=message.receive_count) for isolation in requested
    ]
    try:
        return ",".join(contain_one(attempt).value for attempt in attempts)
    except Exception as exc:
        if _waits(message, exc, worker, queue_url):
            return "waiting"
        bring_back(message, exc, worker.settings, queue_url, final=attempts[0].final)
        raise
    finally:
        logger.remove_keys(["isolation_id", "account_id", "instance_id", "source", "step"])


def _waits(message: Message, exc: Exception, worker: WorkerDeps, queue_url: str) -> bool:
    """`exc` says an isolation is in flight on the call's instance, and the call was sent again to wait
    for it (not when it has waited too long already, or the copy could not be sent)."""
    if not (isinstance(exc, RetryableError) and exc.wait == "in-flight"):
        return False
    now = time.time()
    since = min(now, message.waiting_since) if message.waiting_since is not None else now
    if now - since > LONGEST_WAIT_SECONDS:
        logger.warning("waited too long for isolations in flight: its receives count again")
        return False
    if not send_again(message, worker.settings.IN_FLIGHT_RETRY_SECONDS, queue_url, waiting_since=since):
        return False
    logger.info("waits for the isolations in flight: sent again", extra={"reason": exc.message})
    return True


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    batch = messages(event)
    metrics.add_metric(name="TamperCallsReceived", unit=MetricUnit.Count, value=len(batch))
    return partial_response(batch, _repair)


prepare_ahead_of_time("sts", "ec2", "dynamodb", "sqs", "iam", "autoscaling", "elbv2", "elb", "events")
