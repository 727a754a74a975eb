"""Idempotency keys of `POST /isolate`: one item per key (`idempotency#<sha256 of the key>`) holding the
hash of the first request's body and its answer, expiring with the table's TTL (`expires_at`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.lifecycle import Before, Missing
from shared.store.dynamo import Write, serialize

#: The key is free: never used, or expired (TTL deletes expired items days late).
FREE = Missing("pk") | Before("expires_at", "now")


@dataclass(frozen=True)
class IdempotencyClaim:
    key_hash: str
    body_hash: str
    status_code: int
    answer: dict[str, Any]
    ttl_seconds: int


@dataclass(frozen=True)
class Replayed:
    """The Idempotency-Key was seen before: the stored first answer."""

    body_hash: str
    status_code: int
    answer: dict[str, Any]


def idempotency_key(key_hash: str) -> str:
    return f"idempotency#{key_hash}"


def put(table: str, claim: IdempotencyClaim, *, now: float) -> dict[str, Any]:
    """The put that claims the key (a transaction item's body, or a PutItem's parameters)."""
    item = {
        "pk": idempotency_key(claim.key_hash),
        "body_hash": claim.body_hash,
        "status_code": claim.status_code,
        "answer": json.dumps(claim.answer, sort_keys=True),
        "expires_at": int(now) + claim.ttl_seconds,
    }
    return {
        "TableName": table,
        "Item": serialize(item),
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        **Write(condition=FREE, params={"now": int(now)}).request(),
    }


def replayed(item: dict[str, Any]) -> Replayed:
    return Replayed(str(item["body_hash"]), int(item["status_code"]), json.loads(item["answer"]))
