"""A record's lease: the write that takes it for one attempt (an isolation's containment or follow-up, or
a release) and the write that gives it back.

The lease says which attempt works on the record (`lease_owner`) and until when (`lease_until`). An
attempt on its message's last receive marks it `final_attempt`: if that attempt dies without ending the
record, the sweeper ends it once the lease has expired (`lifecycle.LOST`, `lifecycle.RELEASE_LOST`). An
attempt on an earlier receive clears a mark an earlier final attempt left (a redrive starts the count
again).
"""

from __future__ import annotations

import time

from shared import lifecycle
from shared.lifecycle import FINAL, Transition
from shared.models import iso8601, utcnow
from shared.store.dynamo import Write, epoch


class LeaseHeld(Exception):
    """Another worker is running this isolation (or its release) right now."""


def taking(
    transition: Transition,
    *clauses: str,
    owner: str,
    lease_seconds: int,
    final: bool,
    remove: tuple[str, ...] = (),
    **values: object,
) -> Write:
    """The write that takes the lease by `transition` for `lease_seconds`, with the caller's own
    `clauses`, `remove` and `values`."""
    now = time.time()
    write = Write(
        *clauses,
        "updated_at = :stamp",
        "lease_owner = :owner",
        "lease_until = :until",
        remove=remove if final else (*remove, "final_attempt"),
        condition=transition.guard,
        params={"now": epoch(now), "owner": owner},
        stamp=iso8601(utcnow()),
        owner=owner,
        until=epoch(now + lease_seconds),
        **values,
    )
    if final:
        write.set("final_attempt = :final", final=FINAL)
    return write


def giving_back(owner: str) -> Write:
    """The write by which an attempt that will be retried gives its lease back, so that the retry need not
    wait for it to expire (refused once the lease is another attempt's)."""
    return Write(
        remove=("lease_owner", "lease_until"),
        condition=lifecycle.EqualsParam("lease_owner", "owner"),
        params={"owner": owner},
    )
