"""API Lambda: routes only. POST /isolate, GET /isolations/{isolation_id}, GET /isolations,
POST /isolations/{isolation_id}/release, POST /exemptions, GET /exemptions,
DELETE /exemptions/{exemption_id}.

Every answer is JSON; every client error is a 4xx naming the field. API Gateway checks the API key
before this runs (the local stack does the same in front of it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from botocore.exceptions import BotoCoreError, ClientError

from ingest import console, exemptions, rules, service
from ingest.answers import (
    ErrorBody,
    ExemptionList,
    ExemptionRefused,
    FieldError,
    IsolationList,
    IsolationPage,
    ReleaseRefused,
)
from ingest.body_guard import BodyRejected, screen
from ingest.inputs import ExemptionQuery, IsolateHeaders, ListQuery
from ingest.routing import Answer, Invalid, Request, Response, Route, UnsupportedContentType, find, read
from shared.ahead_of_time import prepare_ahead_of_time
from shared.aws import same_account_client
from shared.config import ingest_settings
from shared.errors import RequestNotFound
from shared.exemptions import Exemption, ExemptionRequest
from shared.models import Accepted, IsolationRecord, IsolationRequest, ReleaseRequest
from shared.observability import MetricUnit, logger, metrics
from shared.store import IsolationStore
from shared.store.exemptions import ExemptionStore

#: The default page of GET /isolations without an instance.
MAX_PAGE = 50

#: Answers every route may give: API Gateway's for a missing or wrong key and for throttling, a 422 for a
#: query parameter the route does not take, and a 503 when AWS fails.
EVERY_ROUTE: dict[int, Answer] = {
    403: Answer("Missing or wrong API key, or no such route (API Gateway's answer)", ErrorBody),
    422: Answer(
        "A query parameter the route does not take, or one given twice; each is named in `errors`", ErrorBody
    ),
    429: Answer("Throttled by the API key's usage plan (API Gateway's answer)", ErrorBody),
    503: Answer("AWS is unavailable; nothing was changed; retry the request", ErrorBody),
}


def _error(status_code: int, message: str, *errors: FieldError) -> Response:
    return Response.json(status_code, ErrorBody(message=message, errors=list(errors)).dump())


def _store() -> IsolationStore:
    return IsolationStore(ingest_settings().TABLE_NAME, client=same_account_client("dynamodb"))


def create_isolation(request: Request) -> Response:
    body: IsolationRequest = request.body
    logger.append_keys(instance_id=body.instance_id, account_id=body.account_id)
    answer = service.accept(
        body,
        settings=ingest_settings(),
        store=_store(),
        sqs=same_account_client("sqs"),
        idempotency_key=request.headers.idempotency_key,
    )
    logger.append_keys(isolation_id=answer.body["isolation_id"])
    return Response.json(answer.status_code, answer.body)


def get_isolation(request: Request) -> Response:
    record = service.status(request.path["isolation_id"], store=_store())
    return Response.json(200, record.model_dump(mode="json"))


def list_isolations(request: Request) -> Response:
    # The route's query_rules refused parameters that do not go together, and a cursor it never answered.
    query: ListQuery = request.query
    if query.instance_id is not None:
        records = service.history(query.instance_id, query.account_id, store=_store())
        return Response.json(200, IsolationList(items=records).model_dump(mode="json"))
    records, next_cursor = service.recent(query.limit or MAX_PAGE, query.status, query.cursor, store=_store())
    return Response.json(200, IsolationPage(items=records, next=next_cursor).model_dump(mode="json"))


def _caller_arn(request: Request) -> str | None:
    """The caller's IAM ARN: deployed, API Gateway has checked the SigV4 signature (AWS_IAM) of the
    routes that need it and names the caller here; locally (the key only) there is none."""
    identity = (request.event.get("requestContext") or {}).get("identity") or {}
    return identity.get("userArn") or None


def _exemption_store() -> ExemptionStore:
    return ExemptionStore(ingest_settings().EXEMPTION_TABLE_NAME, client=same_account_client("dynamodb"))


def create_exemption(request: Request) -> Response:
    body: ExemptionRequest = request.body
    logger.append_keys(instance_id=body.instance_id, account_id=body.account_id)
    created = exemptions.create(
        body,
        caller_arn=_caller_arn(request),
        store=_exemption_store(),
        events=same_account_client("events"),
        bus=ingest_settings().EVENT_BUS_NAME,
    )
    return Response.json(201, created.model_dump(mode="json"))


def list_exemptions(request: Request) -> Response:
    query: ExemptionQuery = request.query
    found = exemptions.active(query.account_id, store=_exemption_store())
    return Response.json(200, ExemptionList(items=found).model_dump(mode="json"))


def delete_exemption(request: Request) -> Response:
    exemption_id = request.path["exemption_id"]
    logger.append_keys(exemption_id=exemption_id)
    exemptions.delete(
        exemption_id,
        caller=_caller_arn(request),
        store=_exemption_store(),
        events=same_account_client("events"),
        bus=ingest_settings().EVENT_BUS_NAME,
    )
    return Response(204, "")


def release_isolation(request: Request) -> Response:
    isolation_id = request.path["isolation_id"]
    logger.append_keys(isolation_id=isolation_id)
    answer = service.release(
        isolation_id,
        request.body,
        caller_arn=_caller_arn(request),
        settings=ingest_settings(),
        store=_store(),
        sqs=same_account_client("sqs"),
    )
    return Response.json(answer.status_code, answer.body)


def status_page(_: Request) -> Response:
    return Response(200, console.page(), content_type="text/html; charset=utf-8", headers=console.headers())


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/isolate",
        create_isolation,
        summary="Isolate an EC2 instance",
        body=IsolationRequest,
        body_examples=(rules.EXAMPLE_REQUEST,),
        body_rules=lambda body: service.region_faults(body, ingest_settings().EXTRA_REGIONS),
        headers=IsolateHeaders,
        answers={
            **EVERY_ROUTE,
            202: Answer("Accepted, recorded QUEUED and queued", Accepted),
            200: Answer(
                "Joined an isolation of the same instance already QUEUED or IN_PROGRESS "
                "(`deduplicated` is true), or the first answer replayed for a repeated Idempotency-Key",
                Accepted,
            ),
            400: Answer("The body is not UTF-8 JSON, has duplicate keys or nests too deep", ErrorBody),
            403: Answer(
                "Missing or wrong API key (API Gateway's answer), or `account_id` is not "
                "in the allowed accounts",
                ErrorBody,
            ),
            409: Answer("Idempotency-Key reused with a different body", ErrorBody),
            413: Answer("The body is larger than 10 KiB", ErrorBody),
            415: Answer("The content type is not JSON", ErrorBody),
            422: Answer(
                "A field breaks a rule, or a query parameter is given; each is named in `errors`", ErrorBody
            ),
        },
    ),
    Route(
        "GET",
        "/isolations/{isolation_id}",
        get_isolation,
        summary="One isolation record",
        path={"isolation_id": "The id POST /isolate answered"},
        answers={
            **EVERY_ROUTE,
            200: Answer("The isolation record", IsolationRecord),
            404: Answer("No isolation has this id", ErrorBody),
        },
    ),
    Route(
        "GET",
        "/isolations",
        list_isolations,
        summary="Isolations of an instance, or of every instance, newest first",
        description=(
            "With `instance_id` (and optionally `account_id`): that instance's isolations, at most 50. "
            "Without it: every instance's, a page of `limit` at a time (`next` is the following page's "
            "cursor), optionally only those of one `status`."
        ),
        query=ListQuery,
        query_rules=service.list_query_faults,
        answers={
            **EVERY_ROUTE,
            200: Answer("Isolation records, newest first (`next` only without `instance_id`)", IsolationPage),
            400: Answer("`next` is not a cursor this API answered", ErrorBody),
            422: Answer(
                "A query parameter is malformed, unknown, repeated, or does not go with the others; each "
                "is named in `errors`",
                ErrorBody,
            ),
        },
    ),
    Route(
        "POST",
        "/isolations/{isolation_id}/release",
        release_isolation,
        summary="Undo an isolation from its recorded prior state",
        description=(
            "Release the episode through its latest record: ISOLATED, FAILED with a `prior_state`, or "
            "RELEASE_FAILED (a new request retries it). The worker restores what `prior_state` recorded; "
            "follow it with GET /isolations/{isolation_id} (RELEASING, then RELEASED or RELEASE_FAILED). "
            "Deployed, this route also needs IAM authorization (SigV4) by a principal the stack's "
            "`ReleasePrincipalArns` names; `requested_by` is then the caller's IAM ARN."
        ),
        path={"isolation_id": "The id of the episode's latest isolation"},
        body=ReleaseRequest,
        body_required=False,
        answers={
            **EVERY_ROUTE,
            202: Answer("Recorded RELEASING and queued", Accepted),
            400: Answer("The body is not UTF-8 JSON, has duplicate keys or nests too deep", ErrorBody),
            403: Answer(
                "Missing or wrong API key, or (deployed) a caller the API's resource policy does not "
                "allow (API Gateway's answer)",
                ErrorBody,
            ),
            404: Answer("No isolation has this id", ErrorBody),
            409: Answer(
                "Not releasable now: `status` names the record's status, or `latest` the episode's "
                "latest record (release through it), or `in_flight` an isolation of the instance in flight",
                ReleaseRefused,
            ),
            413: Answer("The body is larger than 10 KiB", ErrorBody),
            415: Answer("The content type is not JSON", ErrorBody),
            422: Answer(
                "A field breaks a rule, or a query parameter is given; each is named in `errors`", ErrorBody
            ),
        },
    ),
    Route(
        "POST",
        "/exemptions",
        create_exemption,
        summary="Exempt an instance from trigger-started isolations until a time",
        description=(
            "GuardDuty findings, `isolate=true` tags and Security Hub actions leave the instance alone "
            "until `expires_at` (their records end SKIPPED, naming the exemption); a webhook request and "
            "a tamper repair still isolate it. At most one active exemption per instance. Deployed, this "
            "route also needs IAM authorization (SigV4) by a principal the stack's "
            "`ExemptionPrincipalArns` names; `requested_by` is then the caller's IAM ARN."
        ),
        body=ExemptionRequest,
        body_examples=(rules.EXAMPLE_EXEMPTION,),
        expected=rules.EXEMPTION_EXPECTED,
        answers={
            **EVERY_ROUTE,
            201: Answer("Created: the instance's active exemption", Exemption),
            400: Answer("The body is not UTF-8 JSON, has duplicate keys or nests too deep", ErrorBody),
            403: Answer(
                "Missing or wrong API key, or (deployed) a caller the API's resource policy does not "
                "allow (API Gateway's answer)",
                ErrorBody,
            ),
            409: Answer("The instance has an active exemption: `exemption_id` names it", ExemptionRefused),
            413: Answer("The body is larger than 10 KiB", ErrorBody),
            415: Answer("The content type is not JSON", ErrorBody),
            422: Answer("A field breaks a rule; each is named in `errors`", ErrorBody),
        },
    ),
    Route(
        "GET",
        "/exemptions",
        list_exemptions,
        summary="The active exemptions",
        description="Expired and deleted exemptions are not listed (they are kept: a SKIPPED record names its own).",
        query=ExemptionQuery,
        answers={
            **EVERY_ROUTE,
            200: Answer("The active exemptions, the soonest to expire first", ExemptionList),
            422: Answer("A query parameter is malformed or unknown; named in `errors`", ErrorBody),
        },
    ),
    Route(
        "DELETE",
        "/exemptions/{exemption_id}",
        delete_exemption,
        summary="End an exemption now",
        description=(
            "Triggers isolate the instance again from now on. The exemption is kept, with who deleted it "
            "and when; deleting it again changes nothing. Deployed, this route also needs IAM "
            "authorization (SigV4) by a principal the stack's `ExemptionPrincipalArns` names."
        ),
        path={"exemption_id": "The id POST /exemptions answered"},
        answers={
            **EVERY_ROUTE,
            204: Answer("Deleted (or deleted already)", None),
            403: Answer(
                "Missing or wrong API key, or (deployed) a caller the API's resource policy does not "
                "allow (API Gateway's answer)",
                ErrorBody,
            ),
            404: Answer("No exemption has this id", ErrorBody),
        },
    ),
    Route("GET", "/console", status_page, documented=False, fragment=("key", "isolation")),
)


# --- errors: one answer per kind, each an ErrorBody ---------------------------------------------------


def _invalid(exc: Invalid) -> Response:
    errors = [rules.field_error(error, exc.expected) for error in exc.errors]
    alone_400 = all(error.type in rules.BAD_REQUEST for error in errors)
    return _error(400 if alone_400 else 422, rules.summary(errors), *errors)


def _body_rejected(exc: BodyRejected) -> Response:
    return Response.json(exc.status_code, exc.body())


def _unsupported_content_type(_: UnsupportedContentType) -> Response:
    message = "content-type must be application/json"
    return _error(415, message, FieldError(field="body", type="unsupported_content_type", message=message))


def _bad_cursor(exc: service.BadCursor) -> Response:
    return _error(400, exc.message, FieldError(field="next", type=exc.code, message=exc.message))


def _account_not_allowed(exc: service.AccountNotAllowed) -> Response:
    return _error(403, exc.message, FieldError(field="account_id", type=exc.code, message=exc.message))


def _idempotency_conflict(exc: service.IdempotencyConflict) -> Response:
    return _error(
        409, exc.message, FieldError(field=rules.IDEMPOTENCY_KEY, type=exc.code, message=exc.message)
    )


def _not_found(_: RequestNotFound) -> Response:
    message = "isolation not found"
    return _error(
        404, message, FieldError(field="isolation_id", type="not_found", message="no isolation has this id")
    )


def _no_route(event: dict[str, Any]) -> Response:
    """Deployed, API Gateway answers an undefined route itself (403, its gateway response); the handler
    sees one only when called some other way."""
    message = f"no route {event.get('httpMethod')} {event.get('resource')}"
    return _error(404, "Not found", FieldError(field="path", type="unknown_route", message=message))


def _not_releasable(exc: service.NotReleasableNow) -> Response:
    refused = ReleaseRefused(
        message=exc.message,
        errors=[FieldError(field="isolation_id", type="not_releasable", message=exc.message)],
        status=exc.status,
        latest=exc.latest,
        in_flight=exc.holder,
    )
    return Response.json(409, refused.dump())


def _exemption_not_found(_: exemptions.ExemptionNotFound) -> Response:
    message = "exemption not found"
    return _error(
        404, message, FieldError(field="exemption_id", type="not_found", message="no exemption has this id")
    )


def _exempt_already(exc: exemptions.ExemptAlready) -> Response:
    refused = ExemptionRefused(
        message=exc.message,
        errors=[FieldError(field="instance_id", type=exc.code, message=exc.message)],
        exemption_id=exc.exemption.exemption_id,
    )
    return Response.json(409, refused.dump())


def _enqueue_failed(exc: service.EnqueueFailed) -> Response:
    return _error(503, exc.message)


def _aws_unavailable(_: Exception) -> Response:
    logger.exception("AWS call failed")
    return _error(503, "the service is temporarily unavailable; retry the request")


#: The answer to each kind of exception a route may raise (the first that matches).
ERRORS: tuple[tuple[type[Exception], Callable[[Any], Response]], ...] = (
    (Invalid, _invalid),
    (BodyRejected, _body_rejected),
    (UnsupportedContentType, _unsupported_content_type),
    (service.BadCursor, _bad_cursor),
    (service.AccountNotAllowed, _account_not_allowed),
    (service.IdempotencyConflict, _idempotency_conflict),
    (RequestNotFound, _not_found),
    (service.NotReleasableNow, _not_releasable),
    (exemptions.ExemptionNotFound, _exemption_not_found),
    (exemptions.ExemptAlready, _exempt_already),
    (service.EnqueueFailed, _enqueue_failed),
    (ClientError, _aws_unavailable),
    (BotoCoreError, _aws_unavailable),
)


def handle(event: dict[str, Any]) -> Response:
    """The answer to one request."""
    try:
        event = screen(event)
        route = find(ROUTES, event)
        if route is None:
            return _no_route(event)
        return route.handler(read(route, event))
    except Exception as exc:
        for kind, answer in ERRORS:
            if isinstance(exc, kind):
                return answer(exc)
        raise


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics.add_metric(name="ApiRequest", unit=MetricUnit.Count, value=1)
    return handle(event).proxy()


prepare_ahead_of_time("dynamodb", "sqs")
