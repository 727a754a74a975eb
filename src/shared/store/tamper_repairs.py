"""The tamper-repair budget: how many times tamper events may re-isolate one instance per hour
(`TamperRepairsPerHour`). One item per instance and hour (`repairs#<account>#<region>#<instance>#<hour>`)
counts them; it is taken in the transaction that writes a repair's QUEUED record, like the blast-radius
budget (`shared.store.rate_limits`), so an automation that keeps undoing an isolation (Firewall Manager,
Config remediation, a Terraform run) meets a FAILED `TamperLoop` record instead of a fight. Items expire
with the table's TTL."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from shared.lifecycle import Before, Missing
from shared.models import Target
from shared.store.dynamo import Write, key

PREFIX = "repairs#"
#: Fewer than `limit` repairs of the instance this hour.
UNDER = Missing("started") | Before("started", "limit")
_KEEP_SECONDS = 2 * 86400


def repairs_key(target: Target, now: float) -> str:
    return f"{PREFIX}{target.key}#{time.strftime('%Y-%m-%dT%H', time.gmtime(now))}"


def take(table: str, target: Target, *, now: float, limit: int) -> dict[str, Any]:
    """The transaction item that spends one repair of the instance's budget for this hour."""
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
        "Key": key(repairs_key(target, now)),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        **write.request(),
    }
