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


def guardduty_event(
    account_id: str,
    region: str,
    instance_id: str,
    *,
    severity: float = 8.0,
    finding_type: str = "UnauthorizedAccess:EC2/SSHBruteForce",
    finding_id: str | None = None,
    administrator: str = "123456789012",
) -> dict[str, Any]:
    """A GuardDuty finding as EventBridge delivers it to the delegated administrator's bus."""
    finding_id = finding_id or uuid.uuid4().hex
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "GuardDuty Finding",
        "source": "aws.guardduty",
        "account": administrator,
        "time": "2026-11-26T12:00:00Z",
        "region": region,
        "resources": [],
        "detail": {
            "schemaVersion": "2.0",
            "accountId": account_id,
            "region": region,
            "partition": "aws",
            "id": finding_id,
            "arn": f"arn:aws:guardduty:{region}:{account_id}:detector/d1/finding/{finding_id}",
            "type": finding_type,
            "resource": {
                "resourceType": "Instance",
                "instanceDetails": {
                    "instanceId": instance_id,
                    "instanceType": "t3.micro",
                    "networkInterfaces": [],
                    "tags": [],
                },
            },
            "service": {
                "serviceName": "guardduty",
                "detectorId": "d1",
                "action": {"actionType": "NETWORK_CONNECTION"},
                "resourceRole": "TARGET",
                "count": 1,
            },
            "severity": severity,
            "createdAt": "2026-11-26T11:59:00.000Z",
            "updatedAt": "2026-11-26T12:00:00.000Z",
            "title": f"{finding_type} against {instance_id}.",
            "description": "Injected by the tests.",
        },
    }


def tag_event(
    account_id: str,
    region: str,
    instance_id: str,
    *,
    changed: list[str] | None = None,
    tags: dict[str, str] | None = None,
    include_account: bool = False,
) -> dict[str, Any]:
    """A `Tag Change on Resource` event as moto delivers it (no `account`), unless told otherwise."""
    event: dict[str, Any] = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Tag Change on Resource",
        "source": "aws.tag",
        "time": "2026-11-26T12:00:00Z",
        "region": region,
        "resources": [f"arn:aws:ec2:{region}:{account_id}:instance/{instance_id}"],
        "detail": {
            "changed-tag-keys": changed if changed is not None else ["isolate"],
            "service": "ec2",
            "resource-type": "instance",
            "version": 3,
            "tags": tags if tags is not None else {"isolate": "true", "Name": "web"},
        },
    }
    if include_account:
        event["account"] = account_id
    return event
