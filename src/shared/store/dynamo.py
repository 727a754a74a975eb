"""DynamoDB plumbing shared by the store's modules: item (de)serialization, epoch numbers, and update and
condition expressions assembled into one request."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from shared.lifecycle import Condition

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _to_dynamo(value: Any) -> Any:
    """Python → DynamoDB-serializable (floats become Decimals, None-valued map keys are kept)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_from_dynamo(v) for v in value]
    return value


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_to_dynamo(v)) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_dynamo(_deserializer.deserialize(v)) for k, v in item.items()}


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}}


def epoch(moment: float) -> Decimal:
    return Decimal(str(round(moment, 3)))


class Write:
    """One write's expressions: SET/REMOVE clauses and an optional lifecycle condition, with their values
    merged (a value named twice must be the same value)."""

    def __init__(
        self,
        *clauses: str,
        remove: tuple[str, ...] = (),
        condition: Condition | None = None,
        params: dict[str, Any] | None = None,
        **values: Any,
    ) -> None:
        self.clauses = list(clauses)
        self.remove = list(remove)
        self.values = {f":{k}": v for k, v in values.items()}
        self.names = {"#s": "status", "#e": "error"}
        self.condition = condition.expression(**(params or {})) if condition is not None else None

    def set(self, clause: str, **values: Any) -> None:
        self.clauses.append(clause)
        self.values.update({f":{k}": v for k, v in values.items()})

    def request(self) -> dict[str, Any]:
        values = dict(self.values)
        parts: list[str] = []
        if self.clauses:
            parts.append("SET " + ", ".join(self.clauses))
        if self.remove:
            parts.append("REMOVE " + ", ".join(self.remove))
        request: dict[str, Any] = {}
        if parts:
            request["UpdateExpression"] = " ".join(parts)
        if self.condition is not None:
            for name, value in self.condition.values.items():
                if name in values and values[name] != value:
                    raise ValueError(f"{name} names two values in one write")
                values[name] = value
            request["ConditionExpression"] = self.condition.expression
        text = " ".join(str(request.get(k, "")) for k in ("UpdateExpression", "ConditionExpression"))
        names = {placeholder: name for placeholder, name in self.names.items() if placeholder in text}
        if names:
            request["ExpressionAttributeNames"] = names
        if values:
            request["ExpressionAttributeValues"] = {
                k: _serializer.serialize(_to_dynamo(v)) for k, v in values.items()
            }
        return request
