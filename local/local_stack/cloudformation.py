"""Deploying a template through the endpoint's CloudFormation and reading back what it created.

`deploy_stack` creates the stack (or finds the one an earlier run left), waits for it, and returns the
physical id of each resource and the value of each expression the caller asked CloudFormation to
evaluate (as extra stack outputs: parameters, pseudo parameters and `Fn::Sub`/`Fn::If`/`Fn::Join`...
evaluated by CloudFormation itself, not by a copy of it here).

What moto 5.2.5's CloudFormation gets wrong here, and how callers live with it:

- an output whose value is a number crashes it (`TypeError`): literals are never sent as outputs;
- a resource it does not create (its `Condition` is false, or a type it does not support, such as
  `AWS::SQS::QueuePolicy`, `AWS::Events::EventBusPolicy`, `AWS::Scheduler::Schedule` or
  `AWS::SecurityHub::ActionTarget`, skipped with only a warning and the stack still `CREATE_COMPLETE`)
  is listed by `DescribeStackResources` with no logical and no physical id: such entries are skipped;
- it parses every template with PyYAML's pure-Python loader, half a second for the service's (in every
  test's stack): the templates sent from here are JSON, which an embedded moto parses as JSON first
  (`_json_first`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import error_code

_CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
_REFERENCE_IN_SUB = r"\$\{([^}!][^}]*)\}"


@dataclass(frozen=True)
class Deployed:
    """What a stack created: logical id -> physical id, the template's own outputs, and the value of
    each expression the caller asked for."""

    resources: dict[str, str]
    outputs: dict[str, str]
    values: dict[str, str]


def deploy_stack(
    cloudformation: Any,
    *,
    name: str,
    template: dict[str, Any],
    parameters: dict[str, str] | None = None,
    evaluate: dict[str, Any] | None = None,
) -> Deployed:
    """Create the stack `name` from `template`; `evaluate`: name -> expression to read back.

    A stack of that name already there is reused as it is (its parameters are not updated).
    """
    expressions = dict(evaluate or {})
    keys = {name_: f"Value{index}" for index, name_ in enumerate(expressions)}
    body = dict(template)
    body["Outputs"] = {
        **(template.get("Outputs") or {}),
        **{keys[name_]: {"Value": expression} for name_, expression in expressions.items()},
    }
    _json_first()
    try:
        cloudformation.create_stack(
            StackName=name,
            TemplateBody=json.dumps(body),
            Parameters=[
                {"ParameterKey": key, "ParameterValue": value} for key, value in (parameters or {}).items()
            ],
            Capabilities=_CAPABILITIES,
        )
    except ClientError as exc:
        if error_code(exc) != "AlreadyExistsException":
            raise
    stack = _settled(cloudformation, name)
    if not str(stack["StackStatus"]).endswith("_COMPLETE") or "ROLLBACK" in str(stack["StackStatus"]):
        raise RuntimeError(f"stack {name}: {stack['StackStatus']} {stack.get('StackStatusReason') or ''}")
    outputs = {output["OutputKey"]: str(output["OutputValue"]) for output in stack.get("Outputs") or []}
    resources = {
        resource["LogicalResourceId"]: str(resource["PhysicalResourceId"])
        for resource in cloudformation.describe_stack_resources(StackName=name)["StackResources"]
        if resource.get("LogicalResourceId") and resource.get("PhysicalResourceId")
    }
    values = {name_: outputs.pop(key) for name_, key in keys.items() if key in outputs}
    return Deployed(resources, outputs, values)


def _json_first() -> None:
    """moto's template parser (`Stack.parse_template`; `CreateStack` parses nothing else), in this
    process (an embedded moto), tries JSON before YAML: the same
    template either way, since JSON is YAML."""
    try:
        from moto.cloudformation.models import Stack
    except ImportError:  # a moto server of its own: nothing to do here
        return
    as_yaml = Stack.parse_template
    if getattr(as_yaml, "json_first", False):
        return

    def parse_template(template: str) -> dict[str, Any]:
        try:
            parsed = json.loads(template)
        except ValueError:
            return as_yaml(template)
        return parsed if isinstance(parsed, dict) else as_yaml(template)

    parse_template.json_first = True  # type: ignore[attr-defined]
    Stack.parse_template = staticmethod(parse_template)  # type: ignore[method-assign]


def _settled(cloudformation: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack: dict[str, Any] = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        if not str(stack["StackStatus"]).endswith("IN_PROGRESS") or time.monotonic() > deadline:
            return stack
        time.sleep(0.1)


def references(node: Any) -> set[str]:
    """The names an expression refers to: `Ref`, `Fn::GetAtt` and `${...}` in `Fn::Sub` (not pseudo
    parameters, not a Sub's own variables)."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= references(item)
    elif isinstance(node, dict):
        if len(node) == 1 and "Ref" in node and isinstance(node["Ref"], str):
            found.add(node["Ref"])
        elif len(node) == 1 and "Fn::GetAtt" in node:
            target = node["Fn::GetAtt"]
            found.add(str(target.split(".", 1)[0] if isinstance(target, str) else target[0]))
        elif len(node) == 1 and "Fn::Sub" in node:
            args = node["Fn::Sub"]
            text, variables = (args, {}) if isinstance(args, str) else (args[0], args[1])
            found |= {name.split(".", 1)[0] for name in re.findall(_REFERENCE_IN_SUB, text)} - set(variables)
            found |= references(variables)
        else:
            for value in node.values():
                found |= references(value)
    return {name for name in found if not name.startswith("AWS::")}
