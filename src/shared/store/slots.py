"""The instance slot: one item per instance (`instance#<account>#<region>#<instance>`).

- `active_id`, `active_since`: the isolation in flight (QUEUED or IN_PROGRESS) for the instance; a
  request for the instance while it is held joins that isolation. Taken in the transaction that writes a
  QUEUED record, freed in the transaction that ends it; `active_since` older than the settings'
  `ACTIVE_LEASE_SECONDS` counts as free (a safety net, never the normal way out).
- `last_isolated_id`, `last_isolated_at`: the last isolation of the instance that ended ISOLATED (a
  trigger within the coalesce window records a coalesced isolation instead of running one).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.lifecycle import Before, EqualsParam, Missing
from shared.models import Target
from shared.store.dynamo import Write, key

#: Nobody holds the slot (`stale`: the epoch before which a holder counts as gone).
FREE = Missing("active_id") | Before("active_since", "stale")
#: The instance was not isolated within the coalesce window (`window`: its start).
NOT_RECENTLY_ISOLATED = Missing("last_isolated_at") | Before("last_isolated_at", "window")
#: The isolation `id` holds the slot.
HELD_BY = EqualsParam("active_id", "id")


def slot_key(target: Target) -> str:
    return f"instance#{target.key}"


def take(
    table: str, target: Target, isolation_id: str, *, now: Decimal, stale: Decimal, window: Decimal | None
) -> dict[str, Any]:
    """The transaction item that takes the slot for `isolation_id` (and, with `window`, checks that the
    instance was not isolated since then)."""
    condition = FREE if window is None else FREE & NOT_RECENTLY_ISOLATED
    params: dict[str, Any] = {"stale": stale} if window is None else {"stale": stale, "window": window}
    write = Write(
        "active_id = :id",
        "active_since = :since",
        condition=condition,
        params=params,
        id=isolation_id,
        since=now,
    )
    return {
        "TableName": table,
        "Key": key(slot_key(target)),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        **write.request(),
    }


def release(table: str, target: Target, isolation_id: str, *, isolated_at: Decimal | None) -> dict[str, Any]:
    """The update that frees the slot `isolation_id` holds (and, with `isolated_at`, remembers the
    success for the coalesce window)."""
    clauses = ("last_isolated_id = :id", "last_isolated_at = :at") if isolated_at is not None else ()
    values = {"at": isolated_at} if isolated_at is not None else {}
    write = Write(
        *clauses,
        remove=("active_id", "active_since"),
        condition=HELD_BY,
        params={"id": isolation_id},
        **values,
    )
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def remember_isolated(
    table: str, target: Target, isolation_id: str, *, isolated_at: Decimal
) -> dict[str, Any]:
    """The update that remembers a success without touching the slot (held by someone else by then)."""
    write = Write("last_isolated_id = :id", "last_isolated_at = :at", id=isolation_id, at=isolated_at)
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def holder(item: dict[str, Any], *, stale: Decimal) -> str | None:
    """The isolation holding the slot as `item` shows it, if any."""
    return None if FREE.holds(item, stale=stale) else str(item["active_id"])
