"""API Lambda: routes only. POST /isolate, GET /isolations/{isolation_id}, GET /isolations.

Every answer is JSON; every client error is a 4xx naming the field. API Gateway checks the API key
before this runs (the local stack does the same in front of it).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from botocore.exceptions import BotoCoreError, ClientError

from ingest import console, rules, service
from ingest.answers import ErrorBody, FieldError, IsolationList, IsolationPage
from ingest.body_guard import BodyRejected, parse, screen
from shared.aws import same_account_client
from shared.config import ingest_settings
from shared.errors import RequestNotFound
from shared.lifecycle import Status
from shared.models import ACCOUNT_ID_PATTERN, INSTANCE_ID_PATTERN, Accepted, IsolationRecord, IsolationRequest
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore

app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=parse)
#: The default page of GET /isolations without an instance.
MAX_PAGE = 50


def _answer(description: str, model: Any) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": model}}}


#: Answers every route may give: API Gateway's for a missing or wrong key and for throttling, and a 503
#: when AWS fails.
_EVERY_ROUTE: dict[int, OpenAPIResponse] = {
    403: _answer("Missing or wrong API key, or no such route (API Gateway's answer)", ErrorBody),
    429: _answer("Throttled by the API key's usage plan (API Gateway's answer: only `message`)", ErrorBody),
    503: _answer("AWS is unavailable; nothing was changed; retry the request", ErrorBody),
}


def _json(status_code: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status_code, content_type="application/json", body=json.dumps(body))


def _error(status_code: int, message: str, *errors: FieldError) -> Response:
    return _json(status_code, ErrorBody(message=message, errors=list(errors)).dump())


def _store() -> IsolationStore:
    return IsolationStore(ingest_settings().TABLE_NAME, client=same_account_client("dynamodb"))


@app.post(
    "/isolate",
    summary="Isolate an EC2 instance",
    responses={
        **_EVERY_ROUTE,
        202: _answer("Accepted, recorded QUEUED and queued", Accepted),
        200: _answer(
            "Joined an isolation of the same instance already QUEUED or IN_PROGRESS "
            "(`deduplicated` is true), or the first answer replayed for a repeated Idempotency-Key",
            Accepted,
        ),
        400: _answer("The body is not UTF-8 JSON, has duplicate keys or nests too deep", ErrorBody),
        403: _answer(
            "Missing or wrong API key (API Gateway's answer: only `message`), or `account_id` is not "
            "in the allowed accounts",
            ErrorBody,
        ),
        409: _answer("Idempotency-Key reused with a different body", ErrorBody),
        413: _answer("The body is larger than 10 KiB", ErrorBody),
        415: _answer("The content type is not JSON", ErrorBody),
        422: _answer("A field breaks a rule; each is named in `errors`", ErrorBody),
    },
)
def create_isolation(
    request: Annotated[IsolationRequest, Body(examples=[rules.EXAMPLE_REQUEST])],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=rules.IDEMPOTENCY_KEY,
            min_length=1,
            max_length=128,
            description="Repeat a request safely: the same key with the same body gets the first answer",
        ),
    ] = None,
):
    logger.append_keys(instance_id=request.instance_id, account_id=request.account_id)
    answer = service.accept(
        request,
        settings=ingest_settings(),
        store=_store(),
        sqs=same_account_client("sqs"),
        idempotency_key=idempotency_key,
    )
    logger.append_keys(isolation_id=answer.body["isolation_id"])
    return _json(answer.status_code, answer.body)


@app.get(
    "/isolations/<isolation_id>",
    summary="One isolation record",
    responses={
        **_EVERY_ROUTE,
        200: _answer("The isolation record", IsolationRecord),
        404: _answer("No isolation has this id", ErrorBody),
    },
)
def get_isolation(isolation_id: Annotated[str, Path(description="The id POST /isolate answered")]):
    record = service.status(isolation_id, store=_store())
    return _json(200, record.model_dump(mode="json"))


@app.get(
    "/isolations",
    summary="Isolations of an instance, or of every instance, newest first",
    description=(
        "With `instance_id` (and optionally `account_id`): that instance's isolations, at most 50. "
        "Without it: every instance's, a page of `limit` at a time (`next` is the following page's "
        "cursor), optionally only those of one `status`."
    ),
    responses={
        **_EVERY_ROUTE,
        200: _answer("Isolation records, newest first (`next` only without `instance_id`)", IsolationPage),
        400: _answer("`next` is not a cursor this API answered", ErrorBody),
        422: _answer(
            "A query parameter is malformed, or does not go with the others; named in `errors`", ErrorBody
        ),
    },
)
def list_isolations(
    instance_id: Annotated[
        str | None, Query(pattern=INSTANCE_ID_PATTERN, description=rules.EXPECTED["instance_id"])
    ] = None,
    account_id: Annotated[
        str | None, Query(pattern=ACCOUNT_ID_PATTERN, description=rules.EXPECTED["account_id"])
    ] = None,
    status: Annotated[
        Status | None, Query(description="Without instance_id: only isolations in this status")
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=100, description="Without instance_id: page size, 1 to 100 (default 50)")
    ] = None,
    cursor: Annotated[
        str | None, Query(alias="next", max_length=512, description=rules.EXPECTED["next"])
    ] = None,
):
    if instance_id is not None:
        misplaced = [
            name
            for name, value in (("status", status), ("limit", limit), ("next", cursor))
            if value is not None
        ]
        if misplaced:
            return _misplaced(misplaced, "only without instance_id")
        records = service.history(instance_id, account_id, store=_store())
        return _json(200, IsolationList(items=records).model_dump(mode="json"))
    if account_id is not None:
        return _misplaced(["account_id"], "only with instance_id")
    records, next_cursor = service.recent(limit or MAX_PAGE, status, cursor, store=_store())
    return _json(200, IsolationPage(items=records, next=next_cursor).model_dump(mode="json"))


def _misplaced(names: list[str], where: str) -> Response:
    errors = [FieldError(field=name, type="misplaced", message=f"{name} goes {where}") for name in names]
    return _error(422, rules.summary(errors), *errors)


@app.get("/console", include_in_schema=False)
def status_page():
    return Response(
        status_code=200,
        content_type="text/html; charset=utf-8",
        body=console.page(),
        headers=console.headers(),
    )


# --- errors: one handler per kind, each an ErrorBody --------------------------------------------------


@app.exception_handler(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response:
    errors = [rules.field_error(error) for error in exc.errors()]
    return _error(422, rules.summary(errors), *errors)


@app.exception_handler(BodyRejected)
def body_rejected(exc: BodyRejected) -> Response:
    return _json(exc.status_code, exc.body())


@app.exception_handler(RequestUnsupportedContentType)
def unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
    message = "content-type must be application/json"
    return _error(415, message, FieldError(field="body", type="unsupported_content_type", message=message))


@app.exception_handler(service.UnknownRegion)
def unknown_region(exc: service.UnknownRegion) -> Response:
    error = rules.unknown_region(exc.region)
    return _error(422, rules.summary([error]), error)


@app.exception_handler(service.BadCursor)
def bad_cursor(exc: service.BadCursor) -> Response:
    return _error(400, exc.message, FieldError(field="next", type=exc.code, message=exc.message))


@app.exception_handler(service.AccountNotAllowed)
def account_not_allowed(exc: service.AccountNotAllowed) -> Response:
    return _error(403, exc.message, FieldError(field="account_id", type=exc.code, message=exc.message))


@app.exception_handler(service.IdempotencyConflict)
def idempotency_conflict(exc: service.IdempotencyConflict) -> Response:
    return _error(
        409, exc.message, FieldError(field=rules.IDEMPOTENCY_KEY, type=exc.code, message=exc.message)
    )


@app.exception_handler(RequestNotFound)
def not_found_record(exc: RequestNotFound) -> Response:
    return _error(404, "isolation not found")


@app.exception_handler(service.EnqueueFailed)
def enqueue_failed(exc: service.EnqueueFailed) -> Response:
    return _error(503, exc.message)


@app.exception_handler(ClientError)
@app.exception_handler(BotoCoreError)
def aws_unavailable(exc: Exception) -> Response:
    logger.exception("AWS call failed")
    return _error(503, "the service is temporarily unavailable; retry the request")


@app.not_found
def no_route(_: Exception) -> Response:
    return _error(404, "Not found")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics.add_metric(name="ApiRequest", unit=MetricUnit.Count, value=1)
    try:
        event = screen(event)
    except BodyRejected as rejected:
        return {
            "statusCode": rejected.status_code,
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps(rejected.body()),
            "isBase64Encoded": False,
        }
    return app.resolve(event, context)
