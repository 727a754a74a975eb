"""Outcome events: every record that ends (ISOLATED, FAILED, SKIPPED, CHECKED, RELEASED, RELEASE_FAILED)
puts one `EC2 Isolation Outcome` event on the stack's bus, so the security team's other tools hear of it
without polling.

The record is the truth and is written first; the event carries it as `GET /isolations/{id}` serves it,
plus `summary`, one line a person reads (a dry run's says so and counts its steps' outcomes; its
`dry_run` is true, which the NotificationTopicArn rule excludes). Delivery is at least once (a consumer
dedupes on `isolation_id` and `status`). PutEvents reports failures per entry: those are retried a few times;
a failure to publish never changes the outcome: it is logged and counted (`OutcomeNotPublished`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from shared.lifecycle import Status
from shared.models import IsolationRecord, seconds_between
from shared.observability import MetricUnit, logger, metrics

SOURCE = "ec2-isolation"
DETAIL_TYPE = "EC2 Isolation Outcome"
ATTEMPTS = 3
FIRST_DELAY_SECONDS = 0.2


def summary(record: IsolationRecord) -> str:
    """One line: "ISOLATED i-… in 111122223333 eu-west-1 by guardduty in 0.4 s"."""
    line = f"{record.status.value} {record.instance_id} in {record.account_id} {record.region} by {record.source.value}"
    if record.status in (Status.RELEASED, Status.RELEASE_FAILED) and record.release is not None:
        return _release_summary(line.replace(" by ", " (isolated by ", 1) + ")", record)
    if record.dry_run:
        counts = Counter(step.status.value for step in record.steps)
        line += f" (dry run: {', '.join(f'{n} {status}' for status, n in counts.items())})"
    contained = seconds_between(record.created_at, record.contained_at)
    if record.status is Status.ISOLATED and contained is not None:
        line += f" in {contained:.1f} s"
    elif record.contained_at:
        line += " (network cut in place)"
    if record.error is not None:
        line += f": {record.error.code}: {record.error.message}"
    elif record.status is Status.SKIPPED and record.steps:
        line += f": {record.steps[-1].detail}"
    return line


def _release_summary(line: str, record: IsolationRecord) -> str:
    """ "RELEASED i-… in 111122223333 eu-west-1 (isolated by webhook) in 1.2 s, by arn:…"."""
    release = record.release
    assert release is not None
    took = seconds_between(release.requested_at, record.released_at)
    if took is not None:
        line += f" in {took:.1f} s"
    if release.requested_by:
        line += f", asked by {release.requested_by}"
    if release.error is not None:
        line += f": {release.error.code}: {release.error.message}"
    return line


def entry(record: IsolationRecord, bus: str) -> dict[str, Any]:
    detail = {**record.model_dump(mode="json"), "summary": summary(record)}
    resources = (
        [record.target.arn] if record.instance_id.startswith("i-") and record.account_id.isdigit() else []
    )
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPE,
        "Resources": resources,
        "Detail": json.dumps(detail),
        "EventBusName": bus,
    }


def announce(store: Any, isolation_id: str, *, events: Any, bus: str) -> bool:
    """Publish the outcome of the record as it is now stored (read once, after its final write)."""
    try:
        record = store.get(isolation_id)
    except Exception as exc:
        logger.error(
            "outcome event not published: record unreadable",
            extra={"isolation_id": isolation_id, "problem": str(exc)},
        )
        metrics.add_metric(name="OutcomeNotPublished", unit=MetricUnit.Count, value=1)
        return False
    return publish(record, events=events, bus=bus) if record is not None else False


def publish(
    record: IsolationRecord, *, events: Any, bus: str, sleep: Callable[[float], None] = time.sleep
) -> bool:
    """Put the record's outcome event; True once EventBridge took it. Never raises."""
    if put(entry(record, bus), events=events, sleep=sleep):
        return True
    metrics.add_metric(name="OutcomeNotPublished", unit=MetricUnit.Count, value=1)
    return False


def put(pending: dict[str, Any], *, events: Any, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Put one event of the service on its bus (the one way every event of the service is published:
    outcomes, guardrail events), retried a few times as PutEvents fails per entry; True once
    EventBridge took it. Never raises: the caller decides what a failure means."""
    delay = FIRST_DELAY_SECONDS
    problem = ""
    for attempt in range(ATTEMPTS):
        try:
            answer = events.put_events(Entries=[pending])
            if not answer.get("FailedEntryCount"):
                return True
            failed = answer["Entries"][0]
            problem = f"{failed.get('ErrorCode')}: {failed.get('ErrorMessage')}"
        except Exception as exc:  # what the event says stands whatever the bus does
            problem = f"{type(exc).__name__}: {exc}"
        if attempt < ATTEMPTS - 1:
            sleep(delay)
            delay *= 2
    logger.error(
        "event not published",
        extra={
            "detail_type": pending.get("DetailType"),
            "problem": problem,
            "detail": str(pending.get("Detail"))[:1000],
        },
    )
    return False
