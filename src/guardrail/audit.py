"""The forwarding audit: what the in-band guardrail events cannot promise, checked from outside the
member accounts on a schedule (template parameter `ForwardingAuditSchedule`, hourly by default).

Guardrail events travel through the member's own forwarding rules: whoever disables them first is not
seen by them. So, from the security account, for each account of `AllowedAccountIds` (or, when that is
empty, each account the worker has held the execution role in: `shared.store.accounts`, one item, never
a scan of the records) and each region the member StackSet covers (`AUDIT_REGIONS`; empty: the stack's
home region and us-east-1, where IAM's events are), the audit assumes the execution role, with a
session policy that leaves it only the three reads below, and checks:

- the role's trust policy is the one iam-execution-role.yml writes: one statement allowing
  `sts:AssumeRole` to the worker's role (`WORKER_ROLE_ARN`), with the `sts:ExternalId` condition when
  one is set, and nothing else (`TrustPolicyChanged`);
- in every region but the stack's own account's home region (where the stack's own rules see the
  events), each forwarding rule `ec2-isolation-forward-{tag,tamper,guardrail}-<region>` exists
  (`ForwardingRuleMissing`), is enabled (`ForwardingRuleDisabled`), targets the stack's bus
  (`ForwardingRuleRetargeted`) and matches what the stack's own rule of its kind matches (the same
  pattern, read from this account: `ForwardingRulePatternChanged`; a narrowed pattern forwards
  nothing).

A role that cannot be assumed is `RoleNotAssumable`; a check that could not be made (the audit's read
refused, throttled) is `AuditIncomplete`: what the audit cannot see is reported, never taken as clean.
Each finding is a guardrail event (`guardrail.events`). What it does not check: the role's
permission policies and boundary (the guardrail events report changes to them), and whether
CloudTrail logs the calls at all (`StopLogging` and the like are guardrail events; a trail that never
logged is not seen).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from guardrail.calls import FORWARDING_KINDS, forwarding_rule_name
from guardrail.events import GuardrailEvent, report
from shared.aws import AccountSession, same_account_client, session_for_account
from shared.config import AuditSettings
from shared.errors import IsolationError, error_code
from shared.observability import logger
from shared.store import accounts
from worker.at_once import each_at_once

#: What the audit reads in a member account: granted by iam-execution-role.yml, and all its session may do.
PERMISSIONS = ("iam:GetRole", "events:DescribeRule", "events:ListTargetsByRule")
SESSION_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": list(PERMISSIONS), "Resource": "*"}],
    }
)
SESSION_NAME = "ec2-isolation-audit"
#: IAM's CloudTrail events reach EventBridge in this region only.
IAM_EVENTS_REGION = "us-east-1"

Sessions = Callable[[str, str], AccountSession]


@dataclass
class AuditRun:
    run_id: str
    accounts: list[str]
    regions: list[str]
    findings: list[GuardrailEvent] = field(default_factory=list)
    not_published: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "accounts": len(self.accounts),
            "regions": self.regions,
            "findings": [f"{f.account_id} {f.region} {f.finding} {f.resource}" for f in self.findings],
            "not_published": self.not_published,
        }


@dataclass(frozen=True)
class _Audit:
    settings: AuditSettings
    run_id: str
    home_account: str
    home_region: str
    #: The pattern each kind of forwarding rule must have (the stack's own rule's), when known.
    patterns: dict[str, Any] = field(default_factory=dict)

    def finding(self, account: str, region: str, finding: str, resource: str, what: str) -> GuardrailEvent:
        return GuardrailEvent(
            kind="audit",
            finding=finding,
            account_id=account,
            region=region,
            event_id=self.run_id,
            resource=resource,
            summary=f"forwarding audit: {what} in {account} {region}",
        )


def run(
    settings: AuditSettings,
    *,
    store_client: Any = None,
    sessions: Sessions | None = None,
    events: Any = None,
    now: float | None = None,
) -> AuditRun:
    """Audit every account and region; report each finding. Never raises for one account's trouble."""
    arn = settings.EVENT_BUS_ARN.split(":")
    audit = _Audit(
        settings,
        run_id=f"audit-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now if now is not None else time.time()))}",
        home_account=arn[4],
        home_region=arn[3],
        patterns=_stack_patterns(settings, events or same_account_client("events")),
    )
    found = set(settings.ALLOWED_ACCOUNT_IDS) or accounts.known(
        store_client or same_account_client("dynamodb"), settings.TABLE_NAME
    )
    regions = sorted(settings.AUDIT_REGIONS or {audit.home_region, IAM_EVENTS_REGION})
    outcome = AuditRun(audit.run_id, sorted(found), regions)
    assume = sessions or _assume(settings)
    # Accounts at once (up to worker.at_once.MAX_THREADS): an organization of hundreds fits the timeout.
    for found_in_account in each_at_once(
        lambda account: _account(audit, account, regions, assume), outcome.accounts
    ):
        outcome.findings.extend(found_in_account)
    bus_events = events or same_account_client("events")
    for finding in outcome.findings:
        if not report(finding, events=bus_events, bus=settings.EVENT_BUS_ARN):
            outcome.not_published += 1
    logger.info("forwarding audit done", extra=outcome.summary())
    return outcome


def _assume(settings: AuditSettings) -> Sessions:
    def assume(account: str, region: str) -> AccountSession:
        return session_for_account(
            account,
            region,
            settings.TARGET_ROLE_NAME,
            external_id=settings.EXTERNAL_ID,
            session_policy=SESSION_POLICY,
            session_name=SESSION_NAME,
        )

    return assume


def _account(audit: _Audit, account: str, regions: Iterable[str], assume: Sessions) -> list[GuardrailEvent]:
    role = audit.settings.TARGET_ROLE_NAME
    regions = list(regions)
    try:
        first = assume(account, regions[0])
    except (IsolationError, ClientError, BotoCoreError) as exc:
        return [
            audit.finding(
                account,
                regions[0],
                "RoleNotAssumable",
                f"role/{role}",
                f"the execution role cannot be assumed ({exc})",
            )
        ]
    found = _trust(audit, account, regions[0], first)
    for region in regions:
        if (account, region) == (audit.home_account, audit.home_region):
            continue  # the stack's own default-bus rules see these events: nothing is forwarded
        try:
            session = first if region == regions[0] else assume(account, region)
        except (IsolationError, ClientError, BotoCoreError) as exc:
            found.append(
                audit.finding(
                    account, region, "RoleNotAssumable", f"role/{role}", f"cannot assume the role ({exc})"
                )
            )
            continue
        for kind in FORWARDING_KINDS:
            name = forwarding_rule_name(kind, region)
            found.extend(
                _rule(audit, account, region, session.client("events"), name, audit.patterns.get(kind))
            )
    return found


def _trust(audit: _Audit, account: str, region: str, session: AccountSession) -> list[GuardrailEvent]:
    role = audit.settings.TARGET_ROLE_NAME
    resource = f"role/{role}"
    try:
        document = session.client("iam").get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    except (ClientError, BotoCoreError) as exc:
        return [
            audit.finding(
                account,
                region,
                "AuditIncomplete",
                resource,
                f"the role's trust policy could not be read ({exc})",
            )
        ]
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            document = None
    if _canonical(document) != _canonical(expected_trust(audit.settings)):
        return [
            audit.finding(
                account,
                region,
                "TrustPolicyChanged",
                resource,
                f"the execution role's trust policy is not the deployed one: {json.dumps(document)[:1500]}",
            )
        ]
    return []


def expected_trust(settings: AuditSettings) -> dict[str, Any]:
    """The trust policy iam-execution-role.yml writes."""
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": settings.WORKER_ROLE_ARN},
        "Action": "sts:AssumeRole",
    }
    if settings.EXTERNAL_ID:
        statement["Condition"] = {"StringEquals": {"sts:ExternalId": settings.EXTERNAL_ID}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def _canonical(document: Any) -> list[str] | None:
    """A policy's statements in one spelling (lists sorted, one value or a list alike, no Sid, condition
    keys in lower case as IAM compares them): two documents that grant the same compare equal."""
    if not isinstance(document, dict):
        return None
    statements = document.get("Statement")
    statements = [statements] if isinstance(statements, dict) else statements
    if not isinstance(statements, list):
        return None
    canonical = []
    for statement in statements:
        if not isinstance(statement, dict):
            return None
        spelled = {k: v for k, v in statement.items() if k != "Sid"}
        principal = spelled.get("Principal")
        if isinstance(principal, dict):
            spelled["Principal"] = {k: sorted(_as_list(v)) for k, v in principal.items()}
        for key in ("Action", "NotAction", "Resource", "NotResource"):
            if key in spelled:
                spelled[key] = sorted(_as_list(spelled[key]))
        condition = spelled.get("Condition")
        if isinstance(condition, dict):
            spelled["Condition"] = {
                op: {k.lower(): sorted(map(str, _as_list(v))) for k, v in keys.items()}
                if isinstance(keys, dict)
                else keys
                for op, keys in condition.items()
            }
        canonical.append(json.dumps(spelled, sort_keys=True))
    return sorted(canonical)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _stack_patterns(settings: AuditSettings, events: Any) -> dict[str, Any]:
    """The patterns of the stack's own default-bus rules, by kind (a rule that cannot be read: its kind
    is not compared, and the log says why)."""
    names = {
        "tag": settings.TAG_RULE_NAME,
        "tamper": settings.TAMPER_RULE_NAME,
        "guardrail": settings.GUARDRAIL_RULE_NAME,
    }
    patterns = {}
    for kind, name in names.items():
        if not name:
            continue
        try:
            patterns[kind] = json.loads(events.describe_rule(Name=name)["EventPattern"])
        except (ClientError, BotoCoreError, KeyError, ValueError) as exc:
            logger.error("the stack's own rule could not be read", extra={"rule": name, "problem": str(exc)})
    return patterns


def _rule(
    audit: _Audit, account: str, region: str, events: Any, name: str, pattern: Any = None
) -> list[GuardrailEvent]:
    resource = f"rule/{name}"
    try:
        rule = events.describe_rule(Name=name)
        targets = events.list_targets_by_rule(Rule=name).get("Targets", [])
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return [
                audit.finding(
                    account, region, "ForwardingRuleMissing", resource, f"forwarding rule {name} is missing"
                )
            ]
        return [
            audit.finding(
                account, region, "AuditIncomplete", resource, f"rule {name} could not be read ({exc})"
            )
        ]
    except BotoCoreError as exc:
        return [
            audit.finding(
                account, region, "AuditIncomplete", resource, f"rule {name} could not be read ({exc})"
            )
        ]
    found = []
    if rule.get("State") != "ENABLED":
        found.append(
            audit.finding(
                account,
                region,
                "ForwardingRuleDisabled",
                resource,
                f"forwarding rule {name} is {rule.get('State')}",
            )
        )
    if pattern is not None and _pattern(rule.get("EventPattern")) != pattern:
        found.append(
            audit.finding(
                account,
                region,
                "ForwardingRulePatternChanged",
                resource,
                f"forwarding rule {name} matches {str(rule.get('EventPattern'))[:1500]}, not the stack's pattern",
            )
        )
    bus = audit.settings.EVENT_BUS_ARN
    if not any(target.get("Arn") == bus for target in targets):
        arns = ", ".join(str(t.get("Arn")) for t in targets) or "nothing"
        found.append(
            audit.finding(
                account,
                region,
                "ForwardingRuleRetargeted",
                resource,
                f"forwarding rule {name} targets {arns}, not the stack's bus {bus}",
            )
        )
    return found


def _pattern(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
