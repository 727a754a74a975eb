"""The tamper-repair budget: how many times tamper events may re-isolate one instance per hour
(`TamperRepairsPerHour`). One item per instance and hour (`repairs#<account>#<region>#<instance>#<hour>`)
counts them, with the blast-radius budget's hourly counter (`shared.store.rate_limits`). It is taken in
the transaction that writes a repair's QUEUED record, so an automation that keeps undoing an isolation
(Firewall Manager, Config remediation, a Terraform run) meets a FAILED `TamperLoop` record instead of a
fight. Items expire with the table's TTL."""

from __future__ import annotations

from typing import Any

import shared.store.rate_limits as rate_limits
from shared.models import Target

PREFIX = "repairs#"


def repairs_key(target: Target, now: float) -> str:
    return rate_limits.hourly_key(PREFIX, target.key, now)


def take(table: str, target: Target, *, now: float, limit: int) -> dict[str, Any]:
    """The transaction item that spends one repair of the instance's budget for this hour."""
    return rate_limits.spend(table, repairs_key(target, now), now=now, limit=limit)
