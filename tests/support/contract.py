"""What CONTRACT.md fixes, written once for the tests that check the code against it."""

from __future__ import annotations

#: The fields of an isolation record as served (CONTRACT §4), no more, no fewer.
RECORD_FIELDS = frozenset(
    {
        "isolation_id",
        "status",
        "source",
        "instance_id",
        "account_id",
        "region",
        "reason",
        "requested_by",
        "trigger",
        "created_at",
        "updated_at",
        "contained_at",
        "attempts",
        "steps",
        "prior_state",
        "error",
    }
)
