"""Isolation records: the record of an isolation, as stored and as served, and every write that moves
it along its lifecycle (`shared.lifecycle` declares which moves are allowed and when).

| item | pk | module |
|---|---|---|
| isolation record | `iso-<hex>` | this one: the served record plus the attempt's lease (`shared.lifecycle`) |
| instance slot | `instance#<account>#<region>#<instance>` | `shared.store.slots` |
| idempotency key | `idempotency#<sha256 of the key>` | `shared.store.idempotency` |
| blast-radius budget | `budget#<account>#<source>#<hour>` | `shared.store.rate_limits` |
| tamper-repair budget | `repairs#<account>#<region>#<instance>#<hour>` | `shared.store.tamper_repairs` |
| role lease | `role#<account>#<role name>` | `shared.store.role_leases` |
| isolation groups | `groups#<account>#<region>` | `shared.store.isolation_groups` |
| the upgrade's backfill, done | `episodes#backfilled` | `shared.store.episodes` |
| the upgrade's adoption of isolation groups, done | `adopted#groups` | `shared.store.isolation_groups` |

Releases of a record (RELEASING, RELEASED, RELEASE_FAILED) are written by `shared.store.releases`, and
the end of a released episode's earlier records by `shared.store.episode_ends`.

Only record items carry `instance_id`, so the `by-instance` index (instance_id, created_at) holds
records only; only records in a last-receive attempt, and RELEASED records whose episode is still to
be ended (`shared.store.episode_ends`), carry `final_attempt`, so the `by-final-lease` index holds just
those; only slots of instances isolated now carry `isolated_in`, so the `isolated-now`
index holds just those (`shared.store.episodes`). Reads never write (but one: an upgraded
deployment's slot filled from the records, once). Every write that must be atomic with another is one
`TransactWriteItems`, so ingest stays at two AWS calls on the request path (this transaction and the
SQS send).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import Any

from botocore.exceptions import ClientError

import shared.store.episodes as episodes
import shared.store.exemptions as exemptions
import shared.store.idempotency as idempotency
import shared.store.isolation_groups as isolation_groups
import shared.store.rate_limits as rate_limits
import shared.store.record_ends as record_ends
import shared.store.record_leases as record_leases
import shared.store.role_leases as role_leases
import shared.store.slots as slots
import shared.store.tamper_repairs as tamper_repairs
from shared import lifecycle, unended
from shared.errors import error_code
from shared.exemptions import Exemption
from shared.lifecycle import FINAL, FINAL_LEASE_INDEX, Status, Transition
from shared.models import (
    ErrorInfo,
    Evidence,
    IsolationRecord,
    PriorState,
    StepRecord,
    Target,
    iso8601,
    utcnow,
)
from shared.store.dynamo import (
    Refused,
    Write,
    deserialize,
    epoch,
    key,
    query_items,
    refusals,
    serialize,
    updated_if,
)
from shared.store.idempotency import IdempotencyClaim, Replayed
from shared.store.record_ends import Ended, end_with_slot
from shared.store.record_leases import LeaseHeld
from shared.store.releases import ReleaseWrites
from shared.store.table import LIST_SHARDS, shard_query
from shared.store.table import record_of as _record

# --- outcomes of the conditional writes --------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    record: IsolationRecord


@dataclass(frozen=True)
class Joined:
    """Another isolation of the same instance is in flight; `status` is its status as just read."""

    isolation_id: str
    status: Status


@dataclass(frozen=True)
class Coalesced:
    """The instance was isolated less than the coalesce window ago."""

    isolation_id: str


@dataclass(frozen=True)
class Exempted:
    """The instance has an active exemption (`shared.store.exemptions`): a trigger leaves it alone."""

    exemption: Exemption


@dataclass(frozen=True)
class RateLimited:
    """The trigger's source started `limit` isolations in the account this hour already (the
    blast-radius budget, per account and source)."""

    limit: int


@dataclass(frozen=True)
class RepairsSpent:
    """Tamper events re-isolated the instance `limit` times this hour already (`TamperRepairsPerHour`)."""

    limit: int


@dataclass(frozen=True)
class Exists:
    """A record with this id exists already (a redelivered trigger)."""

    record: IsolationRecord


@dataclass(frozen=True)
class _SlotTaken:
    """The instance's slot is held by this isolation (as the slot item showed it)."""

    isolation_id: str


class RecordEnded(Exception):
    """The record is ISOLATED, SKIPPED or FAILED for good: a redelivered message has nothing to do."""

    def __init__(self, record: IsolationRecord) -> None:
        super().__init__(record.isolation_id)
        self.record = record


class RecordMissing(Exception):
    """No record with this id (a message that did not come through ingest)."""


def _not_begun(isolation_id: str, current: dict[str, Any] | None) -> Exception:
    """Why an attempt could not take a record's lease, from the record as the refused write read it."""
    if current is None:
        return RecordMissing(isolation_id)
    if lifecycle.ended(current):
        return RecordEnded(_record(current))
    return LeaseHeld(isolation_id)


class IsolationStore(ReleaseWrites, isolation_groups.GroupRegistry):
    """The service's table: the reads of `RecordTable` and of each concern, and the writes below."""

    # --- reads (never a write) -----------------------------------------------------------------------

    def recent(
        self, limit: int, *, status: Status | None = None, before: str | None = None
    ) -> tuple[list[IsolationRecord], str | None]:
        """The newest records of every instance (`status` only, when given), strictly older than the
        position `before` (a `listed_at`), at most `limit`; and the position of the next page, if any."""
        found: list[dict[str, Any]] = []
        more = False
        for shard in range(LIST_SHARDS):
            params = shard_query(self.table_name, shard) | {"ScanIndexForward": False, "Limit": limit}
            if before is not None:
                params["KeyConditionExpression"] += " AND listed_at < :before"
                params["ExpressionAttributeValues"][":before"] = {"S": before}
            if status is not None:
                params["FilterExpression"] = "#s = :status"
                params["ExpressionAttributeNames"] = {"#s": "status"}
                params["ExpressionAttributeValues"][":status"] = {"S": status.value}
            items, rest = self._query_page(params, limit)
            found.extend(items)
            more = more or rest
        found.sort(key=lambda item: str(item["listed_at"]), reverse=True)
        page = found[:limit]
        next_before = str(page[-1]["listed_at"]) if page and (more or len(found) > limit) else None
        return [_record(item) for item in page], next_before

    def _query_page(self, params: dict[str, Any], limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to `limit` items of one query (filters may need several pages); True when more may follow."""
        items = list(islice(query_items(self.client, params), limit))
        return items, len(items) >= limit

    def lost(self, now: float) -> list[IsolationRecord]:
        """Records whose worker was lost on the last receive (`lifecycle.LOST` or, for a release,
        `lifecycle.RELEASE_LOST` at `now`), from the `by-final-lease` index: only records in a
        last-receive attempt are in it."""
        params: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": FINAL_LEASE_INDEX,
            "KeyConditionExpression": "final_attempt = :final AND lease_until < :now",
            "ExpressionAttributeValues": {":final": {"S": FINAL}, ":now": {"N": str(epoch(now))}},
        }
        # The index is eventually consistent: the sweeper's write checks `LOST` again.
        lost = lifecycle.LOST | lifecycle.RELEASE_LOST
        return [_record(item) for item in self._query(params, None) if lost.holds(item, now=epoch(now))]

    # --- ingest --------------------------------------------------------------------------------------

    def create_queued(
        self,
        record: IsolationRecord,
        *,
        lease_seconds: int,
        idempotency: IdempotencyClaim | None = None,
        coalesce_window_seconds: int | None = None,
        budget: int | None = None,
        repairs: int | None = None,
        slot: bool = True,
        exemptions_table: str | None = None,
    ) -> Created | Joined | Replayed | Coalesced | Exists | Exempted | RateLimited | RepairsSpent:
        """Write a QUEUED record and take the instance's in-flight slot, in one transaction (`slot`
        False: a dry run's record, which takes no slot, so it never joins nor is joined).

        Fails (without writing anything) to `Replayed` when the idempotency key was used before,
        `Exists` when the record id is taken, `Joined` when another isolation of the instance is in
        flight, `Coalesced` when `coalesce_window_seconds` is given and the instance was isolated
        within it, `Exempted` when `exemptions_table` is given and the instance has an active exemption
        there (read consistently, judged after the join and the coalescing and before the budget, which
        an exempted trigger does not spend), `RateLimited` when `budget` is given and the hourly budget
        of the record's source in its account is spent (`shared.store.rate_limits`), `RepairsSpent` when `repairs` is
        given and the instance's hourly budget of tamper repairs is spent (`shared.store.tamper_repairs`). A slot still held by an
        isolation that is over is freed, and the write tried once more. A join reads the isolation it joins (its status is the answer); when that one's
        worker was lost on its last receive (`lifecycle.LOST`), this request ends it and tries once more
        rather than join an isolation nobody runs.
        """
        for retry in (False, True):
            outcome = self._create_queued(
                record,
                lease_seconds,
                idempotency,
                coalesce_window_seconds,
                budget,
                repairs,
                slot,
                exemptions_table,
            )
            if not isinstance(outcome, _SlotTaken):
                return outcome
            now = time.time()
            current = self.item(outcome.isolation_id)
            if current is not None and not retry and lifecycle.ended(current):
                # An isolation that is over keeps no slot (a release that failed: free it now).
                self.release_slot(_record(current))
                continue
            if retry or current is None or not lifecycle.LOST.holds(current, now=epoch(now)):
                return Joined(outcome.isolation_id, Status(current["status"]) if current else Status.QUEUED)
            self.end_lost(_record(current), now=now)
        raise AssertionError("unreachable: the second try returns")

    def _create_queued(
        self,
        record: IsolationRecord,
        lease_seconds: int,
        idempotency_claim: IdempotencyClaim | None,
        coalesce_window_seconds: int | None,
        budget: int | None,
        repairs: int | None = None,
        slot: bool = True,
        exemptions_table: str | None = None,
    ) -> Created | _SlotTaken | Replayed | Coalesced | Exists | Exempted | RateLimited | RepairsSpent:
        now = time.time()
        stale = epoch(now - lease_seconds)
        window = epoch(now - coalesce_window_seconds) if coalesce_window_seconds is not None else None
        items: list[dict[str, Any]] = []
        if idempotency_claim is not None:
            items.append({"Put": idempotency.put(self.table_name, idempotency_claim, now=now)})
        items.append(
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": serialize(_record_item(record)),
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
        if slot:
            items.append(
                {
                    "Update": slots.take(
                        self.table_name,
                        record.target,
                        record.isolation_id,
                        now=epoch(now),
                        stale=stale,
                        window=window,
                    )
                }
            )
        # In the order a trigger is judged (`_explain_cancellation` reads the first refusal): the slot
        # (join, coalesce), then the exemption, then the budget.
        if exemptions_table is not None:
            items.append(
                {
                    "ConditionCheck": exemptions.not_exempt(
                        exemptions_table, record.account_id, record.instance_id, now=now
                    )
                }
            )
        if budget is not None:
            items.append(
                {
                    "Update": rate_limits.take(
                        self.table_name, record.account_id, record.source.value, now=now, limit=budget
                    )
                }
            )
        if repairs is not None:
            items.append(
                {"Update": tamper_repairs.take(self.table_name, record.target, now=now, limit=repairs)}
            )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            return self._explain_cancellation(
                exc, items, record, idempotency_claim, window, stale, budget, repairs
            )
        return Created(record)

    def _explain_cancellation(
        self,
        exc: ClientError,
        items: list[dict[str, Any]],
        record: IsolationRecord,
        idempotency_claim: IdempotencyClaim | None,
        window: Decimal | None,
        stale: Decimal,
        budget: int | None,
        repairs: int | None = None,
    ) -> _SlotTaken | Replayed | Coalesced | Exists | Exempted | RateLimited | RepairsSpent:
        """Which condition cancelled the transaction, in the order of the items (idempotency first)."""
        refused = refusals(exc)
        for index, item in enumerate(items):
            if not refused.refused(index):
                continue
            if "ConditionCheck" in item:  # the exemption, in its own table
                check = item["ConditionCheck"]
                exempting = refused.item(index) or self._exemption_item(check)
                if exempting is None or exemptions.FREE.holds(exempting, now=epoch(time.time())):
                    break  # deleted or expired since: the condition would pass now
                return Exempted(exemptions.exempting(exempting))
            operation = item.get("Put") or item["Update"]
            pk = (operation.get("Item") or operation["Key"])["pk"]["S"]
            current = refused.item(index) or self.item(pk)
            if current is None:  # gone since: the condition would pass now; let the caller retry
                break
            if idempotency_claim is not None and pk == idempotency.idempotency_key(
                idempotency_claim.key_hash
            ):
                return idempotency.replayed(current)
            if pk == record.isolation_id:
                return Exists(_record(current))
            if budget is not None and pk.startswith("budget#"):
                return RateLimited(budget)
            if repairs is not None and pk.startswith(tamper_repairs.PREFIX):
                return RepairsSpent(repairs)
            holder = slots.holder(current, stale=stale)
            if holder is not None:
                return _SlotTaken(holder)
            if window is not None and current.get("last_isolated_id"):
                return Coalesced(str(current["last_isolated_id"]))
        raise exc

    def _exemption_item(self, check: dict[str, Any]) -> dict[str, Any] | None:
        found = self.client.get_item(TableName=check["TableName"], Key=check["Key"], ConsistentRead=True)
        return deserialize(found["Item"]) if "Item" in found else None

    def put_idempotency(self, claim: IdempotencyClaim) -> Replayed | None:
        """Remember the answer of a request that wrote nothing (a deduplicated one).

        Returns the stored answer when the key was taken in the meantime.
        """
        try:
            self.client.put_item(**idempotency.put(self.table_name, claim, now=time.time()))
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            current = deserialize(old) if old else self.item(idempotency.idempotency_key(claim.key_hash))
            if current is None:
                raise
            return idempotency.replayed(current)
        return None

    def abandon(self, record: IsolationRecord, error: ErrorInfo, idempotency_hash: str | None) -> None:
        """Undo an accepted request whose message could not be enqueued: the record becomes FAILED
        (it stays, so the attempt is on record), the slot and the idempotency key are released."""
        ending = self._ending(record, Status.FAILED, lifecycle.ABANDON, error=error)
        items: list[dict[str, Any]] = [{"Update": ending}]
        if not record.dry_run:  # a dry run took no slot
            items.append(
                {
                    "Update": slots.release(
                        self.table_name, record.target, record.isolation_id, isolated_at=None
                    )
                }
            )
        if idempotency_hash:
            items.append(
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": key(idempotency.idempotency_key(idempotency_hash)),
                    }
                }
            )
        self.client.transact_write_items(TransactItems=items)

    # --- worker --------------------------------------------------------------------------------------

    def put_record(self, record: IsolationRecord) -> bool:
        """Write a record if its id is free; False when it exists."""
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=serialize(_record_item(record)),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def put_coalesced(self, record: IsolationRecord, *, earlier: str) -> None:
        """Write a coalesced record (ISOLATED, in the episode of `earlier`) and, in the same transaction,
        make it the instance's latest record, as long as `earlier` still is (else the record alone)."""
        put = {
            "TableName": self.table_name,
            "Item": serialize(_record_item(record)),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
        latest = episodes.coalesced(self.table_name, record.target, record.isolation_id, earlier=earlier)
        try:
            self.client.transact_write_items(TransactItems=[{"Put": put}, {"Update": latest}])
            return
        except ClientError as exc:
            refused = refusals(exc)
            if refused.refused(0):
                return  # written already (a redelivered trigger)
            if not refused.refused(1):
                raise
        self.put_record(record)  # another record is the instance's latest since: this one is not

    def begin_attempt(
        self,
        isolation_id: str,
        *,
        owner: str,
        lease_seconds: int,
        prior_state: PriorState | None,
        final: bool = False,
        inherits_from: str | None = None,
        evidence: Evidence | None = None,
        target: Target | None = None,
        queued: IsolationRecord | None = None,
        planned: list[str] | None = None,
    ) -> IsolationRecord:
        """`lifecycle.BEGIN`: mark the record IN_PROGRESS, count the attempt, keep the first
        `prior_state`, take the lease; `planned`: the steps of the network cut that will change the
        instance (`add_steps`).

        `queued`: the record as this worker knows it was written (its message's, or the one it wrote),
        when no attempt may have begun it yet. The begin is then guarded on that (`lifecycle.BEGIN_FIRST`)
        and the begun record is that one with the begin's changes, not read back (a transaction returns
        no item); when the guard does not hold, the record is begun as any other and read.

        `target`: an isolation that will change the instance (not a dry run): in the same transaction the
        record becomes the instance's latest that changed it (`shared.store.episodes`), before the first
        change, so the next isolation finds this one's episode whatever happens to it.

        `inherits_from`: the isolation of the same episode whose `prior_state` (and `evidence`) this
        one carries; like `prior_state`, kept from the first attempt.

        `final`: the message's last allowed receive; if this attempt dies without ending the record,
        the sweeper ends it once the lease has expired (`lifecycle.LOST`).

        One conditional write, the only one before the first change to the instance. Raises `LeaseHeld`
        while another worker holds the lease, `RecordEnded` when there is nothing left to do,
        `RecordMissing` when there is no such record.
        """

        def begin_write(transition: Transition) -> Write:
            write = _running(
                transition,
                "attempts = if_not_exists(attempts, :zero) + :one",
                owner=owner,
                lease_seconds=lease_seconds,
                final=final,
                zero=0,
                one=1,
            )
            if prior_state is not None:
                # The first attempt's view is the instance as it was: a retry sees it half isolated.
                # Fields not known yet stay absent: the step that reads them writes them (`add_steps`).
                write.set(
                    "prior_state = if_not_exists(prior_state, :prior)",
                    prior=prior_state.model_dump(exclude_none=True),
                )
            if inherits_from is not None:
                write.set("inherits_from = if_not_exists(inherits_from, :inherits)", inherits=inherits_from)
            if evidence is not None:
                write.set("evidence = if_not_exists(evidence, :evidence)", evidence=evidence.model_dump())
            if planned:
                write.set(_PLANNED, empty=[], planned=planned)
            return write

        if target is None:
            try:
                item = self.update_record(isolation_id, begin_write(lifecycle.BEGIN))
            except Refused as refused:
                raise _not_begun(isolation_id, refused.current) from refused
            return _record(item)
        latest = episodes.changed_by(self.table_name, target, isolation_id)
        if queued is not None:
            first = begin_write(lifecycle.BEGIN_FIRST)
            if self._began(isolation_id, first, latest, refused_is_final=False):
                return queued.model_copy(
                    update={
                        "status": Status.IN_PROGRESS,
                        "attempts": 1,
                        "updated_at": first.value("stamp"),
                        "prior_state": prior_state,
                        "inherits_from": inherits_from,
                        "evidence": evidence,
                        "error": None,
                        "planned": tuple(planned or ()),
                    }
                )
        self._began(isolation_id, begin_write(lifecycle.BEGIN), latest, refused_is_final=True)
        # A transaction returns no item: the record as the begin left it (its first prior state kept).
        begun = self.item(isolation_id)
        if begun is None:
            raise RecordMissing(isolation_id)
        return _record(begun)

    def _began(
        self, isolation_id: str, write: Write, latest: dict[str, Any], *, refused_is_final: bool
    ) -> bool:
        """The begin `write` and the instance's latest-record mark (`latest`), one transaction. False when
        the begin's condition did not hold and that is not final (the caller begins another way);
        otherwise raises what the record says (`_not_begun`)."""
        begin = {
            "TableName": self.table_name,
            "Key": key(isolation_id),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            **write.request(),
        }
        try:
            self.client.transact_write_items(TransactItems=[{"Update": begin}, {"Update": latest}])
        except ClientError as exc:
            cancelled = refusals(exc)
            if not cancelled.refused(0):
                raise  # a conflict with another write: retried like any transient error
            if not refused_is_final:
                return False
            raise _not_begun(isolation_id, cancelled.item(0) or self.item(isolation_id)) from exc
        return True

    def hand_over(
        self,
        isolation_id: str,
        owner: str,
        steps: list[StepRecord],
        *,
        unmet: ErrorInfo | None = None,
    ) -> bool:
        """`lifecycle.HAND_OVER`: the containment is done; the follow-up phase runs the record from now
        on. Writes the containment's last steps, gives up the lease (and its last-receive mark: the
        follow-up's own attempts are watched from now on) and keeps `unmet`, a part of the containment
        that could not be put in place, for the follow-up to end the record with. False when this
        attempt no longer holds the record (its lease expired and another attempt took it, or it ended).
        """
        write = Write(
            "phase = :phase",
            "updated_at = :stamp",
            remove=("lease_owner", "lease_until", "final_attempt") + (() if unmet else ("unmet",)),
            condition=lifecycle.HAND_OVER.guard,
            params={"owner": owner},
            phase=lifecycle.FOLLOW_UP,
            stamp=steps[-1].at if steps else iso8601(utcnow()),
        )
        if steps:
            write.set(
                "steps = list_append(if_not_exists(steps, :empty), :step)",
                empty=[],
                step=[step.model_dump(mode="json") for step in steps],
            )
        if unmet is not None:
            write.set("unmet = :unmet", unmet=unmet.model_dump())
        request = {"TableName": self.table_name, "Key": key(isolation_id), **write.request()}
        return updated_if(self.client, request)

    def begin_follow_up(
        self, isolation_id: str, *, owner: str, lease_seconds: int, final: bool = False
    ) -> tuple[IsolationRecord, ErrorInfo | None, str | None]:
        """`lifecycle.BEGIN_FOLLOW_UP`: take the lease of a handed-over record (IN_PROGRESS, or FAILED
        resumable: a redrive of the follow-up DLQ). Returns the record, the containment's `unmet` and
        when an earlier attempt asked for the snapshots without recording them (`snapshots_asked_at`).

        Raises `RecordEnded` when there is nothing left to do, `RecordMissing` when there is no such
        record, `LeaseHeld` while another attempt holds it or the containment has not handed it over.
        """
        write = _running(lifecycle.BEGIN_FOLLOW_UP, owner=owner, lease_seconds=lease_seconds, final=final)
        try:
            stored = self.update_record(isolation_id, write)
        except Refused as refused:
            raise _not_begun(isolation_id, refused.current) from refused
        unmet = stored.get("unmet")
        asked = stored.get("snapshots_asked_at")
        return (
            _record(stored),
            ErrorInfo.model_validate(unmet) if unmet else None,
            str(asked) if asked else None,
        )

    def end_attempt(self, isolation_id: str, owner: str, *, began: bool) -> None:
        """A retryable failure ends this attempt (an isolation's phase, or a release's). One that `began`
        gives its lease back, so the retry need not wait for it to expire; an isolation's that failed
        before `begin_attempt` is counted here instead."""
        if began:
            write = record_leases.giving_back(owner)
        else:
            write = Write(
                "attempts = if_not_exists(attempts, :zero) + :one",
                condition=lifecycle.Exists("pk"),
                zero=0,
                one=1,
            )
        updated_if(self.client, {"TableName": self.table_name, "Key": key(isolation_id), **write.request()})

    def add_steps(
        self,
        isolation_id: str,
        steps: list[StepRecord],
        *,
        contained_at: str | None = None,
        prior: dict[str, Any] | None = None,
        evidence: Evidence | None = None,
        isolation_groups: dict[str, str] | None = None,
        snapshots_asked_at: str | None = None,
        planned: list[str] | None = None,
    ) -> IsolationRecord:
        """Append step outcomes, with what rides along: `contained_at`, `prior` (fields of
        `prior_state` a step read before its change; a field already there is kept), `planned` (the
        steps whose changes follow), `evidence`, `isolation_groups` (the isolation group used in each
        VPC) and `snapshots_asked_at` (the first time an attempt asked for the snapshots, kept). Returns
        the record as the write left it."""
        write = Write("updated_at = :stamp", stamp=steps[-1].at if steps else iso8601(utcnow()))
        if steps:
            write.set(
                "steps = list_append(if_not_exists(steps, :empty), :step)",
                empty=[],
                step=[step.model_dump(mode="json") for step in steps],
            )
        if contained_at is not None:
            write.set("contained_at = if_not_exists(contained_at, :contained)", contained=contained_at)
        for name, value in (prior or {}).items():
            write.set(
                f"prior_state.{name} = if_not_exists(prior_state.{name}, :prior_{name})",
                **{f"prior_{name}": value},
            )
        if evidence is not None:
            write.set("evidence = :evidence", evidence=evidence.model_dump())
        if isolation_groups is not None:
            write.set("isolation_groups = :groups", groups=isolation_groups)
        if snapshots_asked_at is not None:
            write.set(
                "snapshots_asked_at = if_not_exists(snapshots_asked_at, :asked)", asked=snapshots_asked_at
            )
        if planned:
            write.set(_PLANNED, empty=[], planned=planned)
        return _record(self.update_record(isolation_id, write))

    # --- role leases -----------------------------------------------------------------------------------

    def take_role_lease(self, account_id: str, role_name: str, owner: str, *, seconds: float) -> bool:
        """Take the role's lease (`shared.store.role_leases`); False while someone else holds it."""
        now = time.time()
        request = role_leases.take(
            self.table_name, account_id, role_name, owner, now=epoch(now), until=epoch(now + seconds)
        )
        return updated_if(self.client, request)

    def release_role_lease(self, account_id: str, role_name: str, owner: str) -> None:
        updated_if(self.client, role_leases.release(self.table_name, account_id, role_name, owner))

    def finish(
        self,
        record: IsolationRecord,
        status: Status,
        *,
        error: ErrorInfo | None = None,
        resumable: bool = False,
        extra_steps: list[StepRecord] | None = None,
        attempts: int | None = None,
        transition: Transition = lifecycle.END,
        now: float | None = None,
        evidence: Evidence | None = None,
        stamp: str | None = None,
    ) -> bool:
        """End the record (`transition`, `lifecycle.END` by default) and free the instance's slot, in
        one transaction. False when the record could not make the transition (it had ended already).

        `resumable` marks a FAILED record whose message went on to the DLQ (retries exhausted): a
        redrive of that message runs it again. `attempts`: the attempts to record (when this one failed
        before `begin_attempt` counted it). `now`: the time the transition's condition is checked at.
        `evidence`: the episode's evidence, written with the end (as `add_steps` writes it). `stamp`: the
        end's `updated_at` (now by default).
        """
        moment = time.time() if now is None else now
        ending = self._ending(
            record,
            status,
            transition,
            error=error,
            resumable=resumable,
            extra_steps=extra_steps,
            attempts=attempts,
            now=moment,
            evidence=evidence,
            stamp=stamp,
        )
        if record.dry_run:
            # A dry run holds no slot (and an ISOLATED one never happens): the record's end alone.
            return updated_if(self.client, ending)
        isolated_at = epoch(moment) if status is Status.ISOLATED else None
        # The record's end and the slot's release are one transaction: an isolation that ended never
        # keeps its instance's slot (later requests would join an isolation that is over).
        release = slots.release(self.table_name, record.target, record.isolation_id, isolated_at=isolated_at)
        ended = end_with_slot(self.client, ending, release)
        if ended is Ended.ALREADY:
            return False
        if ended is Ended.WITH_SLOT:
            if status is Status.FAILED:
                self._no_longer_isolated(record, error)
            return True
        # The slot is not this isolation's (taken over after a lease expired, or freed already).
        if not updated_if(self.client, ending):
            return False
        if isolated_at is not None:
            self.client.update_item(
                **slots.remember_isolated(
                    self.table_name, record.target, record.isolation_id, isolated_at=isolated_at
                )
            )
        elif status is Status.FAILED:
            self._no_longer_isolated(record, error)
        return True

    def _no_longer_isolated(self, record: IsolationRecord, error: ErrorInfo | None) -> None:
        """A FAILED end of the instance's latest record: the instance is no longer isolated now (a record
        that is not the latest, one that failed before its begin, changes nothing), unless the record
        still is (`IsolationRecord.watched`: a `TamperLoop` whose network cut holds)."""
        if record.model_copy(update={"status": Status.FAILED, "error": error}).watched:
            return
        updated_if(self.client, episodes.failed(self.table_name, record.target, record.isolation_id))

    def end_lost(self, record: IsolationRecord, *, now: float) -> bool:
        """`lifecycle.END_LOST`: end FAILED (resumable) a record whose worker was lost on its last receive
        (a release's: `end_release_lost`)."""
        if record.status is Status.RELEASING:
            return self.end_release_lost(record, now=now)
        return self.finish(
            record,
            Status.FAILED,
            error=unended.worker_lost(record),
            resumable=True,
            transition=lifecycle.END_LOST,
            now=now,
        )

    def end_dead_lettered(self, record: IsolationRecord, *, now: float) -> bool:
        """`lifecycle.END_DEAD_LETTERED`: end FAILED (resumable) a record whose message is in the DLQ
        while no attempt holds it (its worker stopped on the last receive before its first write)."""
        return self.finish(
            record,
            Status.FAILED,
            error=unended.dead_lettered(record),
            resumable=True,
            transition=lifecycle.END_DEAD_LETTERED,
            now=now,
        )

    def _ending(
        self,
        record: IsolationRecord,
        status: Status,
        transition: Transition,
        *,
        error: ErrorInfo | None = None,
        resumable: bool = False,
        extra_steps: list[StepRecord] | None = None,
        attempts: int | None = None,
        now: float | None = None,
        evidence: Evidence | None = None,
        stamp: str | None = None,
    ) -> dict[str, Any]:
        """The update of a record's end by `transition` (checked at `now`)."""
        write = record_ends.ending(
            transition,
            status,
            now=time.time() if now is None else now,
            stamp=stamp or iso8601(utcnow()),
            error=error,
            steps=extra_steps,
        )
        if resumable:
            write.set("resumable = :resumable", resumable=True)
        if attempts is not None:
            write.set("attempts = :attempts", attempts=attempts)
        if evidence is not None:
            write.set("evidence = :evidence", evidence=evidence.model_dump())
        return {"TableName": self.table_name, "Key": key(record.isolation_id), **write.request()}


#: The steps an attempt planned, appended to those earlier attempts planned (`IsolationRecord.planned`).
_PLANNED = "planned = list_append(if_not_exists(planned, :empty), :planned)"


def _running(
    transition: Transition, *clauses: str, owner: str, lease_seconds: int, final: bool, **values: object
) -> Write:
    """The write by which an attempt (an isolation's containment or its follow-up) takes the record by
    `transition`: IN_PROGRESS, its lease, an earlier end's error and resumable mark taken off."""
    return record_leases.taking(
        transition,
        "#s = :running",
        *clauses,
        owner=owner,
        lease_seconds=lease_seconds,
        final=final,
        remove=("#e", "resumable"),
        running=Status.IN_PROGRESS.value,
        **values,
    )


def _record_item(record: IsolationRecord) -> dict[str, Any]:
    # None-valued fields are left out, so `if_not_exists(prior_state | contained_at, ...)` can set them.
    item = record.model_dump(mode="json", exclude_none=True)
    item["pk"] = record.isolation_id
    item["list_shard"] = f"all#{int.from_bytes(record.isolation_id.encode(), 'big') % LIST_SHARDS}"
    item["listed_at"] = f"{record.created_at}#{record.isolation_id}"
    return item
