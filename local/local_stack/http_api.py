"""The HTTP API of the local stack: what API Gateway (REST, Lambda proxy integration) does in front of
the ingest handler.

Each request becomes an API Gateway REST proxy (v1) event; the handler's proxy response becomes the
HTTP answer. API Gateway's own answers are reproduced with the bodies the template's gateway responses
give them (`gateway_responses`: the API's one error shape, `{"message": ..., "errors": [...]}`; a server
given none answers `{"message": ...}`, as API Gateway does without them):

- a path/method that is not one of the template's routes, whatever the method (TRACE, CONNECT, made-up
  ones): 403 `Missing Authentication Token` (what API Gateway answers for an undefined resource or
  method, key or not);
- a missing or wrong `x-api-key`: 403, saying which (`{"message": ..., "errors": [{"field": "x-api-key",
  ...}]}`; API Gateway itself says only `Forbidden`);
- a payload over API Gateway's 10 MB: 413, refused from its Content-Length before it is read;
- protocol garbage (a bad request line, conflicting `Content-Length`s, a bad chunk): 400;
- a handler that raises or returns something that is not a proxy response: 502 `Internal server
  error`, logged.

Request bodies that are not valid UTF-8 reach the handler base64-encoded with `isBase64Encoded`
true, as API Gateway passes binary payloads. `GET /openapi.json` (local only, behind the key too)
serves the OpenAPI document Powertools generates from the routes.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("local_stack.http")

#: API Gateway's payload limit (the handler enforces the API's own, much smaller, limit).
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
API_KEY_HEADER = "x-api-key"
OPENAPI_PATH = "/openapi.json"
_HOP_BY_HOP = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive", "date", "server"})

Handler = Callable[[dict[str, Any], Any], Any]


class MalformedResponse(Exception):
    """The handler's answer is not a Lambda proxy response."""


@dataclass(frozen=True)
class Route:
    method: str  # upper case
    resource: str  # as in the template: /isolations/{isolation_id}
    #: The route needs the API key (in the template: the operation's `security`); the status page does not.
    key_required: bool = True
    #: Deployed, the route also needs IAM authorization (SigV4); the local stack checks the key only.
    signed: bool = False

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = []
        for segment in self.resource.strip("/").split("/"):
            match = re.fullmatch(r"\{([A-Za-z0-9_]+)\}", segment)
            parts.append(f"(?P<{match.group(1)}>[^/]+)" if match else re.escape(segment))
        return re.compile("^/" + "/".join(parts) + "$")


@dataclass(frozen=True)
class Match:
    resource: str
    path_parameters: dict[str, str] | None
    key_required: bool = True


def match_route(routes: Iterable[Route], method: str, raw_path: str) -> Match | None:
    """The route of `method raw_path` (path still percent-encoded), or None as API Gateway would 403."""
    path = raw_path if raw_path == "/" else raw_path.rstrip("/") or "/"
    for route in routes:
        if route.method not in (method, "ANY"):
            continue
        found = route.pattern.match(path)
        if found:
            params = {name: unquote(value) for name, value in found.groupdict().items()}
            return Match(route.resource, params or None, route.key_required)
    return None


# --- request → API Gateway event ----------------------------------------------------------------------


def _multi(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value  # API Gateway keeps the last value in the single-value map
        multi.setdefault(name, []).append(value)
    return (single or None), (multi or None)


def build_event(
    *,
    method: str,
    raw_path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    match: Match,
    source_ip: str,
    stage: str,
    account_id: str,
    api_key_id: str = "local",
) -> dict[str, Any]:
    """An API Gateway REST proxy (v1) event for one request."""
    single_headers, multi_headers = _multi(headers)
    single_query, multi_query = _multi(parse_qsl(query, keep_blank_values=True))
    if body:
        try:
            text, is_base64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode("ascii"), True
    else:
        text, is_base64 = None, False
    lowered = {name.lower(): value for name, value in (single_headers or {}).items()}
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    path = unquote(raw_path)
    return {
        "resource": match.resource,
        "path": path,
        "httpMethod": method,
        "headers": single_headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": single_query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": match.path_parameters,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": match.resource,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "path": f"/{stage}{path}",
            "accountId": account_id,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": lowered.get("host", "localhost").split(":")[0].split(".")[0],
            "domainName": lowered.get("host", "localhost").split(":")[0],
            "requestId": request_id,
            "apiId": "local",
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": lowered.get("user-agent"),
                "user": None,
                "apiKey": lowered.get(API_KEY_HEADER),
                "apiKeyId": api_key_id,
            },
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


# --- proxy response → HTTP ------------------------------------------------------------------------------


def proxy_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body bytes of a Lambda proxy response; `MalformedResponse` if it is not one."""
    if not isinstance(result, dict):
        raise MalformedResponse(f"handler returned {type(result).__name__}, not a proxy response")
    status = result.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise MalformedResponse(f"bad statusCode {status!r}")
    headers: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((str(name), str(value)))
        seen.add(str(name).lower())
    for name, value in (result.get("headers") or {}).items():
        if str(name).lower() not in seen:
            headers.append((str(name), str(value)))
    headers = [(name, value) for name, value in headers if name.lower() not in _HOP_BY_HOP]
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise MalformedResponse(f"body is {type(body).__name__}, not a string")
    elif result.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise MalformedResponse("body is flagged base64 but is not") from exc
    else:
        data = body.encode("utf-8")
    return status, headers, data


def _json_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode("utf-8")


# --- API Gateway's own answers: the template's gateway responses ---------------------------------------


@dataclass(frozen=True)
class GatewayResponse:
    """One of the template's gateway responses: its status (None: the error's own) and JSON template."""

    status: int | None
    template: str

    def render(self, *, message: str, response_type: str) -> dict[str, Any]:
        """The body API Gateway answers: a gateway response template is not VTL, only `$context`
        variables are substituted (`messageString` is the message quoted, `responseType` bare)."""
        text = self.template.replace("$context.error.messageString", json.dumps(message))
        return dict(json.loads(text.replace("$context.error.responseType", response_type)))


def gateway_responses(template: Mapping[str, Any]) -> dict[str, GatewayResponse]:
    """The gateway responses of the (SAM-transformed) template's REST API, by response type."""
    found: dict[str, GatewayResponse] = {}
    for resource in (template.get("Resources") or {}).values():
        if resource.get("Type") != "AWS::ApiGateway::RestApi":
            continue
        body = (resource.get("Properties") or {}).get("Body") or {}
        for kind, response in (body.get("x-amazon-apigateway-gateway-responses") or {}).items():
            text = (response.get("responseTemplates") or {}).get("application/json")
            if isinstance(text, str):
                status = response.get("statusCode")
                found[kind] = GatewayResponse(int(status) if status else None, text)
    return found


# --- the server -----------------------------------------------------------------------------------------

_RAW_HEADERS = "ec2_isolation.raw_headers"  # the request's headers as sent: order, case and repeats kept
_BAD_LENGTH = "ec2_isolation.bad_content_length"


class _RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, plus what API Gateway needs that WSGI loses: the headers as sent, and
    conflicting or malformed `Content-Length` headers (refused rather than guessed)."""

    timeout = 60  # an idle or trickling client loses its thread after this
    server_version = "ec2-isolation-local"
    sys_version = ""

    def make_environ(self) -> WSGIEnvironment:
        environ = super().make_environ()
        environ[_RAW_HEADERS] = list(self.headers.items())
        lengths = self.headers.get_all("Content-Length") or []
        environ[_BAD_LENGTH] = len(set(lengths)) > 1 or not all(value.strip().isdigit() for value in lengths)
        return environ

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors before a request exists (bad request line, headers too long...): JSON too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # garbage, not HTTP/0.9: answer with a status line
        data = _json_body({"message": message or self.responses.get(code, ("Error",))[0]})
        with contextlib.suppress(OSError):  # the client is gone
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # ApiServer logs each request once, with its duration

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _Request(Request):
    max_content_length = MAX_PAYLOAD_BYTES


class _Response(Response):
    default_mimetype = None  # no Content-Type unless the handler gives one


def gateway_response(status: int, payload: dict[str, Any], *, close: bool = False) -> Response:
    """An answer of API Gateway itself (not of the function), JSON as the template's gateway responses."""
    headers = [("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4()))]
    if status == 403:
        headers.append(("x-amzn-ErrorType", "ForbiddenException"))
    if close:
        headers.append(("Connection", "close"))
    return _Response(_json_body(payload), status=status, headers=headers)


def _forbidden(problem: str) -> Response:
    """A missing or wrong key: 403, saying which (API Gateway says only "Forbidden")."""
    message = f"Forbidden: {API_KEY_HEADER} is {problem}"
    return gateway_response(
        403, {"message": message, "errors": [{"field": API_KEY_HEADER, "type": problem, "message": message}]}
    )


class ApiServer:
    """API Gateway in front of `handler`, on host:port (port 0: a free port), served by Werkzeug."""

    def __init__(
        self,
        *,
        handler: Handler,
        api_key: str,
        routes: Iterable[Route],
        context_factory: Callable[[], Any],
        host: str = "127.0.0.1",
        port: int = 0,
        stage: str = "local",
        account_id: str = "000000000000",
        openapi: Callable[[], str] | None = None,
    ) -> None:
        self.handler = handler
        self.api_key = api_key
        self.routes = tuple(routes)
        self.context_factory = context_factory
        self.stage = stage
        self.account_id = account_id
        self.openapi = openapi
        #: The template's gateway responses (`gateway_responses`), once the stack has read it.
        self.gateway_responses: Mapping[str, GatewayResponse] = {}
        # One execution environment: requests are read and answered concurrently, the handler runs one
        # at a time (Powertools' resolver keeps the current event on a module-level object, as Lambda
        # allows: one invocation per environment at a time).
        self.invocation = threading.Lock()
        # Bound here, so that a port in use is an OSError at once (Werkzeug would exit the process).
        with socket.create_server((host, port)) as bound:
            self._server = make_server(
                host, port, self._wsgi, threaded=True, request_handler=_RequestHandler, fd=bound.fileno()
            )
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    # --- one request ---

    def _gateway(self, kind: str, status: int, message: str, *, close: bool = False) -> Response:
        """API Gateway's own answer of type `kind` (status `status` unless its gateway response sets one),
        with the body the template's gateway response for it (or the default one) gives."""
        default = "DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX"
        response = self.gateway_responses.get(kind) or self.gateway_responses.get(default)
        if response is None:
            return gateway_response(status, {"message": message}, close=close)
        payload = response.render(message=message, response_type=kind)
        return gateway_response(response.status or status, payload, close=close)

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = _Request(environ)
        started = time.monotonic()
        try:
            response = self._answer(request)
        except Exception:  # never let client input take the server down
            log.exception("unexpected error serving %s %s", request.method, request.path)
            response = self._gateway("DEFAULT_5XX", 502, "Internal server error")
        log.info(
            "%s %s %s %.0fms",
            request.method,
            request.path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response(environ, start_response)

    def _key_problem(self, request: Request) -> str | None:
        given = request.headers.get(API_KEY_HEADER)
        if given is None:
            return "missing"
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self.api_key.encode()):
            return "wrong"
        return None

    def _answer(self, request: Request) -> Response:
        if request.environ[_BAD_LENGTH]:
            return self._gateway("BAD_REQUEST_BODY", 400, "Bad Content-Length", close=True)
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return self._gateway("REQUEST_TOO_LARGE", 413, "Request Too Long", close=True)
        except (BadRequest, OSError):  # a malformed chunked body, a client gone mid-body
            return self._gateway("BAD_REQUEST_BODY", 400, "Bad request body", close=True)

        split = urlsplit(request.environ.get("RAW_URI") or request.full_path)
        raw_path = split.path or "/"
        method = request.method.upper()

        if method == "GET" and raw_path == OPENAPI_PATH and self.openapi is not None:
            problem = self._key_problem(request)
            if problem:
                return _forbidden(problem)
            return _Response(self.openapi().encode("utf-8"), headers=[("Content-Type", "application/json")])

        match = match_route(self.routes, method, raw_path)
        if match is None:
            return self._gateway("MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token")
        problem = self._key_problem(request) if match.key_required else None
        if problem:
            return _forbidden(problem)

        event = build_event(
            method=method,
            raw_path=raw_path,
            query=split.query,
            headers=request.environ[_RAW_HEADERS],
            body=body,
            match=match,
            source_ip=request.remote_addr or "",
            stage=self.stage,
            account_id=self.account_id,
        )
        try:
            with self.invocation:
                result = self.handler(event, self.context_factory())
            status, headers, data = proxy_response(result)
        except Exception:
            log.exception("ingest handler failed on %s %s", method, match.resource)
            return self._gateway("DEFAULT_5XX", 502, "Internal server error")
        if data and not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/json"))
        headers.append(("x-amzn-RequestId", event["requestContext"]["requestId"]))
        return _Response(data, status=status, headers=headers)
