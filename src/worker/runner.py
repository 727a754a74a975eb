"""Runs one isolation: opens its record, contains the instance, records every outcome as it happens.

Order on the path to containment (warm: credentials and isolation group cached):
DescribeInstances → the record's IN_PROGRESS write with `prior_state` → ModifyNetworkInterfaceAttribute
per interface (→ `contained_at`). Then the instance profile, termination protection and tags.

Errors: a `PermanentError` ends the record FAILED and the message is acknowledged; a `RetryableError`
propagates (SQS redelivers), except on the last allowed receive, where the record ends FAILED with the
last error first (marked resumable: a DLQ redrive runs it again). If the worker dies during the last
receive, a reader ends the record FAILED (`WorkerLost`) once its lease has expired (see
`shared.store`). Nothing stays QUEUED or IN_PROGRESS forever.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from botocore.exceptions import BotoCoreError, ClientError

from shared.aws import (
    THROTTLING_CODES,
    TRANSIENT_CODES,
    AccountSession,
    classify,
    forget_session,
    session_for_account,
)
from shared.config import WorkerSettings
from shared.errors import IsolationError, PermanentError, RetryableError
from shared.models import (
    EXEMPT_TAG,
    ErrorInfo,
    IsolationRecord,
    Status,
    StepRecord,
    StepStatus,
    Target,
    iso8601,
    utcnow,
)
from shared.observability import MetricUnit, logger, metrics
from shared.store import Coalesced, Exists, IsolationStore, Joined, LeaseHeld, RecordEnded, RecordMissing
from worker.consistency import until_consistent
from worker.instance import InstanceFacts, describe
from worker.messages import Job
from worker.steps import PLAN, StepContext, StepOutcome

#: How long one attempt holds the record (longer than the worker's 60 s timeout).
LEASE_SECONDS = 120
#: How long the last receive keeps trying to write its FAILED outcome when its own table throttles.
FINAL_WRITE_BUDGET_SECONDS = 4.0


class Outcome(StrEnum):
    ISOLATED = "isolated"
    FAILED = "failed"
    SKIPPED = "skipped"
    JOINED = "joined"
    COALESCED = "coalesced"
    DUPLICATE = "duplicate"


@dataclass
class WorkerDeps:
    settings: WorkerSettings
    store: IsolationStore
    sessions: Callable[[Target], AccountSession] | None = None
    sleep: Callable[[float], None] | None = None

    def session(self, target: Target) -> AccountSession:
        if self.sessions is not None:
            return self.sessions(target)
        return session_for_account(
            target.account_id,
            target.region,
            self.settings.TARGET_ROLE_NAME,
            external_id=self.settings.EXTERNAL_ID,
        )


def run_isolation(job: Job, deps: WorkerDeps, *, receive_count: int = 1) -> Outcome:
    logger.append_keys(
        isolation_id=job.isolation_id,
        account_id=job.target.account_id,
        instance_id=job.target.instance_id,
        source=job.source.value,
    )
    # The record as the message describes it: what an error path ends (id and target are all it uses).
    record = IsolationRecord.queued(
        isolation_id=job.isolation_id,
        source=job.source,
        target=job.target,
        reason=job.reason,
        requested_by=job.requested_by,
        trigger=job.trigger,
    )
    owner = uuid.uuid4().hex
    final = receive_count >= deps.settings.MAX_RECEIVE_COUNT
    try:
        outcome = _attempt(job, record, deps, owner, final=final)
    except PermanentError as error:
        logger.warning("isolation failed", extra={"code": error.code, "error": error.message})
        deps.store.put_record(record)  # a message that did not come through ingest may have none yet
        deps.store.finish(record, Status.FAILED, error=ErrorInfo(code=error.code, message=error.message))
        _count(Outcome.FAILED)
        return Outcome.FAILED
    except RetryableError as error:
        if _is_access_expiry(error):
            forget_session(job.target.account_id, job.target.region, deps.settings.TARGET_ROLE_NAME)
        if final:
            logger.error("retries exhausted", extra={"code": error.code, "receive_count": receive_count})
            message = f"gave up after {receive_count} attempts; last error: {error.message}"
            _end_failed_for_good(record, ErrorInfo(code=error.code, message=message), deps)
            _count(Outcome.FAILED)
        else:
            logger.warning("will retry", extra={"code": error.code, "receive_count": receive_count})
            deps.store.release_lease(record.isolation_id, owner)
        raise
    _count(outcome)
    return outcome


def _end_failed_for_good(record: IsolationRecord, error: ErrorInfo, deps: WorkerDeps) -> None:
    """End the record FAILED (resumable by a DLQ redrive) on the message's last receive: the last
    chance to, so a throttled write is tried again for a few seconds (its own table is what failed,
    often)."""

    def end() -> None:
        deps.store.put_record(record)  # a trigger's record may not exist yet
        deps.store.finish(record, Status.FAILED, error=error, resumable=True)

    until_consistent(
        end,
        codes=THROTTLING_CODES | TRANSIENT_CODES,
        budget_seconds=FINAL_WRITE_BUDGET_SECONDS,
        sleep=deps.sleep,
        what="the final FAILED write",
    )


def _attempt(job: Job, fresh: IsolationRecord, deps: WorkerDeps, owner: str, *, final: bool) -> Outcome:
    try:
        opened = _open_record(job, fresh, deps)
        if isinstance(opened, Outcome):
            return opened
        return _isolate(job, opened, deps, owner, final=final)
    except (ClientError, BotoCoreError) as exc:
        # Target-account errors are classified where they happen; what is left comes from the
        # service's own table, and is retried (and, on the last receive, recorded) like any transient.
        error = classify(exc)
        raise RetryableError(error.code, f"isolation record: {error.message}") from exc


def _open_record(job: Job, fresh: IsolationRecord, deps: WorkerDeps) -> IsolationRecord | Outcome:
    """The record this message runs, or the reason it runs nothing."""
    store, settings = deps.store, deps.settings
    if job.is_trigger:
        created = store.create_queued(
            fresh,
            lease_seconds=settings.ACTIVE_LEASE_SECONDS,
            coalesce_window_seconds=settings.COALESCE_WINDOW_SECONDS,
        )
        if isinstance(created, Joined):
            logger.info("joined the isolation in flight", extra={"joined": created.isolation_id})
            return Outcome.JOINED
        if isinstance(created, Coalesced):
            _record_coalesced(fresh, created.isolation_id, store)
            return Outcome.COALESCED
        if isinstance(created, Exists) and created.record.status in (Status.ISOLATED, Status.SKIPPED):
            return _duplicate(created.record, store)
        # (a FAILED one may be a DLQ redrive: `begin_attempt` decides)
        return created.record if isinstance(created, Exists) else fresh
    # A webhook's record was written by ingest: no read here; `begin_attempt`'s condition tells
    # whether it still has something to do.
    return fresh


def _duplicate(record: IsolationRecord, store: IsolationStore) -> Outcome:
    logger.info("record already ended: nothing to do", extra={"status": record.status.value})
    # The record's end frees the instance's slot in the same transaction; this makes sure of it for a
    # record that ended some other way, so later requests never join an isolation that is over.
    store.release_slot(record)
    return Outcome.DUPLICATE


def _begin(record: IsolationRecord, deps: WorkerDeps, owner: str, facts: InstanceFacts, final: bool) -> None:
    def begin() -> None:
        deps.store.begin_attempt(
            record.isolation_id,
            owner=owner,
            lease_seconds=LEASE_SECONDS,
            prior_state=facts.prior_state(),
            final=final,
        )

    try:
        begin()
    except RecordMissing:
        # A webhook-shaped message that did not come through ingest: it gets its record now.
        deps.store.put_record(record)
        begin()


def _record_coalesced(fresh: IsolationRecord, earlier_id: str, store: IsolationStore) -> None:
    step = StepRecord(
        name="coalesced",
        status=StepStatus.ALREADY,
        detail=f"isolated less than the coalesce window ago by {earlier_id}",
        at=iso8601(utcnow()),
    )
    store.put_record(fresh.model_copy(update={"status": Status.ISOLATED, "steps": [step]}))
    logger.info("coalesced with a recent isolation", extra={"earlier": earlier_id})


def _isolate(job: Job, record: IsolationRecord, deps: WorkerDeps, owner: str, *, final: bool) -> Outcome:
    settings, store = deps.settings, deps.store
    if not settings.account_allowed(job.target.account_id):
        raise PermanentError(
            "AccountNotAllowed", f"account {job.target.account_id} is not in the allowed accounts"
        )
    try:
        account = deps.session(job.target)
        facts = describe(account.client("ec2"), job.target)
    except (ClientError, BotoCoreError) as exc:
        raise classify(exc) from exc

    if job.is_trigger and facts.tags.get(EXEMPT_TAG, "").strip().lower() == "true":
        skip = StepOutcome.skipped("check-exemption", f"instance tagged {EXEMPT_TAG}=true: left untouched")
        store.finish(record, Status.SKIPPED, extra_steps=[skip.record()])
        return Outcome.SKIPPED

    try:
        _begin(record, deps, owner, facts, final)
    except RecordEnded as ended:
        return _duplicate(ended.record, deps.store)
    except LeaseHeld as exc:
        raise RetryableError(
            "IsolationInProgress",
            "another worker is running this isolation",
            wait="in-flight",
        ) from exc

    ctx = StepContext(
        isolation_id=record.isolation_id,
        source=record.source,
        target=job.target,
        facts=facts,
        account=account,
        settings=settings,
        sleep=deps.sleep,
    )
    # Outcomes are written as they happen, with two exceptions that save writes without losing
    # anything: nothing is written between the prior-state write and the network cut (the steps before
    # it ride with `contained_at`), and the last step rides with the final status. A failed step is
    # written at once with whatever rode along.
    unwritten: list[StepRecord] = []
    contained = False
    for step_class in PLAN:
        step = step_class()
        logger.append_keys(step=step.name)
        try:
            outcome = step.run(ctx)
        except (ClientError, BotoCoreError, IsolationError) as exc:
            error = classify(exc, context=step.name)
            _record_failed_step(store, record.isolation_id, unwritten, step.name, error)
            raise error from exc
        metrics.add_metric(name=f"Step-{outcome.status.value}", unit=MetricUnit.Count, value=1)
        unwritten.append(outcome.record())
        if step.contains:
            contained_at = iso8601(utcnow())
            store.add_steps(record.isolation_id, unwritten, contained_at=contained_at)
            unwritten, contained = [], True
            logger.info("contained", extra={"contained_at": contained_at})
        elif contained and outcome.status is not StepStatus.ALREADY and step_class is not PLAN[-1]:
            store.add_steps(record.isolation_id, unwritten)
            unwritten = []
    logger.remove_keys(["step"])
    store.finish(record, Status.ISOLATED, extra_steps=unwritten)
    return Outcome.ISOLATED


def _record_failed_step(
    store: IsolationStore, isolation_id: str, unwritten: list[StepRecord], name: str, error: IsolationError
) -> None:
    retry = " (will retry)" if isinstance(error, RetryableError) else ""
    failed = StepOutcome.failed(name, f"{error.code}: {error.message}{retry}").record()
    try:
        store.add_steps(isolation_id, [*unwritten, failed])
    except (ClientError, BotoCoreError):  # the original error matters more; it is logged and raised
        logger.exception("could not record the failed step")


def _is_access_expiry(error: IsolationError) -> bool:
    return error.code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired")


def _count(outcome: Outcome) -> None:
    metrics.add_metric(name=f"Isolation-{outcome.value}", unit=MetricUnit.Count, value=1)
