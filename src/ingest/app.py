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
from aws_lambda_powertools.logging import correlation_paths
from botocore.exceptions import BotoCoreError, ClientError

from ingest import service
from ingest.body_guard import BodyRejected, screen
from shared.aws import same_account_client
from shared.config import ingest_settings
from shared.errors import RequestNotFound
from shared.models import ACCOUNT_ID_PATTERN, INSTANCE_ID_PATTERN, IsolationRequest
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore

app = APIGatewayRestResolver(enable_validation=True)


def _json(status_code: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status_code, content_type="application/json", body=json.dumps(body))


def _store() -> IsolationStore:
    return IsolationStore(ingest_settings().TABLE_NAME, client=same_account_client("dynamodb"))


@app.post(
    "/isolate",
    summary="Isolate an EC2 instance",
    responses={
        202: {"description": "Accepted and queued"},
        200: {"description": "Joined an isolation of the same instance already queued or in progress"},
        403: {"description": "Account not allowed"},
        409: {"description": "Idempotency-Key reused with a different body"},
        422: {"description": "A field breaks a rule"},
    },
)
def create_isolation(
    request: Annotated[IsolationRequest, Body()],
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=128)] = None,
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


@app.get("/isolations/<isolation_id>", summary="One isolation record")
def get_isolation(isolation_id: Annotated[str, Path()]):
    record = service.status(isolation_id, store=_store())
    return _json(200, record.model_dump(mode="json"))


@app.get("/isolations", summary="Isolations of an instance, newest first (at most 50)")
def list_isolations(
    instance_id: Annotated[str, Query(pattern=INSTANCE_ID_PATTERN)],
    account_id: Annotated[str | None, Query(pattern=ACCOUNT_ID_PATTERN)] = None,
):
    records = service.history(instance_id, account_id, store=_store())
    return _json(200, {"items": [record.model_dump(mode="json") for record in records]})


# --- errors: one handler per kind, each a JSON body -------------------------------------------------


def _field(loc: Any) -> str:
    parts = [p for p in (loc or ()) if isinstance(p, str) and p not in ("body", "query", "path", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else "body")


@app.exception_handler(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response:
    errors = [
        {"field": _field(error.get("loc")), "type": error.get("type", ""), "message": error.get("msg", "")}
        for error in exc.errors()
    ]
    status = 400 if any(error["type"] == "json_invalid" for error in errors) else 422
    fields = ", ".join(sorted({error["field"] for error in errors}))
    return _json(status, {"message": f"invalid request: {fields}", "errors": errors})


@app.exception_handler(RequestUnsupportedContentType)
def unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
    message = "content-type must be application/json"
    error = {"field": "body", "type": "unsupported_content_type", "message": message}
    return _json(415, {"message": message, "errors": [error]})


@app.exception_handler(service.AccountNotAllowed)
def account_not_allowed(exc: service.AccountNotAllowed) -> Response:
    return _json(403, {"message": exc.message, "errors": [{"field": "account_id", "type": exc.code}]})


@app.exception_handler(service.IdempotencyConflict)
def idempotency_conflict(exc: service.IdempotencyConflict) -> Response:
    return _json(409, {"message": exc.message, "errors": [{"field": "Idempotency-Key", "type": exc.code}]})


@app.exception_handler(RequestNotFound)
def not_found_record(exc: RequestNotFound) -> Response:
    return _json(404, {"message": "isolation not found"})


@app.exception_handler(service.EnqueueFailed)
def enqueue_failed(exc: service.EnqueueFailed) -> Response:
    return _json(503, {"message": exc.message})


@app.exception_handler(ClientError)
@app.exception_handler(BotoCoreError)
def aws_unavailable(exc: Exception) -> Response:
    logger.exception("AWS call failed")
    return _json(503, {"message": "the service is temporarily unavailable; retry the request"})


@app.not_found
def no_route(_: Exception) -> Response:
    return _json(404, {"message": "Not found"})


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
