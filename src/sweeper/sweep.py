"""What the sweeper does: end FAILED the records no worker will end, end the earlier records of a
released episode that its release's worker left, and (once, after an upgrade from a version without
them) fill the instances' slots with their latest records (`shared.store.episodes`).

Two cases, both on the message's last allowed receive, after which SQS moves the message to the DLQ:
- the worker stopped (a timeout, out of memory, a crash) after its attempt began: the record is
  IN_PROGRESS with a last-receive lease; once that lease has expired (`lifecycle.LOST`), it is ended
  `WorkerLost`. Found through the `by-final-lease` index, never a scan.
- the worker stopped before its attempt's first write: the record is QUEUED (or IN_PROGRESS from an
  earlier receive, its lease expired) and its message is in the DLQ. The sweeper peeks at the three
  DLQs, the isolation queue's, the follow-up queue's and the tamper queue's (ReceiveMessage with a zero
  visibility timeout; it never deletes: a redrive is the operator's call) and ends such a record
  `DeadLettered`; a trigger's message whose record was never written gets one. (A containment message in
  the DLQ whose record was handed over with its follow-up still queued is ended too; that follow-up then
  resumes the FAILED, resumable record and ends it.) A CloudTrail call in the tamper DLQ ends the
  repairs it wrote (their ids name the call and the instance: the sweeper looks up the ids of every
  instance the call may touch); a repair never written changed nothing, and gets no record.

Both end the record resumable: a DLQ redrive runs it again. A release (RELEASING) lost the same ways
ends RELEASE_FAILED with the same codes; a new release request finishes it. A record merely waiting in the queue behind a
burst is never ended by a clock: only an expired last-receive lease or a message in the DLQ ends one.
Every end is a conditional write (`shared.lifecycle`), so a sweeper racing a worker changes nothing twice.

A release that ended RELEASED ends its whole episode (`shared.store.episode_ends`): when its worker
stopped before every earlier record of the episode read RELEASED, the record keeps a mark that puts it
in the `by-final-lease` index, and the sweeper ends the rest (publishing nothing: the releasing record
published the episode's outcome).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared import lifecycle
from shared.models import FollowUpMessage, IsolationRecord, Target
from shared.observability import logger
from shared.store import IsolationStore
from worker.messages import Ignored, InvalidMessage, TamperCall, Unusable, parse, parse_tamper, release_of


@dataclass
class Swept:
    lost: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    #: DLQ messages looked at (each once, however many times a receive returned it).
    peeked: int = 0
    #: Slots filled from the records by the upgrade's backfill (0 once it is done).
    backfilled: int = 0
    #: Isolation groups of an earlier version adopted from the records by the upgrade's pass (0 once
    #: it is done).
    adopted: int = 0
    #: Releases whose episode's earlier records were left to end: releasing id -> the ids ended now.
    episodes_ended: dict[str, list[str]] = field(default_factory=dict)


def sweep(
    store: IsolationStore,
    sqs: Any,
    dead_letter_queue_url: str,
    *,
    follow_up_dead_letter_queue_url: str | None = None,
    tamper_dead_letter_queue_url: str | None = None,
    peeks: int,
    announce: Callable[[str], object],
    container_findings: bool = False,
    now: float | None = None,
) -> Swept:
    """End what no worker will end; `announce(isolation_id)` publishes each ended record's outcome."""
    moment = time.time() if now is None else now
    swept = Swept(backfilled=store.backfill_episodes(), adopted=store.adopt_every_earlier_group())
    for record in store.lost(moment):
        if store.end_lost(record, now=moment):
            logger.warning(
                "ended a record whose worker was lost", extra={"isolation_id": record.isolation_id}
            )
            swept.lost.append(record.isolation_id)
            announce(record.isolation_id)

    def dead_lettered(isolation_id: str, ended: bool) -> None:
        if ended:
            swept.dead_lettered.append(isolation_id)
            announce(isolation_id)

    handed_over = (
        _peek(sqs, follow_up_dead_letter_queue_url, peeks) if follow_up_dead_letter_queue_url else []
    )
    for body in handed_over:
        swept.peeked += 1
        try:
            follow_up = FollowUpMessage.model_validate_json(body)
        except ValidationError:
            continue  # not a follow-up the containment sent (the DLQ alarm says it is there)
        # Its record was written before it was sent: the stored one is ended, never one made from this.
        dead_lettered(follow_up.isolation_id, _end_dead_lettered(store, follow_up.isolation_id, moment))
    for body in _peek(sqs, dead_letter_queue_url, peeks):
        swept.peeked += 1
        try:
            release = release_of(body)
            if release is not None:
                isolation_id = release.isolation_id
                dead_lettered(isolation_id, _end_release_dead_lettered(store, isolation_id, moment))
                continue
            requested = parse(body, container_findings=container_findings)
        except (InvalidMessage, Ignored, Unusable):
            continue  # nothing of this message can be running (the DLQ alarm says it is there)
        for record in requested:
            isolation_id = record.isolation_id
            dead_lettered(isolation_id, _end_dead_lettered(store, isolation_id, moment, unwritten=record))
    calls = _peek(sqs, tamper_dead_letter_queue_url, peeks) if tamper_dead_letter_queue_url else []
    for body in calls:
        swept.peeked += 1
        try:
            call = parse_tamper(body)
        except (InvalidMessage, Ignored):
            continue  # a call that asked for no repair
        for isolation_id in _repairs_of(store, call):
            dead_lettered(isolation_id, _end_dead_lettered(store, isolation_id, moment))
    for isolation_id in store.unended_episodes():
        # No outcome event: the releasing record published the episode's.
        swept.episodes_ended[isolation_id] = store.end_episode(isolation_id)
    return swept


def _repairs_of(store: IsolationStore, call: TamperCall) -> list[str]:
    """The ids of the repairs `call` may have asked for: one per instance it names, or (a call on an
    interface, a group, a role or a snapshot) per isolated instance where it was made."""
    targets = {
        Target(account_id=call.account_id, region=call.region, instance_id=instance_id)
        for instance_id in call.instance_ids
    }
    if call.names_other_resources:
        targets |= {r.target for r in store.isolated_now(call.account_id, call.search_region)}
    return sorted(call.repair_id(target) for target in targets)


def _end_dead_lettered(
    store: IsolationStore, isolation_id: str, now: float, *, unwritten: IsolationRecord | None = None
) -> bool:
    """End the stored record (its attempts, target and steps, not the message's copy of the request);
    one never written is written first from `unwritten` (None: there is nothing to end)."""
    item = store.item(isolation_id)
    if item is None:
        if unwritten is None:
            return False
        store.put_record(unwritten)  # a trigger whose record was never written
        current = unwritten
    elif lifecycle.END_DEAD_LETTERED.guard.holds(item, now=now):
        current = store.as_record(item)
    else:
        return False
    if not store.end_dead_lettered(current, now=now):
        return False
    logger.warning("ended a record whose message is in the DLQ", extra={"isolation_id": isolation_id})
    return True


def _end_release_dead_lettered(store: IsolationStore, isolation_id: str, now: float) -> bool:
    item = store.item(isolation_id)
    if item is None or not lifecycle.END_RELEASE_DEAD_LETTERED.guard.holds(item, now=now):
        return False
    if not store.end_release_dead_lettered(store.as_record(item), now=now):
        return False
    logger.warning("ended a release whose message is in the DLQ", extra={"isolation_id": isolation_id})
    return True


def _peek(sqs: Any, queue_url: str, peeks: int) -> list[str]:
    """The bodies of the messages in the queue, as far as `peeks` receives see them (SQS samples its
    servers on each receive: a message missed now is seen by a later run)."""
    seen: dict[str, str] = {}
    for _ in range(peeks):
        messages = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", [])
        new = {m["MessageId"]: m["Body"] for m in messages if m["MessageId"] not in seen}
        if not new:
            break
        seen.update(new)
    return list(seen.values())
