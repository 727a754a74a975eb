"""Guardrail events: something in a member account could switch the service off (a CloudTrail call on
the service's roles, isolation profile, forwarding rules or a trail, or what the forwarding audit found).
They are not repaired (IAM and EventBridge changes a repair could fight) but reported at once.

Each one is counted in the metric `GuardrailEvents` (the template's alarm fires on any) before it is
put on the stack's bus as `source` `ec2-isolation`, `detail-type` `EC2 Isolation Guardrail`, through the
service's one way of publishing (`shared.outcomes.put`). `detail`: `kind` (`call` or `audit`), `finding`
(the call's name, or what the audit found, e.g. `ForwardingRuleDisabled`), `call`, `caller`,
`account_id`, `region`, `event_id` (the CloudTrail event's, or the audit run's), `resource` and
`summary`, one line a person reads. At least once: a consumer dedupes on (`event_id`, `finding`,
`resource`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from shared import outcomes
from shared.observability import MetricUnit, logger, metrics

DETAIL_TYPE = "EC2 Isolation Guardrail"
METRIC = "GuardrailEvents"


@dataclass(frozen=True)
class GuardrailEvent:
    kind: Literal["call", "audit"]
    #: The call's name (`UpdateAssumeRolePolicy`), or what the audit found (`ForwardingRuleDisabled`).
    finding: str
    account_id: str
    region: str
    event_id: str
    #: What it is about: `role/<name>`, `instance-profile/<name>`, `rule/<name>`, `trail/<name>`.
    resource: str
    summary: str
    #: The CloudTrail call (None for the audit's findings).
    call: str | None = None
    #: Who made it (the caller's ARN), when known.
    caller: str | None = None
    event_time: str | None = None

    def entry(self, bus: str) -> dict[str, Any]:
        return {
            "Source": outcomes.SOURCE,
            "DetailType": DETAIL_TYPE,
            "Resources": [],
            "Detail": json.dumps(asdict(self)),
            "EventBusName": bus,
        }


def report(event: GuardrailEvent, *, events: Any, bus: str) -> bool:
    """Count the event (the alarm needs no bus) and put it on the stack's bus; True once EventBridge took
    it."""
    metrics.add_metric(name=METRIC, unit=MetricUnit.Count, value=1)
    logger.warning("guardrail event", extra={"guardrail": asdict(event)})
    return outcomes.put(event.entry(bus), events=events)
