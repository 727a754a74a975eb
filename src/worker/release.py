"""One receive of a release's message: a `ReleaseAttempt`, the release counterpart of `runner.Attempt`.

It goes:
1. begin: the record's lease for this attempt (`lifecycle.BEGIN_RELEASE`); a record that is no longer
   RELEASING has nothing to do (a duplicate);
2. describe: assume the execution role, DescribeInstances;
3. the release steps (`worker.procedures.RELEASE`), each recorded in `release.steps` as it ends. Before
   each, the attempt checks that the release still holds the instance's slot: an isolation requested
   meanwhile takes it, and the release stops, RELEASE_FAILED `Superseded`;
4. the end: RELEASED (`released_at`) and the slot freed, in one transaction (or `Superseded`, when an
   isolation took the slot at the last moment). Then the episode's earlier records end RELEASED too,
   naming this one in `released_by` (`shared.store.episode_ends`; the sweeper finishes what a stop
   leaves), and the outcome event: this record's only.

It is a receive like an isolation's (`worker.receive.Receive`): the same log keys (with `phase=release`),
lease and error boundary: every exception is classified (`shared.errors.classify`); a permanent error
ends the release RELEASE_FAILED (`release.error`) and the message is acknowledged; a retryable one
brings the message back with the lease given back, except on the last receive, where the release ends
RELEASE_FAILED with that error first. A worker lost during the last receive: the sweeper ends the release
(`WorkerLost`, `DeadLettered`). A RELEASE_FAILED record is released again by a new request. Its step
outcomes and its end go through its journal (`worker.journal.ReleaseJournal`); its outcomes count in
`Release-<outcome>` (`released`, `release-failed`, `superseded`, `duplicate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shared import lifecycle
from shared.errors import IsolationError, PermanentError, RetryableError
from shared.lifecycle import Status
from shared.models import ErrorInfo, IsolationRecord, PriorState, ReleaseMessage, Target
from shared.observability import logger
from shared.store import LeaseHeld, ReleaseEnd
from shared.store.releases import SUPERSEDED
from worker import receive
from worker.admission import admit
from worker.instance import describe
from worker.journal import ReleaseJournal
from worker.procedures import RELEASE
from worker.receive import Outcome, Receive
from worker.steps.release import ReleaseContext


class _Superseded(Exception):
    """An isolation of the instance took the slot over: the release stops here."""


@dataclass
class ReleaseAttempt(Receive):
    """One receive of one release's message."""

    what: ClassVar[str] = "release"
    metric: ClassVar[str] = "Release"
    failed_outcome: ClassVar[Outcome] = Outcome.RELEASE_FAILED
    failed_status: ClassVar[Status] = Status.RELEASE_FAILED
    #: A release counts no attempt of the record (it gives its lease back, once it took one).
    counts_attempts: ClassVar[bool] = False

    message: ReleaseMessage
    #: Where the release's outcomes go, from its begin on (`journal.record`: the record as it began).
    journal: ReleaseJournal | None = None

    @property
    def subject(self) -> IsolationRecord | ReleaseMessage:
        return self.journal.record if self.journal is not None else self.message

    def _log_keys(self) -> dict[str, Any]:
        # The record's account and instance join them once the release began (`_run`).
        return {"isolation_id": self.message.isolation_id, "phase": "release"}

    def _target(self) -> Target | None:
        return self.journal.record.target if self.journal is not None else None

    def run(self) -> Outcome:
        return self._whole(self._run)

    def _end_failed(self, error: ErrorInfo) -> None:
        if self.journal is not None:
            self.journal.end(Status.RELEASE_FAILED, error=error)

    def _give_up(self, error: IsolationError) -> None:
        message = f"gave up on the last allowed receive of its message ({self.receive_count}); last error: {error.message}"
        self._end_failed(ErrorInfo(code=error.code, message=message))

    # --- the attempt -------------------------------------------------------------------------------

    def _run(self) -> Outcome:
        store, settings = self.deps.store, self.deps.settings
        try:
            record = store.begin_release(
                self.message.isolation_id,
                owner=self.owner,
                lease_seconds=receive.LEASE_SECONDS,
                final=self.final,
            )
        except LeaseHeld as exc:
            raise RetryableError(
                "ReleaseInProgress", "another worker is running this release", wait="in-flight"
            ) from exc
        if record is None or record.release is None:
            logger.info("not RELEASING: nothing to do")
            return Outcome.DUPLICATE
        journal = self.journal = ReleaseJournal(store, record)
        logger.thread_safe_append_keys(account_id=record.account_id, instance_id=record.instance_id)
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
                notes=journal,
                leases=store,
                groups=store,
                sleep=self.deps.sleep,
            )
            for step in RELEASE.steps:
                self._still_held(record)
                # A failure is on record in `release.steps`, then raised (`Procedure.perform`).
                journal.done(RELEASE.perform(step, ctx, record_failed=journal.failed))
            ended = journal.end(Status.RELEASED)
        except _Superseded:
            ended = ReleaseEnd.SUPERSEDED
        if ended is ReleaseEnd.ALREADY:
            return Outcome.DUPLICATE
        if ended is ReleaseEnd.SUPERSEDED:
            return self._supersede(journal)
        logger.info("released")
        self._end_episode(record)
        return Outcome.RELEASED

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

    def _supersede(self, journal: ReleaseJournal) -> Outcome:
        message = "an isolation of the instance was requested while the release ran: the isolation wins"
        logger.warning("release superseded by an isolation")
        ended = journal.end(
            Status.RELEASE_FAILED,
            error=ErrorInfo(code=SUPERSEDED, message=message),
            transition=lifecycle.SUPERSEDE_RELEASE,
        )
        return Outcome.SUPERSEDED if ended is ReleaseEnd.ENDED else Outcome.DUPLICATE

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
