"""What the routes take besides a body: query strings and headers, as models (`ingest.routing` validates
them; the OpenAPI document shows them). Bodies are `shared.models` (`IsolationRequest`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from ingest import rules
from shared.lifecycle import Status
from shared.models import ACCOUNT_ID_PATTERN, INSTANCE_ID_PATTERN, Model


class IsolateHeaders(Model):
    """Headers of `POST /isolate`."""

    idempotency_key: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        alias=rules.IDEMPOTENCY_KEY,
        description="Repeat a request safely: the same key with the same body gets the first answer",
    )


class ListQuery(Model):
    """Query string of `GET /isolations`: the route takes these and no other (`ingest.routing`)."""

    model_config = ConfigDict(populate_by_name=True)

    instance_id: Annotated[str, Field(pattern=INSTANCE_ID_PATTERN)] | None = Field(
        default=None, description=rules.EXPECTED["instance_id"]
    )
    account_id: Annotated[str, Field(pattern=ACCOUNT_ID_PATTERN)] | None = Field(
        default=None, description=rules.EXPECTED["account_id"]
    )
    status: Status | None = Field(
        default=None, description="Without instance_id: only isolations in this status"
    )
    limit: Annotated[int, Field(ge=1, le=100)] | None = Field(
        default=None, description="Without instance_id: page size, 1 to 100 (default 50)"
    )
    cursor: Annotated[str, Field(max_length=512)] | None = Field(
        default=None, alias="next", description=rules.EXPECTED["next"]
    )


class ExemptionQuery(Model):
    """Query string of `GET /exemptions`."""

    account_id: Annotated[str, Field(pattern=ACCOUNT_ID_PATTERN)] | None = Field(
        default=None, description="Only the exemptions of this account"
    )
