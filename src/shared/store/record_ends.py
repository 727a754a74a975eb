"""How a record ends, an isolation or its release: the write that ends it (`ending`) and the transaction
that ends it together with its instance's slot (`end_with_slot`)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from botocore.exceptions import ClientError

from shared.lifecycle import Status, Transition
from shared.models import ErrorInfo, StepRecord
from shared.store.dynamo import Write, epoch, refusals


def ending(
    transition: Transition,
    status: Status,
    *,
    now: float,
    stamp: str,
    error: ErrorInfo | None = None,
    steps: list[StepRecord] | None = None,
    under: str = "",
    keep_lease_mark: bool = False,
) -> Write:
    """The write that ends a record `status` by `transition` (its condition checked at `now`), taking
    the lease off, with the `error` and the `steps` not written yet: the isolation's own, or under
    `under` (the release's: `#r.`). `keep_lease_mark`: `final_attempt` and `lease_until` stay (a
    released record's mark of its episode's end)."""
    if status not in transition.to:
        raise ValueError(f"{transition.name} cannot end a record {status.value}")
    write = Write(
        "#s = :status",
        "updated_at = :stamp",
        remove=("lease_owner",) if keep_lease_mark else ("lease_owner", "lease_until", "final_attempt"),
        condition=transition.guard,
        params={"now": epoch(now)},
        status=status.value,
        stamp=stamp,
    )
    if error is not None:
        write.set(f"{under}#e = :error", error=error.model_dump())
    if steps:
        write.set(
            f"{under}steps = list_append(if_not_exists({under}steps, :empty), :step)",
            empty=[],
            step=[step.model_dump(mode="json") for step in steps],
        )
    return write


class Ended(Enum):
    #: The record ended, and the slot was freed.
    WITH_SLOT = "with-slot"
    #: The record had ended already: nothing was written.
    ALREADY = "already"
    #: The slot is not the record's (taken over, or freed already): nothing was written.
    SLOT_NOT_ITS = "slot-not-its"


def end_with_slot(client: Any, ending: dict[str, Any], slot: dict[str, Any]) -> Ended:
    """The record's `ending` and the `slot`'s release, one transaction: an isolation (or release) that
    ended never keeps its instance's slot. A conflict with another write is raised (retried like any
    transient error)."""
    try:
        client.transact_write_items(TransactItems=[{"Update": ending}, {"Update": slot}])
    except ClientError as exc:
        refused = refusals(exc)
        if not refused.codes or refused.refused(0):
            return Ended.ALREADY
        if not refused.refused(1):
            raise
        return Ended.SLOT_NOT_ITS
    return Ended.WITH_SLOT
