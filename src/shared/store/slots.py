"""The instance slot: one item per instance (`instance#<account>#<region>#<instance>`).

- `active_id`, `active_since`: the isolation in flight (QUEUED or IN_PROGRESS) for the instance; a
  request for the instance while it is held joins that isolation. Taken in the transaction that writes a
  QUEUED record, freed in the transaction that ends it; `active_since` older than the settings'
  `ACTIVE_LEASE_SECONDS` counts as free (a safety net, never the normal way out).
- `last_isolated_id`, `last_isolated_at`: the last isolation of the instance that ended ISOLATED (a
  trigger within the coalesce window records a coalesced isolation instead of running one).
- `active_kind` = `release`: the slot is held by a release of `active_id` (`take_for_release`). An
  isolation requested meanwhile wins: for it the slot is free, and taking it ends the release
  (`Superseded`, when the release's worker next looks). Requesting a release forgets `last_isolated_*`,
  so a trigger after a release isolates again.
- `latest_id`, `isolated_in`: the instance's latest record that changed it, and the account while the
  instance is isolated now (`shared.store.episodes`, which says who writes them and when). A release
  request makes the released record the latest and takes the instance out of those isolated now.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.lifecycle import Before, EqualsParam, Is, Missing
from shared.models import Target
from shared.store.dynamo import Write, key

RELEASE = "release"
#: The instance's latest record that changed it (`shared.store.episodes`).
LATEST = "latest_id"
#: The account, while the instance is isolated now (`shared.store.episodes`): the `isolated-now` index's
#: hash key.
ISOLATED_IN = "isolated_in"
#: Nobody holds the slot for an isolation (`stale`: the epoch before which a holder counts as gone); a
#: release holding it gives way to an isolation.
FREE = Missing("active_id") | Before("active_since", "stale") | Is("active_kind", RELEASE)
#: Nothing at all holds the slot: a release may take it.
FREE_FOR_RELEASE = Missing("active_id") | Before("active_since", "stale")
#: The instance was not isolated within the coalesce window (`window`: its start).
NOT_RECENTLY_ISOLATED = Missing("last_isolated_at") | Before("last_isolated_at", "window")
#: The isolation `id` holds the slot.
HELD_BY = EqualsParam("active_id", "id")
#: The release of isolation `id` holds the slot (no isolation took it over).
HELD_BY_RELEASE = HELD_BY & Is("active_kind", RELEASE)
#: Isolation `id` itself holds the slot (not its release).
HELD_BY_ISOLATION = HELD_BY & Missing("active_kind")


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
        remove=("active_kind",),
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
    success for the coalesce window, and that the instance is isolated now by it, its latest record)."""
    clauses: tuple[str, ...] = ()
    values: dict[str, Any] = {}
    if isolated_at is not None:
        clauses = (
            "last_isolated_id = :id",
            "last_isolated_at = :at",
            f"{LATEST} = :id",
            f"{ISOLATED_IN} = :where",
        )
        values = {"at": isolated_at, "where": target.account_id}
    write = Write(
        *clauses,
        remove=("active_id", "active_since"),
        condition=HELD_BY_ISOLATION,
        params={"id": isolation_id},
        **values,
    )
    return {"TableName": table, "Key": key(slot_key(target)), **write.request()}


def take_for_release(
    table: str, target: Target, isolation_id: str, *, now: Decimal, stale: Decimal
) -> dict[str, Any]:
    """The transaction item that takes the slot for the release of `isolation_id` and forgets the last
    isolation (no coalescing with an isolation being undone); the released record is the instance's
    latest, and the instance is no longer isolated now."""
    write = Write(
        "active_id = :id",
        "active_since = :since",
        "active_kind = :kind",
        f"{LATEST} = :id",
        remove=("last_isolated_id", "last_isolated_at", ISOLATED_IN),
        condition=FREE_FOR_RELEASE,
        params={"stale": stale},
        id=isolation_id,
        since=now,
        kind=RELEASE,
    )
    return {
        "TableName": table,
        "Key": key(slot_key(target)),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        **write.request(),
    }


def release_after_release(table: str, target: Target, isolation_id: str) -> dict[str, Any]:
    """The update that frees the slot the release of `isolation_id` holds (fails when an isolation took
    it over)."""
    write = Write(
        remove=("active_id", "active_since", "active_kind"),
        condition=HELD_BY_RELEASE,
        params={"id": isolation_id},
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
