"""Exemptions: an instance that triggers (GuardDuty, tag, Security Hub) leave alone until a time, decided
in the security account (`POST /exemptions`), never by anything on the instance: whoever can tag an
instance could otherwise exempt it. A person's webhook request and a tamper repair are never exempted.

The request and the exemption as served, the expiry rule (in the future, at most `MAX_DAYS` ahead) and
the `EC2 Isolation Exemption` event each change puts on the stack's bus (`shared.store.exemptions`
keeps them).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from shared.models import AccountId, InstanceId, Model, iso8601, utcnow
from shared.outcomes import SOURCE

EXEMPTION_ID_PATTERN = r"^exm-[0-9a-f]{32}$"
#: How far ahead an exemption may end: an exemption is a decision to revisit, never a standing one.
MAX_DAYS = 90
DETAIL_TYPE = "EC2 Isolation Exemption"


def new_exemption_id() -> str:
    return f"exm-{uuid.uuid4().hex}"


def parse_utc(text: str) -> datetime | None:
    """An ISO-8601 time in UTC (`Z` or `+00:00`), else None (no offset, another offset, not a time)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0) or "T" not in text:
        return None
    return moment.astimezone(UTC)


class ExemptionRequest(Model):
    """Body of `POST /exemptions`. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    account_id: AccountId = Field(description="12-digit AWS account id that owns the instance")
    instance_id: InstanceId = Field(description="EC2 instance id, i-xxxxxxxx or i-xxxxxxxxxxxxxxxxx")
    reason: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        description="Why triggers must leave the instance alone (every SKIPPED record quotes it)"
    )
    expires_at: str = Field(
        description=f"When the exemption ends: an ISO-8601 UTC time, in the future and at most {MAX_DAYS} "
        "days ahead",
        examples=["2026-01-31T18:00:00Z"],
    )
    requested_by: Annotated[str, Field(max_length=256)] | None = Field(
        default=None,
        description="Who asked for the exemption (free text; deployed, the caller's IAM ARN replaces it)",
    )

    @field_validator("expires_at")
    @classmethod
    def _within_reach(cls, value: str) -> str:
        moment = parse_utc(value)
        if moment is None:
            raise PydanticCustomError("iso8601_utc", "expires_at must be an ISO-8601 UTC time")
        now = utcnow()
        if moment <= now:
            raise PydanticCustomError("expires_in_past", "expires_at must be in the future")
        if moment > now + timedelta(days=MAX_DAYS):
            raise PydanticCustomError("expires_too_late", f"expires_at must be at most {MAX_DAYS} days ahead")
        return iso8601(moment)


class Exemption(Model):
    """An exemption as the API serves it."""

    exemption_id: str = Field(description="`exm-` and 32 hexadecimal digits")
    account_id: str
    instance_id: str
    reason: str
    expires_at: str = Field(description="ISO-8601 UTC: triggers isolate the instance again from then on")
    created_at: str
    requested_by: str | None = None

    @classmethod
    def of(cls, request: ExemptionRequest, *, requested_by: str | None) -> Exemption:
        return cls(
            exemption_id=new_exemption_id(),
            account_id=request.account_id,
            instance_id=request.instance_id,
            reason=request.reason,
            expires_at=request.expires_at,
            created_at=iso8601(utcnow()),
            requested_by=requested_by,
        )

    @property
    def until(self) -> float:
        """`expires_at` in epoch seconds."""
        moment = parse_utc(self.expires_at)
        assert moment is not None
        return moment.timestamp()


class KeptExemption(Exemption):
    """An exemption as the store keeps it: a deleted one stays (who deleted it, and when), so that every
    SKIPPED record's exemption id still resolves."""

    deleted_at: str | None = None
    deleted_by: str | None = None

    def served(self) -> Exemption:
        return Exemption.model_validate(self.model_dump(exclude={"deleted_at", "deleted_by"}))


class Change(StrEnum):
    CREATED = "created"
    DELETED = "deleted"


def event_entry(exemption: Exemption, change: Change, bus: str) -> dict[str, Any]:
    """The `EC2 Isolation Exemption` event of a change: `detail` is the exemption (a deleted one with
    who deleted it and when) and `change`."""
    detail = {**exemption.model_dump(mode="json"), "change": change.value}
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPE,
        "Resources": [],
        "Detail": json.dumps(detail),
        "EventBusName": bus,
    }
