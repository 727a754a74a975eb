"""What the exemption routes do, without event shapes: create one, list the active ones, delete one. Each
change puts an `EC2 Isolation Exemption` event on the stack's bus (best effort: the change stands and a
failure to publish is logged and counted, as outcome events are)."""

from __future__ import annotations

import re
from typing import Any

from shared import outcomes
from shared.errors import IsolationError
from shared.exemptions import EXEMPTION_ID_PATTERN, Change, Exemption, ExemptionRequest, event_entry
from shared.observability import MetricUnit, logger, metrics
from shared.store.exemptions import AlreadyExempt, ExemptionStore

_EXEMPTION_ID = re.compile(EXEMPTION_ID_PATTERN)


class ExemptionNotFound(IsolationError):
    def __init__(self, exemption_id: str) -> None:
        super().__init__("ExemptionNotFound", "exemption not found")
        self.exemption_id = exemption_id


class ExemptAlready(IsolationError):
    """The instance has an active exemption: `exemption` (a second one is refused)."""

    def __init__(self, exemption: Exemption) -> None:
        super().__init__(
            "exempt_already",
            f"instance {exemption.instance_id} of account {exemption.account_id} is exempt already by "
            f"{exemption.exemption_id} until {exemption.expires_at}: delete it first to replace it",
        )
        self.exemption = exemption


def create(
    request: ExemptionRequest, *, caller_arn: str | None, store: ExemptionStore, events: Any, bus: str
) -> Exemption:
    """Keep the exemption (the instance's only active one). `caller_arn`: the caller's authenticated IAM
    ARN (deployed, IAM authorization), which is then `requested_by` whatever the body says."""
    created = store.create(Exemption.of(request, requested_by=caller_arn or request.requested_by))
    if isinstance(created, AlreadyExempt):
        raise ExemptAlready(created.exemption)
    logger.info("exemption created", extra={"exemption_id": created.exemption_id})
    _announce(created, Change.CREATED, events=events, bus=bus)
    return created


def active(account_id: str | None, *, store: ExemptionStore) -> list[Exemption]:
    return store.active(account_id)


def delete(exemption_id: str, *, caller: str | None, store: ExemptionStore, events: Any, bus: str) -> None:
    """Delete the exemption (kept, with `caller` and the time); deleting it again changes nothing."""
    # Only well-formed ids reach the table, so no other kind of item can be touched through this route.
    deleted = store.delete(exemption_id, deleted_by=caller) if _EXEMPTION_ID.fullmatch(exemption_id) else None
    if deleted is None:
        raise ExemptionNotFound(exemption_id)
    kept, changed = deleted
    if changed:
        logger.info("exemption deleted", extra={"exemption_id": exemption_id})
        _announce(kept, Change.DELETED, events=events, bus=bus)


def _announce(exemption: Exemption, change: Change, *, events: Any, bus: str) -> None:
    if not outcomes.put(event_entry(exemption, change, bus), events=events):
        metrics.add_metric(name="ExemptionEventNotPublished", unit=MetricUnit.Count, value=1)
