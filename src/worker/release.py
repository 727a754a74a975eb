"""One receive of a release's message: a `ReleaseAttempt`, the release counterpart of `runner.Attempt`.

It goes:
1. begin: the record's lease for this attempt (`lifecycle.BEGIN_RELEASE`); a record that is no longer
   RELEASING has nothing to do (a duplicate);
2. describe: assume the execution role, DescribeInstances;
3. the release steps (`worker.procedures.RELEASE`), each recorded in `release.steps` as it happens. Before
   each, the attempt checks that the release still holds the instance's slot: an isolation requested
   meanwhile takes it, and the release stops, RELEASE_FAILED `Superseded`;
4. the end: RELEASED (`released_at`) and the slot freed, in one transaction (or `Superseded`, when an
   isolation took the slot at the last moment). Then the episode's earlier records end RELEASED too,
   naming this one in `released_by` (`shared.store.episode_ends`; the sweeper finishes what a stop
   leaves), and the outcome event: this record's only.

Its error boundary is the runner's: every exception is classified (`shared.errors.classify`); a permanent
error ends the release RELEASE_FAILED (`release.error`) and the message is acknowledged; a retryable one
brings the message back, except on the last receive, where the release ends RELEASE_FAILED with that
error first. A worker lost during the last receive: the sweeper ends the release (`WorkerLost`,
`DeadLettered`). A RELEASE_FAILED record is released again by a new request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from shared import lifecycle
from shared.errors import (
    IsolationError,
    PermanentError,
    RetryableError,
)
from shared.lifecycle import Status
from shared.models import ErrorInfo, IsolationRecord, PriorState, ReleaseMessage, StepRecord
from shared.observability import MetricUnit, logger, metrics
from shared.store import LeaseHeld, ReleaseEnd
from shared.store.releases import SUPERSEDED
from worker import runner
from worker.admission import admit
from worker.instance import describe
from worker.procedures import RELEASE
from worker.runner import WorkerDeps, retry_or_give_up, settle
from worker.steps import Step
from worker.steps.release import Notes, ReleaseContext


class ReleaseOutcome(StrEnum):
    RELEASED = "released"
    FAILED = "release-failed"
    SUPERSEDED = "superseded"
    DUPLICATE = "duplicate"


class _Superseded(Exception):
    """An isolation of the instance took the slot over: the release stops here."""


@dataclass
class ReleaseAttempt:
    """One receive of one release's message."""

    message: ReleaseMessage
    deps: WorkerDeps
    receive_count: int = 1
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The record as `begin_release` left it (None until then).
    record: IsolationRecord | None = None

    @property
    def final(self) -> bool:
        """The message's last allowed receive: after it, SQS moves the message to the DLQ."""
        return self.receive_count >= self.deps.settings.MAX_RECEIVE_COUNT

    def run(self) -> ReleaseOutcome:
        """The error boundary: every exception ends here, classified."""
        logger.append_keys(isolation_id=self.message.isolation_id, phase="release")
        try:
            outcome = self._run()
        except Exception as exc:
            record = self.record
            settle(
                exc,
                what="release",
                end_failed=self._end_failed,
                retry_or_give_up=self._retry_or_give_up,
                give_back=None if record is None or self.final else lambda: self._give_back(record),
            )
            outcome = ReleaseOutcome.FAILED
        finally:
            logger.remove_keys(["phase"])
        _count(outcome)
        if outcome is not ReleaseOutcome.DUPLICATE:
            self.deps.announce(self.message.isolation_id)
        return outcome

    def _retry_or_give_up(self, error: IsolationError, exc: Exception) -> None:
        record = self.record
        if record is None:  # nothing begun: the message comes back (or goes on to the DLQ)
            return
        message = f"gave up on the last allowed receive of its message ({self.receive_count}); last error: {error.message}"
        if retry_or_give_up(
            error,
            exc,
            target=record.target,
            deps=self.deps,
            final=self.final,
            receive_count=self.receive_count,
            give_back=lambda: self._give_back(record),
            give_up=lambda: self._end_failed(ErrorInfo(code=error.code, message=message)),
            ending=Status.RELEASE_FAILED,
        ):
            _count(ReleaseOutcome.FAILED)
            self.deps.announce(record.isolation_id)

    def _give_back(self, record: IsolationRecord) -> None:
        self.deps.store.end_attempt(record.isolation_id, self.owner, began=True)

    def _end_failed(self, error: ErrorInfo) -> None:
        if self.record is not None:
            self.deps.store.end_release(self.record, Status.RELEASE_FAILED, error=error)

    # --- the attempt -------------------------------------------------------------------------------

    def _run(self) -> ReleaseOutcome:
        store, settings = self.deps.store, self.deps.settings
        try:
            record = store.begin_release(
                self.message.isolation_id,
                owner=self.owner,
                lease_seconds=runner.LEASE_SECONDS,
                final=self.final,
            )
        except LeaseHeld as exc:
            raise RetryableError(
                "ReleaseInProgress", "another worker is running this release", wait="in-flight"
            ) from exc
        if record is None or record.release is None:
            logger.info("not RELEASING: nothing to do")
            return ReleaseOutcome.DUPLICATE
        self.record = record
        logger.append_keys(account_id=record.account_id, instance_id=record.instance_id)
        target = record.target
        try:
            self._still_held(record)
            admit(target, settings)
            account = self.deps.session(target)
            instance = describe(account.client("ec2"), target)
            ctx = ReleaseContext(
                isolation_id=record.isolation_id,
                source=record.source,
                target=target,
                instance=instance,
                account=account,
                settings=settings,
                prior=self._prior_state(record),
                notes=Notes(),
                leases=store,
                groups=store,
                sleep=self.deps.sleep,
            )
            for step in RELEASE.steps:
                self._still_held(record)
                store.add_release_steps(record.isolation_id, [self._step(step, ctx)])
            ended = store.end_release(record, Status.RELEASED)
        except _Superseded:
            ended = ReleaseEnd.SUPERSEDED
        if ended is ReleaseEnd.ALREADY:
            return ReleaseOutcome.DUPLICATE
        if ended is ReleaseEnd.SUPERSEDED:
            return self._supersede(record)
        logger.info("released")
        self._end_episode(record)
        return ReleaseOutcome.RELEASED

    def _end_episode(self, record: IsolationRecord) -> None:
        """The episode's earlier records read RELEASED too. The release stands whatever happens here: what
        is left is marked on the record, and the sweeper finishes it."""
        try:
            ended = self.deps.store.end_episode(record.isolation_id)
        except Exception:
            logger.exception("the episode's earlier records were not all ended: the sweeper ends them")
            return
        if ended:
            logger.info("ended the episode's earlier records", extra={"released": ended})

    def _still_held(self, record: IsolationRecord) -> None:
        if not self.deps.store.release_held(record):
            raise _Superseded()

    def _supersede(self, record: IsolationRecord) -> ReleaseOutcome:
        message = "an isolation of the instance was requested while the release ran: the isolation wins"
        logger.warning("release superseded by an isolation")
        ended = self.deps.store.end_release(
            record,
            Status.RELEASE_FAILED,
            error=ErrorInfo(code=SUPERSEDED, message=message),
            transition=lifecycle.SUPERSEDE_RELEASE,
        )
        return ReleaseOutcome.SUPERSEDED if ended is ReleaseEnd.ENDED else ReleaseOutcome.DUPLICATE

    def _prior_state(self, record: IsolationRecord) -> PriorState:
        """The episode's prior state: the record's, or (an older coalesced record) the one it inherits."""
        if record.prior_state is not None:
            return record.prior_state
        earlier = self.deps.store.get(record.inherits_from) if record.inherits_from else None
        if earlier is not None and earlier.prior_state is not None:
            return earlier.prior_state
        raise PermanentError(
            "NoPriorState", "the record holds no prior state: there is nothing to restore from"
        )

    def _step(self, step_class: type[Step], ctx: ReleaseContext) -> StepRecord:
        """A release step (`Procedure.perform`): a failure is on record in `release.steps`, then raised."""
        store = self.deps.store
        return RELEASE.perform(
            step_class, ctx, record_failed=lambda failed: store.add_release_steps(ctx.isolation_id, [failed])
        )


def _count(outcome: ReleaseOutcome) -> None:
    metrics.add_metric(name=f"Release-{outcome.value}", unit=MetricUnit.Count, value=1)
