"""Episode ends: a release that ends RELEASED ends its whole episode.

Each earlier record of the episode that a release could have undone (`lifecycle.RELEASABLE`: ISOLATED,
FAILED with a `prior_state`, RELEASE_FAILED) reads RELEASED too, with the releasing record's
`released_at` and `released_by` naming it (`lifecycle.END_WITH_EPISODE`), so that a list of ISOLATED
records names only instances isolated now. An episode may hold more records than one transaction
takes: each is ended by a conditional write of its own (the status as read must still hold, so a
concurrent write is never overwritten), after the release's own end.

- The release's end marks its record `final_attempt` = `episode-to-end`, `lease_until` = its end
  (`lifecycle.EPISODE_UNENDED`): that puts it in the sparse `by-final-lease` index, beside the
  last-receive attempts the sweeper looks for. The mark goes once every earlier record is ended. The
  worker ends them right after the release; when it stops first, the sweeper finds the marked record
  with one query of that index (which holds only unfinished work) and finishes.
- The earlier records are the instance's records in the `by-instance` index, of the same account and
  region, newest first from the release's request back to the releasing record of the previous episode
  (RELEASED, naming no `released_by`): what is older belongs to an episode released before, and is never
  touched. Dry runs, SKIPPED and CHECKED records, and FAILED ones without a `prior_state`, are in no
  episode and stay as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from shared import lifecycle
from shared.lifecycle import EPISODE_TO_END, FINAL_LEASE_INDEX, EqualsParam, Status
from shared.store.dynamo import Write, key
from shared.store.table import INSTANCE_INDEX

#: Records of the instance read per page while looking for the episode's earlier ones.
PAGE = 50
#: Statuses an earlier record may still leave for a releasable one (the index may lag behind the table).
_IN_FLIGHT = (Status.QUEUED.value, Status.IN_PROGRESS.value, Status.RELEASING.value)


def marking(write: Write, *, ended: Decimal) -> None:
    """Add the mark to the write that ends a release RELEASED at `ended` (epoch seconds)."""
    write.set("final_attempt = :to_end", to_end=EPISODE_TO_END)
    write.set("lease_until = :ended", ended=ended)


def unended_query(table: str) -> dict[str, Any]:
    """The Query of the RELEASED records whose episode is still to be ended (oldest release first)."""
    return {
        "TableName": table,
        "IndexName": FINAL_LEASE_INDEX,
        "KeyConditionExpression": "final_attempt = :to_end",
        "ExpressionAttributeValues": {":to_end": {"S": EPISODE_TO_END}},
    }


def earlier_query(table: str, releasing: dict[str, Any]) -> dict[str, Any]:
    """The Query of the instance's records created up to the release's request, newest first."""
    until = (releasing.get("release") or {}).get("requested_at") or releasing["updated_at"]
    return {
        "TableName": table,
        "IndexName": INSTANCE_INDEX,
        "KeyConditionExpression": "instance_id = :instance AND created_at <= :until",
        "ExpressionAttributeValues": {":instance": {"S": releasing["instance_id"]}, ":until": {"S": until}},
        "ScanIndexForward": False,
        "Limit": PAGE,
    }


def earlier_records(items: Iterable[dict[str, Any]], releasing: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Of the instance's records, newest first, those of the episode `releasing` released that are still
    to be ended (as the index shows them) or may have become so since (in flight as the index shows
    them: read again before anything is written). Stops at the previous episode's releasing record."""
    where = (releasing["account_id"], releasing["region"])
    for item in items:
        if (item.get("account_id"), item.get("region")) != where or item["pk"] == releasing["pk"]:
            continue
        if item.get("status") == Status.RELEASED.value and not item.get("released_by"):
            return
        if lifecycle.REAL.holds(item) and (
            lifecycle.END_WITH_EPISODE.guard.holds(item) or item.get("status") in _IN_FLIGHT
        ):
            yield item


def ending(table: str, item: dict[str, Any], releasing: dict[str, Any], *, stamp: str) -> dict[str, Any]:
    """The update that ends the earlier record `item` with the episode `releasing` released, as long as
    its status is still the one read (and one a release could have undone)."""
    write = Write(
        "#s = :released",
        "released_at = :released_at",
        "released_by = :released_by",
        "updated_at = :stamp",
        remove=("resumable",),
        condition=lifecycle.END_WITH_EPISODE.guard & EqualsParam("status", "read"),
        params={"read": item["status"]},
        released=Status.RELEASED.value,
        released_at=releasing["released_at"],
        released_by=releasing["pk"],
        stamp=stamp,
    )
    return {"TableName": table, "Key": key(item["pk"]), **write.request()}


def ended(table: str, isolation_id: str) -> dict[str, Any]:
    """The update that takes the mark off the releasing record once its episode is ended."""
    write = Write(remove=("final_attempt", "lease_until"), condition=lifecycle.EPISODE_UNENDED)
    return {"TableName": table, "Key": key(isolation_id), **write.request()}
