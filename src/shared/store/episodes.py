"""Episodes: which record of an instance is its latest that changed it, and which instances are isolated
now, both kept on the instance's slot item (`shared.store.slots`) by the writes that make them so.

- `latest_id`: the instance's latest record that changed it (not a dry run, not SKIPPED, not FAILED
  before it wrote a `prior_state`). Set in the transaction of the write that makes a record one: an
  attempt's begin (its `prior_state`, written before the first change), a coalesced record, an
  isolation's ISOLATED end, a release request. An isolation started while that record is not RELEASED
  is in its episode: it takes that record's `prior_state` and evidence and names it in `inherits_from`.
  The record itself, read consistently, says whether the episode is released (a release works on the
  latest record only, so the latest record of a released episode is RELEASED).
- `isolated_in` (the account id): present while the instance's latest record is in flight, ISOLATED,
  or FAILED `TamperLoop` with its network cut in place (`IsolationRecord.watched`). Set with `latest_id`
  by an attempt's begin (the network cut may be made by then: a call that undoes it while the record is
  in flight is seen, and waits for it to end), an ISOLATED end or a coalesced record; removed by a
  release request and by any other FAILED end of the latest record. It keys
  the sparse `isolated-now` index (`isolated_in`, `pk`): the tamper watch's way from an account (and
  region) to the instances isolated there, never a filtered read of history. The index is eventually
  consistent: every candidate is confirmed with consistent reads of its slot and record.

Nothing read from the instance (its `ec2-isolation:id` tag above all) takes part.

An upgraded deployment's slots have neither: `seed` fills a slot from the instance's records (the
`by-instance` index, read once: the next write that changes the instance sets `latest_id` itself), and
the sweeper's `backfill` fills every slot once, then marks the table done (`BACKFILLED`).
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import shared.store.slots as slots
from shared.lifecycle import EqualsParam, Missing, Status
from shared.models import IsolationRecord, Target
from shared.store.dynamo import Write, epoch, key, updated_if
from shared.store.slots import ISOLATED_IN, LATEST, slot_key
from shared.store.table import RecordTable

#: The sparse index of the slots of instances isolated now: hash `isolated_in` (the account), range `pk`
#: (`instance#<account>#<region>#<instance>`, so a region is a key prefix).
ISOLATED_INDEX = "isolated-now"
#: The item that says every slot has been filled from the records (an upgrade's backfill is done).
BACKFILLED = "episodes#backfilled"

#: The slot names no latest record yet (an upgraded deployment's slot, or an instance never changed).
UNKNOWN = Missing(LATEST)
#: The slot's latest record is `latest`.
LATEST_IS = EqualsParam(LATEST, "latest")


def changed_by(table: str, target: Target, isolation_id: str) -> dict[str, Any]:
    """The slot update of a write that makes `isolation_id` the instance's latest record that changed it
    (an attempt's begin): the instance is among those isolated now until the record ends other than
    ISOLATED."""
    write = _isolated(target, isolation_id, None, {})
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def _isolated(target: Target, isolation_id: str, condition: Any, params: dict[str, Any]) -> Write:
    return Write(
        f"{LATEST} = :latest",
        f"{ISOLATED_IN} = :where",
        condition=condition,
        params=params,
        latest=isolation_id,
        where=target.account_id,
    )


def coalesced(table: str, target: Target, isolation_id: str, *, earlier: str) -> dict[str, Any]:
    """The slot update of a coalesced record: it becomes the latest of the episode of `earlier`, as long
    as `earlier` is still the latest (or the slot names none: an upgraded one)."""
    write = _isolated(target, isolation_id, UNKNOWN | EqualsParam(LATEST, "earlier"), {"earlier": earlier})
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def failed(table: str, target: Target, isolation_id: str) -> dict[str, Any]:
    """The update that takes the instance out of those isolated now when its latest record, `isolation_id`,
    ended FAILED (refused when another record is the latest: nothing to do)."""
    write = Write(remove=(ISOLATED_IN,), condition=LATEST_IS, params={"latest": isolation_id})
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def seed(table: str, target: Target, latest: str, *, isolated: bool) -> dict[str, Any]:
    """The update that fills a slot that names no latest record from the records (an upgrade); refused
    when a write of this version filled it meanwhile."""
    if isolated:
        write = _isolated(target, latest, UNKNOWN, {})
    else:
        write = Write(f"{LATEST} = :latest", condition=UNKNOWN, latest=latest)
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def isolated_query(table: str, account_id: str, region: str | None) -> dict[str, Any]:
    """The Query of the `isolated-now` index for the account's slots (of `region` only, when given)."""
    params: dict[str, Any] = {
        "TableName": table,
        "IndexName": ISOLATED_INDEX,
        "KeyConditionExpression": f"{ISOLATED_IN} = :where",
        "ExpressionAttributeValues": {":where": {"S": account_id}},
    }
    if region is not None:
        params["KeyConditionExpression"] += " AND begins_with(pk, :prefix)"
        params["ExpressionAttributeValues"][":prefix"] = {"S": f"instance#{account_id}#{region}#"}
    return params


def backfilled(table: str, *, at: Decimal) -> dict[str, Any]:
    """The put that marks the upgrade's backfill done."""
    return {"TableName": table, "Item": {"pk": {"S": BACKFILLED}, "at": {"N": str(at)}}}


def changed_the_instance(record: IsolationRecord) -> bool:
    """The record changed the instance, or may have: it wrote a `prior_state` (before its first change)
    and is not a dry run, SKIPPED or CHECKED. The instance's latest such record is its episode's."""
    if record.dry_run or record.status in (Status.SKIPPED, Status.CHECKED):
        return False
    return record.prior_state is not None


#: Tables whose backfill was seen done (it is never undone): the mark is read once per environment.
_BACKFILLED_TABLES: set[str] = set()


def forget_backfilled() -> None:
    """Forget which tables were seen backfilled (a new table of the same name: tests, the local stack)."""
    _BACKFILLED_TABLES.clear()


class EpisodeReads(RecordTable):
    """The episode half of `shared.store.IsolationStore`."""

    def latest_changed_id(self, target: Target) -> str | None:
        """The id of the instance's latest record that changed it, from its slot (a consistent read; a
        slot of an upgraded deployment is filled from the instance's records first, once)."""
        slot = self.item(slot_key(target)) or {}
        latest = slot.get(LATEST)
        return str(latest) if latest else self._seed(target)

    def latest(self, target: Target) -> IsolationRecord | None:
        """The instance's latest record: the isolation in flight (QUEUED or IN_PROGRESS, holding its slot),
        else its latest record that changed it; both from consistent reads of the service's table."""
        slot = self.item(slot_key(target)) or {}
        holder = slot.get("active_id")
        if holder and slot.get("active_kind") != slots.RELEASE:
            running = self.get(str(holder))
            if running is not None and running.status in (Status.QUEUED, Status.IN_PROGRESS):
                return running
        latest = slot.get(LATEST) or self._seed(target)
        return self.get(str(latest)) if latest else None

    def isolated_now(self, account_id: str, region: str | None = None) -> list[IsolationRecord]:
        """The latest record of each instance of the account (of `region` only, when given) that is
        isolated now (`IsolationRecord.watched`: ISOLATED, in flight, or FAILED `TamperLoop` with its
        network cut in place). Found through the sparse `isolated-now` index, each confirmed with
        consistent reads of its slot and record."""
        found: list[IsolationRecord] = []
        for candidate in self._query(isolated_query(self.table_name, account_id, region), None):
            slot = self.item(str(candidate["pk"])) or {}
            latest = slot.get(LATEST)
            if slot.get(ISOLATED_IN) != account_id or not latest:
                continue  # taken out since the index saw it
            record = self.get(str(latest))
            if record is not None and record.watched:
                found.append(record)
        return found

    def backfill_episodes(self) -> int:
        """Fill every slot that names no latest record from the instance's records (an upgraded
        deployment), then mark the table done; once done, one read. The number of slots filled."""
        if self._backfill_done():
            return 0
        latest: dict[Target, IsolationRecord] = {}
        for record in self.every_record():
            known = latest.get(record.target)
            if changed_the_instance(record) and (known is None or _newer(record, known)):
                latest[record.target] = record
        filled = sum(self._fill(target, record) for target, record in latest.items())
        self.client.put_item(**backfilled(self.table_name, at=epoch(time.time())))
        _BACKFILLED_TABLES.add(self.table_name)
        return filled

    def _seed(self, target: Target) -> str | None:
        """An upgraded deployment's slot: its latest record that changed the instance, from the
        `by-instance` index (eventually consistent, read once: the slot names it from now on)."""
        if self._backfill_done():
            return None  # every slot of the table was filled: this instance has no such record
        for record in self.list_for_instance(target.instance_id, target.account_id):
            if record.region == target.region and changed_the_instance(record):
                self._fill(target, record)
                return record.isolation_id
        return None

    def _fill(self, target: Target, record: IsolationRecord) -> bool:
        request = seed(
            self.table_name, target, record.isolation_id, isolated=record.status is Status.ISOLATED
        )
        return updated_if(self.client, request)

    def _backfill_done(self) -> bool:
        if self.table_name not in _BACKFILLED_TABLES and self.item(BACKFILLED) is not None:
            _BACKFILLED_TABLES.add(self.table_name)
        return self.table_name in _BACKFILLED_TABLES


def _newer(record: IsolationRecord, than: IsolationRecord) -> bool:
    return (record.created_at, record.isolation_id) > (than.created_at, than.isolation_id)
