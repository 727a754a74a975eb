"""Exemptions, kept in a table of their own (`ExemptionTable`), never in the isolation table: no
isolation-record index or query can read an exemption as a record, and the exemptions' own index does
not count against the isolation table's. Nothing in it comes from a member account.

| item | pk | holds |
|---|---|---|
| exemption | `exm-<hex>` | the exemption, kept for good; a deleted one with `deleted_at` and `deleted_by` |
| active exemption of an instance | `active#<account>#<instance>` | a copy of the instance's current exemption, `expiry_epoch`, and `active_shard` (the `by-expiry` index) |

The second item makes "at most one active exemption per (account, instance)" a conditional write (its
key is the instance): it is written only when absent or expired (`FREE`), in one transaction with the
first. Deleting an exemption deletes it (when it is still the instance's) and marks the first, again in
one transaction. A trigger's judging reads it with a `ConditionCheck` in the transaction that writes the
trigger's record (`not_exempt`): a strongly consistent read, made after the join and coalesce checks
and before the blast-radius budget's. The `by-expiry` index (hash `active_shard`, range
`expiry_epoch`) lists the active ones (GET /exemptions; an index read, eventually consistent: an
exemption shows there within moments of its creation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.aws import same_account_client
from shared.exemptions import Exemption, KeptExemption
from shared.lifecycle import Before, EqualsParam, Exists, Missing
from shared.models import iso8601, utcnow
from shared.store.dynamo import Write, deserialize, epoch, key, refusals, serialize, updated_if

EXPIRY_INDEX = "by-expiry"
#: The one partition of the `by-expiry` index (exemptions are few: one partition serves them).
ACTIVE = "active"
#: The instance has no active exemption: none ever, or the last one has expired.
FREE = Missing("pk") | Before("expiry_epoch", "now")
#: The exemption exists and has not been deleted.
UNDELETED = Exists("pk") & Missing("deleted_at")
#: The instance's active-exemption item is this exemption's.
OWN = EqualsParam("exemption_id", "exemption_id")


@dataclass(frozen=True)
class AlreadyExempt:
    """The instance has an active exemption already: `exemption`."""

    exemption: Exemption


def active_key(account_id: str, instance_id: str) -> str:
    return f"active#{account_id}#{instance_id}"


def not_exempt(table: str, account_id: str, instance_id: str, *, now: float) -> dict[str, Any]:
    """The transaction item (`ConditionCheck`) that holds while the instance has no active exemption; when
    it fails, the cancellation reason carries the exemption (`exempting`)."""
    return {
        "TableName": table,
        "Key": key(active_key(account_id, instance_id)),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        **Write(condition=FREE, params={"now": epoch(now)}).request(),
    }


def exempting(item: dict[str, Any]) -> Exemption:
    """The exemption an instance's active-exemption item holds."""
    return Exemption.model_validate({name: item.get(name) for name in Exemption.model_fields})


class ExemptionStore:
    def __init__(self, table_name: str, *, client: Any = None) -> None:
        self.table_name = table_name
        self.client = client or same_account_client("dynamodb")

    def get(self, exemption_id: str) -> KeptExemption | None:
        """The exemption, deleted and expired ones included (consistent read)."""
        found = self._item(exemption_id)
        return KeptExemption.model_validate(_fields(found, KeptExemption)) if found else None

    def active_for(self, account_id: str, instance_id: str, *, now: float | None = None) -> Exemption | None:
        """The instance's active exemption (consistent read), if any."""
        found = self._item(active_key(account_id, instance_id))
        moment = time.time() if now is None else now
        return exempting(found) if found and not FREE.holds(found, now=moment) else None

    def active(self, account_id: str | None = None, *, now: float | None = None) -> list[Exemption]:
        """The active exemptions (of `account_id` only, when given), the soonest to expire first."""
        params: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": EXPIRY_INDEX,
            "KeyConditionExpression": "active_shard = :active AND expiry_epoch >= :now",
            "ExpressionAttributeValues": serialize(
                {":active": ACTIVE, ":now": epoch(time.time() if now is None else now)}
            ),
        }
        if account_id is not None:
            params["FilterExpression"] = "account_id = :account"
            params["ExpressionAttributeValues"][":account"] = {"S": account_id}
        found: list[Exemption] = []
        while True:
            page = self.client.query(**params)
            found.extend(exempting(deserialize(item)) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return found
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def create(self, exemption: Exemption) -> Exemption | AlreadyExempt:
        """Keep the exemption and make it the instance's active one, in one transaction; `AlreadyExempt`
        (nothing written) when the instance has an active exemption."""
        kept = {**exemption.model_dump(mode="json"), "pk": exemption.exemption_id}
        active = {
            **exemption.model_dump(mode="json"),
            "pk": active_key(exemption.account_id, exemption.instance_id),
            "expiry_epoch": epoch(exemption.until),
            "active_shard": ACTIVE,
        }
        for _ in range(2):
            now = time.time()
            items = [
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": serialize(kept),
                        **Write(condition=Missing("pk")).request(),
                    }
                },
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": serialize(active),
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                        **Write(condition=FREE, params={"now": epoch(now)}).request(),
                    }
                },
            ]
            try:
                self.client.transact_write_items(TransactItems=items)
                return exemption
            except ClientError as exc:
                refused = refusals(exc)
                if not refused.refused(1):
                    raise  # a conflict, or an id collision (uuid4): retried like any transient error
                current = refused.item(1) or self._item(active["pk"])
                if current is not None and not FREE.holds(current, now=now):
                    return AlreadyExempt(exempting(current))
                # Deleted or expired since: the condition would pass now.
        raise RuntimeError("the instance's active exemption changed twice during its creation; retry")

    def delete(self, exemption_id: str, *, deleted_by: str | None) -> tuple[KeptExemption, bool] | None:
        """Delete the exemption: it stops being the instance's active one, and is kept with who deleted
        it and when. Returns it and whether this call deleted it (False: it had been deleted already);
        None when there is no such exemption."""
        kept = self.get(exemption_id)
        if kept is None or kept.deleted_at is not None:
            return None if kept is None else (kept, False)
        mark = Write(
            "deleted_at = :deleted_at",
            "deleted_by = :deleted_by",
            condition=UNDELETED,
            deleted_at=iso8601(utcnow()),
            deleted_by=deleted_by,
        )
        marking = {"TableName": self.table_name, "Key": key(exemption_id), **mark.request()}
        unlisting = {
            "TableName": self.table_name,
            "Key": key(active_key(kept.account_id, kept.instance_id)),
            **Write(condition=OWN, params={"exemption_id": exemption_id}).request(),
        }
        try:
            self.client.transact_write_items(TransactItems=[{"Update": marking}, {"Delete": unlisting}])
        except ClientError as exc:
            refused = refusals(exc)
            if refused.refused(0):
                current = self.get(exemption_id)  # deleted meanwhile by another request
                return (current, False) if current is not None else None
            if not refused.refused(1):
                raise
            # No longer the instance's active exemption (it expired and another replaced it): mark it only.
            if not updated_if(self.client, marking):
                current = self.get(exemption_id)
                return (current, False) if current is not None else None
        deleted = self.get(exemption_id)
        assert deleted is not None
        return deleted, True

    def _item(self, pk: str) -> dict[str, Any] | None:
        found = self.client.get_item(TableName=self.table_name, Key=key(pk), ConsistentRead=True).get("Item")
        return deserialize(found) if found else None


def _fields(item: dict[str, Any], model: type[Exemption]) -> dict[str, Any]:
    return {name: item.get(name) for name in model.model_fields}
