"""ingest.rules: validation errors told as the API's callers need them."""

from __future__ import annotations

from typing import Any

import pytest

from ingest.rules import EXPECTED, field_error, field_name, summary

pytestmark = pytest.mark.disable_socket


@pytest.mark.parametrize(
    ("loc", "name"),
    [
        (("body", "account_id"), "account_id"),
        (("query", "instance_id"), "instance_id"),
        (("header", "idempotency-key"), "Idempotency-Key"),
        (("header", "IDEMPOTENCY-KEY"), "Idempotency-Key"),
        (("body",), "body"),
        (("body", ""), "body"),  # a key "" in the body
        (("body", 0), "body"),
        ((), "body"),
    ],
)
def test_the_field_is_named_as_the_caller_writes_it(loc: tuple[Any, ...], name: str) -> None:
    assert field_name(loc) == name


@pytest.mark.parametrize("field", ["instance_id", "account_id", "region", "reason", "requested_by"])
def test_a_broken_field_says_its_expected_form(field: str) -> None:
    # Given pydantic's error for a value of the wrong type
    error = {"loc": ("body", field), "type": "string_type", "msg": "Input should be a valid string"}

    # When it is told
    told = field_error(error)

    # Then it names the field and its form, in the API's words
    assert (told.field, told.type) == (field, "string_type")
    assert told.message == f"{field} must be {EXPECTED[field]}"


def test_missing_and_unknown_fields_say_so() -> None:
    missing = field_error({"loc": ("body", "region"), "type": "missing", "msg": "Field required"})
    unknown = field_error({"loc": ("body", ""), "type": "extra_forbidden", "msg": "Extra inputs"})
    assert missing.message == f"region is required: {EXPECTED['region']}"
    assert (unknown.field, unknown.message) == ("body", '"" is not a field of this request')


def test_the_summary_names_each_field_once() -> None:
    errors = [
        field_error({"loc": ("body", name), "type": "missing"}) for name in ("region", "account_id", "region")
    ]
    assert summary(errors) == "invalid request: account_id, region"
