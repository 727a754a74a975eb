"""The service's one DynamoDB table: isolation records (`records`), instance slots (`slots`),
idempotency keys (`idempotency`), and the serialization they share (`dynamo`)."""

from shared.store.idempotency import IdempotencyClaim, Replayed, idempotency_key
from shared.store.records import (
    DEAD_LETTERED,
    INSTANCE_INDEX,
    RECENT_INDEX,
    WORKER_LOST,
    Coalesced,
    Created,
    Exists,
    IsolationStore,
    Joined,
    LeaseHeld,
    RateLimited,
    RecordEnded,
    RecordMissing,
)
from shared.store.slots import slot_key

__all__ = [
    "DEAD_LETTERED",
    "INSTANCE_INDEX",
    "RECENT_INDEX",
    "WORKER_LOST",
    "Coalesced",
    "Created",
    "Exists",
    "IdempotencyClaim",
    "IsolationStore",
    "Joined",
    "LeaseHeld",
    "RateLimited",
    "RecordEnded",
    "RecordMissing",
    "Replayed",
    "idempotency_key",
    "slot_key",
]
