"""One receive of a message about one isolation, whichever it is: an isolation's containment
(`worker.runner.Attempt`), its follow-up (`worker.runner.FollowUp`) or its release
(`worker.release.ReleaseAttempt`). Each is a `Receive`: it knows the message's receive (the last allowed
one is `final`), the lease it takes (`owner`, for `LEASE_SECONDS`), the log keys of the isolation it works
for (`acting`), and its one error boundary.

The error boundary (`settle`): every exception is classified (`shared.errors.classify`): a permanent
error ends the record (FAILED; a release's RELEASE_FAILED) and the message is acknowledged; a retryable
one (and anything unexpected) brings the message back with the receive's lease given back, except on the
last receive, where the record ends that way with the error first (an isolation's resumable: a DLQ
redrive runs it again; a release is asked for again). If the worker dies during the last receive, the
sweeper ends the record. Nothing stays QUEUED, IN_PROGRESS or RELEASING forever.

Every receive ends with an `Outcome`, counted in one metric, `<metric>-<outcome>` (`Isolation-isolated`,
`Release-released`); an outcome that ends the record (`ENDING`) publishes its outcome event.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from botocore.exceptions import BotoCoreError, ClientError

from shared import outcomes
from shared.aws import AccountSession, forget_session, same_account_client, session_for_account
from shared.config import WorkerSettings
from shared.errors import EXPIRED_CODES, IsolationError, PermanentError, classify
from shared.lifecycle import Status
from shared.models import ErrorInfo, FollowUpMessage, IsolationRecord, ReleaseMessage, Target
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore, accounts
from worker.consistency import retry_own_table

#: How long one receive holds the record (longer than the worker's 60 s timeout). Read at each begin (the
#: local end-to-end tests shorten it).
LEASE_SECONDS = 120
#: How long the last receive keeps trying to write its failed outcome when its own table throttles.
FINAL_WRITE_BUDGET_SECONDS = 4.0
#: The log keys of one receive (thread-safe keys: a batch runs its isolations in threads).
LOG_KEYS = ("isolation_id", "account_id", "instance_id", "source", "phase", "step")


class Outcome(StrEnum):
    ISOLATED = "isolated"
    FAILED = "failed"
    SKIPPED = "skipped"
    JOINED = "joined"
    COALESCED = "coalesced"
    RATE_LIMITED = "rate-limited"
    DUPLICATE = "duplicate"
    TAMPER_LOOP = "tamper-loop"
    CHECKED = "checked"
    #: The containment is in place and the follow-up is queued (the record is still IN_PROGRESS).
    CONTAINED = "contained"
    #: A release's: RELEASED; RELEASE_FAILED; RELEASE_FAILED `Superseded` (an isolation took the slot).
    RELEASED = "released"
    RELEASE_FAILED = "release-failed"
    SUPERSEDED = "superseded"


#: Outcomes that end a record (its outcome event is published); a join, a duplicate or a containment
#: handed over to its follow-up ends nothing.
ENDING = frozenset(set(Outcome) - {Outcome.JOINED, Outcome.DUPLICATE, Outcome.CONTAINED})


@dataclass
class WorkerDeps:
    settings: WorkerSettings
    store: IsolationStore
    sessions: Callable[[Target], AccountSession] | None = None
    sleep: Callable[[float], None] | None = None

    def announce(self, isolation_id: str, ended: IsolationRecord | None = None) -> None:
        """Publish the ended record's outcome event (after its final write; never raises): `ended`, the
        record as this worker ended it, or else as it is stored, read now."""
        events, bus = same_account_client("events"), self.settings.EVENT_BUS_NAME
        if ended is None:
            outcomes.announce(self.store, isolation_id, events=events, bus=bus)
        else:
            outcomes.publish(ended, events=events, bus=bus)

    def session(self, target: Target) -> AccountSession:
        if self.sessions is not None:
            return self.sessions(target)
        session = session_for_account(
            target.account_id,
            target.region,
            self.settings.TARGET_ROLE_NAME,
            external_id=self.settings.EXTERNAL_ID,
        )
        accounts.note_once(self.store.client, self.store.table_name, target.account_id)
        return session


def retry_or_give_up(
    error: IsolationError,
    exc: Exception,
    *,
    target: Target,
    deps: WorkerDeps,
    final: bool,
    receive_count: int,
    give_back: Callable[[], None],
    give_up: Callable[[], None],
    ending: Status,
) -> bool:
    """A retryable `error` (from `exc`) ends a receive: before the message's last receive, `give_back()`
    (its lease) and the message comes back; on the last, `give_up()` (the write that ends the record
    `ending`, retried within the final-write budget). True when it gave up."""
    if not isinstance(exc, IsolationError | ClientError | BotoCoreError):
        logger.exception("unexpected error: retried like a transient one")
    if error.code in EXPIRED_CODES:
        forget_session(target.account_id, target.region, deps.settings.TARGET_ROLE_NAME)
    if not final:
        logger.warning("will retry", extra={"code": error.code, "receive_count": receive_count})
        give_back()
        return False
    logger.error("retries exhausted", extra={"code": error.code, "receive_count": receive_count})
    retry_own_table(
        give_up,
        budget_seconds=FINAL_WRITE_BUDGET_SECONDS,
        sleep=deps.sleep,
        what=f"the final {ending.value} write",
    )
    return True


def settle(
    exc: Exception,
    *,
    what: str,
    end_failed: Callable[[ErrorInfo], None],
    retry_or_give_up: Callable[[IsolationError, Exception], None],
    give_back: Callable[[], None] | None,
) -> None:
    """The error boundary of a receive: `exc` classified; a permanent error ends the record
    (`end_failed`) and returns (the message is acknowledged); a retryable one goes to `retry_or_give_up`
    and is raised (the message comes back). When the outcome cannot be written (the service's own
    table), that error is raised instead: the message comes back, and behind the last receive the
    sweeper finds it in the DLQ; `give_back` (the lease, best effort) first, so that the next receive
    runs rather than wait for the lease to expire."""
    error = classify(exc)
    try:
        if isinstance(error, PermanentError):
            logger.warning(f"{what} failed", extra={"code": error.code, "error": error.message})
            end_failed(ErrorInfo(code=error.code, message=error.message))
        else:
            retry_or_give_up(error, exc)
    except Exception as unrecorded:
        logger.exception(f"could not record the {what}'s outcome")
        if give_back is not None:
            try:
                give_back()
            except Exception:
                logger.warning("could not give the lease back", exc_info=True)
        raise classify(unrecorded) from unrecorded
    if not isinstance(error, PermanentError):
        raise error from exc


@dataclass(kw_only=True)
class Receive(ABC):
    """One receive of a message about one isolation, and its error boundary. A subclass says what it
    is (`what`), the metric its outcomes count in, how a failure ends the record (`failed_outcome`,
    `failed_status`, `_end_failed`, `_give_up`) and whether it counts the record's attempts."""

    #: What the receive runs, as its log lines name it ("isolation", "release").
    what: ClassVar[str] = "isolation"
    #: The metric each outcome counts in (`<metric>-<outcome>`).
    metric: ClassVar[str] = "Isolation"
    #: The outcome of a receive that ended the record on a failure, and the status it ended it with.
    failed_outcome: ClassVar[Outcome] = Outcome.FAILED
    failed_status: ClassVar[Status] = Status.FAILED
    #: Whether the receive's begin counts an attempt of the record (an isolation's containment does; one
    #: that failed before it is counted when its lease is given back). Its lease is given back either way.
    counts_attempts: ClassVar[bool] = True

    deps: WorkerDeps
    receive_count: int = 1
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The record's attempts, this one included, once the attempt began (it holds the lease).
    began_as: int | None = None
    #: The record as this receive ended it (its outcome event), when it did.
    ended: IsolationRecord | None = None

    @property
    @abstractmethod
    def subject(self) -> IsolationRecord | FollowUpMessage | ReleaseMessage:
        """The isolation this receive is about (its id; its source and target once known)."""

    @abstractmethod
    def _log_keys(self) -> dict[str, Any]:
        """The keys that name the isolation in every log line of the receive (`LOG_KEYS`)."""

    @abstractmethod
    def _target(self) -> Target | None:
        """The instance the receive works on (None: not known yet; a retry then writes nothing)."""

    @abstractmethod
    def _end_failed(self, error: ErrorInfo) -> None:
        """End the record `failed_status` with `error` (a permanent one)."""

    @abstractmethod
    def _give_up(self, error: IsolationError) -> None:
        """The last receive's write: the record ends `failed_status` with the retryable `error`."""

    @property
    def began(self) -> bool:
        return self.began_as is not None

    @property
    def final(self) -> bool:
        """The message's last allowed receive: after it, SQS moves the message to the DLQ."""
        return self.receive_count >= self.deps.settings.MAX_RECEIVE_COUNT

    @contextmanager
    def acting(self) -> Iterator[None]:
        """Around each piece of work done for this isolation (a phase, in its thread): every log line of
        the thread names it. (The chaos test also attributes the calls made inside to it.)"""
        logger.thread_safe_append_keys(**self._log_keys())
        try:
            yield
        finally:
            logger.thread_safe_remove_keys(LOG_KEYS)

    def _whole(self, work: Callable[[], Outcome]) -> Outcome:
        """A receive that runs alone, start to end: `work` in its log keys, through its error boundary."""
        with self.acting():
            try:
                outcome = work()
            except Exception as exc:
                return self.settle(exc)
            return self.conclude(outcome)

    def conclude(self, outcome: Outcome) -> Outcome:
        self._count(outcome)
        if outcome in ENDING:
            self.deps.announce(self.subject.isolation_id, self.ended)
        return outcome

    def settle(self, exc: Exception) -> Outcome:
        """The error boundary: record what `exc` means for the isolation; return `failed_outcome` (a
        permanent error, acknowledged) or raise the classified error (the message comes back)."""
        settle(
            exc,
            what=self.what,
            end_failed=self._end_failed,
            retry_or_give_up=self._retry_or_give_up,
            # On the last receive the lease stays: the sweeper finds it expired.
            give_back=None if self.final else self._end_attempt,
        )
        return self.conclude(self.failed_outcome)

    def _retry_or_give_up(self, error: IsolationError, exc: Exception) -> None:
        target = self._target()
        if target is None:  # nothing begun: the message comes back (or goes on to the DLQ)
            return
        if retry_or_give_up(
            error,
            exc,
            target=target,
            deps=self.deps,
            final=self.final,
            receive_count=self.receive_count,
            give_back=self._end_attempt,
            give_up=lambda: self._give_up(error),
            ending=self.failed_status,
        ):
            self._count(self.failed_outcome)
            self.deps.announce(self.subject.isolation_id)

    def _end_attempt(self) -> None:
        """Give back this receive's lease (if it took one); an attempt that failed before its begin is
        counted instead (`counts_attempts`)."""
        began = self.began or not self.counts_attempts
        self.deps.store.end_attempt(self.subject.isolation_id, self.owner, began=began)

    def _count(self, outcome: Outcome) -> None:
        metrics.add_metric(name=f"{self.metric}-{outcome.value}", unit=MetricUnit.Count, value=1)
