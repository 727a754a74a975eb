"""Role leases: one item per IAM role of a member account (`role#<account>#<role name>`) that serializes
the read-modify-write of the role's deny policy.

IAM has no conditional write: two workers that read the role's policy, each add their instance and write
it back would lose one another's entry. Whoever holds the role's lease (`lease_owner`, until
`lease_until`, epoch seconds) is the only one changing that policy; a lease whose holder died expires.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from shared.lifecycle import Before, EqualsParam, Missing
from shared.store.dynamo import Write, key

#: The attempt `owner` may take the lease: nobody holds it, its holder's time is up, or it is `owner`.
FREE_FOR_OWNER = Missing("lease_until") | Before("lease_until", "now") | EqualsParam("lease_owner", "owner")
#: `owner` holds the lease.
HELD_BY = EqualsParam("lease_owner", "owner")


def role_key(account_id: str, role_name: str) -> str:
    return f"role#{account_id}#{role_name}"


def take(
    table: str, account_id: str, role_name: str, owner: str, *, now: Decimal, until: Decimal
) -> dict[str, Any]:
    """The UpdateItem that takes the role's lease for `owner` until `until`."""
    write = Write(
        "lease_owner = :owner",
        "lease_until = :until",
        condition=FREE_FOR_OWNER,
        params={"now": now, "owner": owner},
        owner=owner,
        until=until,
    )
    return {"TableName": table, "Key": key(role_key(account_id, role_name)), **write.request()}


def release(table: str, account_id: str, role_name: str, owner: str) -> dict[str, Any]:
    """The UpdateItem that gives the lease back (nothing when `owner` no longer holds it)."""
    write = Write(remove=("lease_owner", "lease_until"), condition=HELD_BY, params={"owner": owner})
    return {"TableName": table, "Key": key(role_key(account_id, role_name)), **write.request()}
