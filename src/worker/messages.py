"""What can arrive on the isolation queue, parsed into the isolations it asks for: records, QUEUED.

Four shapes: the webhook message ingest writes, and three EventBridge events, unchanged: a GuardDuty
finding, a `Tag Change on Resource` and a Security Hub custom action. A fifth, the release message
ingest writes for `POST /isolations/{id}/release`, is read by `release_of` (it asks for no isolation). The target never comes from an
event's envelope (on the delegated administrator's bus its `account` is the administrator's, and moto
omits it). Three ways a message runs nothing:
- `InvalidMessage`: not something the rules send (the worker sends it on to the DLQ rather than guess);
- `Ignored`: a matched event that must not isolate (a GuardDuty sample finding, a finding about another
  resource type, a custom action on findings with no EC2 instance): acknowledged and logged;
- `Unusable`: a matched signal from which no target can be derived: recorded FAILED, naming what is
  missing (a matched signal never vanishes), and acknowledged, since parsing again cannot help.

GuardDuty: the target is `detail.accountId` (else the account of the finding's `detail.arn`),
`detail.region` (else the region of `detail.arn`) and `detail.resource.instanceDetails.instanceId`.
Findings act when `detail.resource.resourceType` is `Instance` (and `Container`, the container of an EC2
host, when the worker's settings say so). Tag: the instance ARN in `resources[0]`; the value must be
exactly `true`. Security Hub: every `AwsEc2Instance` resource of every finding (its `Id` is the instance
ARN) is one isolation; one of another account than the finding's `AwsAccountId` comes back already
FAILED (`ForeignResource`): `parse` returns it for the record, never to be run.

The tamper queue carries a fifth shape, read by `parse_tamper`: a CloudTrail call ("AWS API Call via
CloudTrail") that may undo part of an isolation, with the resources it names (`TamperCall`); the tamper
watch (`worker.tamper`) finds the isolations they belong to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from shared.lifecycle import Status
from shared.models import (
    TAG_PREFIX,
    AccountId,
    ErrorInfo,
    InstanceId,
    IsolationRecord,
    Model,
    Region,
    ReleaseMessage,
    Source,
    Target,
    WebhookMessage,
    iso8601,
    trigger_isolation_id,
    utcnow,
)

_INSTANCE_ARN = re.compile(
    r"^arn:aws[a-z-]*:ec2:(?P<region>[a-z]{2}(-[a-z]+)+-[0-9]):(?P<account>[0-9]{12}):instance/"
    r"(?P<instance>i-[0-9a-f]{8}([0-9a-f]{9})?)$"
)
_FINDING_ARN = re.compile(
    r"^arn:aws[a-z-]*:guardduty:(?P<region>[a-z]{2}(-[a-z]+)+-[0-9]):(?P<account>[0-9]{12}):detector/"
)
ISOLATE_TAG = "isolate"
#: The GuardDuty resource types whose findings isolate their instance; `Container` only when asked.
INSTANCE_FINDING = "Instance"
CONTAINER_FINDING = "Container"
SECURITY_HUB_INSTANCE = "AwsEc2Instance"
#: The error code of a Security Hub instance of another account than its finding's.
FOREIGN_RESOURCE = "ForeignResource"
#: CloudTrail management events reach EventBridge with this detail type, `source` the service.
CLOUDTRAIL_CALL = "AWS API Call via CloudTrail"
TAMPER_SOURCES = ("aws.ec2", "aws.iam", "aws.autoscaling", "aws.elasticloadbalancing")
#: The calls that undo part of an isolation (the tamper rule's `eventName` list).
TAMPER_CALLS = frozenset(
    {
        "ModifyNetworkInterfaceAttribute",
        "AttachNetworkInterface",
        "ModifyInstanceAttribute",
        "AuthorizeSecurityGroupIngress",
        "AuthorizeSecurityGroupEgress",
        "ModifySecurityGroupRules",
        "CreateTags",
        "DeleteTags",
        "ReplaceIamInstanceProfileAssociation",
        "DisassociateIamInstanceProfile",
        "DeleteRolePolicy",
        "PutRolePolicy",
        "AttachInstances",
        "RegisterTargets",
        "RegisterInstancesWithLoadBalancer",
        "DeleteSnapshot",
    }
)
#: What a ModifyInstanceAttribute / ModifyNetworkInterfaceAttribute call must change to undo an
#: isolation (its request names the attribute as a key, or in `attribute`).
ISOLATING_ATTRIBUTES = frozenset(
    {
        "groupSet",
        "disableApiTermination",
        "disableApiStop",
        "instanceInitiatedShutdownBehavior",
        "blockDeviceMapping",
    }
)
#: Calls that add or change a rule of a security group.
GROUP_RULE_CALLS = frozenset(
    {"AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress", "ModifySecurityGroupRules"}
)
#: Calls that change tags: watched when they change a key of the service's (`TAG_PREFIX`), or remove every
#: tag (DeleteTags with no tag list).
TAG_CALLS = frozenset({"CreateTags", "DeleteTags"})
#: The prefix of the inline policies the service writes on a role (the credentials deny).
POLICY_PREFIX = "ec2-isolation"
_ID = r"[0-9a-f]{8}([0-9a-f]{9})?"
_INSTANCE_ID = re.compile(rf"^i-{_ID}$")
_ENI_ID = re.compile(rf"^eni-{_ID}$")
_GROUP_ID = re.compile(rf"^sg-{_ID}$")


class InvalidMessage(Exception):
    """The message is not an isolation request this worker understands."""


class Ignored(Exception):
    """A matched event that must not isolate anything: acknowledged and logged."""


class Unusable(Exception):
    """A matched signal from which no target can be derived: `record` (FAILED) says what is missing."""

    def __init__(self, record: IsolationRecord) -> None:
        super().__init__(record.error.message if record.error else record.isolation_id)
        self.record = record


# --- EventBridge shapes ------------------------------------------------------------------------------


#: AWS adds fields to these events over time: keep what we read strict, ignore the rest. Built on first
#: use, like every model of the project (`shared.models.Model`): a message is one kind of event.
EVENT_MODEL_CONFIG = ConfigDict(extra="ignore", populate_by_name=True, defer_build=True)


class _Tolerant(Model):
    model_config = EVENT_MODEL_CONFIG


class EventEnvelope(_Tolerant):
    """An EventBridge event's envelope (the fields every event has), with `account` optional (events
    moto delivers lack it). The same fields as Powertools' EventBridge model, whose parser package the
    worker does not import for five fields."""

    version: str
    id: str
    source: str
    account: str | None = None
    time: datetime
    region: str
    resources: list[str]
    detail_type: str = Field(alias="detail-type")
    replay_name: str | None = Field(default=None, alias="replay-name")


class InstanceDetails(_Tolerant):
    instanceId: InstanceId | None = None


class FindingResource(_Tolerant):
    resourceType: str
    instanceDetails: InstanceDetails | None = None


class AdditionalInfo(_Tolerant):
    sample: bool = False


class FindingService(_Tolerant):
    additionalInfo: AdditionalInfo | None = None


class GuardDutyFinding(_Tolerant):
    id: str
    type: str
    severity: float
    accountId: AccountId | None = None
    region: Region | None = None
    arn: str | None = None
    title: str | None = None
    updatedAt: str | None = None
    resource: FindingResource
    service: FindingService | None = None

    @property
    def sample(self) -> bool:
        return bool(self.service and self.service.additionalInfo and self.service.additionalInfo.sample)


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


class AsffResource(_Tolerant):
    Type: str
    Id: str


class AsffFinding(_Tolerant):
    Id: str
    #: The account that imported the finding (any member can import one naming any ARN).
    AwsAccountId: str | None = None
    Title: str | None = None
    Resources: list[AsffResource] = Field(default_factory=list)


class CustomActionDetail(_Tolerant):
    actionName: str | None = None
    findings: list[AsffFinding] = Field(default_factory=list)


class SecurityHubCustomActionEvent(EventEnvelope):
    source: Literal["aws.securityhub"]
    detail_type: Literal["Security Hub Findings - Custom Action"] = Field(alias="detail-type")
    detail: CustomActionDetail


class SessionIssuer(_Tolerant):
    arn: str | None = None


class SessionContext(_Tolerant):
    sessionIssuer: SessionIssuer | None = None


class UserIdentity(_Tolerant):
    type: str | None = None
    arn: str | None = None
    sessionContext: SessionContext | None = None


class CloudTrailCall(_Tolerant):
    eventName: str
    eventID: str
    eventTime: str | None = None
    eventSource: str | None = None
    awsRegion: Region
    recipientAccountId: AccountId
    errorCode: str | None = None
    userIdentity: UserIdentity = Field(default_factory=UserIdentity)
    requestParameters: dict[str, Any] | None = None
    responseElements: dict[str, Any] | None = None


class CloudTrailEvent(EventEnvelope):
    source: Literal["aws.ec2", "aws.iam", "aws.autoscaling", "aws.elasticloadbalancing"]
    detail_type: Literal["AWS API Call via CloudTrail"] = Field(alias="detail-type")
    detail: CloudTrailCall


@dataclass(frozen=True)
class TamperCall:
    """A CloudTrail call that may have undone part of an isolation, with the resources it names (the
    tamper watch, `worker.tamper`, finds the isolations they belong to)."""

    event_name: str
    event_id: str
    event_time: str | None
    caller_arn: str | None
    #: The role the caller's session was issued by (an assumed role's), if any.
    issuer_arn: str | None
    account_id: str
    #: Where the call was made (IAM's calls: us-east-1, whatever the instances' regions).
    region: str
    instance_ids: tuple[str, ...] = ()
    network_interface_ids: tuple[str, ...] = ()
    #: Security groups whose rules or tags the call changed (the tamper watch repairs the isolation
    #: groups among them).
    security_group_ids: tuple[str, ...] = ()
    snapshot_id: str | None = None
    role_name: str | None = None

    @property
    def names_other_resources(self) -> bool:
        """The call names interfaces, a group, a role or a snapshot: the isolations it touches are found
        among the account's ISOLATED records (`search_region`)."""
        return bool(
            self.network_interface_ids or self.security_group_ids or self.snapshot_id or self.role_name
        )

    @property
    def search_region(self) -> str | None:
        """The region of the isolations it may touch; None (every region) for IAM, which is global (its
        calls are recorded in us-east-1) and whose roles serve instances of every region."""
        return None if self.role_name else self.region

    def repair_id(self, target: Target) -> str:
        """The isolation id of the repair this call asks for on `target` (one per call and instance)."""
        return trigger_isolation_id(Source.TAMPER, f"{self.event_id}:{target.arn}")

    @property
    def trigger(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "caller_arn": self.caller_arn,
            "event_id": self.event_id,
            "event_time": self.event_time,
            **({"security_group_ids": list(self.security_group_ids)} if self.security_group_ids else {}),
        }


# --- parsing -----------------------------------------------------------------------------------------


def release_of(body: str) -> ReleaseMessage | None:
    """The release the message asks for; None when it is not a release message (`parse` reads it)."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "release":
        return None
    try:
        return ReleaseMessage.model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage(f"release: {_summary(exc)}") from exc


def parse(body: str, *, container_findings: bool = False) -> list[IsolationRecord]:
    """The isolations the message asks for (several for a Security Hub custom action); raises
    `InvalidMessage`, `Ignored` or `Unusable`. `container_findings`: GuardDuty findings about the
    container of an EC2 host isolate the host."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidMessage("body is not a JSON object")
    source = data.get("kind") or data.get("source")
    try:
        if source == "webhook":
            return [_webhook(WebhookMessage.model_validate(data))]
        if source == "aws.guardduty":
            return [_finding(GuardDutyFindingEvent.model_validate(data), container_findings)]
        if source == "aws.tag":
            return [_tag_change(TagChangeEvent.model_validate(data))]
        if source == "aws.securityhub":
            return _custom_action(SecurityHubCustomActionEvent.model_validate(data))
    except ValidationError as exc:
        event_id = data.get("id")
        if source == "aws.guardduty" and isinstance(event_id, str) and event_id:
            # A finding the rule matched, in a shape this parser cannot read: on record, never lost.
            detail = data.get("detail")
            raise Unusable(
                _unusable(
                    Source.GUARDDUTY,
                    event_id,
                    f"the finding cannot be read: {_summary(exc)}",
                    account_id=_text(detail, "accountId"),
                    region=_text(detail, "region"),
                    instance_id=_text(detail, "resource", "instanceDetails", "instanceId"),
                )
            ) from exc
        raise InvalidMessage(f"{source}: {_summary(exc)}") from exc
    raise InvalidMessage(
        "unknown message: not a webhook request, GuardDuty finding, tag or custom action event"
    )


def parse_tamper(body: str) -> TamperCall:
    """The tamper queue's message: a CloudTrail event of a call that may undo an isolation. Raises
    `InvalidMessage` for anything else, `Ignored` for a call that cannot undo one (a failed call, an
    attribute isolation does not set, a role policy the service did not write)."""
    try:
        event = CloudTrailEvent.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a CloudTrail call event: {_summary(exc)}") from exc
    call = event.detail
    name = call.eventName
    if name not in TAMPER_CALLS:
        raise Ignored(f"{name} is not a call the tamper watch looks at")
    if call.errorCode:
        raise Ignored(f"{name} {call.eventID} failed ({call.errorCode}): it changed nothing")
    request = call.requestParameters or {}
    if name in ("ModifyInstanceAttribute", "ModifyNetworkInterfaceAttribute") and not (
        ISOLATING_ATTRIBUTES & {*request, str(request.get("attribute") or "")}
    ):
        raise Ignored(f"{name} {call.eventID} changes no attribute an isolation sets")
    role_name = None
    if name in ("PutRolePolicy", "DeleteRolePolicy"):
        if not str(request.get("policyName") or "").startswith(POLICY_PREFIX):
            raise Ignored(f"{name} {call.eventID} is about a policy the service did not write")
        role_name = str(request.get("roleName") or "") or None
    if name in TAG_CALLS:
        # Only the resources tagged: a tag's value is anyone's text (an instance id in it names nothing).
        resources = _ids(request.get("resourcesSet"), _INSTANCE_ID) + _ids(
            request.get("resourcesSet"), _GROUP_ID
        )
        keys = _tag_keys(request)
        if (
            keys is None
            and name == "CreateTags"
            or keys is not None
            and not any(k.startswith(TAG_PREFIX) for k in keys)
        ):
            raise Ignored(f"{name} {call.eventID} changes no tag of the service's ({TAG_PREFIX}*)")
        found = [r for r in resources if _INSTANCE_ID.match(r)]
        groups = [r for r in resources if _GROUP_ID.match(r)]
    else:
        found = _ids(request, _INSTANCE_ID) + _ids(call.responseElements or {}, _INSTANCE_ID)
        groups = _rule_group(name, request)
    snapshot = request.get("snapshotId") if name == "DeleteSnapshot" else None
    issuer = call.userIdentity.sessionContext.sessionIssuer if call.userIdentity.sessionContext else None
    return TamperCall(
        event_name=name,
        event_id=call.eventID,
        event_time=call.eventTime,
        caller_arn=call.userIdentity.arn,
        issuer_arn=issuer.arn if issuer else None,
        account_id=call.recipientAccountId,
        region=call.awsRegion,
        instance_ids=tuple(dict.fromkeys(found)),
        network_interface_ids=tuple(dict.fromkeys(_ids(request, _ENI_ID))),
        security_group_ids=tuple(dict.fromkeys(groups)),
        snapshot_id=snapshot if isinstance(snapshot, str) else None,
        role_name=role_name,
    )


def _rule_group(name: str, request: dict[str, Any]) -> list[str]:
    """The group whose rules a rule call changed: `groupId` (Authorize*), or the group named in the
    nested request CloudTrail records for ModifySecurityGroupRules (`ModifySecurityGroupRulesRequest.
    GroupId`). Never a group a rule merely references."""
    if name not in GROUP_RULE_CALLS:
        return []
    nested = request.get("ModifySecurityGroupRulesRequest")
    group = nested.get("GroupId") if isinstance(nested, dict) else request.get("groupId")
    return [group] if isinstance(group, str) and _GROUP_ID.match(group) else []


def _tag_keys(request: dict[str, Any]) -> list[str] | None:
    """The tag keys of a CreateTags/DeleteTags request (`tagSet.items[].key`); None when it has no tag
    list (DeleteTags then removes every tag)."""
    tag_set = request.get("tagSet")
    items = tag_set.get("items") if isinstance(tag_set, dict) else None
    if not isinstance(items, list) or not items:
        return None
    return [str(item.get("key")) for item in items if isinstance(item, dict)]


def _ids(data: Any, pattern: re.Pattern[str]) -> list[str]:
    """Every string in `data` (nested maps and lists, as CloudTrail writes parameters) that is an id of
    `pattern`'s kind."""
    if isinstance(data, str):
        return [data] if pattern.match(data) else []
    if isinstance(data, dict):
        return [found for value in data.values() for found in _ids(value, pattern)]
    if isinstance(data, list):
        return [found for value in data for found in _ids(value, pattern)]
    return []


def _webhook(message: WebhookMessage) -> IsolationRecord:
    request = message.request
    return IsolationRecord.queued(
        isolation_id=message.isolation_id,
        source=Source.WEBHOOK,
        target=Target.of(request),
        reason=request.reason,
        requested_by=request.requested_by,
        dry_run=request.dry_run,
    )


def _finding(event: GuardDutyFindingEvent, container_findings: bool) -> IsolationRecord:
    finding = event.detail
    if finding.sample:
        raise Ignored(f"GuardDuty sample finding {finding.id}: samples never isolate")
    acting = (INSTANCE_FINDING, CONTAINER_FINDING) if container_findings else (INSTANCE_FINDING,)
    if finding.resource.resourceType not in acting:
        raise Ignored(
            f"GuardDuty finding {finding.id} is about a {finding.resource.resourceType}, not an instance"
        )
    from_arn = _FINDING_ARN.match(finding.arn or "")
    account_id = finding.accountId or (from_arn["account"] if from_arn else None)
    region = finding.region or (from_arn["region"] if from_arn else None)
    instance_id = finding.resource.instanceDetails.instanceId if finding.resource.instanceDetails else None
    trigger = {
        "event_id": event.id,
        "finding_id": finding.id,
        "finding_type": finding.type,
        "severity": finding.severity,
        "title": finding.title,
        "updated_at": finding.updatedAt,
    }
    missing = [
        field
        for field, value in (
            ("detail.accountId (or an account in detail.arn)", account_id),
            ("detail.region (or a region in detail.arn)", region),
            ("detail.resource.instanceDetails.instanceId", instance_id),
        )
        if not value
    ]
    if account_id is None or region is None or instance_id is None:
        raise Unusable(
            _unusable(
                Source.GUARDDUTY,
                event.id,
                f"the finding names no {', no '.join(missing)}",
                account_id=account_id,
                region=region,
                instance_id=instance_id,
                trigger=trigger,
            )
        )
    return IsolationRecord.queued(
        isolation_id=trigger_isolation_id(Source.GUARDDUTY, event.id),
        source=Source.GUARDDUTY,
        target=Target(account_id=account_id, region=region, instance_id=instance_id),
        reason=f"GuardDuty {finding.type} (severity {finding.severity:g})",
        trigger=trigger,
    )


def _tag_change(event: TagChangeEvent) -> IsolationRecord:
    detail = event.detail
    if ISOLATE_TAG not in detail.changed_tag_keys or detail.tags.get(ISOLATE_TAG) != "true":
        raise Ignored("tag event does not set isolate=true (exactly: other spellings do nothing)")
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


def _custom_action(event: SecurityHubCustomActionEvent) -> list[IsolationRecord]:
    """One isolation per EC2 instance of the selected findings (an instance in two findings: one). An
    instance of another account than the finding's (`AwsAccountId`) is refused: its record is FAILED
    `ForeignResource` (any member account can import a finding naming any ARN), the finding's other
    instances still isolate."""
    records: dict[str, IsolationRecord] = {}
    for finding in event.detail.findings:
        for resource in finding.Resources:
            match = _INSTANCE_ARN.match(resource.Id) if resource.Type == SECURITY_HUB_INSTANCE else None
            if match is None or resource.Id in records:
                continue
            target = Target(
                account_id=match["account"], region=match["region"], instance_id=match["instance"]
            )
            record = IsolationRecord.queued(
                isolation_id=trigger_isolation_id(Source.SECURITY_HUB, f"{event.id}:{resource.Id}"),
                source=Source.SECURITY_HUB,
                target=target,
                reason=f"Security Hub custom action {event.detail.actionName or ''}".strip(),
                trigger={
                    "event_id": event.id,
                    "finding_id": finding.Id,
                    "finding_account_id": finding.AwsAccountId,
                    "title": finding.Title,
                    "action_name": event.detail.actionName,
                    "action_arn": event.resources[0] if event.resources else None,
                },
            )
            if finding.AwsAccountId != target.account_id:
                record = _refused(
                    record,
                    FOREIGN_RESOURCE,
                    f"finding {finding.Id} was imported by account {finding.AwsAccountId or '(none)'} but "
                    f"names instance {target.instance_id} of account {target.account_id}: a finding may only "
                    "isolate instances of the account that imported it",
                )
            records[resource.Id] = record
    if not records:
        types = sorted({r.Type for f in event.detail.findings for r in f.Resources})
        raise Ignored(
            f"custom action on findings with no EC2 instance (resource types: {', '.join(types) or 'none'})"
        )
    return list(records.values())


def _refused(record: IsolationRecord, code: str, message: str) -> IsolationRecord:
    """`record` ended FAILED before anything ran: the signal asked for something never done."""
    return record.model_copy(update={"status": Status.FAILED, "error": ErrorInfo(code=code, message=message)})


def _unusable(
    source: Source,
    event_id: str,
    missing: str,
    *,
    account_id: str | None = None,
    region: str | None = None,
    instance_id: str | None = None,
    trigger: dict[str, Any] | None = None,
) -> IsolationRecord:
    """The FAILED record of a matched signal without a usable target: what could be read of it."""
    stamp = iso8601(utcnow())
    return IsolationRecord(
        isolation_id=trigger_isolation_id(source, event_id),
        status=Status.FAILED,
        source=source,
        instance_id=instance_id or "unknown",
        account_id=account_id or "unknown",
        region=region or "unknown",
        reason=f"{source.value} event {event_id} could not be used",
        trigger=trigger or {"event_id": event_id},
        created_at=stamp,
        updated_at=stamp,
        error=ErrorInfo(code="UnusableSignal", message=missing),
    )


def _text(data: Any, *path: str) -> str | None:
    """A string at `path` in raw event data, if there is one."""
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, str) and data else None


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'message'}: {error['msg']}" for error in exc.errors()[:5]
    )
