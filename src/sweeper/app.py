"""Scheduled Lambda (EventBridge Scheduler, every minute by default): the sweeper (`sweeper.sweep`)."""

from __future__ import annotations

from typing import Any

from shared import outcomes
from shared.ahead_of_time import prepare_ahead_of_time
from shared.aws import same_account_client
from shared.config import sweeper_settings
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore
from sweeper.sweep import sweep


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = sweeper_settings()
    store = IsolationStore(settings.TABLE_NAME)
    swept = sweep(
        store,
        same_account_client("sqs"),
        settings.DEAD_LETTER_QUEUE_URL,
        follow_up_dead_letter_queue_url=settings.FOLLOW_UP_DEAD_LETTER_QUEUE_URL,
        tamper_dead_letter_queue_url=settings.TAMPER_DEAD_LETTER_QUEUE_URL,
        peeks=settings.DLQ_PEEKS,
        announce=lambda isolation_id: outcomes.announce(
            store, isolation_id, events=same_account_client("events"), bus=settings.EVENT_BUS_NAME
        ),
        container_findings=settings.ISOLATE_CONTAINER_FINDINGS,
    )
    metrics.add_metric(name="SweptWorkerLost", unit=MetricUnit.Count, value=len(swept.lost))
    metrics.add_metric(name="SweptDeadLettered", unit=MetricUnit.Count, value=len(swept.dead_lettered))
    metrics.add_metric(name="SweptEpisodes", unit=MetricUnit.Count, value=len(swept.episodes_ended))
    if swept.episodes_ended:
        logger.warning(
            "ended the earlier records of released episodes a worker had left",
            extra={"episodes": swept.episodes_ended},
        )
    if swept.backfilled:
        logger.info("filled slots from their records (upgrade)", extra={"slots": swept.backfilled})
    if swept.adopted:
        logger.info("adopted isolation groups from the records (upgrade)", extra={"groups": swept.adopted})
    return {"lost": swept.lost, "dead_lettered": swept.dead_lettered, "peeked": swept.peeked}


prepare_ahead_of_time("dynamodb", "sqs", "events")
