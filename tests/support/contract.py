"""What the API and the record promise (docs/api.md, docs/record.md), written once for the tests."""

from __future__ import annotations

#: The fields of an isolation record as served (docs/record.md), no more, no fewer.
RECORD_FIELDS = frozenset(
    {
        "isolation_id",
        "status",
        "source",
        "dry_run",
        "inherits_from",
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
        "evidence",
        "error",
        "isolation_groups",
        "released_at",
        "released_by",
        "release",
    }
)
