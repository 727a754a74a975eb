"""The bodies the API answers with, as models: the code builds them and the OpenAPI document shows them.

Success bodies are `shared.models.Accepted` (POST /isolate), `shared.models.IsolationRecord`
(GET /isolations/{isolation_id}), `IsolationList` (GET /isolations?instance_id=...), `IsolationPage`
(GET /isolations), `shared.exemptions.Exemption` (POST /exemptions) and `ExemptionList`
(GET /exemptions). Every other answer is an `ErrorBody`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from shared.exemptions import Exemption
from shared.lifecycle import Status
from shared.models import IsolationRecord, Model


class IsolationList(Model):
    """Answer of `GET /isolations?instance_id=...`: the instance's isolations, newest first."""

    items: list[IsolationRecord] = Field(description="At most 50 records, newest first")


class IsolationPage(IsolationList):
    """Answer of `GET /isolations` without `instance_id`: a page of every instance's isolations."""

    next: str | None = Field(
        default=None,
        description="Without instance_id: pass it back as `next` for the following page; null on the last page",
    )


class FieldError(Model):
    """One thing wrong with the request."""

    field: str = Field(
        description="What is at fault: a body field (`account_id`), a query parameter, a header "
        "(`x-api-key`, `Idempotency-Key`), `isolation_id` for the path's id, `path` for the route, or "
        "`body` for the request body as a whole"
    )
    type: str = Field(description="A stable, machine-readable name of the rule that was broken")
    message: str = Field(description="What is wrong and what is expected, for a person")


class ErrorBody(Model):
    """Every answer that is not a success."""

    message: str = Field(description="What went wrong, for a person")
    errors: list[FieldError] = Field(
        default_factory=list,
        description="One entry per fault, every fault at once; in every 4xx, absent from a 503",
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)


class ReleaseRefused(ErrorBody):
    """A release refused (409): what the record is, or which record to release instead."""

    status: Status | None = Field(default=None, description="The record's status as the refusal read it")
    latest: str | None = Field(
        default=None, description="The episode's latest isolation: release through that one instead"
    )
    in_flight: str | None = Field(
        default=None, description="An isolation (or release) of the instance in flight: wait for it to end"
    )


class ExemptionList(Model):
    """Answer of `GET /exemptions`: the active exemptions (expired and deleted ones are not listed)."""

    items: list[Exemption] = Field(description="The active exemptions, the soonest to expire first")


class ExemptionRefused(ErrorBody):
    """A second exemption of an instance refused (409): the active one names it."""

    exemption_id: str = Field(description="The instance's active exemption (delete it to replace it)")
