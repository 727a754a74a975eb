"""What template.yaml declares that the stack needs at run time, deployed in an AWS endpoint through its
own CloudFormation, and the functions' settings read back from the same deployment.

The template is transformed by samtranslator (`local_stack.templates`); the resources of the types in
`DEPLOYED_TYPES` (and only those whose references stay within them) are deployed as one stack: the queue
and its dead-letter queue, the table, the EventBridge rules and the functions' roles and log groups.
CloudFormation evaluates the parameters and intrinsic functions; the functions (`AWS::Lambda::Function`:
handler, timeout, memory, environment), their SQS event sources (batch size, maximum concurrency) and
the API's routes are read from the transformed template generically, their expressions evaluated by
the same stack. Nothing here names a function.

Checked against moto 5.2.5's CloudFormation (in the embedded moto server): it deploys this subset
faithfully (queue attributes, `VisibilityTimeout`, the redrive policy's `maxReceiveCount` from a Number
parameter, the table's key schema, attribute definitions and index, rules' object patterns and targets
with their dead-letter config and retry policy, roles), except for what is completed after the stack:

- an `EventPattern` given as a JSON string (as template.yaml's GuardDuty rule must be) is JSON-encoded a
  second time and the stack fails: the rule is deployed with a placeholder pattern and given its pattern,
  evaluated by the stack, with PutRule;
- `TimeToLiveSpecification` is ignored: TTL is turned on with UpdateTimeToLive.

Not deployed: what moto does not create (`AWS::SQS::QueuePolicy`, `AWS::Events::EventBusPolicy`,
`AWS::Scheduler::Schedule`, `AWS::SecurityHub::ActionTarget`: skipped with a warning, the stack still
"complete"), the functions and the API (moto runs no Lambda code without Docker, and the whole
transformed template fails: first on the string pattern, then on the functions' code in S3). For when
the stack's own event bus joins the subset: a rule with `EventBusName: !Ref Bus` crashes `CreateStack`
(`AttributeError`) where `!GetAtt Bus.Name` works, and the bus's physical id comes back `None`, so a
bus's name is its `Name` property.

Re-running against an endpoint that already has the stack reuses it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from local_stack.cloudformation import deploy_stack, references
from local_stack.http_api import Route

QUEUE = "IsolationQueue"
DEAD_LETTER_QUEUE = "IsolationDeadLetterQueue"
#: The follow-up phase's queue and its DLQ (its function is the follow-up handler).
FOLLOW_UP_QUEUE = "FollowUpQueue"
FOLLOW_UP_DEAD_LETTER_QUEUE = "FollowUpDeadLetterQueue"
TABLE = "IsolationTable"
DEFAULT_STACK_NAME = "ec2-isolation-local"

#: The resource types the local stack deploys (what moto's CloudFormation creates faithfully).
DEPLOYED_TYPES = frozenset(
    {
        "AWS::SQS::Queue",
        "AWS::DynamoDB::Table",
        "AWS::Events::EventBus",
        "AWS::Events::Rule",
        "AWS::IAM::Role",
        "AWS::Logs::LogGroup",
    }
)
_PLACEHOLDER_PATTERN = {"source": ["ec2-isolation.local.placeholder"]}
_ANY_METHOD = "x-amazon-apigateway-any-method"

Client = Callable[[str], Any]


@dataclass(frozen=True)
class Function:
    """An `AWS::Lambda::Function` as the local stack runs it."""

    logical_id: str
    name: str
    handler: str  # module.attribute, as in the template
    timeout_seconds: float
    memory_mb: int
    environment: dict[str, str]
    #: The ARN of its execution role as the stack created it (None: not deployed here).
    role_arn: str | None = None


@dataclass(frozen=True)
class QueueSource:
    """An SQS event source mapping: `function` is invoked with batches of the queue."""

    function: str
    queue: str
    batch_size: int
    #: `ScalingConfig.MaximumConcurrency`: at most this many invocations at once (None: not capped).
    maximum_concurrency: int | None = None


@dataclass(frozen=True)
class Schedule:
    """An EventBridge Scheduler schedule: `function` is invoked every `every_seconds` (moto does not
    create schedules; the local stack runs them itself)."""

    function: str
    every_seconds: float


@dataclass(frozen=True)
class Provisioned:
    """What the stack created (physical ids by logical id), the parameters as deployed, and the
    functions with what invokes them."""

    stack_name: str
    resources: dict[str, str]
    queue_arns: dict[str, str]
    parameters: dict[str, str]
    functions: dict[str, Function] = field(default_factory=dict)
    routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)  # function -> its API routes
    queue_sources: tuple[QueueSource, ...] = ()
    schedules: tuple[Schedule, ...] = ()
    max_receive_count: int = 0

    @property
    def queue_url(self) -> str:
        return self.resources[QUEUE]

    @property
    def queue_arn(self) -> str:
        return self.queue_arns[QUEUE]

    @property
    def dead_letter_queue_url(self) -> str:
        return self.resources[DEAD_LETTER_QUEUE]

    @property
    def dead_letter_queue_arn(self) -> str:
        return self.queue_arns[DEAD_LETTER_QUEUE]

    @property
    def follow_up_queue_url(self) -> str:
        return self.resources[FOLLOW_UP_QUEUE]

    @property
    def follow_up_queue_arn(self) -> str:
        return self.queue_arns[FOLLOW_UP_QUEUE]

    @property
    def follow_up_dead_letter_queue_url(self) -> str:
        return self.resources[FOLLOW_UP_DEAD_LETTER_QUEUE]

    @property
    def table_name(self) -> str:
        return self.resources[TABLE]

    def rules(self, template: dict[str, Any]) -> dict[str, str]:
        """Logical id -> name of each deployed rule."""
        return {
            logical_id: self.resources[logical_id]
            for logical_id, resource in template["Resources"].items()
            if resource["Type"] == "AWS::Events::Rule" and logical_id in self.resources
        }

    def api(self) -> tuple[Function, tuple[Route, ...]]:
        """The function behind the API, and its routes (the template has one API, one function)."""
        ((function, routes),) = self.routes.items()
        return self.functions[function], routes

    @property
    def worker_role_arn(self) -> str | None:
        """The role of the isolation queue's function: the one member accounts trust (template.yaml's
        output WorkerRoleArn)."""
        return self.consumer(QUEUE)[0].role_arn

    def consumer(self, queue: str) -> tuple[Function, QueueSource]:
        """The function invoked with batches of `queue`, and its event source."""
        source = next(source for source in self.queue_sources if source.queue == queue)
        return self.functions[source.function], source

    def environment(self) -> dict[str, str]:
        """Every function's variables, merged: the functions run in one process locally (they agree
        where they overlap)."""
        merged: dict[str, str] = {}
        for function in self.functions.values():
            merged.update(function.environment)
        return merged


def deployed_subset(template: dict[str, Any]) -> dict[str, Any]:
    """The resources of `DEPLOYED_TYPES` whose references all stay within the subset."""
    resources = {k: v for k, v in template["Resources"].items() if v["Type"] in DEPLOYED_TYPES}
    parameters = set(template.get("Parameters") or {})
    while True:
        outside = {
            logical_id
            for logical_id, resource in resources.items()
            if references(resource.get("Properties")) - parameters - set(resources)
        }
        if not outside:
            return resources
        resources = {k: v for k, v in resources.items() if k not in outside}


def provision(
    template: dict[str, Any],
    *,
    client: Client,
    parameters: dict[str, str] | None = None,
    stack_name: str = DEFAULT_STACK_NAME,
) -> Provisioned:
    """Deploy the subset of the transformed `template` and read back what the local stack runs."""
    resources = json.loads(json.dumps(deployed_subset(template)))
    declared = template.get("Parameters") or {}
    evaluable = set(resources) | set(declared)
    evaluate: dict[str, Any] = {f"parameter:{name}": {"Ref": name} for name in declared}
    for logical_id, resource in resources.items():
        props = resource.get("Properties") or {}
        if resource["Type"] == "AWS::Events::Rule" and _is_text(props.get("EventPattern")):
            evaluate[f"pattern:{logical_id}"] = props["EventPattern"]
            evaluate[f"bus:{logical_id}"] = props.get("EventBusName", "default")
            props["EventPattern"] = _PLACEHOLDER_PATTERN
    settings = _function_settings(template)
    literals = {key: value for key, value in settings.items() if not isinstance(value, dict | list)}
    evaluate.update(
        {
            key: value
            for key, value in settings.items()
            if key not in literals and references(value) <= evaluable
        }
    )
    body: dict[str, Any] = {
        key: template[key]
        for key in ("AWSTemplateFormatVersion", "Parameters", "Mappings", "Conditions")
        if key in template
    }
    stack = deploy_stack(
        client("cloudformation"),
        name=stack_name,
        template={**body, "Resources": resources},
        parameters=parameters,
        evaluate=evaluate,
    )
    values = {**literals, **stack.values}
    _complete(client, template, stack.resources, values)
    queue_arns, max_receive_count = _queues(client("sqs"), template, stack.resources)
    functions = _functions(template, values)
    return Provisioned(
        stack_name=stack_name,
        resources=stack.resources,
        queue_arns=queue_arns,
        parameters={
            name[len("parameter:") :]: v for name, v in values.items() if name.startswith("parameter:")
        },
        functions=functions,
        routes=_routes(template, functions),
        queue_sources=_queue_sources(template, functions, stack.resources, values),
        schedules=_schedules(template, functions, values),
        max_receive_count=max_receive_count,
    )


def _is_text(pattern: Any) -> bool:
    """A JSON string, or a function that makes one (`Fn::Sub`...), rather than an object pattern."""
    return isinstance(pattern, str) or (
        isinstance(pattern, dict) and any(key.startswith("Fn::") for key in pattern)
    )


def _complete(
    client: Client, template: dict[str, Any], physical: dict[str, str], values: dict[str, str]
) -> None:
    """What moto's CloudFormation leaves out (see the module's docstring)."""
    events = client("events")
    for logical_id, resource in template["Resources"].items():
        if logical_id not in physical:
            continue
        props = resource.get("Properties") or {}
        if f"pattern:{logical_id}" in values:
            rule = events.describe_rule(Name=physical[logical_id], EventBusName=values[f"bus:{logical_id}"])
            events.put_rule(
                Name=rule["Name"],
                EventPattern=values[f"pattern:{logical_id}"],
                State=rule.get("State", "ENABLED"),
                Description=rule.get("Description", ""),
                EventBusName=rule.get("EventBusName", "default"),
            )
        ttl = props.get("TimeToLiveSpecification") or {}
        if resource["Type"] == "AWS::DynamoDB::Table" and ttl.get("Enabled") in (True, "true"):
            dynamodb = client("dynamodb")
            current = dynamodb.describe_time_to_live(TableName=physical[logical_id])["TimeToLiveDescription"]
            if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                dynamodb.update_time_to_live(
                    TableName=physical[logical_id],
                    TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
                )


def _queues(sqs: Any, template: dict[str, Any], physical: dict[str, str]) -> tuple[dict[str, str], int]:
    """Each deployed queue's ARN, and the isolation queue's maxReceiveCount as created."""
    arns: dict[str, str] = {}
    max_receive_count = 0
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::SQS::Queue" or logical_id not in physical:
            continue
        attributes = sqs.get_queue_attributes(QueueUrl=physical[logical_id], AttributeNames=["All"])[
            "Attributes"
        ]
        arns[logical_id] = attributes["QueueArn"]
        if logical_id == QUEUE:
            max_receive_count = int(
                json.loads(attributes.get("RedrivePolicy", "{}")).get("maxReceiveCount", 0)
            )
    return arns, max_receive_count


# --- the functions, read from the transformed template ----------------------------------------------


def _lambda_functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource.get("Properties") or {}
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
    }


def invoked(template: dict[str, Any], expression: Any, functions: Iterable[str]) -> set[str]:
    """The functions an expression invokes: named directly, or through an alias (the template's
    `AutoPublishAlias`: the API, queues and schedules invoke the alias `live`)."""
    found = set()
    for name in references(expression):
        resource = template["Resources"].get(name) or {}
        if resource.get("Type") == "AWS::Lambda::Alias":
            found |= references((resource.get("Properties") or {}).get("FunctionName"))
        else:
            found.add(name)
    return found & set(functions)


def _function_settings(template: dict[str, Any]) -> dict[str, Any]:
    """`function:<id>:<setting>` -> the template's value (a literal or an expression to evaluate)."""
    settings: dict[str, Any] = {}
    for logical_id, props in _lambda_functions(template).items():
        prefix = f"function:{logical_id}"
        settings[f"{prefix}:name"] = props.get("FunctionName", logical_id)
        settings[f"{prefix}:handler"] = props["Handler"]
        settings[f"{prefix}:timeout"] = props.get("Timeout", 3)
        settings[f"{prefix}:memory"] = props.get("MemorySize", 128)
        if "Role" in props:
            settings[f"{prefix}:role"] = props["Role"]
        for name, value in ((props.get("Environment") or {}).get("Variables") or {}).items():
            settings[f"{prefix}:env:{name}"] = value
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Lambda::EventSourceMapping":
            mapping = resource.get("Properties") or {}
            settings[f"source:{logical_id}:batch"] = mapping.get("BatchSize", 10)
            concurrency = (mapping.get("ScalingConfig") or {}).get("MaximumConcurrency")
            if concurrency is not None:
                settings[f"source:{logical_id}:concurrency"] = concurrency
        if resource["Type"] == "AWS::Scheduler::Schedule":
            settings[f"schedule:{logical_id}:expression"] = (resource.get("Properties") or {}).get(
                "ScheduleExpression"
            )
    return {key: _text(value) for key, value in settings.items()}


def _text(value: Any) -> Any:
    """Literals as CloudFormation passes them on (strings); expressions as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, dict | list) else str(value)


def _functions(template: dict[str, Any], values: dict[str, str]) -> dict[str, Function]:
    functions = {}
    for logical_id in _lambda_functions(template):
        prefix = f"function:{logical_id}"
        environment = {
            key[len(f"{prefix}:env:") :]: value
            for key, value in values.items()
            if key.startswith(f"{prefix}:env:")
        }
        functions[logical_id] = Function(
            logical_id=logical_id,
            name=values[f"{prefix}:name"],
            handler=values[f"{prefix}:handler"],
            timeout_seconds=float(values[f"{prefix}:timeout"]),
            memory_mb=int(values[f"{prefix}:memory"]),
            environment=environment,
            role_arn=values.get(f"{prefix}:role"),
        )
    return functions


def _routes(template: dict[str, Any], functions: dict[str, Function]) -> dict[str, tuple[Route, ...]]:
    """The routes of each REST API (its OpenAPI body), by the function they integrate."""
    routes: dict[str, list[Route]] = {}
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::ApiGateway::RestApi":
            continue
        for path, methods in (
            ((resource.get("Properties") or {}).get("Body") or {}).get("paths") or {}
        ).items():
            for method, operation in methods.items():
                integration = operation.get("x-amazon-apigateway-integration") or {}
                for function in invoked(template, integration.get("uri"), functions):
                    verb = "ANY" if method == _ANY_METHOD else method.upper()
                    security = operation.get("security") or []
                    signed = any("AWS_IAM" in requirement for requirement in security)
                    routes.setdefault(function, []).append(Route(verb, path, bool(security), signed))
    return {function: tuple(found) for function, found in routes.items()}


def _queue_sources(
    template: dict[str, Any], functions: dict[str, Function], physical: dict[str, str], values: dict[str, str]
) -> tuple[QueueSource, ...]:
    sources = []
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        props = resource.get("Properties") or {}
        function = invoked(template, props.get("FunctionName"), functions)
        queue = references(props.get("EventSourceArn")) & set(physical)
        if function and queue:
            concurrency = values.get(f"source:{logical_id}:concurrency")
            sources.append(
                QueueSource(
                    function.pop(),
                    queue.pop(),
                    int(values[f"source:{logical_id}:batch"]),
                    int(concurrency) if concurrency is not None else None,
                )
            )
    return tuple(sources)


_RATE = re.compile(r"^rate\((?P<count>[0-9]+) (?P<unit>minutes?|hours?|days?)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _schedules(
    template: dict[str, Any], functions: dict[str, Function], values: dict[str, str]
) -> tuple[Schedule, ...]:
    """Each schedule's target function and period (`rate(...)` expressions; `cron(...)` is not run)."""
    schedules = []
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Scheduler::Schedule":
            continue
        target = invoked(
            template, ((resource.get("Properties") or {}).get("Target") or {}).get("Arn"), functions
        )
        rate = _RATE.match(str(values.get(f"schedule:{logical_id}:expression", "")))
        if target and rate:
            every = int(rate["count"]) * _UNIT_SECONDS[rate["unit"].rstrip("s")]
            schedules.append(Schedule(target.pop(), float(every)))
    return tuple(schedules)
