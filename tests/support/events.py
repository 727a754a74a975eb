"""Real event shapes: API Gateway REST proxy (v1) requests and SQS batches, as Lambda receives them."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).resolve().parent.parent / "events"
ROUTES = {"/isolate": "/isolate", "/isolations": "/isolations"}


class LambdaContext:
    function_name = "ec2-isolation-test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ec2-isolation-test"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def api_event(
    method: str,
    path: str,
    *,
    body: str | bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway REST API proxy event for one of our routes."""
    resource = ROUTES.get(path, "/isolations/{isolation_id}" if path.startswith("/isolations/") else path)
    path_parameters = {"isolation_id": path.split("/", 2)[2]} if resource.endswith("{isolation_id}") else None
    all_headers = {"content-type": "application/json", "x-api-key": "test-key", **(headers or {})}
    is_base64 = False
    if isinstance(body, dict):
        body = json.dumps(body)
    elif isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            body = base64.b64encode(body).decode()
            is_base64 = True
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/v1{path}",
            "stage": "v1",
            "requestId": str(uuid.uuid4()),
            "accountId": "123456789012",
            "apiId": "api1234567",
            "identity": {"sourceIp": "192.0.2.10", "apiKey": "test-key", "userAgent": "pytest"},
            "protocol": "HTTP/1.1",
        },
        "body": body,
        "isBase64Encoded": is_base64,
    }


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """An SQS batch as the event source mapping delivers it, from ReceiveMessage results."""
    region = queue_arn.split(":")[3]
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": m.get("Attributes", {}).get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": m.get("Attributes", {}).get("SentTimestamp", "0"),
                    "SenderId": m.get("Attributes", {}).get("SenderId", "AIDAEXAMPLE"),
                    "ApproximateFirstReceiveTimestamp": m.get("Attributes", {}).get(
                        "ApproximateFirstReceiveTimestamp", "0"
                    ),
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def load_event(name: str, **replacements: str) -> dict[str, Any]:
    """A sample event from tests/events, with `{{placeholders}}` or literal values replaced."""
    text = (EVENTS_DIR / name).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return json.loads(text)
