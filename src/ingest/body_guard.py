"""What API Gateway passes through but a JSON API must refuse, in two parts that never parse twice.

- `screen(event)`, before routing: size (10 KiB), encoding (UTF-8; API Gateway base64-encodes bodies it
  treats as binary) and content type. No parsing. A body that passes is handed on as plain UTF-8 text
  labelled `application/json`.
- `parse(text)`: the router's JSON deserializer, so the body is parsed once, when a route reads it.
  It refuses what `json.loads` would accept too kindly (duplicate keys, NaN) or choke on (deep nesting)
  and anything but an object.

Both raise `BodyRejected`, which the app answers with its status and the API's error body.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from ingest.answers import ErrorBody, FieldError

MAX_BODY_BYTES = 10 * 1024
MAX_DEPTH = 32


class BodyRejected(Exception):
    def __init__(self, status_code: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        error = FieldError(field="body", type=self.error_type, message=self.message)
        return ErrorBody(message=self.message, errors=[error]).dump()


def screen(event: dict[str, Any]) -> dict[str, Any]:
    """Return the event with its body as checked UTF-8 text, or raise `BodyRejected`."""
    content_type = header(event, "content-type")
    if content_type and _is_json(content_type):
        event = _json_content_type(event)
    raw = event.get("body")
    if raw is None:
        return event
    if not isinstance(raw, str):
        raise BodyRejected(400, "request body must be text", "body_type")
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BodyRejected(400, "request body is not valid base64", "body_encoding") from exc
    else:
        data = raw.encode("utf-8", errors="surrogatepass")
    if len(data) > MAX_BODY_BYTES:
        raise BodyRejected(413, f"request body is larger than {MAX_BODY_BYTES} bytes", "body_too_large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRejected(400, "request body is not valid UTF-8", "body_encoding") from exc

    if content_type and not _is_json(content_type):
        raise BodyRejected(415, "content-type must be application/json", "unsupported_content_type")
    return {**event, "body": text, "isBase64Encoded": False}


def _json_content_type(event: dict[str, Any]) -> dict[str, Any]:
    """Any JSON media type (any case, a +json suffix, parameters) as the one the router parses."""
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "content-type"}
    multi = {k: v for k, v in (event.get("multiValueHeaders") or {}).items() if k.lower() != "content-type"}
    return {
        **event,
        "headers": {**headers, "content-type": "application/json"},
        "multiValueHeaders": {**multi, "content-type": ["application/json"]},
    }


def header(event: Mapping[str, Any], name: str) -> str:
    """The value of header `name` (lower case; header names are case-insensitive), or ""."""
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name and isinstance(value, str):
            return value
    return ""


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise BodyRejected(400, f"duplicate key {key!r} in JSON body", "json_duplicate_key")
        seen[key] = value
    return seen


def parse(text: str) -> dict[str, Any]:
    """The JSON object `text` holds, parsed strictly, or `BodyRejected`."""
    depth = 0
    deepest = 0
    in_string = escaped = False
    for char in text:  # cheap depth scan first, so json.loads never recurses deeply
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise BodyRejected(400, f"JSON body nests deeper than {MAX_DEPTH} levels", "json_too_deep")
        elif char in "]}":
            depth -= 1
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except BodyRejected:
        raise
    except (ValueError, RecursionError) as exc:
        raise BodyRejected(400, f"request body is not valid JSON: {exc}", "json_invalid") from exc
    if not isinstance(value, dict):
        # Every body this API takes is an object; route validation would read some other shapes leniently.
        raise BodyRejected(422, "request body must be a JSON object", "model_attributes_type")
    return value


def _reject_constant(name: str) -> Any:
    raise BodyRejected(400, f"{name} is not valid JSON", "json_invalid")
