"""What can arrive on the isolation queue, parsed into the record it describes (QUEUED).

Three shapes: the webhook message ingest writes, a GuardDuty finding event and a `Tag Change on
Resource` event (both unchanged from EventBridge). Anything else is an `InvalidMessage`: the worker
sends it on to the DLQ rather than guess.

GuardDuty: in an organization the findings of member accounts reach the delegated administrator, so
the envelope's `account` is the administrator's; the target is `detail.accountId`, `detail.region` and
`detail.resource.instanceDetails.instanceId`. Tag: the target comes from the instance ARN in
`resources[0]`; the envelope's `account` is the bus owner's once forwarded, and moto omits it.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.models import (
    AccountId,
    InstanceId,
    IsolationRecord,
    Region,
    Source,
    Target,
    WebhookMessage,
    trigger_isolation_id,
)

_INSTANCE_ARN = re.compile(
    r"^arn:aws[a-z-]*:ec2:(?P<region>[a-z]{2}(-[a-z]+)+-[0-9]):(?P<account>[0-9]{12}):instance/"
    r"(?P<instance>i-[0-9a-f]{8}([0-9a-f]{9})?)$"
)
ISOLATE_TAG = "isolate"


class InvalidMessage(Exception):
    """The message is not an isolation request this worker understands."""


# --- EventBridge shapes ------------------------------------------------------------------------------


class _Tolerant(BaseModel):
    # AWS adds fields to these events over time: keep what we read strict, ignore the rest.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class EventEnvelope(EventBridgeModel):
    """Powertools' EventBridge model, with `account` optional (events moto delivers lack it)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    account: str | None = None  # type: ignore[assignment]


class InstanceDetails(_Tolerant):
    instanceId: InstanceId


class FindingResource(_Tolerant):
    resourceType: str
    instanceDetails: InstanceDetails | None = None


class GuardDutyFinding(_Tolerant):
    id: str
    type: str
    severity: float
    accountId: AccountId
    region: Region
    title: str | None = None
    updatedAt: str | None = None
    resource: FindingResource


class GuardDutyFindingEvent(EventEnvelope):
    source: Literal["aws.guardduty"]
    detail_type: Literal["GuardDuty Finding"] = Field(alias="detail-type")
    detail: GuardDutyFinding


class TagChangeDetail(_Tolerant):
    changed_tag_keys: list[str] = Field(alias="changed-tag-keys")
    service: Literal["ec2"]
    resource_type: Literal["instance"] = Field(alias="resource-type")
    tags: dict[str, str] = Field(default_factory=dict)


class TagChangeEvent(EventEnvelope):
    source: Literal["aws.tag"]
    detail_type: Literal["Tag Change on Resource"] = Field(alias="detail-type")
    detail: TagChangeDetail


# --- parsing -----------------------------------------------------------------------------------------


def parse(body: str) -> IsolationRecord:
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidMessage("body is not a JSON object")
    try:
        if data.get("kind") == "webhook":
            return _webhook(WebhookMessage.model_validate(data))
        if data.get("source") == "aws.guardduty":
            return _finding(GuardDutyFindingEvent.model_validate(data))
        if data.get("source") == "aws.tag":
            return _tag_change(TagChangeEvent.model_validate(data))
    except ValidationError as exc:
        raise InvalidMessage(f"{data.get('kind') or data.get('source')}: {_summary(exc)}") from exc
    raise InvalidMessage("unknown message: neither a webhook request nor a GuardDuty or tag event")


def _webhook(message: WebhookMessage) -> IsolationRecord:
    request = message.request
    return IsolationRecord.queued(
        isolation_id=message.isolation_id,
        source=Source.WEBHOOK,
        target=Target.of(request),
        reason=request.reason,
        requested_by=request.requested_by,
    )


def _finding(event: GuardDutyFindingEvent) -> IsolationRecord:
    finding = event.detail
    if finding.resource.resourceType != "Instance" or finding.resource.instanceDetails is None:
        raise InvalidMessage(f"GuardDuty finding {finding.id} is not about an EC2 instance")
    return IsolationRecord.queued(
        isolation_id=trigger_isolation_id(Source.GUARDDUTY, event.id),
        source=Source.GUARDDUTY,
        target=Target(
            account_id=finding.accountId,
            region=finding.region,
            instance_id=finding.resource.instanceDetails.instanceId,
        ),
        reason=f"GuardDuty {finding.type} (severity {finding.severity:g})",
        trigger={
            "event_id": event.id,
            "finding_id": finding.id,
            "finding_type": finding.type,
            "severity": finding.severity,
            "title": finding.title,
            "updated_at": finding.updatedAt,
        },
    )


def _tag_change(event: TagChangeEvent) -> IsolationRecord:
    detail = event.detail
    if ISOLATE_TAG not in detail.changed_tag_keys or detail.tags.get(ISOLATE_TAG) != "true":
        raise InvalidMessage("tag event does not set isolate=true")
    if not event.resources:
        raise InvalidMessage("tag event names no resource")
    match = _INSTANCE_ARN.match(event.resources[0])
    if match is None:
        raise InvalidMessage(f"tag event resource {event.resources[0]!r} is not an EC2 instance ARN")
    return IsolationRecord.queued(
        isolation_id=trigger_isolation_id(Source.TAG, event.id),
        source=Source.TAG,
        target=Target(account_id=match["account"], region=match["region"], instance_id=match["instance"]),
        reason="tag isolate=true",
        trigger={
            "event_id": event.id,
            "resource_arn": event.resources[0],
            "changed_tag_keys": detail.changed_tag_keys,
            "time": event.time.isoformat() if event.time else None,
        },
    )


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'message'}: {error['msg']}" for error in exc.errors()[:5]
    )
