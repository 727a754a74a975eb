"""One receive of an isolation's message, in two phases on two queues: an `Attempt` (containment, from
the isolation queue) and a `FollowUp` (the rest, from the follow-up queue). One record tells both.

An attempt knows its record (the record as the message describes it), its owner (the lease it takes)
and whether it runs on the message's last allowed receive, decided once, here. The containment of a
whole batch runs phase by phase (`worker.batch`), each attempt going:

1. open: a trigger's message gets its record (or joins the isolation in flight, is coalesced with a
   recent one, or is a duplicate of one that ended); a webhook's record exists already;
   A trigger is judged in this order: join the isolation in flight, coalesce, exemption (an instance
   the security account exempted, `shared.store.exemptions`, is SKIPPED: never one a tag says is
   exempt), blast-radius budget (which an exempted trigger does not spend);
2. describe: assume the execution role, DescribeInstances (one call per account and region of the
   batch) and, meanwhile, the instance's episode from the service's own table;
3. begin: the IN_PROGRESS write with `prior_state`, the only write before the first change (with it, in
   one transaction, the record becomes the instance's latest that changed it). An instance whose latest
   such record (the service's own, read consistently: `shared.store.episodes`) is another isolation's
   and not released is in its episode: this isolation takes that one's `prior_state` and evidence
   (`inherits_from`), never the isolated state it sees now; its tags decide nothing;
4. contain (`worker.procedures.CONTAINMENT`): the network cut, `contained_at`;
5. hold (`worker.procedures.HOLD`), once every instance of the batch is cut: the credentials deny, and out of
   Auto Scaling and load balancers, side by side (IAM on one side, Auto Scaling and ELB on the other);
6. hand over, as soon as both steps of the hold have ended: the record's follow-up phase begins
   (`shared.lifecycle.HAND_OVER`, the last hold step's outcome riding with it) and a message on the
   follow-up queue carries it. The record stays IN_PROGRESS.
   A dry run's record checks each step instead, changing nothing (`worker.dry_run`), and ends CHECKED or
   FAILED right after its begin.

A `FollowUp` takes the handed-over record (`begin_follow_up`), describes the instance again, runs
`worker.procedures.FOLLOW_UP` and ends the record ISOLATED (or FAILED with what the containment could not put
in place). The `StepJournal` decides when outcomes are written. A step that raises
`ContainmentIncomplete` is recorded failed, the others still run, and the record ends FAILED with that
error.

Both have the same error boundary (`settle`): every exception is classified (`shared.errors.classify`):
a permanent error ends the record FAILED and the message is acknowledged; a retryable one (and anything
unexpected) brings the message back, except on the last receive, where the record ends FAILED with that
error first (resumable: a DLQ redrive runs it again). If the worker dies during the last receive, the
sweeper ends the record. Nothing stays QUEUED or IN_PROGRESS forever.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared import lifecycle, outcomes
from shared.aws import AccountSession, forget_session, same_account_client, session_for_account
from shared.config import WorkerSettings
from shared.errors import (
    EXPIRED_CODES,
    IsolationError,
    PermanentError,
    RetryableError,
    classify,
)
from shared.exemptions import Exemption
from shared.lifecycle import Status
from shared.models import (
    TAMPER_LOOP,
    ErrorInfo,
    FollowUpMessage,
    IsolationRecord,
    Source,
    StepRecord,
    Target,
)
from shared.observability import MetricUnit, logger, metrics
from shared.store import (
    Coalesced,
    Exempted,
    Exists,
    IsolationStore,
    Joined,
    LeaseHeld,
    RateLimited,
    RecordEnded,
    RecordMissing,
    RepairsSpent,
    accounts,
)
from shared.store.isolation_groups import GroupClaim
from worker import at_once, consistency, dry_run
from worker.admission import admit
from worker.consistency import retry_own_table
from worker.instance import Instance, describe
from worker.journal import StepJournal
from worker.procedures import CONTAINMENT, FOLLOW_UP, HOLD, Procedure
from worker.steps import Step, StepContext

#: The step a tamper repair past its budget records first (the record then ends FAILED `TamperLoop`).
TAMPER_LOOP_STEP = "check-tamper-repairs"
#: How long one attempt holds the record (longer than the worker's 60 s timeout).
LEASE_SECONDS = 120
#: The first wait for a release that an isolation took the instance's slot from to stop.
RELEASE_WAIT_FIRST_SECONDS = 0.1
#: How long the last receive keeps trying to write its FAILED outcome when its own table throttles.
FINAL_WRITE_BUDGET_SECONDS = 4.0
#: The log keys of one isolation (thread-safe keys: a batch runs its isolations in threads).
LOG_KEYS = ("isolation_id", "account_id", "instance_id", "source", "step")


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
    """A retryable `error` (from `exc`) ends a receive, an isolation's or a release's: before the message's
    last receive, `give_back()` (its lease) and the message comes back; on the last, `give_up()` (the write
    that ends the record `ending`, retried within the final-write budget). True when it gave up."""
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
    """The error boundary of a receive, an isolation's or a release's: `exc` classified; a permanent error
    ends the record (`end_failed`) and returns (the message is acknowledged); a retryable one goes to
    `retry_or_give_up` and is raised (the message comes back). When the outcome cannot be written (the
    service's own table), that error is raised instead: the message comes back, and behind the last
    receive the sweeper finds it in the DLQ; `give_back` (the lease, best effort) first, so that the
    next receive runs rather than wait for the lease to expire."""
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
class _Receive(ABC):
    """What both phases share: one receive of a message about one isolation, and its error boundary."""

    deps: WorkerDeps
    receive_count: int = 1
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The record's attempts, this one included, once the attempt began (it holds the lease).
    began_as: int | None = None
    #: A part of the containment that could not be put in place (the record ends FAILED with it).
    unmet: PermanentError | None = None
    #: The steps' context and where their outcomes go, once the record is begun (`_context`).
    ctx: StepContext | None = None
    journal: StepJournal | None = None
    #: The record as this receive ended it (its outcome event), when it did.
    ended: IsolationRecord | None = None

    @property
    @abstractmethod
    def subject(self) -> IsolationRecord | FollowUpMessage:
        """The isolation this receive is about (its id, source and target), as far as it is known."""

    @abstractmethod
    def _to_end(self) -> IsolationRecord | None:
        """The record a failure ends (None: there is none to end)."""

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
        logger.thread_safe_append_keys(
            isolation_id=self.subject.isolation_id,
            account_id=self.subject.account_id,
            instance_id=self.subject.instance_id,
            source=self.subject.source.value,
        )
        try:
            yield
        finally:
            logger.thread_safe_remove_keys(LOG_KEYS)

    def conclude(self, outcome: Outcome) -> Outcome:
        _count(outcome)
        if outcome in ENDING:
            self.deps.announce(self.subject.isolation_id, self.ended)
        return outcome

    def settle(self, exc: Exception) -> Outcome:
        """The error boundary: record what `exc` means for the isolation; return FAILED (a permanent
        error, acknowledged) or raise the classified error (the message comes back)."""
        settle(
            exc,
            what="isolation",
            end_failed=self._end_failed,
            retry_or_give_up=self._retry_or_give_up,
            # On the last receive the lease stays: the sweeper finds it expired.
            give_back=None if self.final else self._end_attempt,
        )
        return self.conclude(Outcome.FAILED)

    def _retry_or_give_up(self, error: IsolationError, exc: Exception) -> None:
        def give_up() -> None:
            attempts = self._attempts()
            self._end_failed(
                ErrorInfo(code=error.code, message=self._gave_up(attempts, error)),
                resumable=True,
                attempts=attempts,
            )

        if retry_or_give_up(
            error,
            exc,
            target=self.subject.target,
            deps=self.deps,
            final=self.final,
            receive_count=self.receive_count,
            give_back=self._end_attempt,
            give_up=give_up,
            ending=Status.FAILED,
        ):
            _count(Outcome.FAILED)
            self.deps.announce(self.subject.isolation_id)

    def _gave_up(self, attempts: int, error: IsolationError) -> str:
        return (
            f"gave up after {attempts} attempts (the last allowed receive of its message); "
            f"last error: {error.message}"
        )

    def _end_attempt(self) -> None:
        self.deps.store.end_attempt(self.subject.isolation_id, self.owner, began=self.began)

    def _attempts(self) -> int:
        """The record's attempts, this one included. One that failed before `begin_attempt` is counted
        here; so is every receive of the message (a trigger's earlier receives may have failed before its
        record existed)."""
        if self.began_as is not None:
            return self.began_as
        current = self.deps.store.get(self.subject.isolation_id)
        return max((current.attempts if current else 0) + 1, self.receive_count)

    def _end_failed(self, error: ErrorInfo, *, resumable: bool = False, attempts: int | None = None) -> None:
        record = self._to_end()
        if record is None:
            logger.error("no record to end", extra={"code": error.code})
            return
        if attempts is None and not self.began:
            attempts = self._attempts()
        self.deps.store.finish(record, Status.FAILED, error=error, resumable=resumable, attempts=attempts)

    def _context(
        self,
        account: AccountSession,
        instance: Instance,
        begun: IsolationRecord,
        *,
        groups_seen: dict[str, GroupClaim] | None = None,
    ) -> StepContext:
        journal = self.journal = StepJournal(self.deps.store, begun)
        self.ctx = StepContext(
            isolation_id=self.subject.isolation_id,
            source=self.subject.source,
            target=self.subject.target,
            instance=instance,
            account=account,
            settings=self.deps.settings,
            prior=begun.prior_state or instance.state,
            evidence=begun.evidence,
            notes=journal,
            leases=self.deps.store,
            groups=self.deps.store,
            sleep=self.deps.sleep,
            groups_seen=groups_seen,
            dry_run=begun.dry_run,
        )
        return self.ctx

    def _read_ahead(self, steps: tuple[type[Step], ...], ctx: StepContext) -> None:
        """The prior values the phase's `steps` read ahead (`Step.prior`), on record in one write before
        the phase's first change (a field the episode knows already keeps its value). A read that fails
        leaves that step to read again in its run (which writes what it read before its change, and
        records the failure as its own): one step's failing read never stops another step."""
        prior: dict[str, Any] = {}
        for step_class in steps:
            step = step_class()
            try:
                prior |= step.prior(ctx)
            except Exception as exc:
                logger.warning(
                    "prior state not read ahead: the step reads it again",
                    extra={"step": step.name, "error": str(exc)},
                )
        ctx.remember(**prior)

    def _begun(self) -> tuple[StepContext, StepJournal]:
        """The begun record's step context and journal (`_context`)."""
        ctx, journal = self.ctx, self.journal
        assert ctx is not None and journal is not None, "the record is not begun"
        return ctx, journal

    def _step(self, procedure: Procedure, step_class: type[Step]) -> StepRecord:
        """A step of `procedure` (`Procedure.perform`) in the begun record's context: one that cannot be
        put in place is recorded failed and the others still run (`unmet`: the record ends FAILED with it)."""
        ctx, journal = self._begun()

        def incomplete(error: PermanentError) -> None:
            self.unmet = error

        return procedure.perform(step_class, ctx, record_failed=journal.failed, incomplete=incomplete)


@dataclass
class Attempt(_Receive):
    """The containment of one isolation, on one receive of its message (`worker.batch` runs a batch's
    attempts phase by phase; `worker.batch.contain_one` runs one alone)."""

    #: The record as the message describes it (a trigger's: as `_open` writes it).
    record: IsolationRecord

    account: AccountSession | None = None
    instance: Instance | None = None
    #: The region's isolation-group claims by VPC, read with the instance (None: not looked up).
    groups_seen: dict[str, GroupClaim] | None = None
    #: A tamper repair past the instance's repair budget: the network cut only, then FAILED TamperLoop.
    network_only: bool = False
    #: The episode the instance is in, looked up while it is described (None: not looked up ahead).
    episode_ahead: Future[IsolationRecord | None] | None = None
    #: The steps of `HOLD` not ended yet (they run side by side), and whether one raised.
    holding: int = len(HOLD.steps)
    hold_failed: bool = False
    _holding_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def subject(self) -> IsolationRecord:
        return self.record

    def _to_end(self) -> IsolationRecord:
        self.deps.store.put_record(self.record)  # a trigger's record may not exist yet
        return self.record

    # --- the phases (each returns an Outcome when the attempt has nothing more to do) ---------------

    def open(self) -> Outcome | None:
        """The record this message runs, or the reason it runs nothing; then the target's checks."""
        opened = self._open()
        if opened is not None:
            return opened
        admit(self.record.target, self.deps.settings)
        return None

    def look_up_episode(self) -> None:
        """Begin looking up the instance's episode (`_episode`: the service's own table, nothing of the
        instance), to be waited for by `begin`: it runs while the instance is described."""
        self.episode_ahead = at_once.begun(self._episode)

    def described(
        self, account: AccountSession, instance: Instance, groups_seen: dict[str, GroupClaim] | None
    ) -> None:
        """The instance as the batch described it, in the account's session, with the region's
        isolation-group claims when they were read with it."""
        self.account, self.instance, self.groups_seen = account, instance, groups_seen

    @property
    def role_key(self) -> object:
        """Instances of one instance profile share its role (the hold's credentials deny of such
        instances takes turns): the account and the prior profile, or this attempt alone."""
        profile = self.ctx.prior.instance_profile_arn if self.ctx is not None else None
        return (self.record.account_id, profile) if profile else id(self)

    def begin(self) -> Outcome | None:
        """The IN_PROGRESS write with the prior state."""
        instance, account = self.instance, self.account
        assert instance is not None and account is not None
        try:
            begun = self._begin(instance)
        except RecordEnded as ended:
            return self._duplicate(ended.record)
        except LeaseHeld as exc:
            raise RetryableError(
                "IsolationInProgress", "another worker is running this isolation", wait="in-flight"
            ) from exc
        ctx = self._context(account, instance, begun, groups_seen=self.groups_seen)
        if self.record.dry_run:
            _, journal = self._begun()
            checked, self.ended = dry_run.check(ctx, journal, role_name=self.deps.settings.TARGET_ROLE_NAME)
            return Outcome.CHECKED if checked is Status.CHECKED else Outcome.FAILED
        return None

    def contain(self) -> Outcome | None:
        """The network cut, then `contained_at` with its steps. A tamper repair past its budget ends
        there (FAILED `TamperLoop`: the rest is not repaired)."""
        ctx, journal = self._begun()
        steps = [self._step(CONTAINMENT, step) for step in CONTAINMENT.steps]
        journal.contained(steps, isolation_groups=ctx.isolation_groups)
        return self._end_tamper_loop() if self.network_only else None

    def read_ahead(self) -> None:
        """The prior values of every step of `HOLD`, on record in one write before any of them changes
        anything (after the network cut: the cut never waits on these IAM and Auto Scaling reads)."""
        ctx, _ = self._begun()
        self._read_ahead(HOLD.steps, ctx)

    def hold(self, step: type[Step]) -> Outcome | None:
        """A step of what must not wait for the follow-up (`HOLD`: the steps run side by side). The last
        of them to end hands the record over to its follow-up phase at once, its outcome riding with
        the hand-over (the follow-up's message is sent by the batch); one that raised ends the attempt
        here, and the others are then each written as they end."""
        _, journal = self._begun()
        try:
            done = self._step(HOLD, step)
        except Exception:
            with self._holding_lock:
                self.holding, self.hold_failed = self.holding - 1, True
            raise
        with self._holding_lock:  # (the others' writes before the hand-over)
            self.holding -= 1
            if self.holding or self.hold_failed:
                journal.held(done)
                return None
            journal.ride(done)
        if not journal.hand_over(self.owner, self.unmet):
            logger.warning("lost the record before the hand-over: another attempt runs it")
            return Outcome.DUPLICATE
        return None

    # --- parts ---------------------------------------------------------------------------------------

    def _open(self) -> Outcome | None:
        if not self.record.started_by_trigger:
            # A webhook's record was written by ingest: no read here; `begin_attempt`'s condition tells
            # whether it still has something to do.
            return None
        store, settings = self.deps.store, self.deps.settings
        # A tamper repair is never coalesced and spends no blast-radius budget: its own per-instance one.
        tamper = self.record.source is Source.TAMPER
        created = store.create_queued(
            self.record,
            lease_seconds=settings.ACTIVE_LEASE_SECONDS,
            coalesce_window_seconds=None if tamper else settings.COALESCE_WINDOW_SECONDS,
            budget=None if tamper else settings.MAX_AUTO_ISOLATIONS_PER_HOUR,
            repairs=settings.TAMPER_REPAIRS_PER_HOUR if tamper else None,
            # Only the service's own exemptions count (never a tag: the member writes those); a tamper
            # repair is never exempted.
            exemptions_table=None if tamper else settings.EXEMPTION_TABLE_NAME,
        )
        if isinstance(created, RepairsSpent):
            # Past the budget the network cut is still repaired, and nothing else: the record carries the
            # refusal from its start, so that every receive of it knows (`network_only`).
            self.record = self.record.model_copy(update={"steps": [self._tamper_loop_step(created.limit)]})
            created = store.create_queued(
                self.record, lease_seconds=settings.ACTIVE_LEASE_SECONDS, coalesce_window_seconds=None
            )
        if isinstance(created, Joined) and tamper:
            # The isolation in flight may have passed the network cut before the call: look again later.
            raise RetryableError(
                "IsolationInProgress", f"{created.isolation_id} is in flight", wait="in-flight"
            )
        if isinstance(created, Exempted):
            self._record_exempted(created.exemption)
            return Outcome.SKIPPED
        if isinstance(created, RateLimited):
            self._record_rate_limited(created.limit)
            return Outcome.RATE_LIMITED
        if isinstance(created, Joined):
            logger.info("joined the isolation in flight", extra={"joined": created.isolation_id})
            return Outcome.JOINED
        if isinstance(created, Coalesced):
            self._record_coalesced(created.isolation_id)
            return Outcome.COALESCED
        if isinstance(created, Exists) and created.record.status in (Status.ISOLATED, Status.SKIPPED):
            return self._duplicate(created.record)
        # (a FAILED one may be a DLQ redrive: `begin_attempt` decides)
        return None

    def _begin(self, instance: Instance) -> IsolationRecord:
        episode = self.episode_ahead.result() if self.episode_ahead is not None else self._episode()

        def begin() -> IsolationRecord:
            return self.deps.store.begin_attempt(
                self.record.isolation_id,
                owner=self.owner,
                lease_seconds=LEASE_SECONDS,
                prior_state=episode.prior_state if episode else instance.state,
                final=self.final,
                inherits_from=episode.isolation_id if episode else None,
                evidence=episode.evidence if episode else None,
                # A dry run changes nothing: it is never an episode's latest record.
                target=None if self.record.dry_run else self.record.target,
                # On its message's first receive the record is as the message (or `_open`) wrote it,
                # unless another attempt began it meanwhile: the begin's condition tells.
                queued=self.record if self.receive_count == 1 else None,
            )

        try:
            begun = begin()
        except RecordMissing:
            # A webhook-shaped message that did not come through ingest: it gets its record now.
            self.deps.store.put_record(self.record)
            begun = begin()
        self.began_as = begun.attempts
        self.network_only = any(step.name == TAMPER_LOOP_STEP for step in begun.steps)
        return begun

    def _episode(self) -> IsolationRecord | None:
        """The unreleased episode the instance is in: its latest record that changed it, as the service's
        own table says (consistent reads of the instance's slot, then of that record), when it is another
        isolation's and not RELEASED. This isolation carries its prior state and evidence. Nothing read
        from the instance (its `ec2-isolation:id` tag above all) decides it."""
        latest = self.deps.store.latest_changed_id(self.record.target)
        if latest is None or latest == self.record.isolation_id:
            return None
        earlier = self._after_release(latest)
        if earlier is None or earlier.prior_state is None or earlier.status is Status.RELEASED:
            return None  # a released episode is over: the instance as it is now is all there is
        return earlier

    def _after_release(self, isolation_id: str) -> IsolationRecord | None:
        """The record `isolation_id`, once no release of it is running: this isolation took the slot
        from it, and the release stops before its next step (`worker.release`); wait for that, briefly,
        so that the two never change the instance at the same time."""
        item = None

        def stopped() -> bool:
            nonlocal item
            item = self.deps.store.item(isolation_id)
            return (
                item is None
                or not lifecycle.RELEASE_RUNNING.holds(item)
                or lifecycle.UNLEASED.holds(item, now=time.time())
            )

        consistency.wait_for(
            stopped,
            budget_seconds=self.deps.settings.CONSISTENCY_WAIT_SECONDS,
            first_delay=RELEASE_WAIT_FIRST_SECONDS,
            max_delay=1.0,
            sleep=self.deps.sleep,
            code="ReleaseInProgress",
            message=f"the release of {isolation_id} is still stopping",
        )
        return None if item is None else self.deps.store.as_record(item)

    def _duplicate(self, record: IsolationRecord) -> Outcome:
        logger.info("record already ended: nothing to do", extra={"status": record.status.value})
        # The record's end frees the instance's slot in the same transaction; this makes sure of it for a
        # record that ended some other way. Best effort: a request that finds the slot held by an ended
        # isolation frees it itself, so a failure here never sends the message to the DLQ.
        try:
            self.deps.store.release_slot(record)
        except Exception:
            logger.warning("could not free the slot of an ended isolation", exc_info=True)
        return Outcome.DUPLICATE

    def _record_exempted(self, exemption: Exemption) -> None:
        message = (
            f"exempted by {exemption.exemption_id} until {exemption.expires_at} (reason: {exemption.reason}): "
            "left untouched; a person can still isolate it through the webhook"
        )
        step = StepRecord.skipped("check-exemption", message)
        self.deps.store.put_record(self.record.model_copy(update={"status": Status.SKIPPED, "steps": [step]}))
        logger.info("exempt: trigger skipped", extra={"exemption_id": exemption.exemption_id})

    def _record_rate_limited(self, limit: int) -> None:
        message = (
            f"{self.record.source.value} triggers started {limit} isolations in account "
            f"{self.record.account_id} this hour already (MaxAutoIsolationsPerHour, per account and "
            "source): left untouched; a person can still isolate it through the webhook"
        )
        self._record_refused(StepRecord.skipped("check-blast-radius", message), Status.SKIPPED, "RateLimited")
        logger.warning("blast-radius budget spent: trigger skipped", extra={"limit": limit})

    def _tamper_loop_step(self, limit: int) -> StepRecord:
        message = (
            f"tamper events re-isolated {self.record.instance_id} {limit} times this hour already "
            "(TamperRepairsPerHour): only its network cut is repaired, the rest is left as the last call "
            "made it; an automation may be undoing the isolation (look at the call in the trigger), then "
            "isolate it through the webhook"
        )
        logger.warning("tamper-repair budget spent: only the network cut is repaired", extra={"limit": limit})
        return StepRecord.failed(TAMPER_LOOP_STEP, message)

    def _end_tamper_loop(self) -> Outcome:
        """The network cut repaired past the budget: the record ends FAILED `TamperLoop`."""
        [step] = [step for step in self.record.steps if step.name == TAMPER_LOOP_STEP][:1] or [
            self._tamper_loop_step(self.deps.settings.TAMPER_REPAIRS_PER_HOUR)
        ]
        current = self.deps.store.get(self.record.isolation_id) or self.record
        self.deps.store.finish(current, Status.FAILED, error=ErrorInfo(code=TAMPER_LOOP, message=step.detail))
        return Outcome.TAMPER_LOOP

    def _record_refused(self, step: StepRecord, status: Status, code: str) -> None:
        """The record of a request a budget refused, written ended: its one `step` says why."""
        error = ErrorInfo(code=code, message=step.detail)
        self.deps.store.put_record(
            self.record.model_copy(update={"status": status, "steps": [step], "error": error})
        )

    def _record_coalesced(self, earlier_id: str) -> None:
        step = StepRecord.already("coalesced", f"isolated less than the coalesce window ago by {earlier_id}")
        # It belongs to the earlier isolation's episode: a release through it (the latest record) restores
        # that episode's prior state.
        earlier = self.deps.store.get(earlier_id)
        episode = (
            {"inherits_from": earlier_id, "prior_state": earlier.prior_state, "evidence": earlier.evidence}
            if earlier is not None
            else {}
        )
        self.deps.store.put_coalesced(
            self.record.model_copy(update={"status": Status.ISOLATED, "steps": [step], **episode}),
            earlier=earlier_id,
        )
        logger.info("coalesced with a recent isolation", extra={"earlier": earlier_id})


@dataclass
class FollowUp(_Receive):
    """The follow-up phase of one isolation, on one receive of its follow-up message: it ends the record."""

    message: FollowUpMessage
    #: The record as `begin_follow_up` left it (None until then).
    record: IsolationRecord | None = None

    @property
    def subject(self) -> IsolationRecord | FollowUpMessage:
        return self.record if self.record is not None else self.message

    def _to_end(self) -> IsolationRecord | None:
        return self.record if self.record is not None else self.deps.store.get(self.message.isolation_id)

    def run(self) -> Outcome:
        with self.acting():
            try:
                outcome = self._run()
            except Exception as exc:
                return self.settle(exc)
            return self.conclude(outcome)

    def _run(self) -> Outcome:
        store = self.deps.store
        try:
            begun, unmet, snapshots_asked_at = store.begin_follow_up(
                self.message.isolation_id, owner=self.owner, lease_seconds=LEASE_SECONDS, final=self.final
            )
        except RecordEnded as ended:
            logger.info("record already ended: nothing to follow up", extra={"status": ended.record.status})
            return Outcome.DUPLICATE
        except RecordMissing:
            # Not a record of this table (a message sent by hand): nothing to follow up, nothing to end.
            logger.error("follow-up of an unknown isolation: acknowledged")
            return Outcome.DUPLICATE
        except LeaseHeld as exc:
            raise RetryableError(
                "IsolationInProgress", "another worker is running this isolation", wait="in-flight"
            ) from exc
        self.record, self.began_as = begun, begun.attempts
        account = self.deps.session(begun.target)
        instance = describe(account.client("ec2"), begun.target)
        ctx = self._context(account, instance, begun)
        ctx.snapshots_asked_at = snapshots_asked_at
        _, journal = self._begun()
        self._read_ahead(FOLLOW_UP.steps, ctx)
        for step in FOLLOW_UP.steps:
            journal.ride(self._step(FOLLOW_UP, step))
        if self.unmet is not None:
            unmet = ErrorInfo(code=self.unmet.code, message=self.unmet.message)
        self.ended = journal.end(Status.ISOLATED if unmet is None else Status.FAILED, error=unmet)
        if unmet is not None:
            logger.warning("isolation incomplete", extra={"code": unmet.code, "error": unmet.message})
            return Outcome.FAILED
        return Outcome.ISOLATED

    def _end_attempt(self) -> None:
        # Gives back this attempt's lease, if it took one; a follow-up counts no attempt of the record.
        self.deps.store.end_attempt(self.message.isolation_id, self.owner, began=True)

    def _attempts(self) -> int:
        if self.began_as is not None:
            return self.began_as
        current = self.deps.store.get(self.message.isolation_id)
        return max(current.attempts if current else 0, 1)

    def _gave_up(self, attempts: int, error: IsolationError) -> str:
        return (
            f"the follow-up gave up after {self.receive_count} receives (the last allowed receive of its "
            f"message; contained, the steps recorded done are in place); last error: {error.message}"
        )


def _count(outcome: Outcome) -> None:
    metrics.add_metric(name=f"Isolation-{outcome.value}", unit=MetricUnit.Count, value=1)
