"""What each input must be, in words a person can act on, and validation errors told that way.

pydantic says "Input should be a valid string" for a numeric `account_id`; the caller needs to hear
that an account id is a string of 12 digits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ingest.answers import FieldError
from shared.exemptions import MAX_DAYS
from shared.lifecycle import Status

IDEMPOTENCY_KEY = "Idempotency-Key"

#: The expected form of every input that has one, by the name the caller uses.
EXPECTED = {
    "instance_id": 'a string "i-" followed by 8 or 17 lowercase hexadecimal digits, such as "i-0123456789abcdef0"',
    "account_id": 'a string of 12 digits, such as "111122223333"',
    "region": 'an AWS region name, such as "eu-west-1"',
    "reason": "a string of at most 1024 characters, or null",
    "requested_by": "a string of at most 256 characters, or null",
    IDEMPOTENCY_KEY: "a string of 1 to 128 characters",
    "dry_run": "a JSON boolean, true or false",
    "status": f"one of {', '.join(Status)}",
    "limit": "a whole number from 1 to 100",
    "next": "the cursor a previous page answered, passed back unchanged",
    "body": "a JSON object",
}

#: Where the exemption routes' inputs differ from `EXPECTED`.
EXEMPTION_EXPECTED = {
    "reason": "a string of 1 to 1024 characters (why triggers must leave the instance alone)",
    "expires_at": (
        f'an ISO-8601 UTC time such as "2026-01-31T18:00:00Z", in the future and at most {MAX_DAYS} days '
        "ahead"
    ),
    "exemption_id": 'the id POST /exemptions answered, "exm-" and 32 hexadecimal digits',
}

#: A request that follows every rule (the OpenAPI document shows it).
EXAMPLE_REQUEST = {
    "instance_id": "i-0123456789abcdef0",
    "account_id": "111122223333",
    "region": "eu-west-1",
    "reason": "C2 beaconing reported by the EDR",
    "requested_by": "soc-oncall@example.com",
}

_WHERE = ("body", "query", "path", "header")

#: Error types whose message the router or a route's rules already wrote for a person (they know the
#: route's parameters).
TOLD = frozenset({"unknown_parameter", "repeated_parameter", "misplaced", "invalid_cursor"})

#: Error types that alone make a request a 400 rather than a 422: a cursor the API never answered.
BAD_REQUEST = frozenset({"invalid_cursor"})


def field_name(loc: Sequence[Any]) -> str:
    """The name the caller uses for the input at `loc` (pydantic's location of the error)."""
    where = loc[0] if loc and loc[0] in _WHERE else "body"
    # Only the first part says where: a body field or query parameter may be named `query` or `body`.
    names = [part for part in loc[1 if loc and loc[0] in _WHERE else 0 :] if isinstance(part, str)]
    if names and where == "header" and names[0].lower() == IDEMPOTENCY_KEY.lower():
        return IDEMPOTENCY_KEY  # header names are case-insensitive; tell it as it is documented
    # A name "" is a fault of the body (or of the query string) as a whole: no input has that name.
    return ".".join(names) or ("query" if where == "query" else "body")


def field_error(error: dict[str, Any], expected: Mapping[str, str] | None = None) -> FieldError:
    """One pydantic validation error as the API reports it (`expected`: the route's own rules, where they
    differ from `EXPECTED`)."""
    loc = error.get("loc") or ("body",)
    field = field_name(loc)
    kind = str(error.get("type", ""))
    rules = {**EXPECTED, **(expected or {})}
    if kind in TOLD:
        message = str(error["msg"])
    elif kind == "unknown_region":
        return unknown_region(str(error.get("input")))
    elif kind == "missing":
        message = f"{field} is required: {rules[field]}" if field in rules else f"{field} is required"
    elif kind == "extra_forbidden":
        message = f"{json.dumps(loc[-1])} is not a field of this request"
    elif field in rules:
        message = f"{field} must be {rules[field]}"
    else:
        message = str(error.get("msg", ""))
    return FieldError(field=field, type=kind, message=message)


def unknown_region(region: str) -> FieldError:
    return FieldError(
        field="region",
        type="unknown_region",
        message=f"{region!r} is not an AWS region this service knows; region must be {EXPECTED['region']}",
    )


def summary(errors: Iterable[FieldError]) -> str:
    return "invalid request: " + ", ".join(sorted({error.field for error in errors}))


#: An exemption that follows every rule (the OpenAPI document shows it).
EXAMPLE_EXEMPTION = {
    "account_id": "111122223333",
    "instance_id": "i-0123456789abcdef0",
    "reason": "Red-team exercise on the payments canary, change CHG-1234",
    "expires_at": "2026-01-31T18:00:00Z",
    "requested_by": "soc-oncall@example.com",
}
