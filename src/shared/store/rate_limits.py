"""The blast-radius budget: how many isolations each trigger (GuardDuty, tags, Security Hub) may start
per account and hour. One item per account, source and hour (`budget#<account>#<source>#<YYYY-MM-DDTHH>`)
counts them, so that tags a member writes can never spend the budget of GuardDuty's findings; it is
taken in the transaction that writes a trigger's QUEUED record, so a storm of false positives stops at
the budget however many workers race, and a join or a coalesced trigger (which writes no QUEUED record)
spends nothing. A person's webhook request never spends it. Items expire with the table's TTL."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from shared.lifecycle import Before, Missing
from shared.store.dynamo import Write, key

#: Fewer than `limit` isolations started this hour.
UNDER = Missing("started") | Before("started", "limit")
_KEEP_SECONDS = 2 * 86400


def budget_key(account_id: str, source: str, now: float) -> str:
    return hourly_key("budget#", f"{account_id}#{source}", now)


def take(table: str, account_id: str, source: str, *, now: float, limit: int) -> dict[str, Any]:
    """The transaction item that spends one isolation of the (account, source) budget for this hour."""
    return spend(table, budget_key(account_id, source, now), now=now, limit=limit)


def hourly_key(prefix: str, subject: str, now: float) -> str:
    """The item counting `subject`'s spending in the hour of `now`."""
    return f"{prefix}{subject}#{time.strftime('%Y-%m-%dT%H', time.gmtime(now))}"


def spend(table: str, pk: str, *, now: float, limit: int) -> dict[str, Any]:
    """The transaction item that counts one more in the hourly counter `pk`, refused at `limit`."""
    write = Write(
        "started = if_not_exists(started, :zero) + :one",
        "expires_at = :expires",
        condition=UNDER,
        params={"limit": Decimal(limit)},
        zero=0,
        one=1,
        expires=int(now) + _KEEP_SECONDS,
    )
    return {
        "TableName": table,
        "Key": key(pk),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        **write.request(),
    }
