"""Releases: the writes that undo an isolation's record (`shared.lifecycle` declares which are allowed).

A release request is one transaction: the record becomes RELEASING with its `release` (who asked, why,
when; steps to come) and the instance's slot is taken for the release (`shared.store.slots`), which also
forgets the last isolation, so a trigger after a release isolates again. An isolation requested while the
release runs takes the slot over; the release's worker sees it (`release_held`) and ends the release
RELEASE_FAILED `Superseded`. The release's end and the slot's release are one transaction too.

Which record is the episode's latest comes from the instance's slot (`shared.store.episodes`), read
consistently: never from an index alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import ClientError

import shared.store.episode_ends as episode_ends
import shared.store.record_ends as record_ends
import shared.store.record_leases as record_leases
import shared.store.slots as slots
from shared import lifecycle, unended
from shared.lifecycle import Status, Transition
from shared.models import (
    ErrorInfo,
    IsolationRecord,
    ReleaseInfo,
    StepRecord,
    iso8601,
    utcnow,
)
from shared.store.dynamo import Refused, Write, epoch, key, query_items, refusals, updated_if
from shared.store.episodes import EpisodeReads
from shared.store.record_ends import Ended, end_with_slot
from shared.store.record_leases import LeaseHeld

#: The error codes of a release that did not finish.
SUPERSEDED = "Superseded"


@dataclass(frozen=True)
class ReleaseRequested:
    record: IsolationRecord


@dataclass(frozen=True)
class NotReleasable:
    """The record cannot be released in its current `status` (as the refused write read it)."""

    status: Status
    record: IsolationRecord
    dry_run: bool = False


@dataclass(frozen=True)
class InstanceBusy:
    """Another isolation (or release) of the instance holds its slot: `holder`."""

    holder: str


class ReleaseEnd(StrEnum):
    ENDED = "ended"
    #: The record had ended already (another worker, or the sweeper).
    ALREADY = "already"
    #: An isolation took the instance's slot over: the release did not end RELEASED.
    SUPERSEDED = "superseded"


class ReleaseWrites(EpisodeReads):
    """The release half of `shared.store.IsolationStore` (an instance's latest record: `EpisodeReads`)."""

    def release_slot(self, record: IsolationRecord) -> None:
        """Free the instance's slot if this ended isolation still holds it; touch nothing otherwise.

        Every way a record ends frees the slot in the same transaction; a redelivered message of an
        ended record calls this anyway, so that no slot outlives its isolation whatever happened.
        """
        isolated_at = epoch(time.time()) if record.status is Status.ISOLATED else None
        updated_if(
            self.client,
            slots.release(self.table_name, record.target, record.isolation_id, isolated_at=isolated_at),
        )

    # --- ingest --------------------------------------------------------------------------------------

    def latest_of_episode(self, record: IsolationRecord) -> IsolationRecord | None:
        """The instance's latest record (`shared.store.episodes`: the isolation in flight, else the
        latest record that changed the instance), from consistent reads; None when there is none."""
        return self.latest(record.target)

    def request_release(
        self, record: IsolationRecord, release: ReleaseInfo, *, lease_seconds: int
    ) -> ReleaseRequested | NotReleasable | InstanceBusy:
        """`lifecycle.REQUEST_RELEASE` and the instance's slot for the release, in one transaction. A slot
        still held by an isolation that is over is freed, and the write tried once more."""
        for retry in (False, True):
            outcome = self._request_release(record, release, lease_seconds)
            if not isinstance(outcome, InstanceBusy) or retry:
                return outcome
            holder = self.item(outcome.holder)
            if holder is None or not lifecycle.ended(holder) or lifecycle.RELEASE_RUNNING.holds(holder):
                return outcome
            self.release_slot(self.as_record(holder))
        raise AssertionError("unreachable: the second try returns")

    def _request_release(
        self, record: IsolationRecord, release: ReleaseInfo, lease_seconds: int
    ) -> ReleaseRequested | NotReleasable | InstanceBusy:
        now = time.time()
        write = Write(
            "#s = :releasing",
            "updated_at = :stamp",
            "#r = :release",
            remove=("resumable", "released_at"),
            condition=lifecycle.REQUEST_RELEASE.guard,
            releasing=Status.RELEASING.value,
            stamp=iso8601(utcnow()),
            release=release.model_dump(mode="json"),
        )
        items = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": key(record.isolation_id),
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    **write.request(),
                }
            },
            {
                "Update": slots.take_for_release(
                    self.table_name,
                    record.target,
                    record.isolation_id,
                    now=epoch(now),
                    stale=epoch(now - lease_seconds),
                )
            },
        ]
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            refused = refusals(exc)
            if refused.refused(0):
                current = refused.item(0) or self.item(record.isolation_id)
                if current is None:
                    raise
                return NotReleasable(
                    Status(current["status"]), self.as_record(current), dry_run=bool(current.get("dry_run"))
                )
            if refused.refused(1):
                holder = refused.item(1) or self.item(slots.slot_key(record.target))
                return InstanceBusy(str((holder or {}).get("active_id", "unknown")))
            raise
        updated = record.model_copy(update={"status": Status.RELEASING, "release": release})
        return ReleaseRequested(updated)

    # --- worker --------------------------------------------------------------------------------------

    def begin_release(
        self, isolation_id: str, *, owner: str, lease_seconds: int, final: bool
    ) -> IsolationRecord | None:
        """`lifecycle.BEGIN_RELEASE`: take the record's lease for this release attempt. None when the
        record is not RELEASING (nothing to do); raises `LeaseHeld` while another attempt holds it."""
        write = record_leases.taking(
            lifecycle.BEGIN_RELEASE, owner=owner, lease_seconds=lease_seconds, final=final
        )
        try:
            item = self.update_record(isolation_id, write)
        except Refused as refused:
            current = refused.current
            if current is None or current.get("status") != Status.RELEASING.value:
                return None
            raise LeaseHeld(isolation_id) from refused
        return self.as_record(item)

    def add_release_steps(self, isolation_id: str, steps: list[StepRecord]) -> None:
        write = Write(
            "#r.steps = list_append(#r.steps, :steps)",
            "updated_at = :stamp",
            steps=[step.model_dump(mode="json") for step in steps],
            stamp=steps[-1].at if steps else iso8601(utcnow()),
        )
        self.client.update_item(TableName=self.table_name, Key=key(isolation_id), **write.request())

    def release_held(self, record: IsolationRecord) -> bool:
        """True while the release of `record` still holds the instance's slot (no isolation took it)."""
        slot = self.item(slots.slot_key(record.target)) or {}
        return slots.HELD_BY_RELEASE.holds(slot, id=record.isolation_id)

    def end_release(
        self,
        record: IsolationRecord,
        status: Status,
        *,
        error: ErrorInfo | None = None,
        extra_steps: list[StepRecord] | None = None,
        transition: Transition = lifecycle.END_RELEASE,
        now: float | None = None,
    ) -> ReleaseEnd:
        """End the release (`transition`) and free the instance's slot, in one transaction.

        RELEASED needs the slot still held by the release: when an isolation took it over, nothing is
        written and the answer is `SUPERSEDED`. RELEASE_FAILED ends the record whoever holds the slot.
        """
        moment = time.time() if now is None else now
        ending = self._release_ending(record, status, transition, error, extra_steps, moment)
        free = slots.release_after_release(self.table_name, record.target, record.isolation_id)
        ended = end_with_slot(self.client, ending, free)
        if ended is Ended.WITH_SLOT:
            return ReleaseEnd.ENDED
        if ended is Ended.ALREADY:
            return ReleaseEnd.ALREADY
        if status is Status.RELEASED:
            return ReleaseEnd.SUPERSEDED
        if not updated_if(self.client, ending):
            return ReleaseEnd.ALREADY
        return ReleaseEnd.ENDED

    def end_episode(self, isolation_id: str) -> list[str]:
        """End the earlier records of the episode the RELEASED record `isolation_id` released
        (`shared.store.episode_ends`), then take its mark off; the ids ended. Nothing to do (`[]`) when
        the record is not RELEASED or its episode was ended already. Safe to run again, and beside
        another run: every write is conditional."""
        releasing = self.item(isolation_id)
        if releasing is None or not lifecycle.EPISODE_UNENDED.holds(releasing):
            return []
        query = episode_ends.earlier_query(self.table_name, releasing)
        done = [
            str(item["pk"])
            for item in episode_ends.earlier_records(query_items(self.client, query), releasing)
            if self._end_with_episode(item, releasing)
        ]
        updated_if(self.client, episode_ends.ended(self.table_name, isolation_id))
        return done

    def _end_with_episode(self, item: dict[str, Any], releasing: dict[str, Any]) -> bool:
        """`lifecycle.END_WITH_EPISODE` for one earlier record, as long as its status is the one read. An
        index lags behind the table: a record it shows in flight, or whose write was refused, is read
        again (consistently) and ended when it is releasable now."""
        guard = lifecycle.END_WITH_EPISODE.guard
        pk = str(item["pk"])
        current = item if guard.holds(item) else self.item(pk)
        for _ in range(2):
            if current is None or not guard.holds(current):
                return False
            ending = episode_ends.ending(self.table_name, current, releasing, stamp=iso8601(utcnow()))
            if updated_if(self.client, ending):
                return True
            current = self.item(pk)
        return False

    def unended_episodes(self) -> list[str]:
        """The RELEASED records whose episode's earlier records are still to be ended (a release whose
        worker stopped before it ended them), from the `by-final-lease` index."""
        query = episode_ends.unended_query(self.table_name)
        return [str(item["pk"]) for item in query_items(self.client, query)]

    def end_release_lost(self, record: IsolationRecord, *, now: float) -> bool:
        """`lifecycle.END_RELEASE_LOST`: the release's worker was lost on its message's last receive."""
        return self._end_release_swept(record, unended.worker_lost(record), lifecycle.END_RELEASE_LOST, now)

    def end_release_dead_lettered(self, record: IsolationRecord, *, now: float) -> bool:
        """`lifecycle.END_RELEASE_DEAD_LETTERED`: the release's message is in the DLQ and no attempt holds
        the record."""
        return self._end_release_swept(
            record, unended.dead_lettered(record), lifecycle.END_RELEASE_DEAD_LETTERED, now
        )

    def _end_release_swept(
        self, record: IsolationRecord, error: ErrorInfo, transition: Transition, now: float
    ) -> bool:
        ended = self.end_release(record, Status.RELEASE_FAILED, error=error, transition=transition, now=now)
        return ended is ReleaseEnd.ENDED

    def _release_ending(
        self,
        record: IsolationRecord,
        status: Status,
        transition: Transition,
        error: ErrorInfo | None,
        extra_steps: list[StepRecord] | None,
        now: float,
    ) -> dict[str, Any]:
        stamp = iso8601(utcnow())
        released = status is Status.RELEASED
        # A RELEASED record keeps `final_attempt` and `lease_until` as the mark of its episode's end.
        write = record_ends.ending(
            transition,
            status,
            now=now,
            stamp=stamp,
            error=error,
            steps=extra_steps,
            under="#r.",
            keep_lease_mark=released,
        )
        if released:
            write.set("released_at = :stamp")
            episode_ends.marking(write, ended=epoch(now))
        return {"TableName": self.table_name, "Key": key(record.isolation_id), **write.request()}
