"""The isolation-record store: one DynamoDB table, three kinds of item.

| item | pk | what it holds |
|---|---|---|
| isolation record | `iso-<hex>` | the record of CONTRACT §4, plus the worker's lease (`lease_owner`, `lease_until`) |
| instance slot | `instance#<account>#<region>#<instance>` | `active_id`/`active_since`: the isolation in flight for that instance; `last_isolated_id`/`last_isolated_at` |
| idempotency key | `idempotency#<sha256 of the key>` | the body hash and the first answer, expiring with the table's TTL |

Only record items carry `instance_id`, so the `by-instance` index (instance_id, created_at) is sparse and
holds records only. Every write that must be atomic with another is a single `TransactWriteItems`, so
ingest stays at two AWS calls on the request path (this transaction and the SQS send).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from shared.aws import error_code, same_account_client
from shared.models import (
    ErrorInfo,
    IsolationRecord,
    PriorState,
    Status,
    StepRecord,
    Target,
    iso8601,
    utcnow,
)

INSTANCE_INDEX = "by-instance"
MAX_LISTED = 50

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()

# Attributes of a record item that are not part of the served record.
_INTERNAL = ("pk", "lease_owner", "lease_until", "resumable", "final_attempt")


def _to_dynamo(value: Any) -> Any:
    """Python → DynamoDB-serializable (floats become Decimals, None-valued map keys are kept)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_from_dynamo(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def _values(**values: Any) -> dict[str, Any]:
    return {f":{k}": _serializer.serialize(_to_dynamo(v)) for k, v in values.items()}


def slot_key(target: Target) -> str:
    return f"instance#{target.key}"


def idempotency_key(key_hash: str) -> str:
    return f"idempotency#{key_hash}"


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
class _SlotTaken:
    """The instance's slot is held by this isolation (whose status `create_queued` then reads)."""

    isolation_id: str


@dataclass(frozen=True)
class Replayed:
    """The Idempotency-Key was seen before: the stored first answer."""

    body_hash: str
    status_code: int
    answer: dict[str, Any]


@dataclass(frozen=True)
class Coalesced:
    """The instance was isolated less than the coalesce window ago."""

    isolation_id: str


@dataclass(frozen=True)
class Exists:
    """A record with this id exists already (a redelivered trigger)."""

    record: IsolationRecord


@dataclass(frozen=True)
class IdempotencyClaim:
    key_hash: str
    body_hash: str
    status_code: int
    answer: dict[str, Any]
    ttl_seconds: int


class LeaseHeld(Exception):
    """Another worker is running this isolation right now."""


class RecordEnded(Exception):
    """The record is ISOLATED, SKIPPED or FAILED for good: a redelivered message has nothing to do."""

    def __init__(self, record: IsolationRecord) -> None:
        super().__init__(record.isolation_id)
        self.record = record


class RecordMissing(Exception):
    """No record with this id (a message that did not come through ingest)."""


#: A record a worker may (still) run: not ended, or ended FAILED with its retries exhausted (a DLQ
#: redrive resumes it).
_RUNNABLE = "(#s IN (:queued, :running) OR resumable = :true)"
#: A record whose worker died during the message's last allowed receive (a timeout, out of memory, a
#: crash): nothing is left to end it, since the message goes on to the DLQ. Once its lease has expired
#: (the lease outlasts the worker's timeout) no worker runs it any more: a reader ends it FAILED.
_LOST = "#s = :running AND final_attempt = :true AND lease_until < :now"
WORKER_LOST = "WorkerLost"


def _is_lost(item: dict[str, Any], now: float) -> bool:
    return (
        item.get("status") == Status.IN_PROGRESS
        and item.get("final_attempt") is True
        and item.get("lease_until") is not None
        and float(item["lease_until"]) < now
    )


class IsolationStore:
    def __init__(self, table_name: str, *, client: Any = None) -> None:
        self.table_name = table_name
        self.client = client or same_account_client("dynamodb")

    # --- reads -------------------------------------------------------------------------------------

    def get(self, isolation_id: str, *, consistent: bool = True) -> IsolationRecord | None:
        item = self.client.get_item(
            TableName=self.table_name, Key={"pk": {"S": isolation_id}}, ConsistentRead=consistent
        ).get("Item")
        return self._served(deserialize(item)) if item else None

    def get_raw(self, isolation_id: str) -> dict[str, Any] | None:
        item = self.client.get_item(
            TableName=self.table_name, Key={"pk": {"S": isolation_id}}, ConsistentRead=True
        ).get("Item")
        return deserialize(item) if item else None

    def list_for_instance(self, instance_id: str, account_id: str | None = None) -> list[IsolationRecord]:
        """Newest first, at most 50."""
        params: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": INSTANCE_INDEX,
            "KeyConditionExpression": "instance_id = :iid",
            "ExpressionAttributeValues": _values(iid=instance_id),
            "ScanIndexForward": False,
            "Limit": MAX_LISTED,
        }
        if account_id:
            params["FilterExpression"] = "account_id = :acct"
            params["ExpressionAttributeValues"].update(_values(acct=account_id))
        records: list[IsolationRecord] = []
        while len(records) < MAX_LISTED:
            page = self.client.query(**params)
            records.extend(self._served(deserialize(item)) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return records[:MAX_LISTED]

    def _served(self, item: dict[str, Any]) -> IsolationRecord:
        """A record as served: one whose worker was lost on the last receive is ended FAILED first
        (a conditional write, so a reader racing another changes nothing twice)."""
        record = _record(item)
        now = time.time()
        if not _is_lost(item, now):
            return record
        message = (
            f"the worker stopped during the last allowed attempt (attempt {record.attempts}) without "
            "recording an outcome (a timeout, out of memory or a crash); the request is in the "
            "dead-letter queue, and a redrive resumes it. Steps recorded done are in place."
        )
        self.finish(
            record,
            Status.FAILED,
            error=ErrorInfo(code=WORKER_LOST, message=message),
            resumable=True,
            lost_at=now,
        )
        current = self._get_item(record.isolation_id)
        return _record(current) if current else record

    # --- ingest --------------------------------------------------------------------------------------

    def create_queued(
        self,
        record: IsolationRecord,
        *,
        lease_seconds: int,
        idempotency: IdempotencyClaim | None = None,
        coalesce_window_seconds: int | None = None,
    ) -> Created | Joined | Replayed | Coalesced | Exists:
        """Write a QUEUED record and take the instance's in-flight slot, in one transaction.

        Fails (without writing anything) to `Replayed` when the idempotency key was used before,
        `Exists` when the record id is taken, `Joined` when another isolation of the instance is in
        flight, `Coalesced` when `coalesce_window_seconds` is given and the instance was isolated
        within it. A join reads the isolation it joins (its status is the answer): when that one has
        in fact ended (its worker lost, see `_LOST`), the slot is free by then and the write is tried
        once more.
        """
        tries = 0
        while True:
            outcome = self._create_queued(record, lease_seconds, idempotency, coalesce_window_seconds)
            if not isinstance(outcome, _SlotTaken):
                return outcome
            tries += 1
            current = self.get(outcome.isolation_id)  # ends it first if its worker was lost
            if current is None or current.status in (Status.QUEUED, Status.IN_PROGRESS) or tries == 2:
                return Joined(outcome.isolation_id, current.status if current else Status.QUEUED)

    def _create_queued(
        self,
        record: IsolationRecord,
        lease_seconds: int,
        idempotency: IdempotencyClaim | None,
        coalesce_window_seconds: int | None,
    ) -> Created | _SlotTaken | Replayed | Coalesced | Exists:
        now = time.time()
        slot_condition = "(attribute_not_exists(active_id) OR active_since < :stale)"
        values = _values(id=record.isolation_id, now=_epoch(now), stale=_epoch(now - lease_seconds))
        if coalesce_window_seconds is not None:
            slot_condition += " AND (attribute_not_exists(last_isolated_at) OR last_isolated_at < :window)"
            values.update(_values(window=_epoch(now - coalesce_window_seconds)))
        items: list[dict[str, Any]] = []
        if idempotency is not None:
            items.append(
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": serialize(_idempotency_item(idempotency, now)),
                        # TTL deletes expired keys days late: an expired key counts as free.
                        "ConditionExpression": "attribute_not_exists(pk) OR expires_at < :now",
                        "ExpressionAttributeValues": _values(now=int(now)),
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
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
        items.append(
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": {"pk": {"S": slot_key(record.target)}},
                    "UpdateExpression": "SET active_id = :id, active_since = :now",
                    "ConditionExpression": slot_condition,
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        )
        try:
            self.client.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            return self._explain_cancellation(
                exc, items, record, idempotency, coalesce_window_seconds, now - lease_seconds
            )
        return Created(record)

    def _explain_cancellation(
        self,
        exc: ClientError,
        items: list[dict[str, Any]],
        record: IsolationRecord,
        idempotency: IdempotencyClaim | None,
        coalesce_window_seconds: int | None,
        stale_before: float,
    ) -> _SlotTaken | Replayed | Coalesced | Exists:
        """Which condition cancelled the transaction, in the order of the items (idempotency first)."""
        reasons = exc.response.get("CancellationReasons") or []
        for item, reason in zip(items, reasons, strict=False):
            if reason.get("Code") != "ConditionalCheckFailed":
                continue
            operation = item.get("Put") or item["Update"]
            pk = (operation.get("Item") or operation["Key"])["pk"]["S"]
            old = reason.get("Item")
            current = deserialize(old) if old else self._get_item(pk)
            if current is None:  # gone since: the condition would pass now; let the caller retry
                break
            if idempotency is not None and pk == idempotency_key(idempotency.key_hash):
                return _replayed(current)
            if pk == record.isolation_id:
                return Exists(_record(current))
            if current.get("active_id") and float(current.get("active_since") or 0) >= stale_before:
                return _SlotTaken(str(current["active_id"]))
            if coalesce_window_seconds is not None and current.get("last_isolated_id"):
                return Coalesced(str(current["last_isolated_id"]))
        raise exc

    def _get_item(self, pk: str) -> dict[str, Any] | None:
        item = self.client.get_item(
            TableName=self.table_name, Key={"pk": {"S": pk}}, ConsistentRead=True
        ).get("Item")
        return deserialize(item) if item else None

    def put_idempotency(self, claim: IdempotencyClaim) -> Replayed | None:
        """Remember the answer of a request that wrote nothing (a deduplicated one).

        Returns the stored answer when the key was taken in the meantime.
        """
        now = time.time()
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=serialize(_idempotency_item(claim, now)),
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues=_values(now=int(now)),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            current = deserialize(old) if old else self._get_item(idempotency_key(claim.key_hash))
            if current is None:
                raise
            return _replayed(current)
        return None

    def abandon(self, record: IsolationRecord, error: ErrorInfo, idempotency_hash: str | None) -> None:
        """Undo an accepted request whose message could not be enqueued: the record becomes FAILED
        (it stays, so the attempt is on record), the slot and the idempotency key are released."""
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": {"pk": {"S": record.isolation_id}},
                    "UpdateExpression": "SET #s = :failed, #e = :error, updated_at = :now",
                    "ExpressionAttributeNames": {"#s": "status", "#e": "error"},
                    "ExpressionAttributeValues": _values(
                        failed=Status.FAILED.value, error=error.model_dump(), now=iso8601(utcnow())
                    ),
                }
            },
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": {"pk": {"S": slot_key(record.target)}},
                    "UpdateExpression": "REMOVE active_id, active_since",
                    "ConditionExpression": "active_id = :id",
                    "ExpressionAttributeValues": _values(id=record.isolation_id),
                }
            },
        ]
        if idempotency_hash:
            items.append(
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": {"pk": {"S": idempotency_key(idempotency_hash)}},
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

    def begin_attempt(
        self,
        isolation_id: str,
        *,
        owner: str,
        lease_seconds: int,
        prior_state: PriorState | None,
        final: bool = False,
    ) -> IsolationRecord:
        """Mark the record IN_PROGRESS, count the attempt, keep the first `prior_state`, take the lease.

        `final`: the message's last allowed receive; if this attempt dies without ending the record,
        a reader ends it once the lease has expired (see `_LOST`).

        One conditional write, the only one before the first change to the instance. Raises `LeaseHeld`
        while another worker holds the lease, `RecordEnded` when there is nothing left to do,
        `RecordMissing` when there is no such record.
        """
        now = time.time()
        update = _Update(
            "#s = :running",
            "attempts = if_not_exists(attempts, :zero) + :one",
            "updated_at = :stamp",
            "lease_owner = :owner",
            "lease_until = :until",
            remove=("#e", "resumable") if final else ("#e", "resumable", "final_attempt"),
            running=Status.IN_PROGRESS.value,
            zero=0,
            one=1,
            stamp=iso8601(utcnow()),
            owner=owner,
            until=_epoch(now + lease_seconds),
            now=_epoch(now),
            queued=Status.QUEUED.value,
            true=True,
        )
        if final:
            update.set("final_attempt = :true")
        if prior_state is not None:
            # The first attempt's view is the instance as it was: a retry sees it half isolated.
            update.set("prior_state = if_not_exists(prior_state, :prior)", prior=prior_state.model_dump())
        try:
            item = self.client.update_item(
                TableName=self.table_name,
                Key={"pk": {"S": isolation_id}},
                ConditionExpression=(
                    f"attribute_exists(pk) AND {_RUNNABLE} AND "
                    "(attribute_not_exists(lease_until) OR lease_until < :now OR lease_owner = :owner)"
                ),
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **update.params(),
            )["Attributes"]
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            current = deserialize(old) if old else self.get_raw(isolation_id)
            if current is None:
                raise RecordMissing(isolation_id) from exc
            ended = current.get("status") not in (Status.QUEUED, Status.IN_PROGRESS) and not current.get(
                "resumable"
            )
            if ended:
                raise RecordEnded(_record(current)) from exc
            raise LeaseHeld(isolation_id) from exc
        return _record(deserialize(item))

    def release_lease(self, isolation_id: str, owner: str) -> None:
        """Give up this attempt's lease so the retry need not wait for it to expire."""
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key={"pk": {"S": isolation_id}},
                UpdateExpression="REMOVE lease_owner, lease_until",
                ConditionExpression="lease_owner = :owner",
                ExpressionAttributeValues=_values(owner=owner),
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise

    def add_steps(
        self, isolation_id: str, steps: list[StepRecord], *, contained_at: str | None = None
    ) -> None:
        update = _Update(
            "steps = list_append(if_not_exists(steps, :empty), :step)",
            "updated_at = :stamp",
            empty=[],
            step=[step.model_dump(mode="json") for step in steps],
            stamp=steps[-1].at,
        )
        if contained_at is not None:
            update.set("contained_at = if_not_exists(contained_at, :contained)", contained=contained_at)
        self.client.update_item(TableName=self.table_name, Key={"pk": {"S": isolation_id}}, **update.params())

    def finish(
        self,
        record: IsolationRecord,
        status: Status,
        *,
        error: ErrorInfo | None = None,
        resumable: bool = False,
        extra_steps: list[StepRecord] | None = None,
        lost_at: float | None = None,
    ) -> None:
        """End the record and release the instance's in-flight slot.

        `resumable` marks a FAILED record whose message went on to the DLQ (retries exhausted): a
        redrive of that message runs it again. `lost_at`: end it only if it is lost at that time.
        """
        if lost_at is None:
            condition = _RUNNABLE
            values: dict[str, Any] = {"queued": Status.QUEUED.value, "running": Status.IN_PROGRESS.value}
        else:
            condition = _LOST
            values = {"running": Status.IN_PROGRESS.value, "now": _epoch(lost_at)}
        update = _Update(
            "#s = :status",
            "updated_at = :stamp",
            remove=("lease_owner", "lease_until", "final_attempt"),
            status=status.value,
            stamp=iso8601(utcnow()),
            true=True,
            **values,
        )
        if error is not None:
            update.set("#e = :error", error=error.model_dump())
        if resumable:
            update.set("resumable = :true", true=True)
        if extra_steps:
            update.set(
                "steps = list_append(if_not_exists(steps, :empty), :step)",
                empty=[],
                step=[step.model_dump(mode="json") for step in extra_steps],
            )
        isolated = status is Status.ISOLATED
        # The record's end and the slot's release are one transaction: an isolation that ended never
        # keeps its instance's slot (later requests would join an isolation that is over).
        ending = {
            "TableName": self.table_name,
            "Key": {"pk": {"S": record.isolation_id}},
            # A record that ended (a redelivered message's) keeps its outcome.
            "ConditionExpression": condition,
            **update.params(),
        }
        try:
            self.client.transact_write_items(
                TransactItems=[{"Update": ending}, {"Update": self._slot_release(record, isolated)}]
            )
            return
        except ClientError as exc:
            if error_code(exc) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
            if not reasons or reasons[0] == "ConditionalCheckFailed":
                return  # the record had already ended
            if reasons[1:2] != ["ConditionalCheckFailed"]:
                raise  # a conflict with another write: retried like any transient error
        # The slot is not this isolation's (taken over after a lease expired, or freed already).
        try:
            self.client.update_item(**ending)
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            return
        if isolated:
            self._remember_isolated(record)

    def _slot_release(self, record: IsolationRecord, isolated: bool) -> dict[str, Any]:
        """The update that frees the instance's slot held by `record` (and remembers a success)."""
        last = "SET last_isolated_id = :id, last_isolated_at = :now " if isolated else ""
        values: dict[str, Any] = {"id": record.isolation_id}
        if isolated:
            values["now"] = _epoch(time.time())
        return {
            "TableName": self.table_name,
            "Key": {"pk": {"S": slot_key(record.target)}},
            "UpdateExpression": f"{last}REMOVE active_id, active_since",
            "ConditionExpression": "active_id = :id",
            "ExpressionAttributeValues": _values(**values),
        }

    def _remember_isolated(self, record: IsolationRecord) -> None:
        self.client.update_item(
            TableName=self.table_name,
            Key={"pk": {"S": slot_key(record.target)}},
            UpdateExpression="SET last_isolated_id = :id, last_isolated_at = :now",
            ExpressionAttributeValues=_values(id=record.isolation_id, now=_epoch(time.time())),
        )

    def release_slot(self, record: IsolationRecord) -> None:
        """Free the instance's slot if this ended isolation still holds it; touch nothing otherwise.

        Every way a record ends frees the slot in the same transaction; a redelivered message of an
        ended record calls this anyway, so that no slot outlives its isolation whatever happened.
        """
        try:
            self.client.update_item(**self._slot_release(record, isolated=record.status is Status.ISOLATED))
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise


class _Update:
    """An UpdateExpression built from clauses; `#s`/`#e` stand for the reserved words status/error."""

    _NAMES = {"#s": "status", "#e": "error"}

    def __init__(self, *clauses: str, remove: tuple[str, ...] = (), **values: Any) -> None:
        self.clauses = list(clauses)
        self.remove = list(remove)
        self.values = dict(values)

    def set(self, clause: str, **values: Any) -> None:
        self.clauses.append(clause)
        self.values.update(values)

    def params(self) -> dict[str, Any]:
        expression = "SET " + ", ".join(self.clauses)
        if self.remove:
            expression += " REMOVE " + ", ".join(self.remove)
        names = {k: v for k, v in self._NAMES.items() if k in expression}
        params: dict[str, Any] = {
            "UpdateExpression": expression,
            "ExpressionAttributeValues": _values(**self.values),
        }
        if names:
            params["ExpressionAttributeNames"] = names
        return params


def _epoch(moment: float) -> Decimal:
    return Decimal(str(round(moment, 3)))


def _record_item(record: IsolationRecord) -> dict[str, Any]:
    # None-valued fields are left out, so `if_not_exists(prior_state | contained_at, ...)` can set them.
    item = record.model_dump(mode="json", exclude_none=True)
    item["pk"] = record.isolation_id
    return item


def _record(data: dict[str, Any]) -> IsolationRecord:
    """A deserialized record item → the served record (internal attributes dropped)."""
    return IsolationRecord.model_validate({k: v for k, v in data.items() if k not in _INTERNAL})


def _replayed(item: dict[str, Any]) -> Replayed:
    return Replayed(str(item["body_hash"]), int(item["status_code"]), json.loads(item["answer"]))


def _idempotency_item(claim: IdempotencyClaim, now: float) -> dict[str, Any]:
    return {
        "pk": idempotency_key(claim.key_hash),
        "body_hash": claim.body_hash,
        "status_code": claim.status_code,
        "answer": json.dumps(claim.answer, sort_keys=True),
        "expires_at": int(now) + claim.ttl_seconds,
    }
