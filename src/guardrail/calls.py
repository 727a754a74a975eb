"""Which CloudTrail calls are guardrail events: the calls that would let a member account quietly switch
the service off (the rules' pattern sends them; this decides again, from the call itself).

- IAM, by anyone but the StackSet execution role: `UpdateAssumeRolePolicy`, `AttachRolePolicy`,
  `DetachRolePolicy`, `PutRolePolicy`, `DeleteRolePolicy`, `PutRolePermissionsBoundary`, `DeleteRole` on
  the service's member roles (the execution role, the isolation role, the forwarding roles
  `ec2-isolation-forward-<region>`); `RemoveRoleFromInstanceProfile`, `AddRoleToInstanceProfile`,
  `DeleteInstanceProfile` on the isolation profile.
- EventBridge: `DisableRule`, `DeleteRule`, `RemoveTargets`, `PutRule`, `PutTargets` on the forwarding rules
  (`ec2-isolation-forward-<kind>-<region>`).
- CloudTrail: `StopLogging`, `DeleteTrail`, `UpdateTrail`, `PutEventSelectors` on any trail.
- By the execution role itself: any `PutRolePolicy` whose document is not the credentials deny
  (`worker.steps.credentials.is_credentials_deny`): a worker doing anything else is compromised. Its
  other calls are the service's own repairs (the isolation role and profile put back): no event.

A failed call changed nothing. The StackSet execution role (`stacksets-exec-*` when the organization
deploys the StackSet, `AWSCloudFormationStackSetExecutionRole` when self-managed) deploys and updates
the member template: its calls are the deployment's.
"""

from __future__ import annotations

import fnmatch
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from guardrail.events import GuardrailEvent
from shared.config import GuardrailSettings
from worker.messages import CloudTrailCall, EventEnvelope, Ignored, InvalidMessage
from worker.steps.credentials import is_credentials_deny

#: The fixed names' prefix of the member template's forwarding role and rules.
FORWARDING_PREFIX = "ec2-isolation-forward-"
FORWARDING_KINDS = ("tag", "tamper", "guardrail")
STACKSET_EXECUTION_ROLES = ("stacksets-exec-*", "AWSCloudFormationStackSetExecutionRole")
ROLE_CALLS = frozenset(
    {
        "UpdateAssumeRolePolicy",
        "AttachRolePolicy",
        "DetachRolePolicy",
        "PutRolePolicy",
        "DeleteRolePolicy",
        "PutRolePermissionsBoundary",
        "DeleteRole",
    }
)
PROFILE_CALLS = frozenset(
    {"RemoveRoleFromInstanceProfile", "AddRoleToInstanceProfile", "DeleteInstanceProfile"}
)
#: EventBridge's calls and the request parameter that names the rule.
RULE_CALLS = {
    "DisableRule": "name",
    "DeleteRule": "name",
    "PutRule": "name",
    "RemoveTargets": "rule",
    "PutTargets": "rule",
}
TRAIL_CALLS = {
    "StopLogging": "name",
    "DeleteTrail": "name",
    "UpdateTrail": "name",
    "PutEventSelectors": "trailName",
}
SOURCES = ("aws.iam", "aws.events", "aws.cloudtrail")


def forwarding_rule_name(kind: str, region: str) -> str:
    return f"{FORWARDING_PREFIX}{kind}-{region}"


class CloudTrailEvent(EventEnvelope):
    """A CloudTrail call of any service (the guardrail rules send IAM, EventBridge and CloudTrail's)."""

    detail: CloudTrailCall


@dataclass(frozen=True)
class _Call:
    name: str
    request: dict[str, Any]
    issuer: str | None


def judge(body: str, settings: GuardrailSettings) -> GuardrailEvent:
    """The guardrail event the message's call is; raises `Ignored` for a call that is none (failed, the
    deployment's, the service's own, another resource) and `InvalidMessage` for what is no CloudTrail
    call."""
    try:
        event = CloudTrailEvent.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a CloudTrail call event: {exc.errors()[:3]}") from exc
    if event.detail_type != "AWS API Call via CloudTrail" or event.source not in SOURCES:
        raise InvalidMessage(f"{event.source} {event.detail_type} is not a call the guardrail rules send")
    detail = event.detail
    if detail.errorCode:
        raise Ignored(f"{detail.eventName} {detail.eventID} failed ({detail.errorCode}): it changed nothing")
    context = detail.userIdentity.sessionContext
    call = _Call(
        detail.eventName,
        detail.requestParameters or {},
        context.sessionIssuer.arn if context and context.sessionIssuer else None,
    )
    if call.issuer and any(_role_is(call.issuer, role) for role in STACKSET_EXECUTION_ROLES):
        raise Ignored(f"{call.name} {detail.eventID} by the StackSet execution role: the deployment's")
    by_the_service = bool(call.issuer and _role_is(call.issuer, settings.TARGET_ROLE_NAME))
    resource, finding = _what(call, settings, by_the_service)
    caller = detail.userIdentity.arn or call.issuer
    return GuardrailEvent(
        kind="call",
        finding=finding,
        call=call.name,
        caller=caller,
        account_id=detail.recipientAccountId,
        region=detail.awsRegion,
        event_id=detail.eventID,
        event_time=detail.eventTime,
        resource=resource,
        summary=f"{call.name} on {resource} in {detail.recipientAccountId} {detail.awsRegion} by "
        f"{caller or 'an unknown caller'}{' (the execution role: not the credentials deny)' if by_the_service else ''}",
    )


def _what(call: _Call, settings: GuardrailSettings, by_the_service: bool) -> tuple[str, str]:
    """(resource, finding) of a guardrail call; `Ignored` otherwise."""
    request = call.request
    if by_the_service:
        if call.name != "PutRolePolicy":
            raise Ignored(f"{call.name} by the execution role: the service's own repair")
        name = str(request.get("policyName") or "")
        if is_credentials_deny(name, _document(request.get("policyDocument"))):
            raise Ignored(f"the execution role wrote the credentials deny {name}")
        return f"role/{request.get('roleName')}", "ExecutionRoleWrotePolicy"
    if call.name in ROLE_CALLS:
        role = str(request.get("roleName") or "")
        member_roles = (settings.TARGET_ROLE_NAME, settings.ISOLATION_ROLE_NAME)
        if role in member_roles or role.startswith(FORWARDING_PREFIX):
            return f"role/{role}", call.name
        raise Ignored(f"{call.name} on role {role!r}: not one of the service's")
    if call.name in PROFILE_CALLS:
        profile = str(request.get("instanceProfileName") or "")
        if profile == settings.ISOLATION_PROFILE_NAME:
            return f"instance-profile/{profile}", call.name
        raise Ignored(f"{call.name} on instance profile {profile!r}: not the isolation profile")
    if call.name in RULE_CALLS:
        rule = str(request.get(RULE_CALLS[call.name]) or "")
        if rule.startswith(FORWARDING_PREFIX):
            return f"rule/{rule}", call.name
        raise Ignored(f"{call.name} on rule {rule!r}: not a forwarding rule of the service")
    if call.name in TRAIL_CALLS:
        return f"trail/{request.get(TRAIL_CALLS[call.name]) or 'unknown'}", call.name
    raise Ignored(f"{call.name} is not a call the guardrails look at")


def _role_is(arn: str, name: str) -> bool:
    return fnmatch.fnmatchcase(arn, f"arn:*:iam::*:role/{name}")


def _document(raw: Any) -> Any:
    """A policy document as CloudTrail records it: JSON text (URL-encoded in some records), or parsed."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return None
    for text in (raw, urllib.parse.unquote(raw)):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None
