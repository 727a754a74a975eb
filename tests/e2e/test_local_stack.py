"""The local stack's own machinery against its embedded moto: provisioning from template.yaml, the
API Gateway stand-in and the SQS event source, each checked against what AWS does."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventModel, SqsModel

from local_stack.environments import Processes
from local_stack.event_source import SqsEventSource
from local_stack.http_api import ApiServer, gateway_responses
from local_stack.provision import provision
from local_stack.stack import STACK_NAME, LocalStack
from tests.infra.resolver import event_pattern, resolve
from tests.support.events import ROUTES

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # Not POWERTOOLS_LOG_LEVEL: the shared Logger keeps the level it was created with, for later suites too.
    environment = {"POWERTOOLS_METRICS_DISABLED": "true"}
    with LocalStack(region="eu-west-1", worker=False, environment=environment) as local:
        yield local


@pytest.fixture(scope="module")
def template(stack: LocalStack) -> dict[str, Any]:
    """The transformed template the stack deployed, resolved offline with its defaults."""
    return resolve(stack.template)


# --- provisioning ------------------------------------------------------------------------------------


def test_queue_and_dead_letter_queue_are_the_templates(stack: LocalStack, template: dict[str, Any]) -> None:
    declared = template["Resources"]["IsolationQueue"]["Properties"]
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.provisioned.queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert int(attributes["VisibilityTimeout"]) == declared["VisibilityTimeout"]
    assert int(attributes["MessageRetentionPeriod"]) == declared["MessageRetentionPeriod"]
    redrive = json.loads(attributes["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == template["Parameters"]["MaxReceiveCount"]
    assert redrive["deadLetterTargetArn"] == stack.provisioned.dead_letter_queue_arn


def test_table_is_the_templates(stack: LocalStack, template: dict[str, Any]) -> None:
    declared = template["Resources"]["IsolationTable"]["Properties"]
    dynamodb = stack.client("dynamodb")
    table = dynamodb.describe_table(TableName=stack.provisioned.table_name)["Table"]
    assert table["KeySchema"] == declared["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(declared["AttributeDefinitions"], key=str)
    indexes = {index["IndexName"]: index["KeySchema"] for index in table["GlobalSecondaryIndexes"]}
    assert indexes == {index["IndexName"]: index["KeySchema"] for index in declared["GlobalSecondaryIndexes"]}
    ttl = dynamodb.describe_time_to_live(TableName=stack.provisioned.table_name)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == declared["TimeToLiveSpecification"]["AttributeName"]


def test_rules_carry_the_templates_patterns_and_target_the_queue(
    stack: LocalStack, template: dict[str, Any]
) -> None:
    events = stack.client("events")
    for logical_id in ("GuardDutyFindingRule", "TagChangeRule"):
        name = stack.provisioned.rules(stack.template)[logical_id]
        rule = events.describe_rule(Name=name)
        assert json.loads(rule["EventPattern"]) == event_pattern(template["Resources"][logical_id])
        assert rule["State"] == "ENABLED" and rule.get("EventBusName", "default") == "default"
        targets = events.list_targets_by_rule(Rule=name)["Targets"]
        assert [target["Arn"] for target in targets] == [stack.provisioned.queue_arn]


def test_provisioning_again_reuses_everything(stack: LocalStack) -> None:
    again = provision(stack.template, client=stack.client, stack_name=STACK_NAME)
    assert again == stack.provisioned


def test_handlers_get_the_templates_environment(stack: LocalStack) -> None:
    from shared.config import worker_settings

    settings = worker_settings().model_dump()
    expected = {
        "TABLE_NAME": stack.provisioned.table_name,
        "QUEUE_URL": stack.provisioned.queue_url,
        "MAX_RECEIVE_COUNT": stack.provisioned.max_receive_count,
        "TARGET_ROLE_NAME": stack.provisioned.parameters["TargetRoleName"],
    }
    assert {name: settings[name] for name in expected} == expected


def test_the_worker_runs_as_the_templates_mapping_says(stack: LocalStack, template: dict[str, Any]) -> None:
    # Given the worker's SQS event source in the template, and the stack's model of it
    (mapping,) = (
        resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Lambda::EventSourceMapping"
        and resource["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["IsolationQueue", "Arn"]}
    )
    source = stack.event_source
    assert source is not None

    # Then the stack polls with its batch size, at most its maximum concurrency, in processes
    assert source.batch_size == int(mapping["BatchSize"])
    assert source.concurrency == int(mapping["ScalingConfig"]["MaximumConcurrency"])
    assert isinstance(source.runtime, Processes) and source.runtime.limit == source.concurrency


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    """What the service's logger writes in this process (the ingest's), as JSON objects."""
    from shared.observability import logger

    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Collect()
    handler.setFormatter(logger.registered_formatter)
    logger._logger.addHandler(handler)
    yield lines
    logger._logger.removeHandler(handler)


def test_the_ingest_log_carries_no_key_of_the_worker(
    stack: LocalStack, log_lines: list[dict[str, Any]]
) -> None:
    source = stack.event_source
    assert source is not None
    ingest, _ = stack.provisioned.api()
    body = {"instance_id": "i-0123456789abcdef0", "account_id": "111122223333", "region": stack.region}
    # Given a request the worker has handled, in its own environment (the account has no execution role:
    # STS refuses the worker, as AWS does)
    status, first = stack.request("POST", "/isolate", body)
    assert status in (200, 202), first
    outcomes = []
    while (outcome := source.poll_once(wait_seconds=1)) is not None:
        outcomes.append(outcome)
    record = stack.wait_for(first["isolation_id"], timeout=10)
    assert record["status"] == "FAILED" and record["error"]["code"] == "RoleNotAssumable"
    # (its AWS calls came back with the batch's result)
    calls = [name for outcome in outcomes if outcome.invocation for _, name in outcome.invocation.calls or []]
    assert "sts.AssumeRole" in calls and "dynamodb.TransactWriteItems" in calls

    # When the ingest accepts the next request
    log_lines.clear()
    status, second = stack.request("POST", "/isolate", {**body, "instance_id": "i-0123456789abcdef1"})
    assert status == 202, second

    # Then its "isolation queued" line names the ingest function and this isolation, nothing of the worker
    (queued,) = (line for line in log_lines if line.get("message") == "isolation queued")
    assert queued["function_name"] == ingest.name != source.function_name
    assert queued["isolation_id"] == second["isolation_id"]
    assert "message_id" not in queued and "step" not in queued


# --- the SQS event source ----------------------------------------------------------------------------


@pytest.fixture
def queue(stack: LocalStack) -> Iterator[tuple[str, str]]:
    """A scratch queue, redriving to a scratch DLQ after 2 receives."""
    sqs = stack.client("sqs")
    suffix = str(time.monotonic_ns())
    dlq = sqs.create_queue(QueueName=f"scratch-dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    url = sqs.create_queue(
        QueueName=f"scratch-{suffix}",
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}),
        },
    )["QueueUrl"]
    yield url, dlq
    sqs.delete_queue(QueueUrl=url)
    sqs.delete_queue(QueueUrl=dlq)


def _source(stack: LocalStack, url: str, handler: Any) -> SqsEventSource:
    arn = stack.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return SqsEventSource(
        sqs_factory=lambda: stack.client("sqs"),
        handler=handler,
        queue_url=url,
        queue_arn=arn,
        region=stack.region,
        account_id=stack.account_id,
        timeout_seconds=5,
    )


def _depth(stack: LocalStack, url: str) -> int:
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def test_batch_event_is_a_real_sqs_event(stack: LocalStack, queue: tuple[str, str]) -> None:
    url, _ = queue
    seen: list[dict[str, Any]] = []
    stack.client("sqs").send_message(
        QueueUrl=url,
        MessageBody='{"hello": "world"}',
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "test"}},
    )

    outcome = _source(stack, url, lambda event, context: seen.append(event)).poll_once()

    assert outcome is not None and outcome.failed == set()
    (event,) = seen
    SqsModel.model_validate(event)  # Powertools' model of what Lambda delivers
    (record,) = event["Records"]
    assert record["eventSource"] == "aws:sqs" and record["awsRegion"] == stack.region
    assert record["body"] == '{"hello": "world"}' and record["md5OfBody"]
    assert {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    } <= set(record["attributes"])
    assert record["messageAttributes"]["kind"]["stringValue"] == "test"
    assert record["messageAttributes"]["kind"]["dataType"] == "String"
    assert _depth(stack, url) == 0  # processed: deleted


def test_partial_batch_failure_leaves_only_the_failed_message(
    stack: LocalStack, queue: tuple[str, str]
) -> None:
    url, _ = queue
    sqs = stack.client("sqs")
    for body in ("ok-1", "fail", "ok-2"):
        sqs.send_message(QueueUrl=url, MessageBody=body)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "batchItemFailures": [
                {"itemIdentifier": record["messageId"]}
                for record in event["Records"]
                if record["body"] == "fail"
            ]
        }

    source = _source(stack, url, handler)
    processed = 0
    while processed < 3:
        outcome = source.poll_once(wait_seconds=1)
        assert outcome is not None
        processed += len(outcome.message_ids)
    assert source.stats.deleted == 2 and source.stats.failed == 1
    assert _depth(stack, url) == 1


@pytest.mark.parametrize(
    "answer",
    [
        RuntimeError("the function crashed"),
        {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]},
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        "not a proxy answer",
    ],
    ids=["raises", "unknown-id", "empty-id", "not-an-object"],
)
def test_whole_batch_fails_as_in_lambda(stack: LocalStack, queue: tuple[str, str], answer: Any) -> None:
    url, _ = queue
    stack.client("sqs").send_message(QueueUrl=url, MessageBody="m")

    def handler(event: dict[str, Any], context: Any) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    outcome = _source(stack, url, handler).poll_once(wait_seconds=1)
    assert outcome is not None and outcome.failed == set(outcome.message_ids)
    assert _depth(stack, url) == 1


def test_failed_messages_reach_the_dead_letter_queue(stack: LocalStack, queue: tuple[str, str]) -> None:
    url, dlq = queue
    sqs = stack.client("sqs")
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    receive_counts: list[str] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        for record in event["Records"]:  # as the worker does: retry at once
            receive_counts.append(record["attributes"]["ApproximateReceiveCount"])
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
            )
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}

    source = _source(stack, url, handler)
    for _ in range(4):
        source.poll_once(wait_seconds=0)
    assert receive_counts == ["1", "2"]
    assert _depth(stack, url) == 0 and _depth(stack, dlq) == 1


def test_context_reports_the_remaining_time(stack: LocalStack, queue: tuple[str, str]) -> None:
    url, _ = queue
    stack.client("sqs").send_message(QueueUrl=url, MessageBody="m")
    remaining: list[int] = []
    _source(stack, url, lambda e, c: remaining.append(c.get_remaining_time_in_millis())).poll_once(
        wait_seconds=1
    )
    assert 4000 < remaining[0] <= 5000


# --- the API Gateway stand-in ------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[tuple[ApiServer, list[dict[str, Any]]]]:
    """An API on a free port whose handler records its events and answers what the test sets."""
    events: list[dict[str, Any]] = []
    answers: list[Any] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        events.append(event)
        answer = (
            answers[0]
            if answers
            else {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}
        )
        if isinstance(answer, Exception):
            raise answer
        return answer

    server = ApiServer(handler=handler, api_key="k", routes=ROUTES, context_factory=lambda: None)
    server.answers = answers  # type: ignore[attr-defined]
    server.start()
    yield server, events
    server.stop()


def _raw(server: ApiServer, data: bytes, read_timeout: float = 5) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=read_timeout) as conn:
        conn.sendall(data)
        chunks = []
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
        return b"".join(chunks)


def _status_and_json(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_request_becomes_an_api_gateway_rest_event(api: tuple[ApiServer, list[dict[str, Any]]]) -> None:
    server, events = api
    raw = _raw(
        server,
        b"GET /isolations/iso-1%202?x=1&x=2&y= HTTP/1.1\r\nHost: api.local\r\nx-api-key: k\r\n"
        b"X-Multi: a\r\nX-Multi: b\r\nContent-Length: 0\r\n\r\n",
    )
    assert _status_and_json(raw) == (200, {})
    (event,) = events
    APIGatewayProxyEventModel.model_validate(event)  # Powertools' model of the REST proxy event
    assert event["resource"] == "/isolations/{isolation_id}"
    assert event["pathParameters"] == {"isolation_id": "iso-1 2"}
    assert event["httpMethod"] == "GET"
    assert event["queryStringParameters"] == {"x": "2", "y": ""}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": [""]}
    assert event["multiValueHeaders"]["X-Multi"] == ["a", "b"]
    assert event["requestContext"]["resourcePath"] == "/isolations/{isolation_id}"
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert event["requestContext"]["stage"] == "local" and event["requestContext"]["requestId"]
    assert event["body"] is None and event["isBase64Encoded"] is False


def test_binary_body_is_passed_base64(api: tuple[ApiServer, list[dict[str, Any]]]) -> None:
    server, events = api
    body = b"\xff\xfe{not utf-8}"
    _raw(server, b"POST /isolate HTTP/1.1\r\nx-api-key: k\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    (event,) = events
    assert event["isBase64Encoded"] is True
    import base64

    assert base64.b64decode(event["body"]) == body


def test_oversized_payload_is_refused_unread(api: tuple[ApiServer, list[dict[str, Any]]]) -> None:
    server, events = api
    # Only the headers are sent: the answer must come without the 20 MB body.
    raw = _raw(server, b"POST /isolate HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 20000000\r\n\r\n")
    assert _status_and_json(raw) == (413, {"message": "Request Too Long"})
    assert events == []


@pytest.mark.parametrize(
    "answer",
    [RuntimeError("boom"), {"statusCode": "abc"}, {"statusCode": 200, "body": {"not": "a string"}}, None],
    ids=["raises", "bad-status", "bad-body", "none"],
)
def test_handler_failure_is_a_502_json(api: tuple[ApiServer, list[dict[str, Any]]], answer: Any) -> None:
    server, _ = api
    server.answers.append(answer)  # type: ignore[attr-defined]
    raw = _raw(
        server,
        b"GET /isolations?instance_id=i-12345678 HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 0\r\n\r\n",
    )
    assert _status_and_json(raw) == (502, {"message": "Internal server error"})


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /isolate HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /isolate HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /isolate HTTP/1.1\r\nx-api-key: k\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nx-api-key: k\r\n\r\n",
    ],
    ids=["no-request-line", "negative-length", "conflicting-lengths", "bad-chunk", "non-ascii-path"],
)
def test_protocol_garbage_gets_a_json_4xx(
    api: tuple[ApiServer, list[dict[str, Any]]], request_bytes: bytes
) -> None:
    server, events = api
    status, body = _status_and_json(_raw(server, request_bytes))
    assert 400 <= status < 500 and isinstance(body["message"], str)
    assert events == []
    # and the server still serves
    assert (
        _status_and_json(
            _raw(server, b"GET /isolations HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 0\r\n\r\n")
        )[0]
        == 200
    )


def test_chunked_body_is_read(api: tuple[ApiServer, list[dict[str, Any]]]) -> None:
    server, events = api
    _raw(
        server,
        b'POST /isolate HTTP/1.1\r\nx-api-key: k\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n',
    )
    assert events[0]["body"] == '{"a":1}'


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "FROBNICATE"])
@pytest.mark.parametrize("key", [b"x-api-key: k\r\n", b""], ids=["with-key", "without-key"])
def test_unknown_methods_get_api_gateways_json_403(
    api: tuple[ApiServer, list[dict[str, Any]]], method: str, key: bytes
) -> None:
    # Given a method no route has (CONNECT with its authority-form target)
    server, events = api
    target = b"api.local:443" if method == "CONNECT" else b"/isolate"

    # When it is sent, with or without the key
    raw = _raw(
        server, method.encode() + b" " + target + b" HTTP/1.1\r\n" + key + b"Content-Length: 0\r\n\r\n"
    )

    # Then API Gateway's answer for an undefined method: 403 JSON, never 501, and no invocation
    assert _status_and_json(raw) == (403, {"message": "Missing Authentication Token"})
    assert b"content-type: application/json" in raw.lower()
    assert events == []


@pytest.mark.parametrize(
    ("key", "problem"), [(b"", "missing"), (b"x-api-key: not-k\r\n", "wrong")], ids=["missing", "wrong"]
)
def test_a_missing_or_wrong_key_is_named(
    api: tuple[ApiServer, list[dict[str, Any]]], key: bytes, problem: str
) -> None:
    # When a defined route is requested without the right key
    server, events = api
    raw = _raw(server, b"GET /isolations HTTP/1.1\r\n" + key + b"Content-Length: 0\r\n\r\n")

    # Then a 403 that says which header is missing or wrong
    message = f"Forbidden: x-api-key is {problem}"
    assert _status_and_json(raw) == (
        403,
        {"message": message, "errors": [{"field": "x-api-key", "type": problem, "message": message}]},
    )
    assert events == []


@pytest.mark.parametrize(
    ("request_bytes", "kind", "status"),
    [
        (b"GET /admin HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "MISSING_AUTHENTICATION_TOKEN", 403),
        (
            b"DELETE /isolate HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 0\r\n\r\n",
            "MISSING_AUTHENTICATION_TOKEN",
            403,
        ),
        (
            b"POST /isolate HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 20000000\r\n\r\n",
            "REQUEST_TOO_LARGE",
            413,
        ),
        (
            b"POST /isolate HTTP/1.1\r\nx-api-key: k\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "BAD_REQUEST_BODY",
            400,
        ),
    ],
    ids=["unknown-route", "unknown-method", "too-large", "conflicting-lengths"],
)
def test_api_gateways_own_answers_are_the_templates_gateway_responses(
    api: tuple[ApiServer, list[dict[str, Any]]], request_bytes: bytes, kind: str, status: int
) -> None:
    # Given the local API Gateway with the template's gateway responses (as `serve` sets them)
    server, events = api
    from local_stack.stack import project_root
    from local_stack.templates import load_template, sam_transform

    responses = gateway_responses(sam_transform(load_template(project_root() / "template.yaml")))
    server.gateway_responses = responses

    # When a request API Gateway answers itself is sent
    answered, body = _status_and_json(_raw(server, request_bytes))

    # Then the answer is the template's (its default 4xx for a kind it does not name), in the API's one
    # error shape, and the function never ran
    expected = responses.get(kind) or responses["DEFAULT_4XX"]
    assert answered == status == (expected.status or status)
    message = {403: "Missing Authentication Token", 413: "Request Too Long", 400: "Bad Content-Length"}[
        status
    ]
    assert body == expected.render(message=message, response_type=kind)
    assert (
        body["message"]
        and body["errors"]
        and all(set(e) == {"field", "type", "message"} for e in body["errors"])
    )
    assert events == []
