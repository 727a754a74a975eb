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
3. begin: the IN_PROGRESS write with `prior_state` and the network cut's plan (`network.planned_cut`),
   the only write before the first change (with it, in one transaction, the record becomes the
   instance's latest that changed it). An instance whose latest
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

Both are receives (`worker.receive.Receive`): the same error boundary (`settle`), log keys (`acting`) and
last-receive handling; an isolation's record that a failure ends ends FAILED, and on the last receive it
is resumable (a DLQ redrive runs it again).
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared import lifecycle, unended
from shared.aws import AccountSession
from shared.errors import (
    IsolationError,
    PermanentError,
    RetryableError,
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
from shared.observability import logger
from shared.store import (
    Coalesced,
    Exempted,
    Exists,
    Joined,
    LeaseHeld,
    RateLimited,
    RecordEnded,
    RecordMissing,
    RepairsSpent,
)
from shared.store.isolation_groups import GroupClaim
from worker import at_once, consistency, dry_run, receive
from worker.admission import admit
from worker.instance import Instance, describe
from worker.journal import StepJournal
from worker.procedures import CONTAINMENT, FOLLOW_UP, HOLD, Procedure
from worker.receive import Outcome, Receive
from worker.steps import Step, StepContext, network
from worker.steps.base import Plan

#: The step a tamper repair past its budget records first (the record then ends FAILED `TamperLoop`).
TAMPER_LOOP_STEP = "check-tamper-repairs"
#: The first wait for a release that an isolation took the instance's slot from to stop.
RELEASE_WAIT_FIRST_SECONDS = 0.1


@dataclass(kw_only=True)
class _Receive(Receive):
    """What both phases of an isolation share: the begun record's steps, and how a failure ends it."""

    #: A part of the containment that could not be put in place (the record ends FAILED with it).
    unmet: PermanentError | None = None
    #: The steps' context and where their outcomes go, once the record is begun (`_context`).
    ctx: StepContext | None = None
    journal: StepJournal | None = None
    #: The plans a phase made ahead (`_plan_ahead`), until each step's run applies its own.
    plans: dict[type[Step], Plan] = field(default_factory=dict)

    @property
    @abstractmethod
    def subject(self) -> IsolationRecord | FollowUpMessage:
        """The isolation this receive is about (its id, source and target), as far as it is known."""

    @abstractmethod
    def _to_end(self) -> IsolationRecord | None:
        """The record a failure ends (None: there is none to end)."""

    def _log_keys(self) -> dict[str, Any]:
        subject = self.subject
        return {
            "isolation_id": subject.isolation_id,
            "account_id": subject.account_id,
            "instance_id": subject.instance_id,
            "source": subject.source.value,
        }

    def _target(self) -> Target:
        return self.subject.target

    def _give_up(self, error: IsolationError) -> None:
        # The record as this receive's writes left it, or (it may not have begun it) as stored, read once:
        # its attempts, and what an earlier attempt planned and left no outcome of.
        stored = (
            self.journal.record
            if self.journal is not None
            else self.deps.store.get(self.subject.isolation_id)
        )
        attempts = self._attempts(stored)
        message = self._gave_up(attempts, error) + (unended.unrecorded(stored) if stored else "")
        self._end_failed(ErrorInfo(code=error.code, message=message), resumable=True, attempts=attempts)

    def _gave_up(self, attempts: int, error: IsolationError) -> str:
        return (
            f"gave up after {attempts} attempts (the last allowed receive of its message); "
            f"last error: {error.message}"
        )

    def _attempts(self, current: IsolationRecord | None = None) -> int:
        """The record's attempts, this one included. One that failed before `begin_attempt` is counted
        here; so is every receive of the message (a trigger's earlier receives may have failed before its
        record existed). `current`: the record as stored, when the caller read it (else it is read)."""
        if self.began_as is not None:
            return self.began_as
        current = current or self.deps.store.get(self.subject.isolation_id)
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
        planned_now: list[str] | None = None,
    ) -> StepContext:
        """The begun record's step context and journal. `planned_now`: the steps the begin itself put
        on record as planned (the rest of `begun.planned` is earlier attempts')."""
        journal = self.journal = StepJournal(self.deps.store, begun)
        earlier = Counter(begun.planned) - Counter(planned_now or ())
        recorded = {step.name for step in begun.steps}
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
            # A dry run changes nothing: no plan of it is put on record.
            planned=None if begun.dry_run else frozenset(begun.planned),
            planned_earlier=frozenset(earlier) - recorded,
        )
        return self.ctx

    def _plan_ahead(self, steps: tuple[type[Step], ...]) -> None:
        """Every step of the phase planned before any of them changes anything (side by side: a plan only
        reads), and the plans on record in one write (their prior values, and which steps will change
        something: `StepContext.note_plans`); each step's run applies its own. A step whose plan fails
        plans again in its run (which records the failure as its own): one step's failing read never
        stops another."""
        ctx, _ = self._begun()

        def plan(step_class: type[Step]) -> Plan | None:
            try:
                return step_class().plan(ctx)
            except Exception as exc:
                logger.warning(
                    "not planned ahead: the step plans again in its run",
                    extra={"step": step_class.name, "error": str(exc)},
                )
                return None

        planned = zip(steps, at_once.each_at_once(plan, list(steps)), strict=True)
        plans = {step_class: plan for step_class, plan in planned if plan is not None}
        ctx.note_plans(plans)
        self.plans |= plans

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

        return procedure.perform(
            step_class,
            ctx,
            record_failed=journal.failed,
            incomplete=incomplete,
            plan=self.plans.pop(step_class, None),
        )


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
        # The network cut's plan rides with the begin (a dry run plans nothing on record).
        planned = (
            [] if self.record.dry_run else network.planned_cut(self.record.target, instance, self.groups_seen)
        )
        try:
            begun = self._begin(instance, planned)
        except RecordEnded as ended:
            return self._duplicate(ended.record)
        except LeaseHeld as exc:
            raise RetryableError(
                "IsolationInProgress", "another worker is running this isolation", wait="in-flight"
            ) from exc
        ctx = self._context(account, instance, begun, groups_seen=self.groups_seen, planned_now=planned)
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

    def plan_hold(self) -> None:
        """Every step of `HOLD` planned, on record in one write before any of them changes anything
        (after the network cut: the cut never waits on these IAM and Auto Scaling reads)."""
        self._plan_ahead(HOLD.steps)

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

    def _begin(self, instance: Instance, planned: list[str]) -> IsolationRecord:
        episode = self.episode_ahead.result() if self.episode_ahead is not None else self._episode()

        def begin() -> IsolationRecord:
            return self.deps.store.begin_attempt(
                self.record.isolation_id,
                owner=self.owner,
                lease_seconds=receive.LEASE_SECONDS,
                prior_state=episode.prior_state if episode else instance.state,
                final=self.final,
                inherits_from=episode.isolation_id if episode else None,
                evidence=episode.evidence if episode else None,
                # A dry run changes nothing: it is never an episode's latest record.
                target=None if self.record.dry_run else self.record.target,
                # On its message's first receive the record is as the message (or `_open`) wrote it,
                # unless another attempt began it meanwhile: the begin's condition tells.
                queued=self.record if self.receive_count == 1 else None,
                planned=planned,
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

    #: A follow-up counts no attempt of the record (it gives its lease back, if it took one).
    counts_attempts: ClassVar[bool] = False

    message: FollowUpMessage
    #: The record as `begin_follow_up` left it (None until then).
    record: IsolationRecord | None = None

    @property
    def subject(self) -> IsolationRecord | FollowUpMessage:
        return self.record if self.record is not None else self.message

    def _to_end(self) -> IsolationRecord | None:
        return self.record if self.record is not None else self.deps.store.get(self.message.isolation_id)

    def run(self) -> Outcome:
        return self._whole(self._run)

    def _run(self) -> Outcome:
        store = self.deps.store
        try:
            begun, unmet, snapshots_asked_at = store.begin_follow_up(
                self.message.isolation_id,
                owner=self.owner,
                lease_seconds=receive.LEASE_SECONDS,
                final=self.final,
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
        self._plan_ahead(FOLLOW_UP.steps)
        for step in FOLLOW_UP.steps:
            journal.ride(self._step(FOLLOW_UP, step))
        if self.unmet is not None:
            unmet = ErrorInfo(code=self.unmet.code, message=self.unmet.message)
        self.ended = journal.end(Status.ISOLATED if unmet is None else Status.FAILED, error=unmet)
        if unmet is not None:
            logger.warning("isolation incomplete", extra={"code": unmet.code, "error": unmet.message})
            return Outcome.FAILED
        return Outcome.ISOLATED

    def _attempts(self, current: IsolationRecord | None = None) -> int:
        if self.began_as is not None:
            return self.began_as
        current = current or self.deps.store.get(self.message.isolation_id)
        return max(current.attempts if current else 0, 1)

    def _gave_up(self, attempts: int, error: IsolationError) -> str:
        return (
            f"the follow-up gave up after {self.receive_count} receives (the last allowed receive of its "
            f"message; contained, the steps recorded done are in place); last error: {error.message}"
        )
