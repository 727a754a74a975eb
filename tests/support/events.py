"""Real event shapes: API Gateway REST proxy (v1) requests and SQS batches, as Lambda receives them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from local_stack.event_source import batch_event
from local_stack.http_api import Match, Route, build_event, match_route
from local_stack.lambda_context import LambdaContext

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"


TEST_REGION = "us-east-1"
TEST_ACCOUNT = "123456789012"
#: The API's routes, as the template declares them.
ROUTES = (
    Route("POST", "/isolate"),
    Route("GET", "/isolations/{isolation_id}"),
    Route("GET", "/isolations"),
    Route("POST", "/isolations/{isolation_id}/release", signed=True),
    Route("POST", "/exemptions", signed=True),
    Route("GET", "/exemptions"),
    Route("DELETE", "/exemptions/{exemption_id}", signed=True),
)


def lambda_context() -> LambdaContext:
    return LambdaContext(
        function_name="ec2-isolation-test", timeout_seconds=60, region=TEST_REGION, account_id=TEST_ACCOUNT
    )


def api_event(
    method: str,
    path: str,
    *,
    body: str | bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | list[tuple[str, str]] | None = None,
    user_arn: str | None = None,
) -> dict[str, Any]:
    """An API Gateway REST API proxy event, built as the local stack builds it for a request (an
    undefined route keeps its path as the resource, so that the handler's own 404 can be checked).
    `query`: a dict, or pairs to repeat a name. `user_arn`: the caller's IAM ARN, as API Gateway fills it
    in for a SigV4-signed (AWS_IAM) request."""
    data = (
        json.dumps(body).encode()
        if isinstance(body, dict)
        else body.encode()
        if isinstance(body, str)
        else body
    )
    all_headers = {"content-type": "application/json", "x-api-key": "test-key", **(headers or {})}
    event = build_event(
        method=method,
        raw_path=path,
        query=urlencode(query or {}),
        headers=list(all_headers.items()),
        body=data,
        match=match_route(ROUTES, method, path) or Match(path, None),
        source_ip="192.0.2.10",
        stage="v1",
        account_id=TEST_ACCOUNT,
    )
    if user_arn is not None:
        event["requestContext"]["identity"]["userArn"] = user_arn
    return event


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """An SQS batch as the event source mapping delivers it, from ReceiveMessage results."""
    return batch_event(messages, queue_arn=queue_arn, region=queue_arn.split(":")[3])


def load_event(name: str, **replacements: str) -> dict[str, Any]:
    """A sample event from tests/events, with `{{placeholders}}` or literal values replaced."""
    text = (EVENTS_DIR / name).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return json.loads(text)
