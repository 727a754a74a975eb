"""shared.models: the constraints that live in the types (docs/api.md and docs/record.md)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError
from tests.support.contract import RECORD_FIELDS

from shared.models import (
    ISOLATION_ID_PATTERN,
    Accepted,
    IsolationRecord,
    IsolationRequest,
    Source,
    Status,
    Target,
    WebhookMessage,
    iso8601,
    new_isolation_id,
    trigger_isolation_id,
)

pytestmark = pytest.mark.disable_socket

VALID: dict[str, Any] = {
    "instance_id": "i-0123456789abcdef0",
    "account_id": "111122223333",
    "region": "eu-west-1",
}


def error_fields(exc: ValidationError) -> set[str]:
    return {str(error["loc"][0]) for error in exc.errors() if error["loc"]}


def refused(field: str, **changes: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        IsolationRequest.model_validate({**VALID, **changes})
    assert field in error_fields(caught.value), caught.value


# --- IsolationRequest: patterns ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "instance_id", ["i-01234567", "i-abcdef01", "i-0123456789abcdef0", "i-ffffffffffffffff0", "i-00000000"]
)
def test_instance_ids_of_8_or_17_hex_digits_are_valid(instance_id: str) -> None:
    # Given an instance id of either length AWS uses
    # When a request is built with it
    # Then it is valid and kept as given
    assert IsolationRequest.model_validate({**VALID, "instance_id": instance_id}).instance_id == instance_id


@pytest.mark.parametrize(
    "instance_id",
    [
        *(f"i-{'0' * n}" for n in (7, 9, 10, 12, 16, 18)),  # any other length
        "i-0123456789ABCDEF0",  # uppercase hex
        "i-0123456g",  # not hex
        "I-01234567",
        "0123456789abcdef0",
        "ami-01234567",  # anchored at the start
        "x i-01234567",
        "i-01234567 ",  # anchored at the end
        "i-01234567\n",  # `$` in Python's re would accept this
        "i-01234567\r\n",
        "\ni-01234567",
        "i-0123456٧",  # Arabic-Indic digit seven
        "i-0123456７",  # fullwidth digit seven
        "i-0123456७",  # Devanagari digit seven
        "i–01234567",  # en dash
        "",
    ],
)
def test_other_instance_ids_are_refused(instance_id: str) -> None:
    refused("instance_id", instance_id=instance_id)


@pytest.mark.parametrize("account_id", ["000000000000", "123456789012", "999999999999"])
def test_twelve_ascii_digits_are_an_account(account_id: str) -> None:
    assert IsolationRequest.model_validate({**VALID, "account_id": account_id}).account_id == account_id


@pytest.mark.parametrize(
    "account_id",
    [
        "11112222333",  # 11
        "1111222233334",  # 13
        "١١١١٢٢٢٢٣٣٣٣",  # Arabic-Indic
        "１１１１２２２２３３３３",  # fullwidth
        "11112222333३",  # one Devanagari digit
        "111122223333\n",
        " 111122223333",
        "1111-2222-3333",
        "11112222333a",
        "",
    ],
)
def test_other_accounts_are_refused(account_id: str) -> None:
    refused("account_id", account_id=account_id)


@pytest.mark.parametrize(
    "region", ["eu-west-1", "us-east-1", "ap-southeast-2", "us-gov-west-1", "cn-north-1", "il-central-1"]
)
def test_aws_region_names_are_valid(region: str) -> None:
    assert IsolationRequest.model_validate({**VALID, "region": region}).region == region


@pytest.mark.parametrize(
    "region",
    [
        "EU-west-1",
        "eu-West-1",
        "eu-west",
        "euwest-1",
        "e-west-1",
        "eur-west-1",
        "eu-west-10",
        "eu--1",
        "eu-west-1a",  # an availability zone
        "eu-west-١",  # Arabic-Indic one
        "eu-west-1\n",
        " eu-west-1",
        "eu_west_1",
        "",
    ],
)
def test_other_regions_are_refused(region: str) -> None:
    refused("region", region=region)


# --- IsolationRequest: strict, closed, frozen ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("account_id", 111122223333),
        ("account_id", 111122223333.0),
        ("account_id", b"111122223333"),
        ("instance_id", ["i-0123456789abcdef0"]),
        ("region", True),
        ("region", None),
        ("reason", 42),
        ("reason", ["x"]),
        ("requested_by", {"name": "x"}),
        ("requested_by", False),
    ],
)
def test_types_are_strict(field: str, value: Any) -> None:
    # Given a value of the wrong type that lax validation might coerce
    # When a request is built with it
    # Then it is refused, naming the field
    refused(field, **{field: value})


def test_json_input_is_strict_too() -> None:
    # Given the account as a JSON number
    # When a request is parsed from JSON
    # Then it is refused
    with pytest.raises(ValidationError) as caught:
        IsolationRequest.model_validate_json(
            '{"instance_id": "i-0123456789abcdef0", "account_id": 111122223333, "region": "eu-west-1"}'
        )
    assert error_fields(caught.value) == {"account_id"}


@pytest.mark.parametrize("extra", ["steps", "reasons", "Instance_id", "instanceId", ""])
def test_unknown_fields_are_refused(extra: str) -> None:
    refused(extra, **{extra: "x"})


@pytest.mark.parametrize("missing", ["instance_id", "account_id", "region"])
def test_each_required_field_is_required(missing: str) -> None:
    with pytest.raises(ValidationError) as caught:
        IsolationRequest.model_validate({k: v for k, v in VALID.items() if k != missing})
    assert error_fields(caught.value) == {missing}


@pytest.mark.parametrize(("field", "limit"), [("reason", 1024), ("requested_by", 256)])
@pytest.mark.parametrize("char", ["x", "é", "☕", "😀"])
def test_free_text_limits_are_inclusive_and_count_characters(field: str, limit: int, char: str) -> None:
    # Given free text at its limit, in characters of 1 to 4 UTF-8 bytes
    # When a request is built with it, and with one character more
    # Then the limit is accepted and one more refused
    assert getattr(IsolationRequest.model_validate({**VALID, field: char * limit}), field) == char * limit
    refused(field, **{field: char * (limit + 1)})


def test_optional_fields_default_to_none_and_accept_none() -> None:
    request = IsolationRequest.model_validate({**VALID, "reason": None})
    assert request.reason is None and request.requested_by is None


def test_free_text_may_hold_anything_printable_or_not() -> None:
    # Given free text with newlines, control characters, emoji
    reason = "line 1\nline 2\t\x00 😀 \uffff"

    # When a request is built
    # Then it is kept as given (only the identifiers have patterns)
    assert IsolationRequest.model_validate({**VALID, "reason": reason}).reason == reason


def test_a_request_is_frozen() -> None:
    request = IsolationRequest.model_validate(VALID)
    with pytest.raises(ValidationError):
        request.account_id = "444455556666"  # type: ignore[misc]
    assert request.account_id == VALID["account_id"]


def test_a_request_is_hashable_and_compares_by_value() -> None:
    assert IsolationRequest.model_validate(VALID) == IsolationRequest.model_validate(dict(VALID))
    assert len({IsolationRequest.model_validate(VALID), IsolationRequest.model_validate(VALID)}) == 1


# --- Target ----------------------------------------------------------------------------------------


def test_target_key_and_arn() -> None:
    target = Target(**VALID)
    assert target.key == "111122223333#eu-west-1#i-0123456789abcdef0"
    assert target.arn == "arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("instance_id", "i-0123456789abcdef0\n"),
        ("instance_id", "i-0123456789abcdef0#x"),
        ("account_id", "١١١١٢٢٢٢٣٣٣٣"),
        ("account_id", "111122223333#eu-west-1"),
        ("region", "eu-west-1#i-0"),
    ],
)
def test_target_enforces_the_same_patterns(field: str, value: str) -> None:
    # Given a target whose parts could forge another instance's slot key
    # When it is built
    # Then it is refused
    with pytest.raises(ValidationError):
        Target(**{**VALID, field: value})


def test_target_is_frozen() -> None:
    target = Target(**VALID)
    with pytest.raises(ValidationError):
        target.region = "us-east-1"  # type: ignore[misc]


# --- ids -------------------------------------------------------------------------------------------


def test_new_isolation_ids_follow_the_pattern_and_do_not_repeat() -> None:
    ids = [new_isolation_id() for _ in range(1_000)]
    assert all(re.fullmatch(ISOLATION_ID_PATTERN, i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_trigger_isolation_id_is_deterministic_per_source_and_event() -> None:
    # Given the same trigger event seen twice, and other events and sources
    first = trigger_isolation_id("guardduty", "finding-1")

    # Then a redelivery maps to the same id, and anything else to another one
    assert trigger_isolation_id("guardduty", "finding-1") == first
    assert trigger_isolation_id("guardduty", "finding-2") != first
    assert trigger_isolation_id("tag", "finding-1") != first
    assert re.fullmatch(ISOLATION_ID_PATTERN, first)
    assert first != new_isolation_id()


def test_isolation_id_pattern_is_anchored() -> None:
    # Given ids with a valid prefix and something after it
    valid = new_isolation_id()

    # Then only the exact form matches (with fullmatch semantics, as pydantic applies it)
    assert re.fullmatch(ISOLATION_ID_PATTERN, valid)
    for bad in (valid + "0", valid.upper(), "x" + valid, valid[:-1]):
        assert not re.fullmatch(ISOLATION_ID_PATTERN, bad)
        with pytest.raises(ValidationError):
            WebhookMessage(isolation_id=bad, request=IsolationRequest.model_validate(VALID))


# --- iso8601 ---------------------------------------------------------------------------------------


def test_iso8601_is_utc_with_z_and_milliseconds() -> None:
    moment = datetime(2026, 11, 26, 12, 34, 56, 789_123, tzinfo=UTC)
    assert iso8601(moment) == "2026-11-26T12:34:56.789Z"


def test_iso8601_truncates_not_rounds() -> None:
    # A stamp never claims a later time than the moment (and never rolls over to the next second)
    assert iso8601(datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == "2026-12-31T23:59:59.999Z"
    assert iso8601(datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


def test_iso8601_converts_other_offsets_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    moment = datetime(2026, 1, 1, 0, 30, 0, 5_000, tzinfo=paris)
    assert iso8601(moment) == "2025-12-31T23:30:00.005Z"


def test_iso8601_sorts_as_text_in_time_order() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    moments = [start + timedelta(milliseconds=n * 7919) for n in range(500)]
    stamps = [iso8601(m) for m in moments]
    assert stamps == sorted(stamps)
    assert all(
        datetime.fromisoformat(s.replace("Z", "+00:00")) <= m for s, m in zip(stamps, moments, strict=True)
    )


# --- records and answers ---------------------------------------------------------------------------


def test_a_queued_record_has_the_contract_fields() -> None:
    # Given a new webhook record
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    record = IsolationRecord.queued(
        isolation_id=new_isolation_id(),
        source=Source.WEBHOOK,
        target=Target(**VALID),
        reason="r",
        requested_by="p",
        now=now,
    )

    # When it is served
    served = record.model_dump(mode="json")

    # Then it has exactly the record's fields (docs/record.md), QUEUED, created and updated at the same instant
    assert set(served) == RECORD_FIELDS
    assert served["status"] == "QUEUED" and served["source"] == "webhook"
    assert served["created_at"] == served["updated_at"] == "2026-11-26T12:00:00.000Z"
    assert served["attempts"] == 0 and served["steps"] == [] and served["trigger"] == {}
    assert served["contained_at"] is None and served["prior_state"] is None and served["error"] is None
    assert record.target == Target(**VALID)


def test_accepted_leaves_out_deduplicated_unless_set() -> None:
    accepted = Accepted(isolation_id="iso-1", status=Status.QUEUED, status_url="/isolations/iso-1")
    assert accepted.body() == {"isolation_id": "iso-1", "status": "QUEUED", "status_url": "/isolations/iso-1"}
    joined = Accepted(
        isolation_id="iso-1", status=Status.IN_PROGRESS, status_url="/isolations/iso-1", deduplicated=True
    )
    assert joined.body()["deduplicated"] is True and joined.body()["status"] == "IN_PROGRESS"


def test_webhook_message_round_trips_and_is_closed() -> None:
    # Given the message ingest puts on the queue
    message = WebhookMessage(isolation_id=new_isolation_id(), request=IsolationRequest.model_validate(VALID))

    # Then it reads back as itself, says what kind it is, and refuses unknown fields
    assert WebhookMessage.model_validate_json(message.model_dump_json()) == message
    assert message.model_dump()["kind"] == "webhook"
    with pytest.raises(ValidationError):
        WebhookMessage.model_validate({**message.model_dump(), "extra": 1})
    with pytest.raises(ValidationError):
        WebhookMessage.model_validate({**message.model_dump(), "kind": "guardduty"})
