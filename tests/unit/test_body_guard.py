"""ingest.body_guard: what API Gateway passes through but a JSON API must refuse: `screen` before routing
(size, encoding, content type), `parse` as the router's one JSON parse (duplicate keys, depth, objects)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from ingest.body_guard import MAX_BODY_BYTES, MAX_DEPTH, BodyRejected, parse, screen

pytestmark = pytest.mark.disable_socket

REQUEST = {"instance_id": "i-0123456789abcdef0", "account_id": "111122223333", "region": "eu-west-1"}


def event(
    body: Any, *, content_type: str | None = "application/json", base64_encoded: bool = False
) -> dict[str, Any]:
    headers = {"x-api-key": "k"}
    if content_type is not None:
        headers["content-type"] = content_type
    return {
        "httpMethod": "POST",
        "path": "/isolate",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "body": body,
        "isBase64Encoded": base64_encoded,
    }


def rejected(evt: dict[str, Any]) -> BodyRejected:
    with pytest.raises(BodyRejected) as caught:
        screen(evt)
    return caught.value


def unparsable(text: str) -> BodyRejected:
    with pytest.raises(BodyRejected) as caught:
        parse(text)
    return caught.value


def padded(size: int, filler: str = "x") -> str:
    """A JSON object of exactly `size` UTF-8 bytes (`filler` is 1 or 2 bytes)."""
    head, tail = '{"reason": "', '"}'
    room = size - len(head) - len(tail)
    width = len(filler.encode())
    text = head + filler * (room // width) + "x" * (room % width) + tail
    assert len(text.encode()) == size
    return text


def nested(depth: int, opener: str = "[") -> str:
    """A JSON object nested exactly `depth` levels deep, inner levels arrays or objects."""
    if opener == "[":
        return '{"reason": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


# --- passes -------------------------------------------------------------------------------------------


def test_a_json_body_passes_as_plain_text() -> None:
    # Given a JSON request body
    text = json.dumps(REQUEST)

    # When it is screened
    screened = screen(event(text))

    # Then it is handed on unchanged, as text
    assert screened["body"] == text
    assert screened["isBase64Encoded"] is False


def test_no_body_passes_untouched() -> None:
    # Given a request without a body (a GET)
    evt = event(None)

    # When it is screened
    # Then nothing is changed (routing decides what a missing body means)
    assert screen(evt)["body"] is None


def test_an_empty_body_passes_for_routing_to_call_missing() -> None:
    # Given an empty body
    # When it is screened
    # Then it is not a JSON error here: validation reports the missing body
    assert screen(event(""))["body"] == ""


def test_screening_does_not_parse() -> None:
    # Given a body that is not JSON, within the size limit
    # When it is screened
    # Then it is handed on as it is: the router's one parse (`parse`) refuses it
    assert screen(event('{"a": 1, "a": 2'))["body"] == '{"a": 1, "a": 2'


def test_the_input_event_is_not_modified() -> None:
    # Given a base64 event
    evt = event(base64.b64encode(json.dumps(REQUEST).encode()).decode(), base64_encoded=True)
    original = json.loads(json.dumps(evt))

    # When it is screened
    screen(evt)

    # Then the caller's event is as it was
    assert evt == original


# --- size --------------------------------------------------------------------------------------------


def test_max_body_is_ten_kib() -> None:
    assert MAX_BODY_BYTES == 10 * 1024


@pytest.mark.parametrize("filler", ["x", "é"])
def test_exactly_10240_bytes_pass_and_10241_are_413(filler: str) -> None:
    # Given bodies of exactly 10 KiB and one byte more (counted in UTF-8 bytes, not characters)
    at_limit, over = padded(10_240, filler), padded(10_241, filler)

    # When they are screened
    # Then the first passes and the second is a 413
    assert screen(event(at_limit))["body"] == at_limit
    error = rejected(event(over))
    assert error.status_code == 413
    assert error.error_type == "body_too_large"


def test_size_of_a_base64_body_is_counted_decoded() -> None:
    # Given bodies of 10240 and 10241 bytes sent base64-encoded (the encoded text is a third longer)
    at_limit, over = (base64.b64encode(padded(n).encode()).decode() for n in (10_240, 10_241))
    assert len(at_limit) > 10_241

    # When they are screened
    # Then the decoded size decides
    assert len(screen(event(at_limit, base64_encoded=True))["body"]) == 10_240
    assert rejected(event(over, base64_encoded=True)).status_code == 413


def test_an_oversized_body_is_refused_before_it_is_parsed() -> None:
    # Given an oversized body that is also not JSON
    # When it is screened
    # Then the size answers first
    assert rejected(event("{" * 20_000)).status_code == 413


# --- encoding ----------------------------------------------------------------------------------------


def test_a_base64_body_is_decoded_to_text() -> None:
    # Given a JSON body that API Gateway base64-encoded (treated as binary)
    text = json.dumps({**REQUEST, "reason": "café ☕"}, ensure_ascii=False)
    evt = event(base64.b64encode(text.encode()).decode(), base64_encoded=True)

    # When it is screened
    screened = screen(evt)

    # Then routing gets the decoded text, no longer flagged base64
    assert screened["body"] == text
    assert screened["isBase64Encoded"] is False


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe{}", b'{"reason": "\xc3"}', '{"reason": "café"}'.encode("latin-1"), b"\xed\xa0\x80"],
    ids=["bom-like", "truncated sequence", "latin-1", "encoded surrogate"],
)
def test_base64_bytes_that_are_not_utf8_are_400(data: bytes) -> None:
    # Given bytes that are not UTF-8, base64-encoded as API Gateway sends binary
    evt = event(base64.b64encode(data).decode(), base64_encoded=True)

    # When they are screened
    error = rejected(evt)

    # Then 400, naming the body
    assert error.status_code == 400 and error.error_type == "body_encoding"


@pytest.mark.parametrize("text", ["not base64!", "e30", "e30=x"])
def test_malformed_base64_is_400(text: str) -> None:
    # Given a body flagged base64 that is not valid base64
    # When it is screened
    error = rejected(event(text, base64_encoded=True))

    # Then 400
    assert error.status_code == 400 and error.error_type == "body_encoding"


def test_a_lone_surrogate_in_the_text_is_not_utf8() -> None:
    # Given a text body carrying an unpaired surrogate (what a broken client's bytes decode to)
    # When it is screened
    error = rejected(event('{"reason": "\ud800"}'))

    # Then 400
    assert error.status_code == 400


@pytest.mark.parametrize("body", [42, {"a": 1}, ["x"], b"{}"])
def test_a_body_that_is_not_text_is_400(body: Any) -> None:
    # Given an event whose body is not a string
    # When it is screened
    # Then 400
    assert rejected(event(body)).status_code == 400


# --- JSON --------------------------------------------------------------------------------------------


def test_max_depth_is_32() -> None:
    assert MAX_DEPTH == 32


@pytest.mark.parametrize("opener", ["[", "{"])
def test_nesting_of_32_passes_and_33_is_400(opener: str) -> None:
    # Given JSON nested exactly to the limit, and one level more
    # When they are screened
    # Then the first passes and the second is a 400 (json.loads never sees it)
    assert parse(nested(MAX_DEPTH, opener)) == json.loads(nested(MAX_DEPTH, opener))
    error = unparsable(nested(MAX_DEPTH + 1, opener))
    assert error.status_code == 400 and error.error_type == "json_too_deep"


def test_deep_nesting_far_past_the_recursion_limit_is_400_not_a_crash() -> None:
    # Given nesting deeper than Python's recursion limit, within the size limit
    # When it is screened
    error = unparsable("[" * 5_000 + "]" * 5_000)

    # Then 400
    assert error.status_code == 400


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    # Given strings full of brackets, and escaped quotes that do not end the string
    text = json.dumps({"reason": "[" * 100 + '\\"{' * 50, "requested_by": '"' + "{" * 40})

    # When it is screened
    # Then it passes: only structure counts
    assert parse(text) == json.loads(text)


def test_depth_counts_objects_and_arrays_together() -> None:
    # Given 33 levels alternating objects and arrays
    text = '{"a": [' * 16 + "{}" + "]}" * 16
    assert text.count("{") + text.count("[") == 33

    # When it is screened
    # Then it is too deep
    assert unparsable(text).error_type == "json_too_deep"


@pytest.mark.parametrize(
    "text",
    [
        '{"instance_id": "i-0123abcd", "instance_id": "i-0123abce"}',
        '{"reason": {"a": 1, "a": 2}}',
        '{"reason": [{"x": 1}, {"y": 1, "y": 1}]}',
        '[{"a": 1, "a": 1}]',
        '{"a": {"b": {"c": {"d": 1, "d": 1}}}}',
    ],
    ids=["top level", "nested object", "object in array", "in top-level array", "four deep"],
)
def test_duplicate_keys_are_400_at_any_depth(text: str) -> None:
    # Given JSON with a key repeated within one object
    # When it is screened
    error = unparsable(text)

    # Then 400: json.loads would silently keep the last one
    assert error.status_code == 400 and error.error_type == "json_duplicate_key"


def test_the_same_key_in_different_objects_is_fine() -> None:
    # Given a key that appears in several objects, once per object
    text = '{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}'

    # When it is screened
    # Then it passes
    assert parse(text) == json.loads(text)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_number_literals_are_400(literal: str) -> None:
    # Given JSON that Python's json would accept but the standard does not
    # When it is screened
    error = unparsable(f'{{"reason": {literal}}}')

    # Then 400
    assert error.status_code == 400 and error.error_type == "json_invalid"


@pytest.mark.parametrize("text", ["{", '{"a": 1,}', "{'a': 1}", '{"a": 1} {"b": 2}', "\ufeff{}", "01"])
def test_malformed_json_is_400(text: str) -> None:
    # Given text that is not JSON
    # When it is screened
    error = unparsable(text)

    # Then 400 json_invalid
    assert error.status_code == 400 and error.error_type == "json_invalid"


@pytest.mark.parametrize("text", ["[]", json.dumps([REQUEST]), '"i-0123456789abcdef0"', "42", "null", "true"])
def test_a_body_that_is_not_a_json_object_is_refused(text: str) -> None:
    # Given valid JSON that is not an object (an array holding a valid request included)
    # When it is screened
    error = unparsable(text)

    # Then a 4xx naming the body: every body this API takes is an object
    assert error.status_code in (400, 422)
    assert error.body()["errors"][0]["field"] == "body"


def test_huge_integer_literal_is_400_not_a_crash() -> None:
    # Given an integer past Python's int-from-string limit
    # When it is screened
    # Then 400
    assert unparsable('{"reason": ' + "9" * 5_000 + "}").status_code == 400


# --- content type ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "  application/json  ",
        "Application/JSON",
        "application/merge-patch+json",
        "application/vnd.api+json; charset=utf-8",
        "application/problem+json",
        None,
    ],
)
def test_json_content_types_are_accepted(content_type: str | None) -> None:
    # Given a JSON media type (with parameters, in any case, a +json suffix), or none at all
    text = json.dumps(REQUEST)

    # When the body is screened
    # Then it passes
    assert screen(event(text, content_type=content_type))["body"] == text


def test_the_content_type_header_name_is_case_insensitive() -> None:
    # Given the header as a browser or API Gateway may spell it
    evt = event(json.dumps(REQUEST), content_type=None)
    evt["headers"]["Content-Type"] = "text/plain"

    # When it is screened
    # Then it is found and refused
    assert rejected(evt).status_code == 415


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "text/json",
        "json",
    ],
)
def test_other_content_types_are_415(content_type: str) -> None:
    # Given a body sent as something other than JSON
    # When it is screened
    error = rejected(event(json.dumps(REQUEST), content_type=content_type))

    # Then 415
    assert error.status_code == 415 and error.error_type == "unsupported_content_type"


# --- the rejection itself ---------------------------------------------------------------------------


def test_a_rejection_is_the_api_error_shape_naming_the_body() -> None:
    # Given a rejected body
    error = unparsable("{")

    # When its answer is built
    body = error.body()

    # Then it is the API's error shape, JSON-serialisable, naming the body
    assert json.loads(json.dumps(body)) == body
    assert body["message"] == error.message
    assert [e["field"] for e in body["errors"]] == ["body"]
    assert body["errors"][0]["type"] == error.error_type
