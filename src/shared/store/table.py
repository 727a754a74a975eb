"""The service's table as every part of the store reads it: one item, one record (consistent reads), the
records of an instance, every record, a query's items, and a conditional update of a record.

`RecordTable` is the base of `shared.store.IsolationStore` and of the concerns it is assembled from
(episodes, isolation groups, releases), so that each of them reads the table the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from botocore.exceptions import ClientError

from shared.aws import same_account_client
from shared.errors import error_code
from shared.models import IsolationRecord
from shared.store.dynamo import Refused, Write, deserialize, key, query_items

MAX_LISTED = 50
#: The index of the records of an instance by creation: hash `instance_id`, range `created_at` (only
#: records carry `instance_id`).
INSTANCE_INDEX = "by-instance"
#: The index of every record by creation, newest first: hash `list_shard` (one of `LIST_SHARDS` write
#: shards, from the id), range `listed_at` (`<created_at>#<isolation_id>`, unique and time-ordered). A
#: page reads each shard's newest and merges them: no scan, and no one partition takes every write.
RECENT_INDEX = "by-recent"
LIST_SHARDS = 4

# Attributes of a record item that are not part of the served record.
_INTERNAL = (
    "pk",
    "lease_owner",
    "lease_until",
    "resumable",
    "final_attempt",
    "list_shard",
    "listed_at",
    "phase",
    "unmet",
    "snapshots_asked_at",
)


def shard_query(table: str, shard: int) -> dict[str, Any]:
    """The Query of one write shard of the `by-recent` index, oldest first (callers add to it)."""
    return {
        "TableName": table,
        "IndexName": RECENT_INDEX,
        "KeyConditionExpression": "list_shard = :shard",
        "ExpressionAttributeValues": {":shard": {"S": f"all#{shard}"}},
    }


def record_of(data: dict[str, Any]) -> IsolationRecord:
    """A deserialized record item → the served record (internal attributes dropped)."""
    return IsolationRecord.model_validate({k: v for k, v in data.items() if k not in _INTERNAL})


class RecordTable:
    """The table `table_name` through `client` (the same account's DynamoDB by default)."""

    def __init__(self, table_name: str, *, client: Any = None) -> None:
        self.table_name = table_name
        self.client = client or same_account_client("dynamodb")

    def as_record(self, item: dict[str, Any]) -> IsolationRecord:
        return record_of(item)

    def item(self, pk: str) -> dict[str, Any] | None:
        """Any item of the table, as stored (consistent read)."""
        found = self.client.get_item(TableName=self.table_name, Key=key(pk), ConsistentRead=True).get("Item")
        return deserialize(found) if found else None

    def get(self, isolation_id: str) -> IsolationRecord | None:
        item = self.item(isolation_id)
        return record_of(item) if item else None

    def list_for_instance(self, instance_id: str, account_id: str | None = None) -> list[IsolationRecord]:
        """Newest first, at most 50."""
        params: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": INSTANCE_INDEX,
            "KeyConditionExpression": "instance_id = :iid",
            "ExpressionAttributeValues": {":iid": {"S": instance_id}},
            "ScanIndexForward": False,
            "Limit": MAX_LISTED,
        }
        if account_id:
            params["FilterExpression"] = "account_id = :acct"
            params["ExpressionAttributeValues"][":acct"] = {"S": account_id}
        return [record_of(item) for item in self._query(params, MAX_LISTED)]

    def every_record(self) -> Iterator[IsolationRecord]:
        """Every record of the table, from the `by-recent` index (the upgrade's backfill only)."""
        for shard in range(LIST_SHARDS):
            yield from (record_of(item) for item in self._query(shard_query(self.table_name, shard), None))

    def update_record(self, isolation_id: str, write: Write) -> dict[str, Any]:
        """Apply a conditional `write` to the record; the item after it. A refused condition raises
        `Refused` with the record as it stood (None: there is none)."""
        try:
            return deserialize(
                self.client.update_item(
                    TableName=self.table_name,
                    Key=key(isolation_id),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **write.request(),
                )["Attributes"]
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
            old = exc.response.get("Item")
            raise Refused(deserialize(old) if old else self.item(isolation_id)) from exc

    def _query(self, params: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
        return list(islice(query_items(self.client, params), limit))
