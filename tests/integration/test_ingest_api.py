"""The ingest API as a user sees it (docs/api.md, docs/record.md): API Gateway REST proxy events into the real
`ingest.app.lambda_handler`, moto in-process behind it, answers and side effects asserted."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.conftest import MEMBER_ACCOUNT, MEMBER_REGION, OTHER_ACCOUNT, Stack
from tests.support.aws import Faults
from tests.support.contract import RECORD_FIELDS
from tests.support.events import api_event, lambda_context

from shared.config import ingest_settings
from shared.models import IsolationRecord, Source, Status, Target, new_isolation_id
from shared.store import idempotency_key, slot_key

pytestmark = pytest.mark.disable_socket

INSTANCE = "i-0123456789abcdef0"
VALID: dict[str, Any] = {"instance_id": INSTANCE, "account_id": MEMBER_ACCOUNT, "region": MEMBER_REGION}
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


# --- helpers -----------------------------------------------------------------------------------------


def post(
    stack: Stack, body: Any = None, headers: dict[str, str] | None = None, **fields: Any
) -> tuple[int, dict[str, Any]]:
    """POST /isolate with `body` as given, or VALID with `fields` replaced."""
    return stack.api("POST", "/isolate", body={**VALID, **fields} if body is None else body, headers=headers)


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    """The handler with a hand-made event (imported late: the stack fixture sets the environment)."""
    from ingest.app import lambda_handler

    return lambda_handler(event, lambda_context())


def items(stack: Stack) -> list[dict[str, Any]]:
    """Every item of the table (records, instance slots, idempotency keys)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"TableName": stack.table_name, "ConsistentRead": True}
    while True:
        page = stack.store.client.scan(**params)
        found.extend(page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return found
        params["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def record_items(stack: Stack) -> list[dict[str, Any]]:
    return [item for item in items(stack) if item["pk"]["S"].startswith("iso-")]


def history(stack: Stack, instance_id: str = INSTANCE, **query: str) -> list[dict[str, Any]]:
    status, body = stack.api("GET", "/isolations", query={"instance_id": instance_id, **query})
    assert status == 200, body
    return body["items"]


def message_bodies(stack: Stack) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while batch := stack.receive():
        messages.extend(batch)
    return [json.loads(m["Body"]) for m in messages]


def fields_named(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body["errors"]}


def assert_client_error(status: int, body: dict[str, Any], expected_status: int, field: str) -> None:
    """A 4xx JSON `{"message": ..., "errors": [...]}` naming `field`."""
    assert status == expected_status, body
    assert isinstance(body.get("message"), str) and body["message"], body
    assert isinstance(body.get("errors"), list) and body["errors"], body
    assert all(isinstance(error.get("field"), str) for error in body["errors"]), body
    assert field.lower() in {name.lower() for name in fields_named(body)}, body


def assert_nothing_happened(stack: Stack) -> None:
    """Nothing enqueued, nothing recorded: no record, no slot, no idempotency key."""
    assert stack.queued() == 0
    assert items(stack) == []


def some_record(stack: Stack, instance_id: str, account_id: str, created: datetime) -> IsolationRecord:
    record = IsolationRecord.queued(
        isolation_id=new_isolation_id(),
        source=Source.WEBHOOK,
        target=Target(account_id=account_id, region=MEMBER_REGION, instance_id=instance_id),
        now=created,
    )
    assert stack.store.put_record(record)
    return record


# --- POST /isolate: accepted --------------------------------------------------------------------------


def test_valid_request_is_accepted_recorded_and_enqueued(stack: Stack) -> None:
    # Given an empty stack
    before = datetime.now(UTC) - timedelta(seconds=1)

    # When a valid isolation is requested
    status, body = post(stack, reason="C2 beaconing", requested_by="soc@example.com")

    # Then it is accepted with the contract's answer
    assert status == 202, body
    isolation_id = body["isolation_id"]
    assert re.fullmatch(r"iso-[0-9a-f]{32}", isolation_id)
    assert body == {
        "isolation_id": isolation_id,
        "status": "QUEUED",
        "status_url": f"/isolations/{isolation_id}",
    }

    # And the record is readable at once through the status URL
    status, record = stack.api("GET", body["status_url"])
    assert status == 200, record
    assert set(record) == RECORD_FIELDS
    assert record["isolation_id"] == isolation_id
    assert record["status"] == "QUEUED" and record["source"] == "webhook"
    assert (record["instance_id"], record["account_id"], record["region"]) == (
        INSTANCE,
        MEMBER_ACCOUNT,
        MEMBER_REGION,
    )
    assert record["reason"] == "C2 beaconing" and record["requested_by"] == "soc@example.com"
    assert record["steps"] == [] and record["error"] is None and record["contained_at"] is None
    assert record["attempts"] == 0 and record["prior_state"] is None
    for stamp in ("created_at", "updated_at"):
        assert ISO_UTC.match(record[stamp]), record[stamp]
        moment = datetime.fromisoformat(record[stamp].replace("Z", "+00:00"))
        assert before <= moment <= datetime.now(UTC) + timedelta(seconds=1)

    # And exactly one message is on the queue: the webhook message for that record
    assert stack.queued() == 1
    assert message_bodies(stack) == [
        {
            "kind": "webhook",
            "isolation_id": isolation_id,
            "request": {**VALID, "reason": "C2 beaconing", "requested_by": "soc@example.com"},
        }
    ]


def test_a_new_request_makes_exactly_two_aws_calls(stack: Stack, faults: Faults) -> None:
    # Given every AWS call of the project counted
    faults.count()

    # When a new isolation is requested
    status, body = post(stack)

    # Then the request path made one DynamoDB transaction and one SQS send, nothing else
    assert status == 202, body
    assert dict(faults.calls) == {"dynamodb.TransactWriteItems": 1, "sqs.SendMessage": 1}


def test_the_optional_fields_may_be_null_or_absent(stack: Stack) -> None:
    # Given a request with reason and requested_by explicitly null
    # When it is posted
    status, body = post(stack, reason=None, requested_by=None)

    # Then it is accepted and the record has them null
    assert status == 202, body
    record = stack.api("GET", body["status_url"])[1]
    assert record["reason"] is None and record["requested_by"] is None


@pytest.mark.parametrize(
    "instance_id", ["i-0123abcd", "i-0123456789abcdef0", "i-ffffffff", "i-00000000000000000"]
)
def test_eight_and_seventeen_hex_digit_instance_ids_are_accepted(stack: Stack, instance_id: str) -> None:
    # Given an instance id of either length AWS uses
    # When its isolation is requested
    status, body = post(stack, instance_id=instance_id)

    # Then it is accepted and enqueued
    assert status == 202, body
    assert stack.queued() == 1


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("reason", "r" * 1024, True),
        ("reason", "é" * 1024, True),  # characters, not bytes
        ("reason", "r" * 1025, False),
        ("requested_by", "p" * 256, True),
        ("requested_by", "ü" * 256, True),
        ("requested_by", "p" * 257, False),
    ],
)
def test_free_text_length_limits(stack: Stack, field: str, value: str, accepted: bool) -> None:
    # Given a free-text field at or just over its limit (sent as raw UTF-8, as a client would)
    raw = json.dumps({**VALID, field: value}, ensure_ascii=False)

    # When it is posted
    status, body = post(stack, raw)

    # Then the limit is inclusive, counted in characters, and one more is a 422 naming the field
    if accepted:
        assert status == 202, body
        assert stack.api("GET", body["status_url"])[1][field] == value
        assert stack.queued() == 1
    else:
        assert_client_error(status, body, 422, field)
        assert_nothing_happened(stack)


def test_text_sqs_refuses_raw_is_still_accepted_and_enqueued(stack: Stack, faults: Faults) -> None:
    # Given AWS's rule for SQS message bodies (moto does not enforce it): only #x9 | #xA | #xD |
    # #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF, anything else is InvalidMessageContents
    def sqs_refuses(params: dict[str, Any]) -> bool:
        # (API parameters before the request is built, or the JSON request body after)
        text = params["MessageBody"] if "MessageBody" in params else json.loads(params["body"])["MessageBody"]
        return any(
            not (
                ch in "\t\n\r"
                or "\x20" <= ch <= "\ud7ff"
                or "\ue000" <= ch <= "\ufffd"
                or "\U00010000" <= ch <= "\U0010ffff"
            )
            for ch in text
        )

    faults.inject("sqs", "SendMessage", "InvalidMessageContents", times=None, when=sqs_refuses)

    # When a person's reason contains characters that are valid JSON and valid Unicode but not valid
    # in a raw SQS body (a noncharacter, control characters)
    reason = "pasted from a log: \uffff\ufffe \x00\x07 done"
    status, body = post(stack, reason=reason)

    # Then it is accepted (never a 5xx for client input) and the reason reaches the queue intact
    assert status == 202, body
    assert [m["request"]["reason"] for m in message_bodies(stack)] == [reason]


# --- dedup ------------------------------------------------------------------------------------------


def test_second_request_for_a_queued_instance_joins_it(stack: Stack, faults: Faults) -> None:
    # Given an isolation of the instance already QUEUED
    first = post(stack)[1]
    faults.count()

    # When the same (account, region, instance) is requested again
    status, body = post(stack, reason="again")

    # Then it joins the first: 200, same id, deduplicated, nothing new enqueued or recorded
    assert status == 200, body
    assert body == {**first, "deduplicated": True}
    assert stack.queued() == 1
    assert len(record_items(stack)) == 1
    assert faults.calls["sqs.SendMessage"] == 0


def test_request_for_an_instance_in_progress_joins_it_with_its_status(stack: Stack) -> None:
    # Given an isolation the worker has started
    first = post(stack)[1]
    stack.store.begin_attempt(first["isolation_id"], owner="worker-1", lease_seconds=300, prior_state=None)

    # When the same instance is requested again
    status, body = post(stack)

    # Then it joins the running isolation and says it is IN_PROGRESS
    assert status == 200, body
    assert body["isolation_id"] == first["isolation_id"] and body["deduplicated"] is True
    assert body["status"] == "IN_PROGRESS"
    assert stack.queued() == 1


@pytest.mark.parametrize(
    "other", [{"account_id": OTHER_ACCOUNT}, {"region": "us-west-2"}, {"instance_id": "i-0123456789abcdef1"}]
)
def test_same_instance_id_elsewhere_is_a_new_isolation(stack: Stack, other: dict[str, str]) -> None:
    # Given an isolation QUEUED for the instance in one account and region
    first = post(stack)[1]

    # When the same instance id is requested in another account or region (or another instance)
    status, body = post(stack, **other)

    # Then it is a separate isolation, with its own message
    assert status == 202, body
    assert body["isolation_id"] != first["isolation_id"]
    assert "deduplicated" not in body
    assert stack.queued() == 2


@pytest.mark.parametrize("outcome", [Status.ISOLATED, Status.FAILED])
def test_after_an_isolation_ends_a_new_request_starts_a_new_one(stack: Stack, outcome: Status) -> None:
    # Given an isolation of the instance that has ended
    first = post(stack)[1]
    record = stack.store.get(first["isolation_id"])
    assert record is not None
    stack.store.finish(record, outcome)

    # When the instance is requested again (a webhook request is never coalesced)
    status, body = post(stack)

    # Then a new isolation is created and enqueued
    assert status == 202, body
    assert body["isolation_id"] != first["isolation_id"]
    assert stack.queued() == 2
    assert [item["isolation_id"] for item in history(stack)] == [body["isolation_id"], first["isolation_id"]]


# --- Idempotency-Key ---------------------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer(stack: Stack, faults: Faults) -> None:
    # Given an accepted request sent with an Idempotency-Key
    key = {"Idempotency-Key": "ticket-4711"}
    first = post(stack, headers=key)
    assert first[0] == 202
    faults.count()

    # When the client retries it with the same key and body
    again = post(stack, headers=key)

    # Then it gets the first answer, status and body, and nothing new is enqueued or sent
    assert again == first
    assert stack.queued() == 1
    assert len(record_items(stack)) == 1
    assert faults.calls["sqs.SendMessage"] == 0
    assert sum(faults.calls.values()) <= 2


def test_replay_of_the_first_answer_outlives_the_isolation(stack: Stack) -> None:
    # Given a request with a key whose isolation has since ended
    key = {"Idempotency-Key": "ticket-4712"}
    first = post(stack, headers=key)
    record = stack.store.get(first[1]["isolation_id"])
    assert record is not None
    stack.store.finish(record, Status.ISOLATED)

    # When the client retries it with the same key
    again = post(stack, headers=key)

    # Then it still gets the first answer, not a second isolation
    assert again == first
    assert stack.queued() == 1


def test_same_key_with_a_different_body_is_a_conflict(stack: Stack) -> None:
    # Given a key already used for one request
    key = {"Idempotency-Key": "ticket-4713"}
    assert post(stack, headers=key)[0] == 202

    # When it is reused for a different request
    status, body = post(stack, headers=key, reason="something else")

    # Then a 409 JSON names the Idempotency-Key, and nothing new is enqueued or recorded
    assert status == 409, body
    assert isinstance(body["message"], str) and body["message"]
    assert "idempotency-key" in {name.lower() for name in fields_named(body)}
    assert stack.queued() == 1
    assert len(record_items(stack)) == 1


@pytest.mark.parametrize("key", ["k" * 129, ""])
def test_a_key_out_of_bounds_is_a_422_naming_the_header(stack: Stack, key: str) -> None:
    # Given a key longer than 128 characters, or empty
    # When a request is sent with it
    status, body = post(stack, headers={"Idempotency-Key": key})

    # Then it is rejected naming the header, and nothing happens
    assert_client_error(status, body, 422, "Idempotency-Key")
    assert_nothing_happened(stack)


def test_a_key_of_exactly_128_characters_is_accepted(stack: Stack) -> None:
    # Given a key at the limit
    key = {"Idempotency-Key": "k" * 128}

    # When a request is sent twice with it
    first = post(stack, headers=key)
    again = post(stack, headers=key)

    # Then it is accepted once and replayed once
    assert first[0] == 202 and again == first
    assert stack.queued() == 1


def test_a_key_sent_with_a_deduplicated_request_is_remembered(stack: Stack, faults: Faults) -> None:
    # Given an isolation of the instance QUEUED, and a second request with a key that joined it
    post(stack)
    key = {"Idempotency-Key": "ticket-4714"}
    joined = post(stack, headers=key)
    assert joined[0] == 200 and joined[1]["deduplicated"] is True
    # (and the first isolation has ended since)
    record = stack.store.get(joined[1]["isolation_id"])
    assert record is not None
    stack.store.finish(record, Status.ISOLATED)
    faults.count()

    # When the keyed request is retried, and the key is reused with another body
    again = post(stack, headers=key)
    conflict = post(stack, headers=key, reason="other")

    # Then the retry gets the remembered 200, not a new isolation; the other body a 409
    assert again == joined
    assert conflict[0] == 409
    assert faults.calls["sqs.SendMessage"] == 0
    assert stack.queued() == 1


def test_the_key_is_stored_hashed(stack: Stack) -> None:
    # Given a request with a key
    post(stack, headers={"Idempotency-Key": "secret-ish-key"})

    # Then the table holds its hash, never the key itself
    pks = {item["pk"]["S"] for item in items(stack)}
    assert idempotency_key(hashlib.sha256(b"secret-ish-key").hexdigest()) in pks
    assert not any("secret-ish-key" in json.dumps(item) for item in items(stack))


# --- allow-list --------------------------------------------------------------------------------------


def test_an_account_outside_the_allow_list_is_forbidden(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an allow-list of accounts
    monkeypatch.setenv("ALLOWED_ACCOUNT_IDS", f"{MEMBER_ACCOUNT}, 999988887777")
    ingest_settings.cache_clear()

    # When an account outside it is requested
    status, body = post(stack, account_id=OTHER_ACCOUNT)

    # Then 403 JSON naming account_id, nothing enqueued or recorded
    assert status == 403, body
    assert isinstance(body["message"], str) and OTHER_ACCOUNT in body["message"]
    assert "account_id" in fields_named(body)
    assert_nothing_happened(stack)

    # And an allowed account is accepted
    status, body = post(stack)
    assert status == 202, body


# --- enqueue failure --------------------------------------------------------------------------------


def test_enqueue_failure_is_a_503_that_leaves_a_failed_record_and_frees_the_slot(
    stack: Stack, faults: Faults
) -> None:
    # Given SQS failing every SendMessage (past botocore's own retries)
    faults.inject("sqs", "SendMessage", "ServiceUnavailable", status=503, times=None)

    # When an isolation is requested
    status, body = post(stack, headers={"Idempotency-Key": "ticket-4715"})

    # Then 503 JSON, nothing enqueued, and the attempt is on record as FAILED / EnqueueFailed
    assert status == 503, body
    assert isinstance(body["message"], str) and body["message"]
    assert stack.queued() == 0
    [record] = history(stack)
    assert record["status"] == "FAILED"
    assert record["error"]["code"] == "EnqueueFailed"
    status, read = stack.api("GET", f"/isolations/{record['isolation_id']}")
    assert status == 200 and read["status"] == "FAILED"
    # And the instance's in-flight slot is released
    slot = stack.store.client.get_item(
        TableName=stack.table_name,
        Key={"pk": {"S": slot_key(Target(**VALID))}},
        ConsistentRead=True,
    ).get("Item", {})
    assert "active_id" not in slot

    # When SQS recovers and the client retries, with the same key
    faults.clear()
    status, body = post(stack, headers={"Idempotency-Key": "ticket-4715"})

    # Then it is a new isolation, not deduplicated onto the failed one, and it is enqueued
    assert status == 202, body
    assert "deduplicated" not in body and body["isolation_id"] != record["isolation_id"]
    assert stack.queued() == 1


# --- bad input: 4xx JSON naming the field, nothing enqueued, nothing recorded -----------------------

DEEP = '{"reason": ' + "[" * 40 + "]" * 40 + "}"

BAD_INPUT: list[tuple[str, Any, dict[str, str] | None, int, str]] = [
    # (case, body, headers, status, field)
    ("malformed JSON", '{"instance_id": "i-0123456789abcdef0",', None, 400, "body"),
    ("empty body", "", None, 422, "body"),
    ("no body", None, None, 422, "body"),
    ("whitespace only", "  \n\t ", None, 400, "body"),
    ("top-level array", json.dumps([VALID]), None, 422, "body"),
    ("top-level string", '"i-0123456789abcdef0"', None, 422, "body"),
    ("top-level number", "42", None, 422, "body"),
    ("top-level null", "null", None, 422, "body"),
    ("account_id an integer", {**VALID, "account_id": 111122223333}, None, 422, "account_id"),
    ("account_id a float", {**VALID, "account_id": 111122223333.0}, None, 422, "account_id"),
    ("instance_id a list", {**VALID, "instance_id": [INSTANCE]}, None, 422, "instance_id"),
    ("region a bool", {**VALID, "region": True}, None, 422, "region"),
    ("reason an object", {**VALID, "reason": {"text": "x"}}, None, 422, "reason"),
    ("requested_by a number", {**VALID, "requested_by": 7}, None, 422, "requested_by"),
    ("unknown field", {**VALID, "steps": ["swap-security-groups"]}, None, 422, "steps"),
    ("misspelt field", {**VALID, "reasons": "x"}, None, 422, "reasons"),
    ("field with an empty name", {**VALID, "": "x"}, None, 422, "body"),
    ("missing instance_id", {k: v for k, v in VALID.items() if k != "instance_id"}, None, 422, "instance_id"),
    ("missing account_id", {k: v for k, v in VALID.items() if k != "account_id"}, None, 422, "account_id"),
    ("missing region", {k: v for k, v in VALID.items() if k != "region"}, None, 422, "region"),
    ("empty object", {}, None, 422, "instance_id"),
    ("uppercase hex", {**VALID, "instance_id": "i-0123456789ABCDEF0"}, None, 422, "instance_id"),
    ("i- and 10 digits", {**VALID, "instance_id": "i-0123456789"}, None, 422, "instance_id"),
    ("no i- prefix", {**VALID, "instance_id": "0123456789abcdef0"}, None, 422, "instance_id"),
    ("18 hex digits", {**VALID, "instance_id": "i-0123456789abcdef01"}, None, 422, "instance_id"),
    ("trailing newline", {**VALID, "instance_id": INSTANCE + "\n"}, None, 422, "instance_id"),
    ("leading space", {**VALID, "instance_id": " " + INSTANCE}, None, 422, "instance_id"),
    ("fullwidth hex", {**VALID, "instance_id": "i-０１２３４５６７"}, None, 422, "instance_id"),
    ("11-digit account", {**VALID, "account_id": "11112222333"}, None, 422, "account_id"),
    ("13-digit account", {**VALID, "account_id": "1111222233334"}, None, 422, "account_id"),
    ("Arabic-Indic account", {**VALID, "account_id": "١١١١٢٢٢٢٣٣٣٣"}, None, 422, "account_id"),
    ("account with newline", {**VALID, "account_id": MEMBER_ACCOUNT + "\n"}, None, 422, "account_id"),
    ("region uppercase", {**VALID, "region": "EU-west-1"}, None, 422, "region"),
    ("region without number", {**VALID, "region": "eu-west"}, None, 422, "region"),
    ("region Arabic-Indic digit", {**VALID, "region": "eu-west-١"}, None, 422, "region"),
    ("region Devanagari digit", {**VALID, "region": "eu-west-१"}, None, 422, "region"),
    ("region empty", {**VALID, "region": ""}, None, 422, "region"),
    ("body over 10 KiB", {**VALID, "reason": "x" * 10_300}, None, 413, "body"),
    ("non-UTF-8 bytes", b'{"instance_id": "i-\xff\xfe"}', None, 400, "body"),
    (
        "latin-1 bytes",
        json.dumps({**VALID, "reason": "café"}, ensure_ascii=False).encode("latin-1"),
        None,
        400,
        "body",
    ),
    ("text/plain", VALID, {"content-type": "text/plain"}, 415, "body"),
    ("form-urlencoded", VALID, {"content-type": "application/x-www-form-urlencoded"}, 415, "body"),
    ("text/plain, no body", None, {"content-type": "text/plain"}, 415, "body"),
    ("duplicate keys", json.dumps(VALID)[:-1] + ', "account_id": "444455556666"}', None, 400, "body"),
    ("duplicate keys nested", '{"reason": {"a": 1, "a": 2}}', None, 400, "body"),
    ("deeply nested", DEEP, None, 400, "body"),
    ("NaN", json.dumps(VALID)[:-1] + ', "reason": NaN}', None, 400, "body"),
    ("Infinity", json.dumps(VALID)[:-1] + ', "reason": Infinity}', None, 400, "body"),
    ("-Infinity", json.dumps(VALID)[:-1] + ', "reason": -Infinity}', None, 400, "body"),
    ("escaped lone surrogate", json.dumps(VALID)[:-1] + ', "reason": "\\ud800"}', None, 422, "reason"),
]


@pytest.mark.parametrize(
    ("body", "headers", "expected_status", "field"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(
    stack: Stack, body: Any, headers: dict[str, str] | None, expected_status: int, field: str
) -> None:
    # Given an empty stack
    # When a bad request is posted
    status, answer = stack.api("POST", "/isolate", body=body, headers=headers)

    # Then a 4xx JSON names the field at fault, and nothing is enqueued or recorded
    assert_client_error(status, answer, expected_status, field)
    assert_nothing_happened(stack)


@pytest.mark.parametrize("region", ["eu-wset-1", "xx-" + "a" * 145 + "-1", "us-gov-west-1"])
def test_a_region_outside_the_partition_is_a_422_naming_region(stack: Stack, region: str) -> None:
    # Given a region that has the form of one but is not a region of the partition
    # When an isolation there is requested
    status, body = post(stack, region=region)

    # Then 422 naming region, saying what is expected, and nothing enqueued or recorded
    assert_client_error(status, body, 422, "region")
    (error,) = body["errors"]
    assert error["type"] == "unknown_region" and "eu-west-1" in error["message"], error
    assert_nothing_happened(stack)


def test_extra_regions_admits_a_region_botocore_does_not_know(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a deployment that admits a region newer than its botocore
    monkeypatch.setenv("EXTRA_REGIONS", "eu-future-1, ap-future-2")
    ingest_settings.cache_clear()

    # When an isolation there is requested
    status, body = post(stack, region="ap-future-2")

    # Then it is accepted
    assert status == 202, body


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("account_id", 111122223333, "a string of 12 digits"),
        ("account_id", "1111", "a string of 12 digits"),
        ("instance_id", 7, '"i-" followed by 8 or 17 lowercase hexadecimal digits'),
        ("instance_id", "i-XYZ", '"i-" followed by 8 or 17 lowercase hexadecimal digits'),
        ("region", True, 'an AWS region name, such as "eu-west-1"'),
        ("region", "EU-west-1", 'an AWS region name, such as "eu-west-1"'),
        ("reason", "x" * 1025, "at most 1024 characters"),
        ("requested_by", 7, "at most 256 characters"),
    ],
)
def test_a_broken_field_is_told_in_words_a_person_can_act_on(
    stack: Stack, field: str, value: Any, says: str
) -> None:
    # When a field breaks its rule
    status, body = post(stack, **{field: value})

    # Then the message names the field and its expected form, not pydantic's generic words
    assert status == 422, body
    (error,) = body["errors"]
    assert error["field"] == field and error["message"].startswith(f"{field} must be "), error
    assert says in error["message"], error
    assert "Input should be" not in body["message"] + error["message"]


def test_missing_and_unknown_fields_are_told_as_such(stack: Stack) -> None:
    # When a required field is missing and an unknown one is sent
    status, body = post(stack, {"instance_id": INSTANCE, "region": MEMBER_REGION, "force": True})

    # Then each is named with what to do about it
    assert status == 422, body
    messages = {error["field"]: error["message"] for error in body["errors"]}
    assert messages["account_id"].startswith("account_id is required: a string of 12 digits"), messages
    assert messages["force"] == '"force" is not a field of this request', messages


def test_a_bad_idempotency_key_is_named_as_the_header(stack: Stack) -> None:
    # When the header breaks its rule
    # Then it is named as documented, whatever case the client wrote it in
    status, body = post(stack, headers={"Idempotency-Key": "k" * 129})
    assert status == 422, body
    assert body["errors"] == [
        {
            "field": "Idempotency-Key",
            "type": "string_too_long",
            "message": "Idempotency-Key must be a string of 1 to 128 characters",
        }
    ]


def test_every_missing_field_is_named_at_once(stack: Stack) -> None:
    # Given an object with none of the required fields
    # When it is posted
    status, body = post(stack, {"reason": "x"})

    # Then all three are named in one answer
    assert status == 422
    assert {"instance_id", "account_id", "region"} <= fields_named(body)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        "application/merge-patch+json",
        "application/vnd.api+json; charset=utf-8",
    ],
)
def test_json_content_types_are_accepted(stack: Stack, content_type: str) -> None:
    # Given a JSON media type (media types are case-insensitive; +json suffixes are JSON)
    # When a valid request is posted with it
    status, body = post(stack, headers={"content-type": content_type})

    # Then it is accepted like any JSON request
    assert status == 202, body
    assert stack.queued() == 1


def test_a_request_without_content_type_is_read_as_json(stack: Stack) -> None:
    # Given a client that sends no content type (API Gateway passes the body through)
    event = api_event("POST", "/isolate", body=VALID)
    event["headers"] = {"x-api-key": "test-key"}
    event["multiValueHeaders"] = {"x-api-key": ["test-key"]}

    # When it is handled
    response = invoke(event)

    # Then the request is accepted
    assert response["statusCode"] == 202, response


def test_base64_encoded_json_body_is_accepted(stack: Stack) -> None:
    # Given a JSON body that API Gateway passed base64-encoded (binary media type configured)
    event = api_event("POST", "/isolate", body=VALID)
    event["body"] = base64.b64encode(json.dumps(VALID).encode()).decode()
    event["isBase64Encoded"] = True

    # When it is handled
    response = invoke(event)

    # Then it is accepted as if it had come as text
    assert response["statusCode"] == 202, response
    assert stack.queued() == 1


# --- GET /isolations/{isolation_id} ------------------------------------------------------------------


def test_get_of_a_real_isolation_returns_its_record(stack: Stack) -> None:
    # Given an accepted isolation
    isolation_id = post(stack, reason="x")[1]["isolation_id"]

    # When its record is read
    status, record = stack.api("GET", f"/isolations/{isolation_id}")

    # Then it is the contract's record, without any internal attribute
    assert status == 200
    assert set(record) == RECORD_FIELDS
    assert record["isolation_id"] == isolation_id and record["reason"] == "x"


@pytest.mark.parametrize(
    "isolation_id",
    [
        "iso-00000000000000000000000000000000",
        "iso-0123456789abcdef0123456789abcdef",
        "x",
        "..",
        "iso-",
        "ISO-00000000000000000000000000000000",
        "iso-00000000000000000000000000000000%0A",
        "iso-000000000000000000000000000000000",
        "%2E%2E%2Fetc",
    ],
)
def test_get_of_an_unknown_or_malformed_id_is_a_404(stack: Stack, isolation_id: str) -> None:
    # Given a stack with one isolation
    post(stack)

    # When an id that is not a known record is read
    status, body = stack.api("GET", f"/isolations/{isolation_id}")

    # Then 404 in the API's one error shape, naming the id
    assert_client_error(status, body, 404, "isolation_id")
    assert body["errors"][0]["type"] == "not_found"


def test_path_traversal_is_a_404(stack: Stack) -> None:
    # Given a stack with one isolation
    post(stack)

    # When a path that climbs out of the collection is read
    status, body = stack.api("GET", "/isolations/../etc")

    # Then 404 JSON
    assert status == 404 and isinstance(body["message"], str)


def test_other_kinds_of_item_are_never_readable_as_records(stack: Stack) -> None:
    # Given an isolation with an Idempotency-Key: the table now holds a record, a slot and a key
    post(stack, headers={"Idempotency-Key": "ticket-4716"})
    pks = {item["pk"]["S"] for item in items(stack)}
    slot = slot_key(Target(**VALID))
    key = idempotency_key(hashlib.sha256(b"ticket-4716").hexdigest())
    assert {slot, key} <= pks

    # When their keys are asked for as isolation ids, as typed and as URL-encoded
    for pk in (slot, key, slot.replace("#", "%23"), key.replace("#", "%23"), "instance#", "idempotency#"):
        status, body = stack.api("GET", f"/isolations/{pk}")

        # Then each is a 404, never the item: the error names the id and nothing of the item
        assert status == 404, (pk, body)
        assert body == {
            "message": "isolation not found",
            "errors": [{"field": "isolation_id", "type": "not_found", "message": "no isolation has this id"}],
        }, (pk, body)


# --- GET /isolations?instance_id=... ---------------------------------------------------------------


def test_history_is_newest_first_and_capped_at_50(stack: Stack) -> None:
    # Given 55 isolations of one instance, one second apart
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = [some_record(stack, INSTANCE, MEMBER_ACCOUNT, start + timedelta(seconds=i)) for i in range(55)]

    # When its history is read
    listed = history(stack)

    # Then the 50 newest come back, newest first
    assert len(listed) == 50
    assert [item["isolation_id"] for item in listed] == [r.isolation_id for r in reversed(made)][:50]
    assert [item["created_at"] for item in listed] == sorted((i["created_at"] for i in listed), reverse=True)
    assert all(set(item) == RECORD_FIELDS for item in listed)


def test_history_filters_by_account(stack: Stack) -> None:
    # Given isolations of the same instance id in two accounts, and of another instance
    start = datetime(2026, 1, 1, tzinfo=UTC)
    mine = [some_record(stack, INSTANCE, MEMBER_ACCOUNT, start + timedelta(seconds=i)) for i in range(3)]
    theirs = [
        some_record(stack, INSTANCE, OTHER_ACCOUNT, start + timedelta(seconds=10 + i)) for i in range(2)
    ]
    some_record(stack, "i-0123456789abcdef1", MEMBER_ACCOUNT, start)

    # When the history is read with and without the account filter
    filtered = history(stack, account_id=MEMBER_ACCOUNT)
    unfiltered = history(stack)

    # Then the filter keeps only that account's, and without it both accounts' come back
    assert [item["isolation_id"] for item in filtered] == [r.isolation_id for r in reversed(mine)]
    assert {item["isolation_id"] for item in unfiltered} == {r.isolation_id for r in mine + theirs}


def test_history_of_an_instance_never_isolated_is_empty(stack: Stack) -> None:
    # Given a stack with an isolation of another instance
    post(stack)

    # When the history of an instance never isolated is read
    status, body = stack.api("GET", "/isolations", query={"instance_id": "i-0fedcba9876543210"})

    # Then an empty list
    assert (status, body) == (200, {"items": []})


def test_history_includes_a_webhook_isolation_just_accepted(stack: Stack) -> None:
    # Given an accepted isolation
    isolation_id = post(stack)[1]["isolation_id"]

    # When the instance's history is read
    listed = history(stack)

    # Then the isolation is there
    assert [item["isolation_id"] for item in listed] == [isolation_id]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        # (without instance_id the route lists every instance's isolations: account_id goes only with it)
        ({"account_id": MEMBER_ACCOUNT}, "account_id"),
        ({"instance_id": "i-01"}, "instance_id"),
        ({"instance_id": INSTANCE.upper()}, "instance_id"),
        ({"instance_id": ""}, "instance_id"),
        ({"instance_id": INSTANCE, "account_id": "1234"}, "account_id"),
        ({"instance_id": INSTANCE, "account_id": "١١١١٢٢٢٢٣٣٣٣"}, "account_id"),
        ({"instance_id": INSTANCE, "account_id": ""}, "account_id"),
    ],
)
def test_history_rejects_a_missing_or_malformed_filter(
    stack: Stack, query: dict[str, str], field: str
) -> None:
    # Given a stack with one isolation
    post(stack)

    # When the history is asked for without a valid instance_id or with a malformed account_id
    status, body = stack.api("GET", "/isolations", query=query or None)

    # Then a 4xx JSON names the query parameter
    assert status in (400, 422), body
    assert_client_error(status, body, status, field)


# --- routes and AWS failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/isolate"),
        ("DELETE", "/isolate"),
        ("PUT", "/isolations/iso-00000000000000000000000000000000"),
        ("POST", "/isolations"),
        ("GET", "/isolations/a/b"),
        ("GET", "/openapi"),
    ],
)
def test_unknown_route_is_a_404_json(stack: Stack, method: str, path: str) -> None:
    # Given the API
    # When a route it does not serve is called
    status, body = stack.api(method, path)

    # Then 404 in the API's one error shape, and nothing happened
    assert_client_error(status, body, 404, "path")
    assert_nothing_happened(stack)


def test_dynamodb_failure_on_get_is_a_503_json(stack: Stack, faults: Faults) -> None:
    # Given an isolation, and DynamoDB failing every GetItem
    isolation_id = post(stack)[1]["isolation_id"]
    faults.inject("dynamodb", "GetItem", "InternalServerError", status=500, times=None)

    # When its record is read
    status, body = stack.api("GET", f"/isolations/{isolation_id}")

    # Then 503 JSON asking to retry, not a bare 500
    assert status == 503, body
    assert isinstance(body["message"], str) and body["message"]


def test_dynamodb_failure_on_history_is_a_503_json(stack: Stack, faults: Faults) -> None:
    # Given DynamoDB throttling every Query
    faults.inject("dynamodb", "Query", "ProvisionedThroughputExceededException", status=400, times=None)

    # When a history is read
    status, body = stack.api("GET", "/isolations", query={"instance_id": INSTANCE})

    # Then 503 JSON
    assert status == 503, body
    assert isinstance(body["message"], str)


def test_dynamodb_failure_on_post_is_a_503_and_nothing_is_enqueued(stack: Stack, faults: Faults) -> None:
    # Given DynamoDB failing every transaction
    faults.inject("dynamodb", "TransactWriteItems", "InternalServerError", status=500, times=None)

    # When an isolation is requested
    status, body = post(stack)

    # Then 503 JSON, and nothing enqueued (no message without its record)
    assert status == 503, body
    assert isinstance(body["message"], str)
    assert_nothing_happened(stack)


def test_an_expired_idempotency_key_is_free_again_before_ttl_deletes_it(stack: Stack) -> None:
    # Given a key whose remembered answer expired (DynamoDB's TTL deletes it only days later)
    key_hash = hashlib.sha256(b"old-key").hexdigest()
    stack.store.client.put_item(
        TableName=stack.table_name,
        Item={
            "pk": {"S": idempotency_key(key_hash)},
            "body_hash": {"S": "0" * 64},
            "status_code": {"N": "202"},
            "answer": {"S": json.dumps({"isolation_id": "iso-" + "1" * 32})},
            "expires_at": {"N": str(int(datetime.now(UTC).timestamp()) - 60)},
        },
    )

    # When the key is used again with another body
    status, body = post(stack, headers={"Idempotency-Key": "old-key"})

    # Then it is a new request, not a conflict or a replay
    assert status == 202, body
    assert body["isolation_id"] != "iso-" + "1" * 32
