"""The service's DynamoDB tables. The isolation table: isolation records (`records`), instance slots
(`slots`), idempotency keys (`idempotency`), blast-radius budgets (`rate_limits`), tamper-repair budgets
(`tamper_repairs`), and the serialization they share (`dynamo`). The exemption table: exemptions
(`exemptions`), kept apart from every isolation-record index."""

from shared.store.idempotency import IdempotencyClaim, Replayed, idempotency_key
from shared.store.record_leases import LeaseHeld
from shared.store.records import (
    Coalesced,
    Created,
    Exempted,
    Exists,
    IsolationStore,
    Joined,
    RateLimited,
    RecordEnded,
    RecordMissing,
    RepairsSpent,
)
from shared.store.releases import InstanceBusy, NotReleasable, ReleaseEnd, ReleaseRequested
from shared.store.slots import slot_key

__all__ = [
    "Coalesced",
    "Created",
    "Exempted",
    "Exists",
    "IdempotencyClaim",
    "InstanceBusy",
    "IsolationStore",
    "Joined",
    "LeaseHeld",
    "NotReleasable",
    "RateLimited",
    "RecordEnded",
    "RecordMissing",
    "RepairsSpent",
    "ReleaseEnd",
    "ReleaseRequested",
    "Replayed",
    "idempotency_key",
    "slot_key",
]
