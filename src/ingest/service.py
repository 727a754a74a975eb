"""What the API does, without event shapes: accept a request, report a status.

The request path makes at most two AWS calls: one DynamoDB transaction (the QUEUED record, the
instance's in-flight slot and, with an Idempotency-Key, the key) and one SQS send. A deduplicated
request makes two (the transaction, then a read of the status of the isolation it joins), three
with an Idempotency-Key (its answer is remembered).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import lifecycle
from shared.config import IngestSettings
from shared.errors import IsolationError, RequestNotFound
from shared.models import (
    ISOLATION_ID_PATTERN,
    REGION_PATTERN,
    Accepted,
    ErrorInfo,
    IsolationRecord,
    IsolationRequest,
    ReleaseInfo,
    ReleaseMessage,
    ReleaseRequest,
    Source,
    Status,
    Target,
    WebhookMessage,
    iso8601,
    new_isolation_id,
    utcnow,
)
from shared.observability import logger
from shared.regions import known_region
from shared.store import (
    Created,
    IdempotencyClaim,
    InstanceBusy,
    IsolationStore,
    Joined,
    NotReleasable,
    ReleaseEnd,
    Replayed,
)

_ISOLATION_ID = re.compile(ISOLATION_ID_PATTERN)
_REGION = re.compile(REGION_PATTERN)


def region_faults(body: Mapping[str, Any], extra_regions: frozenset[str]) -> list[dict[str, Any]]:
    """The request's region, when it has a region's form, must be one of the partition's (or one the
    deployment admits): checked with the body's other rules, so that every fault is listed at once."""
    region = body.get("region")
    if isinstance(region, str) and _REGION.fullmatch(region) and not known_region(region, extra_regions):
        return [{"type": "unknown_region", "loc": ("region",), "input": region}]
    return []


class AccountNotAllowed(IsolationError):
    def __init__(self, account_id: str) -> None:
        super().__init__("AccountNotAllowed", f"account {account_id} is not in the allowed accounts")


class IdempotencyConflict(IsolationError):
    def __init__(self) -> None:
        super().__init__("IdempotencyConflict", "this Idempotency-Key was used with a different request body")


class EnqueueFailed(IsolationError):
    """The request was valid but could not be queued; nothing is left half-done (retry it)."""


class NotReleasableNow(IsolationError):
    """A release refused: the record's `status` does not allow it, or `latest` is the episode's latest
    record (release through that one), or `holder` holds the instance (an isolation in flight)."""

    def __init__(
        self,
        message: str,
        *,
        status: Status | None = None,
        latest: str | None = None,
        holder: str | None = None,
    ) -> None:
        super().__init__("NotReleasable", message)
        self.status = status
        self.latest = latest
        self.holder = holder


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, Any]


def accept(
    request: IsolationRequest,
    *,
    settings: IngestSettings,
    store: IsolationStore,
    sqs: Any,
    idempotency_key: str | None = None,
) -> Answer:
    if not settings.account_allowed(request.account_id):
        raise AccountNotAllowed(request.account_id)

    record = IsolationRecord.queued(
        isolation_id=new_isolation_id(),
        source=Source.WEBHOOK,
        target=Target.of(request),
        reason=request.reason,
        requested_by=request.requested_by,
        dry_run=request.dry_run,
    )
    accepted = Answer(202, _accepted(record.isolation_id, Status.QUEUED).body())
    claim = _claim(idempotency_key, request, accepted, settings) if idempotency_key is not None else None

    # A dry run takes no instance slot: it never joins, and is never joined by, a real isolation.
    outcome = store.create_queued(
        record, lease_seconds=settings.ACTIVE_LEASE_SECONDS, idempotency=claim, slot=not request.dry_run
    )
    if isinstance(outcome, Replayed):
        return _replay(outcome, claim)
    if isinstance(outcome, Joined):
        joined = Answer(200, _accepted(outcome.isolation_id, outcome.status, deduplicated=True).body())
        if claim is None:
            return joined
        remembered = store.put_idempotency(_with_answer(claim, joined))
        return joined if remembered is None else _replay(remembered, claim)
    if not isinstance(outcome, Created):  # a uuid4 collision: cannot happen, never answer wrongly
        raise EnqueueFailed("IdConflict", "could not allocate an isolation id; retry the request")

    _enqueue(record, request, settings=settings, store=store, sqs=sqs, claim=claim)
    logger.info("isolation queued", extra={"isolation_id": record.isolation_id})
    return accepted


#: What a release can start from (the record's status), for the 409's message.
RELEASABLE_FROM = "ISOLATED, FAILED with a prior_state (it changed part of the instance) or RELEASE_FAILED"


def release(
    isolation_id: str,
    request: ReleaseRequest,
    *,
    caller_arn: str | None,
    settings: IngestSettings,
    store: IsolationStore,
    sqs: Any,
) -> Answer:
    """Record the release request on the record (RELEASING, the instance's slot taken for it) and enqueue
    it. `caller_arn`: the caller's authenticated IAM ARN (deployed, IAM authorization), which is then
    `requested_by` whatever the body says."""
    record = status(isolation_id, store=store)
    releasable = lifecycle.RELEASABLE.holds(record.model_dump(mode="json"))
    latest = store.latest_of_episode(record) if releasable else None
    if latest is not None and latest.isolation_id != record.isolation_id:
        raise NotReleasableNow(
            f"{latest.isolation_id} ({latest.status.value}) is the instance's latest isolation: release the "
            "episode through it",
            status=record.status,
            latest=latest.isolation_id,
        )
    info = ReleaseInfo(
        requested_by=caller_arn or request.requested_by, reason=request.reason, requested_at=iso8601(utcnow())
    )
    outcome = store.request_release(record, info, lease_seconds=settings.ACTIVE_LEASE_SECONDS)
    if isinstance(outcome, NotReleasable):
        raise NotReleasableNow(_refusal(outcome), status=outcome.status)
    if isinstance(outcome, InstanceBusy):
        raise NotReleasableNow(
            f"isolation {outcome.holder} of the instance is in flight: release once it has ended",
            status=record.status,
            holder=outcome.holder,
        )
    message = ReleaseMessage(isolation_id=record.isolation_id, requested_at=info.requested_at)
    try:
        sqs.send_message(QueueUrl=settings.QUEUE_URL, MessageBody=json.dumps(message.model_dump(mode="json")))
    except (ClientError, BotoCoreError) as exc:
        logger.exception("enqueue failed", extra={"isolation_id": record.isolation_id})
        error = ErrorInfo(code="EnqueueFailed", message=f"the release could not be queued: {exc}")
        if store.end_release(outcome.record, Status.RELEASE_FAILED, error=error) is not ReleaseEnd.ENDED:
            logger.error(
                "the unqueued release could not be ended", extra={"isolation_id": record.isolation_id}
            )
        raise EnqueueFailed("EnqueueFailed", "the release could not be queued; retry it") from exc
    logger.info("release queued", extra={"isolation_id": record.isolation_id})
    return Answer(202, _accepted(record.isolation_id, Status.RELEASING).body())


def _refusal(refused: NotReleasable) -> str:
    record = refused.record
    if refused.dry_run:
        return "a dry run changed nothing: there is nothing to release"
    if record.status is Status.FAILED:
        return "the isolation FAILED before it changed anything (no prior_state): there is nothing to release"
    return f"the isolation is {record.status.value}: only {RELEASABLE_FROM} can be released"


def status(isolation_id: str, *, store: IsolationStore) -> IsolationRecord:
    # Only well-formed ids reach the table, so no other kind of item can be read through this route.
    if not _ISOLATION_ID.fullmatch(isolation_id):
        raise RequestNotFound(isolation_id)
    record = store.get(isolation_id)
    if record is None:
        raise RequestNotFound(isolation_id)
    return record


def history(instance_id: str, account_id: str | None, *, store: IsolationStore) -> list[IsolationRecord]:
    return store.list_for_instance(instance_id, account_id)


class BadCursor(IsolationError):
    def __init__(self) -> None:
        super().__init__("invalid_cursor", "next must be a cursor this API answered, passed back unchanged")


#: A cursor holds only a position in the list (a record's creation time and id): whatever it says, a
#: page reads the same index with the same filter, so a forged one cannot reach anything else.
_POSITION = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z#iso-[0-9a-f]{32}$")


def recent(
    limit: int, status: Status | None, cursor: str | None, *, store: IsolationStore
) -> tuple[list[IsolationRecord], str | None]:
    """The newest isolations of every instance, a page at a time, with the cursor of the next page."""
    records, next_position = store.recent(limit, status=status, before=_position(cursor) if cursor else None)
    return records, _cursor(next_position) if next_position else None


#: GET /isolations' parameters that page the list of every instance: none goes with instance_id.
_PAGING = ("status", "limit", "next")


def list_query_faults(query: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rules of `GET /isolations`' parameters together, and its cursor: checked with each parameter's
    own rules, so that every fault is listed at once. pydantic-shaped errors, their messages written."""
    if "instance_id" in query:
        return [_misplaced(name, "only without instance_id") for name in _PAGING if name in query]
    faults = [_misplaced("account_id", "only with instance_id")] if "account_id" in query else []
    if isinstance(query.get("next"), str):
        try:
            _position(query["next"])
        except BadCursor as exc:
            faults.append({"type": exc.code, "loc": ("next",), "msg": exc.message})
    return faults


def _misplaced(name: str, where: str) -> dict[str, Any]:
    return {"type": "misplaced", "loc": (name,), "msg": f"{name} goes {where}"}


def _cursor(position: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": position}).encode()).decode().rstrip("=")


def _position(cursor: str) -> str:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise BadCursor() from exc
    position = decoded.get("before") if isinstance(decoded, dict) else None
    if not isinstance(position, str) or not _POSITION.fullmatch(position):
        raise BadCursor()
    return position


def _accepted(isolation_id: str, state: Status, *, deduplicated: bool | None = None) -> Accepted:
    return Accepted(
        isolation_id=isolation_id,
        status=state,
        status_url=f"/isolations/{isolation_id}",
        deduplicated=deduplicated,
    )


def _claim(key: str, request: IsolationRequest, answer: Answer, settings: IngestSettings) -> IdempotencyClaim:
    return IdempotencyClaim(
        key_hash=hashlib.sha256(key.encode()).hexdigest(),
        body_hash=hashlib.sha256(json.dumps(request.wire(), sort_keys=True).encode()).hexdigest(),
        status_code=answer.status_code,
        answer=answer.body,
        ttl_seconds=settings.IDEMPOTENCY_TTL_SECONDS,
    )


def _with_answer(claim: IdempotencyClaim, answer: Answer) -> IdempotencyClaim:
    return IdempotencyClaim(
        claim.key_hash, claim.body_hash, answer.status_code, answer.body, claim.ttl_seconds
    )


def _replay(replayed: Replayed, claim: IdempotencyClaim | None) -> Answer:
    if claim is None or replayed.body_hash != claim.body_hash:
        raise IdempotencyConflict()
    return Answer(replayed.status_code, replayed.answer)


def _enqueue(
    record: IsolationRecord,
    request: IsolationRequest,
    *,
    settings: IngestSettings,
    store: IsolationStore,
    sqs: Any,
    claim: IdempotencyClaim | None,
) -> None:
    message = WebhookMessage(isolation_id=record.isolation_id, request=request)
    body = {**message.model_dump(mode="json"), "request": request.wire()}
    try:
        sqs.send_message(QueueUrl=settings.QUEUE_URL, MessageBody=json.dumps(body))
    except (ClientError, BotoCoreError) as exc:
        logger.exception("enqueue failed", extra={"isolation_id": record.isolation_id})
        error = ErrorInfo(code="EnqueueFailed", message=f"the request could not be queued: {exc}")
        store.abandon(record, error, claim.key_hash if claim else None)
        raise EnqueueFailed("EnqueueFailed", "the request could not be queued; retry it") from exc
