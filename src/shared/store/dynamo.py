"""DynamoDB plumbing shared by the store's modules: item (de)serialization, epoch numbers, and update and
condition expressions assembled into one request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import error_code
from shared.lifecycle import Condition


def _attribute(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value. Written here rather than with boto3's
    `TypeSerializer`: importing any of boto3 imports its resource layer and s3transfer, which every cold
    start would pay for; the store needs only these types."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if isinstance(value, float):
        return {"N": str(Decimal(str(value)))}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, dict):
        return {"M": {str(k): _attribute(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [_attribute(v) for v in value]}
    raise TypeError(f"cannot store a {type(value).__name__} in DynamoDB")


def _value(attribute: dict[str, Any]) -> Any:
    """A DynamoDB attribute value as plain Python (numbers as int or float, sets as lists)."""
    ((kind, value),) = attribute.items()
    if kind == "N":
        return _number(value)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _value(v) for k, v in value.items()}
    if kind == "L":
        return [_value(v) for v in value]
    if kind == "NS":
        return [_number(v) for v in value]
    return list(value) if kind in ("SS", "BS") else value  # S, BOOL, B


def _number(text: str) -> int | float:
    number = Decimal(text)
    return int(number) if number == number.to_integral_value() else float(number)


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _attribute(v) for k, v in item.items()}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in item.items()}


class Refused(Exception):
    """A conditional write whose condition did not hold; `current` is the item as it stood (None: no item)."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("condition refused")
        self.current = current


def updated_if(client: Any, request: dict[str, Any]) -> bool:
    """An `UpdateItem` whose condition may refuse it: True when it was made, False when its condition
    did not hold (any other error raises)."""
    try:
        client.update_item(**request)
    except ClientError as exc:
        if error_code(exc) != "ConditionalCheckFailedException":
            raise
        return False
    return True


@dataclass(frozen=True)
class Refusals:
    """Which items' conditions refused a cancelled `TransactWriteItems`, by the items' positions."""

    codes: tuple[str | None, ...]
    items: tuple[dict[str, Any] | None, ...]

    def refused(self, index: int) -> bool:
        """The condition of item `index` did not hold."""
        return index < len(self.codes) and self.codes[index] == "ConditionalCheckFailed"

    def item(self, index: int) -> dict[str, Any] | None:
        """Item `index` as it stood, deserialized, when the refusal returned it
        (`ReturnValuesOnConditionCheckFailure`); None otherwise."""
        return self.items[index] if index < len(self.items) else None


def refusals(exc: ClientError) -> Refusals:
    """The refusals of the transaction `exc` cancelled; `exc` is raised again when it is anything else.
    A transaction cancelled by a conflict with another write, or throttled, refuses no item: the caller
    raises it, and it is retried like any transient error."""
    if error_code(exc) != "TransactionCanceledException":
        raise exc
    reasons = exc.response.get("CancellationReasons") or []
    return Refusals(
        codes=tuple(reason.get("Code") for reason in reasons),
        items=tuple(deserialize(reason["Item"]) if reason.get("Item") else None for reason in reasons),
    )


def query_items(client: Any, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The items a Query finds, deserialized, page after page as they are consumed (a caller that stops
    early reads no further page)."""
    while True:
        page = client.query(**params)
        yield from (deserialize(item) for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


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
        self.names = {"#s": "status", "#e": "error", "#r": "release"}
        self.condition = condition.expression(**(params or {})) if condition is not None else None

    def value(self, name: str) -> Any:
        """The value the write gives `:name`."""
        return self.values[f":{name}"]

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
            request["ExpressionAttributeValues"] = serialize(values)
        return request
