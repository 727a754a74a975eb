"""The guardrail Lambdas: `lambda_handler` reads the guardrail queue (CloudTrail calls that could switch
the service off, `guardrail.calls`), `audit_handler` runs the forwarding audit on its schedule
(`guardrail.audit`). Both report through `guardrail.events.report`.

A call that is a guardrail event and cannot be put on the bus fails its message: it comes back after the
queue's visibility timeout and, past the redrive's receives, waits in the guardrail DLQ (an alarm watches
it), never dropped. A message that is no CloudTrail call goes the same way, to be looked at.
"""

from __future__ import annotations

from typing import Any

from guardrail import audit, calls
from guardrail.events import report
from shared.ahead_of_time import prepare_ahead_of_time
from shared.aws import same_account_client
from shared.config import audit_settings, guardrail_settings
from shared.observability import logger, metrics
from worker.messages import Ignored, InvalidMessage
from worker.sqs_batch import Message, messages, partial_response


class NotPublished(Exception):
    """The guardrail event could not be put on the bus: the message is tried again."""


def _judge(message: Message) -> str:
    settings = guardrail_settings()
    try:
        event = calls.judge(message.body, settings)
    except Ignored as exc:
        logger.info("not a guardrail event: acknowledged", extra={"reason": str(exc)})
        return "ignored"
    except InvalidMessage as exc:
        logger.error("not a CloudTrail call: left for the DLQ", extra={"reason": str(exc)})
        raise
    if not report(event, events=same_account_client("events"), bus=settings.EVENT_BUS_NAME):
        raise NotPublished(f"guardrail event {event.event_id} not published: tried again")
    return "reported"


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return partial_response(messages(event), _judge)


@logger.inject_lambda_context
@metrics.log_metrics
def audit_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return audit.run(audit_settings()).summary()


prepare_ahead_of_time("events", "sts", "dynamodb")
