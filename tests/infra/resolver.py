"""An offline evaluator of CloudFormation's intrinsic functions, for the template checks.

The local stack deploys template.yaml's run-time subset through moto's CloudFormation
(`local_stack.provision`), but these checks look at every resource under many parameter values, and
moto 5.2.5 cannot help there: it cannot deploy the whole transformed template (the functions and their
code), creates nothing for `AWS::SQS::QueuePolicy`, `AWS::Events::EventBusPolicy` or
`AWS::CloudWatch::Alarm`, and a deployed stack gives back physical ids, not the resolved
properties (policy documents under conditions, `Fn::If` on parameters) the checks assert on.

    template = sam_transform(load_template("template.yaml"))
    resolved = resolve(template, {"MinSeverity": "4"})
    pattern = event_pattern(resolved["Resources"]["GuardDutyFindingRule"])

`resolve` evaluates parameters (defaults, then overrides), pseudo parameters, `Conditions`, `Fn::If`,
`Fn::Equals`/`Not`/`And`/`Or`, `Fn::Sub`, `Fn::Join`, `Fn::Split`, `Fn::Select`, `Fn::FindInMap`,
`Fn::Base64` and `AWS::NoValue`, and drops resources and outputs whose `Condition` is false. A `Ref` to a
resource and `Fn::GetAtt` stay symbolic (`{"Ref": name}`, `{"Fn::GetAtt": [name, attribute]}`) unless
the caller maps them (`resources={"IsolationQueue": {"Ref": url, "Arn": arn}}`); a function whose
arguments stay symbolic stays symbolic too.

Differences from CloudFormation, on purpose: a `Ref` to a `Number` parameter gives an int (or float),
not a string, and a `CommaDelimitedList` gives a list with each item stripped.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Mapping
from typing import Any

from local_stack.templates import TemplateError, load_template

__all__ = [
    "DEFAULT_PSEUDO_PARAMETERS",
    "TemplateError",
    "as_json",
    "event_pattern",
    "load_template",
    "parameter_values",
    "resolve",
]

DEFAULT_PSEUDO_PARAMETERS: dict[str, Any] = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "ec2-isolation",
    "AWS::StackId": (
        "arn:aws:cloudformation:us-east-1:123456789012:stack/ec2-isolation/00000000-0000-0000-0000-000000000000"
    ),
    "AWS::NotificationARNs": [],
}


# --- resolving --------------------------------------------------------------------------------------

_NO_VALUE = object()
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def _number(name: str, value: Any) -> int | float:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise TemplateError(f"parameter {name}: {value!r} is not a number") from None


def parameter_values(
    template: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Each parameter's value: the override, else the default, typed as `resolve` returns it."""
    declared: Mapping[str, Any] = template.get("Parameters") or {}
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(declared)
    if unknown:
        raise TemplateError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in overrides:
            raw = overrides[name]
        elif "Default" in spec:
            raw = spec["Default"]
        else:
            raise TemplateError(f"parameter {name} has no default: pass it in overrides")
        kind = spec.get("Type", "String")
        if kind == "Number":
            values[name] = _number(name, raw)
        elif kind == "CommaDelimitedList" or kind.startswith("List<"):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            values[name] = [str(item).strip() for item in items]
        elif isinstance(raw, bool):
            values[name] = "true" if raw else "false"
        else:
            values[name] = str(raw)
    return values


def _is_intrinsic(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _FUNCTIONS


def _is_symbolic(value: Any) -> bool:
    """True when the value still holds an unresolved function somewhere."""
    if isinstance(value, dict):
        return _is_intrinsic(value) or any(_is_symbolic(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_symbolic(v) for v in value)
    return False


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Resolver:
    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, Any],
        pseudo: Mapping[str, Any],
        resources: Mapping[str, Mapping[str, Any]],
    ) -> None:
        self.template = template
        self.names: dict[str, Any] = {**pseudo, **parameters}
        self.resources = resources
        self.mappings: Mapping[str, Any] = template.get("Mappings") or {}
        self.declared_conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self.conditions: dict[str, bool] = {}
        self._evaluating: set[str] = set()

    # conditions
    def condition(self, name: str) -> bool:
        if name in self.conditions:
            return self.conditions[name]
        if name not in self.declared_conditions:
            raise TemplateError(f"unknown condition {name}")
        if name in self._evaluating:
            raise TemplateError(f"condition {name} refers to itself")
        self._evaluating.add(name)
        try:
            result = self.truth(self.declared_conditions[name], where=f"Conditions.{name}")
        finally:
            self._evaluating.discard(name)
        self.conditions[name] = result
        return result

    def truth(self, expression: Any, *, where: str) -> bool:
        if isinstance(expression, bool):
            return expression
        if isinstance(expression, dict) and len(expression) == 1:
            ((function, args),) = expression.items()
            if function == "Condition":
                return self.condition(args)
            if function == "Fn::Equals":
                left, right = (self.value(arg) for arg in args)
                if _is_symbolic(left) or _is_symbolic(right):
                    raise TemplateError(f"{where}: Fn::Equals on an unresolved value")
                return _canonical(left) == _canonical(right)
            if function == "Fn::Not":
                return not self.truth(args[0], where=where)
            if function == "Fn::And":
                return all(self.truth(arg, where=where) for arg in args)
            if function == "Fn::Or":
                return any(self.truth(arg, where=where) for arg in args)
        if isinstance(expression, str) and expression in ("true", "false"):
            return expression == "true"
        raise TemplateError(f"{where}: not a condition: {expression!r}")

    # values
    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.value(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if _is_intrinsic(node):
            ((function, args),) = node.items()
            return _FUNCTIONS[function](self, args)
        out: dict[str, Any] = {}
        for key, item in node.items():
            resolved = self.value(item)
            if resolved is not _NO_VALUE:
                out[key] = resolved
        return out

    def ref(self, name: Any) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.names:
            return copy.deepcopy(self.names[name])
        if name in self.resources and "Ref" in self.resources[name]:
            return self.resources[name]["Ref"]
        # A resource, or one SAM generates (e.g. `<Api>ApiKey`): symbolic.
        return {"Ref": name}

    def get_att(self, args: Any) -> Any:
        if isinstance(args, str):
            args = args.split(".", 1)
        name, attribute = (self.value(arg) for arg in args)
        if name in self.resources and attribute in self.resources[name]:
            return self.resources[name][attribute]
        return {"Fn::GetAtt": [name, attribute]}

    def sub(self, args: Any) -> Any:
        if isinstance(args, str):
            text, variables = args, {}
        else:
            text, raw_variables = args
            text = self.value(text)
            variables = {key: self.value(val) for key, val in raw_variables.items()}
        if not isinstance(text, str):
            return {"Fn::Sub": [text, variables] if variables else text}

        found: dict[str, Any] = {}
        for name in _SUB_VARIABLE.findall(text):
            if name.startswith("!") or name in found:
                continue
            if name in variables:
                found[name] = variables[name]
            elif "." in name and not name.startswith("AWS::"):
                found[name] = self.get_att(name.split(".", 1))
            else:
                found[name] = self.ref(name)
            if isinstance(found[name], list):
                raise TemplateError(f"Fn::Sub: ${{{name}}} is a list")
        unresolved = {name for name, value in found.items() if _is_symbolic(value)}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                # `${!x}` is the literal `${x}`; it stays escaped while the result is still a Sub.
                return match.group(0) if unresolved else "${" + name[1:] + "}"
            if name in unresolved:
                return match.group(0)
            return _text(found[name])

        result = _SUB_VARIABLE.sub(replace, text)
        if not unresolved:
            return result
        # Still a Sub: what resolved is in the text, what did not stays a variable.
        remaining = {name: variables[name] for name in unresolved if name in variables}
        return {"Fn::Sub": [result, remaining] if remaining else result}

    def join(self, args: Any) -> Any:
        delimiter, items = self.value(args[0]), self.value(args[1])
        if _is_symbolic(items) or not isinstance(items, list):
            return {"Fn::Join": [delimiter, items]}
        return delimiter.join(_text(item) for item in items)

    def split(self, args: Any) -> Any:
        delimiter, source = self.value(args[0]), self.value(args[1])
        if _is_symbolic(source):
            return {"Fn::Split": [delimiter, source]}
        return _text(source).split(delimiter)

    def select(self, args: Any) -> Any:
        index, items = self.value(args[0]), self.value(args[1])
        if _is_symbolic(items) or _is_symbolic(index):
            return {"Fn::Select": [index, items]}
        try:
            return items[int(index)]
        except (IndexError, ValueError, TypeError) as exc:
            raise TemplateError(f"Fn::Select: no item {index!r} in {items!r}") from exc

    def if_(self, args: Any) -> Any:
        name, when_true, when_false = args
        return self.value(when_true if self.condition(name) else when_false)

    def find_in_map(self, args: Any) -> Any:
        keys = [self.value(arg) for arg in args[:3]]
        if any(_is_symbolic(key) for key in keys):
            return {"Fn::FindInMap": keys}
        mapping, top, second = (_text(key) for key in keys)
        try:
            return copy.deepcopy(self.mappings[mapping][top][second])
        except KeyError as exc:
            raise TemplateError(f"Fn::FindInMap: no {mapping}/{top}/{second}") from exc

    def base64(self, args: Any) -> Any:
        value = self.value(args)
        if _is_symbolic(value):
            return {"Fn::Base64": value}
        return base64.b64encode(_text(value).encode()).decode()

    def condition_value(self, args: Any) -> Any:
        return self.condition(args)

    def equals(self, args: Any) -> Any:
        return self.truth({"Fn::Equals": args}, where="Fn::Equals")

    def not_(self, args: Any) -> Any:
        return self.truth({"Fn::Not": args}, where="Fn::Not")

    def and_(self, args: Any) -> Any:
        return self.truth({"Fn::And": args}, where="Fn::And")

    def or_(self, args: Any) -> Any:
        return self.truth({"Fn::Or": args}, where="Fn::Or")


def _canonical(value: Any) -> Any:
    """Fn::Equals compares what CloudFormation would: strings (numbers and booleans as their text)."""
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, (bool, int, float)):
        return _text(value)
    return value


_FUNCTIONS: dict[str, Any] = {
    "Ref": lambda r, a: r.ref(a),
    "Fn::GetAtt": lambda r, a: r.get_att(a),
    "Fn::Sub": lambda r, a: r.sub(a),
    "Fn::Join": lambda r, a: r.join(a),
    "Fn::Split": lambda r, a: r.split(a),
    "Fn::Select": lambda r, a: r.select(a),
    "Fn::If": lambda r, a: r.if_(a),
    "Fn::FindInMap": lambda r, a: r.find_in_map(a),
    "Fn::Base64": lambda r, a: r.base64(a),
    "Fn::Equals": lambda r, a: r.equals(a),
    "Fn::Not": lambda r, a: r.not_(a),
    "Fn::And": lambda r, a: r.and_(a),
    "Fn::Or": lambda r, a: r.or_(a),
    "Condition": lambda r, a: r.condition_value(a),
    "Fn::ImportValue": lambda r, a: {"Fn::ImportValue": r.value(a)},
    "Fn::GetAZs": lambda r, a: {"Fn::GetAZs": r.value(a)},
    "Fn::Cidr": lambda r, a: {"Fn::Cidr": r.value(a)},
}


def resolve(
    template: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    pseudo: Mapping[str, Any] | None = None,
    resources: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The template with its intrinsic functions evaluated (see the module's docstring).

    `overrides` are parameter values by name (strings, as CloudFormation takes them); `pseudo` replaces
    pseudo parameters (`AWS::Region`, `AWS::AccountId`, ...); `resources` maps a logical id to what
    `Ref` (key "Ref") and `Fn::GetAtt` (key: the attribute) of it give. The result also carries
    `Parameters` (name → value) and `Conditions` (name → bool) as resolved.
    """
    resolver = _Resolver(
        template,
        parameter_values(template, overrides),
        {**DEFAULT_PSEUDO_PARAMETERS, **(pseudo or {})},
        resources or {},
    )
    conditions = {name: resolver.condition(name) for name in resolver.declared_conditions}

    out: dict[str, Any] = {
        key: copy.deepcopy(value)
        for key, value in template.items()
        if key not in ("Parameters", "Conditions", "Resources", "Outputs", "Globals")
    }
    out["Parameters"] = {
        name: copy.deepcopy(value) for name, value in resolver.names.items() if "::" not in name
    }
    out["Conditions"] = conditions
    if "Globals" in template:
        out["Globals"] = resolver.value(template["Globals"])
    for section in ("Resources", "Outputs"):
        kept: dict[str, Any] = {}
        for name, body in (template.get(section) or {}).items():
            if not isinstance(body, dict):
                raise TemplateError(f"{section}.{name} is not a mapping")
            condition = body.get("Condition")
            if condition is not None and not resolver.condition(condition):
                continue
            kept[name] = resolver.value(body)
        out[section] = kept
    return out


def as_json(value: Any) -> Any:
    """A JSON-typed property as a Python value: templates may give it as an object or a JSON string."""
    if isinstance(value, str):
        return json.loads(value)
    return value


def event_pattern(rule: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved `EventPattern` of an `AWS::Events::Rule` resource, as a dict."""
    properties = rule.get("Properties", rule)
    pattern = as_json(properties["EventPattern"])
    if not isinstance(pattern, dict) or _is_symbolic(pattern):
        raise TemplateError(f"event pattern is not resolved: {pattern!r}")
    return pattern
