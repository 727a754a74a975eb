"""What template.yaml declares that the stack needs at run time, created in an AWS endpoint.

Read from the template (resolved by `local_stack.cfn` with its parameter defaults), never restated
here: the queue and its dead-letter queue (visibility timeout, retention, the redrive policy's
`maxReceiveCount`), the table (key schema, attribute definitions, global secondary indexes, TTL), the
EventBridge rules (their own event patterns, on the default bus, targeting the queue), and the
functions' settings the local stack mimics (environment, timeouts, memory, batch size, routes).

Everything is idempotent: re-running against an endpoint that already has the resources reuses them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from local_stack import cfn
from local_stack.http_api import Route

log = logging.getLogger("local_stack.provision")

QUEUE = "IsolationQueue"
DEAD_LETTER_QUEUE = "IsolationDeadLetterQueue"
TABLE = "IsolationTable"
WORKER = "WorkerFunction"
INGEST = "IngestFunction"
DEFAULT_PREFIX = "ec2-isolation-local"

# Queue properties that are attributes SQS takes as they are (KMS and policies are AWS-side concerns).
_QUEUE_ATTRIBUTES = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
)


# --- reading symbolic references left by the resolver ---------------------------------------------------


def ref_target(value: Any) -> tuple[str, str | None] | None:
    """(logical id, attribute or None) of a reference to a resource, else None.

    Accepts the CloudFormation forms `{"Ref": id}`, `{"Fn::GetAtt": [id, attr]}` and
    `{"Fn::GetAtt": "id.attr"}`.
    """
    if isinstance(value, dict) and len(value) == 1:
        if "Ref" in value and isinstance(value["Ref"], str):
            return value["Ref"], None
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            if isinstance(target, str) and "." in target:
                logical, attribute = target.split(".", 1)
                return logical, attribute
            if isinstance(target, list) and len(target) == 2:
                return str(target[0]), str(target[1])
    return None


def _resources(template: dict[str, Any]) -> dict[str, Any]:
    return template.get("Resources") or {}


def _properties(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource = _resources(template).get(logical_id)
    if resource is None:
        raise KeyError(f"template.yaml has no resource {logical_id}")
    return resource.get("Properties") or {}


def _globals(template: dict[str, Any]) -> dict[str, Any]:
    return (template.get("Globals") or {}).get("Function") or {}


def parameter_default(template: dict[str, Any], name: str, fallback: Any = None) -> Any:
    return ((template.get("Parameters") or {}).get(name) or {}).get("Default", fallback)


# --- what the local stack reads from the functions ------------------------------------------------------


@dataclass(frozen=True)
class FunctionSettings:
    timeout_seconds: float
    memory_mb: int
    environment: dict[str, Any]


def function_settings(template: dict[str, Any], logical_id: str) -> FunctionSettings:
    defaults = _globals(template)
    props = _properties(template, logical_id)
    environment = dict(((defaults.get("Environment") or {}).get("Variables")) or {})
    environment.update(((props.get("Environment") or {}).get("Variables")) or {})
    return FunctionSettings(
        timeout_seconds=float(props.get("Timeout", defaults.get("Timeout", 3))),
        memory_mb=int(props.get("MemorySize", defaults.get("MemorySize", 128))),
        environment=environment,
    )


def queue_event(template: dict[str, Any], function_id: str = WORKER) -> dict[str, Any]:
    """The properties of the function's SQS event source."""
    for event in (_properties(template, function_id).get("Events") or {}).values():
        if event.get("Type") == "SQS":
            return event.get("Properties") or {}
    return {}


def api_routes(template: dict[str, Any], function_id: str = INGEST) -> list[Route]:
    """The ingest function's API events: the only routes API Gateway serves."""
    routes = []
    for event in (_properties(template, function_id).get("Events") or {}).values():
        if event.get("Type") == "Api":
            props = event.get("Properties") or {}
            method = str(props.get("Method", "any")).upper()
            routes.append(Route("ANY" if method == "ANY" else method, str(props["Path"])))
    return routes


# --- provisioning ---------------------------------------------------------------------------------------


@dataclass
class Provisioned:
    """Names and addresses of what was created, and the template's run-time settings."""

    region: str
    account_id: str
    queue_url: str
    queue_arn: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str
    max_receive_count: int
    visibility_timeout: int
    table_name: str
    rules: dict[str, str] = field(default_factory=dict)  # logical id -> rule name

    def names(self) -> dict[str, str]:
        """What a Ref to each provisioned resource resolves to (CloudFormation's Ref values)."""
        return {QUEUE: self.queue_url, DEAD_LETTER_QUEUE: self.dead_letter_queue_url, TABLE: self.table_name}


def provision(
    template: dict[str, Any],
    *,
    sqs: Any,
    dynamodb: Any,
    events: Any,
    region: str,
    account_id: str,
    prefix: str = DEFAULT_PREFIX,
) -> Provisioned:
    dlq_url, dlq_arn = _queue(sqs, f"{prefix}-dlq", _queue_attributes(template, DEAD_LETTER_QUEUE, {}))
    attributes = _queue_attributes(template, QUEUE, {DEAD_LETTER_QUEUE: dlq_arn})
    queue_url, queue_arn = _queue(sqs, f"{prefix}-queue", attributes)
    redrive = json.loads(attributes.get("RedrivePolicy", "{}"))
    table_name = _table(dynamodb, f"{prefix}-isolations", _properties(template, TABLE))
    rules = _rules(events, template, prefix=prefix, arns={QUEUE: queue_arn, DEAD_LETTER_QUEUE: dlq_arn})
    return Provisioned(
        region=region,
        account_id=account_id,
        queue_url=queue_url,
        queue_arn=queue_arn,
        dead_letter_queue_url=dlq_url,
        dead_letter_queue_arn=dlq_arn,
        max_receive_count=int(redrive.get("maxReceiveCount", 0)),
        visibility_timeout=int(attributes.get("VisibilityTimeout", 30)),
        table_name=table_name,
        rules=rules,
    )


def _queue_attributes(template: dict[str, Any], logical_id: str, arns: dict[str, str]) -> dict[str, str]:
    props = _properties(template, logical_id)
    attributes = {name: str(props[name]) for name in _QUEUE_ATTRIBUTES if name in props}
    redrive = props.get("RedrivePolicy")
    if redrive:
        target = ref_target(redrive.get("deadLetterTargetArn"))
        dlq_arn = arns.get(target[0]) if target else redrive.get("deadLetterTargetArn")
        if not isinstance(dlq_arn, str):
            raise ValueError(f"{logical_id}: cannot resolve the redrive target {redrive!r}")
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": int(redrive["maxReceiveCount"])}
        )
    return attributes


def _queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        if "QueueAlreadyExists" not in str(exc) and "QueueNameExists" not in str(exc):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _table(dynamodb: Any, name: str, props: dict[str, Any]) -> str:
    request: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if request["BillingMode"] == "PROVISIONED":
        request["ProvisionedThroughput"] = props["ProvisionedThroughput"]
    indexes = [
        {key: value for key, value in index.items() if key != "ContributorInsightsSpecification"}
        for index in props.get("GlobalSecondaryIndexes") or []
    ]
    if indexes:
        request["GlobalSecondaryIndexes"] = indexes
    if props.get("LocalSecondaryIndexes"):
        request["LocalSecondaryIndexes"] = props["LocalSecondaryIndexes"]
    try:
        dynamodb.create_table(**request)
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    ttl = props.get("TimeToLiveSpecification") or {}
    if ttl.get("Enabled") in (True, "true", "True"):
        current = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
    return name


def _rules(events: Any, template: dict[str, Any], *, prefix: str, arns: dict[str, str]) -> dict[str, str]:
    created = {}
    for logical_id, resource in _resources(template).items():
        if resource.get("Type") != "AWS::Events::Rule":
            continue
        props = resource.get("Properties") or {}
        targets = []
        for target in props.get("Targets") or []:
            ref = ref_target(target.get("Arn"))
            if ref is None or ref[0] not in arns:
                continue  # only the queue is part of the local stack
            entry: dict[str, Any] = {"Id": str(target.get("Id", ref[0])), "Arn": arns[ref[0]]}
            dead_letter = ref_target((target.get("DeadLetterConfig") or {}).get("Arn"))
            if dead_letter and dead_letter[0] in arns:
                entry["DeadLetterConfig"] = {"Arn": arns[dead_letter[0]]}
            if target.get("RetryPolicy"):
                entry["RetryPolicy"] = {k: int(v) for k, v in target["RetryPolicy"].items()}
            targets.append(entry)
        if not targets or "EventPattern" not in props:
            continue
        bus = props.get("EventBusName", "default")
        if bus != "default":
            log.warning("rule %s is on bus %r; the local stack puts it on the default bus", logical_id, bus)
        name = f"{prefix}-{logical_id}"
        events.put_rule(
            Name=name,
            EventPattern=json.dumps(cfn.event_pattern(props)),
            State=str(props.get("State", "ENABLED")),
            Description=str(props.get("Description", ""))[:512],
        )
        events.put_targets(Rule=name, Targets=targets)
        created[logical_id] = name
    return created


def runtime_environment(
    template: dict[str, Any], provisioned: Provisioned, *, functions: tuple[str, ...] = (INGEST, WORKER)
) -> dict[str, str]:
    """The functions' environment variables from the template, references replaced by what was created.

    Both functions run in one process here, so their variables are merged (they agree where they
    overlap). A variable that refers to something the local stack does not create is left out.
    """
    names = provisioned.names()
    environment: dict[str, str] = {}
    for function_id in functions:
        for name, value in function_settings(template, function_id).environment.items():
            ref = ref_target(value)
            if ref is not None:
                if ref[0] in names and ref[1] is None:
                    environment[name] = names[ref[0]]
                continue
            if isinstance(value, bool):
                environment[name] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                environment[name] = str(value)
    return environment
