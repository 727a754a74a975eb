"""Where a procedure's step outcomes go, and when: the attempt's journal of one record (`StepJournal`), or
of one release (`ReleaseJournal`: the record's `release.steps`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from shared import lifecycle
from shared.errors import PermanentError
from shared.lifecycle import Status, Transition
from shared.models import ErrorInfo, Evidence, IsolationRecord, StepRecord, iso8601, utcnow
from shared.observability import logger
from shared.store import IsolationStore, ReleaseEnd


@dataclass
class StepJournal:
    """Decides when step outcomes are written: one write per phase where it can. A phase's plans go on
    record in one write before its first change (`remember`: the prior values they read and the steps
    that will change something, with whatever rode along; the network cut's ride with the begin), and
    the outcomes of its steps ride with the next write: nothing is written between the begin and the
    network cut (the containment steps ride with `contained_at`); the follow-up's (and the evidence)
    ride with the final status. A failed step is written at once with whatever rode along. An outcome
    is never needed to undo a change (a release reads the prior state, written first): a crash before
    it rides loses only the outcome, and the retry finds the change in place, which the record names as
    planned (`done`). The steps of `HOLD` run side by side: each but the last done is written as soon
    as it is done (riding with the hand-over, it would wait for the other); the last rides with the
    hand-over, made at once (`Attempt.hold`).

    A dry run's checks go through the same journal: what they read of the prior state is written before
    the next outcome, and `end` ends the record CHECKED or FAILED.

    The journal keeps the record as its writes left it (`record`, from the begin on): the follow-up's
    and the dry run's outcome event is the record it ended, not read back.
    """

    store: IsolationStore
    #: The record as the attempt's last write left it.
    record: IsolationRecord
    unwritten: list[StepRecord] = field(default_factory=list)
    #: The episode's evidence, once a step kept it, until it rides with a write.
    evidence: Evidence | None = None
    #: When the phase will ask for snapshots, until it rides with a write; then `asked` is true.
    asking_at: str | None = None
    asked: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def isolation_id(self) -> str:
        return self.record.isolation_id

    def contained(self, steps: list[StepRecord], *, isolation_groups: dict[str, str] | None = None) -> None:
        contained_at = iso8601(utcnow())
        with self._lock:
            self.record = self.store.add_steps(
                self.isolation_id,
                [*self.unwritten, *steps],
                contained_at=contained_at,
                isolation_groups=isolation_groups or None,
            )
            self.unwritten = []
        logger.info("contained", extra={"contained_at": contained_at})

    def held(self, step: StepRecord) -> None:
        """A step of `HOLD` done, not the last: on record now."""
        with self._lock:
            self.record = self.store.add_steps(self.isolation_id, [*self.unwritten, step])
            self.unwritten = []

    def hand_over(self, owner: str, unmet: PermanentError | None) -> bool:
        error = ErrorInfo(code=unmet.code, message=unmet.message) if unmet is not None else None
        with self._lock:
            handed = self.store.hand_over(self.isolation_id, owner, self.unwritten, unmet=error)
            self.unwritten = []
        return handed

    def ride(self, step: StepRecord) -> None:
        """A step done: it rides with the next write (the hand-over; in the follow-up, the write before
        its snapshots or the final status)."""
        with self._lock:
            self.unwritten.append(step)

    def remember(self, prior: dict[str, Any], planned: list[str]) -> None:
        """Prior-state fields the phase's steps read and the steps that will change something, written
        before their changes (with whatever rode along)."""
        with self._lock:
            self._write(prior=prior, planned=planned)

    def _write(self, steps: list[StepRecord] | None = None, **fields: Any) -> None:
        """One write of the record: the outcomes not written yet (then `steps`), what rides along (the
        evidence, when the phase will ask for snapshots) and `fields`. Call under the lock."""
        self.record = self.store.add_steps(
            self.isolation_id,
            [*self.unwritten, *(steps or [])],
            evidence=self.evidence,
            snapshots_asked_at=self.asking_at,
            **fields,
        )
        self.asked = self.asked or self.asking_at is not None
        self.unwritten, self.evidence, self.asking_at = [], None, None

    def keep_evidence(self, evidence: Evidence) -> None:
        """The episode's evidence: it rides with the next write, like an outcome (a retry after a crash
        finds the snapshots the record does not name: `snapshots_asked_at`, on record before they were
        asked for)."""
        with self._lock:
            self.evidence = evidence

    def will_ask_snapshots(self, at: str) -> None:
        with self._lock:
            self.asking_at = at

    def asking_snapshots(self, at: str) -> None:
        with self._lock:
            if self.asked:
                return  # on record with the phase's prior values
            self.asking_at = self.asking_at or at
            self._write()

    def failed(self, step: StepRecord) -> None:
        """A step failed: on record now, with whatever rode along."""
        with self._lock:
            self._write([step])

    def end(
        self, status: Status, *, error: ErrorInfo | None = None, transition: Transition = lifecycle.END
    ) -> IsolationRecord | None:
        """End the record `status` (by `transition`), with what rides along: the record as ended, or
        None when it had ended already (another attempt or the sweeper ended it)."""
        stamp = iso8601(utcnow())
        with self._lock:
            record, steps, evidence = self.record, self.unwritten, self.evidence
            self.unwritten, self.evidence = [], None
            ended = self.store.finish(
                record,
                status,
                error=error,
                extra_steps=steps,
                evidence=evidence,
                stamp=stamp,
                transition=transition,
            )
        if not ended:
            return None
        changes = {"status": status, "error": error, "steps": [*record.steps, *steps], "updated_at": stamp}
        return record.model_copy(update=changes | ({"evidence": evidence} if evidence is not None else {}))


@dataclass
class ReleaseJournal:
    """Where a release's step outcomes go, and when: the record's `release.steps`, each on record as soon
    as its step ends (a release's progress, step by step: `watch` shows it), a failed one at once; `end`
    ends the release (RELEASED, RELEASE_FAILED, or `Superseded`) with its instance's slot freed.

    A release step writes no prior state and no evidence (the release reads the episode's, and keeps
    it): the journal is the notes its steps are given, and refuses both."""

    store: IsolationStore
    #: The record as the release's begin left it.
    record: IsolationRecord

    def done(self, step: StepRecord) -> None:
        """A release step ended: on record now."""
        self.store.add_release_steps(self.record.isolation_id, [step])

    #: A release step failed: on record now too (the release then ends).
    failed = done

    def end(
        self,
        status: Status,
        *,
        error: ErrorInfo | None = None,
        transition: Transition = lifecycle.END_RELEASE,
    ) -> ReleaseEnd:
        """End the release `status` (by `transition`) and free the instance's slot: ENDED, ALREADY (another
        attempt or the sweeper ended it) or SUPERSEDED (RELEASED only: an isolation took the slot)."""
        return self.store.end_release(self.record, status, error=error, transition=transition)

    def remember(self, prior: dict[str, Any], planned: list[str]) -> None:
        raise AssertionError("a release step never writes the prior state")

    def keep_evidence(self, evidence: Evidence) -> None:
        raise AssertionError("a release step never takes evidence")

    def asking_snapshots(self, at: str) -> None:
        raise AssertionError("a release step never takes evidence")

    def will_ask_snapshots(self, at: str) -> None:
        raise AssertionError("a release step never takes evidence")
