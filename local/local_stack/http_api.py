"""The HTTP API of the local stack: what API Gateway (REST, Lambda proxy integration) does in front of
the ingest handler.

Each request becomes an API Gateway REST proxy (v1) event; the handler's proxy response becomes the
HTTP answer. API Gateway's own answers are reproduced with the bodies the template's gateway responses
give them (`{"message": ...}`):

- a path/method that is not one of the template's routes: 403 `Missing Authentication Token` (what
  API Gateway answers for an undefined resource or method, key or not);
- a missing or wrong `x-api-key`: 403 `Forbidden`;
- a payload over API Gateway's 10 MB: 413, refused from its Content-Length before it is read;
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
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

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


def match_route(routes: Iterable[Route], method: str, raw_path: str) -> Match | None:
    """The route of `method raw_path` (path still percent-encoded), or None as API Gateway would 403."""
    path = raw_path if raw_path == "/" else raw_path.rstrip("/") or "/"
    for route in routes:
        if route.method not in (method, "ANY"):
            continue
        found = route.pattern.match(path)
        if found:
            params = {name: unquote(value) for name, value in found.groupdict().items()}
            return Match(route.resource, params or None)
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


# --- the server -----------------------------------------------------------------------------------------


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer._Server
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle or trickling client loses its thread after this
    server_version = "ec2-isolation-local"
    sys_version = ""

    # Every method goes through one path; API Gateway decides by the route table, not by the verb.
    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _serve(self) -> None:
        started = time.monotonic()
        status = 500
        try:
            status = self._answer()
        except Exception:  # never let client input take the server down
            log.exception("unexpected error serving %s %s", self.command, self.path)
            status = self._send(502, [], _json_body({"message": "Internal server error"}))
        finally:
            log.info(
                "%s %s %s %.0fms",
                self.command,
                urlsplit(self.path).path,
                status,
                (time.monotonic() - started) * 1000,
            )

    def _answer(self) -> int:
        api = self.server.api
        try:
            body = self._read_body()
        except _BodyError as error:
            self.close_connection = True
            return self._send(error.status, [], _json_body({"message": error.message}), gateway=True)

        split = urlsplit(self.path)
        raw_path = split.path or "/"
        method = self.command.upper()

        if method == "GET" and raw_path == OPENAPI_PATH and api.openapi is not None:
            if not self._key_ok():
                return self._forbidden()
            return self._send(200, [("Content-Type", "application/json")], api.openapi().encode("utf-8"))

        match = match_route(api.routes, method, raw_path)
        if match is None:
            return self._send(403, [], _json_body({"message": "Missing Authentication Token"}), gateway=True)
        if not self._key_ok():
            return self._forbidden()

        event = build_event(
            method=method,
            raw_path=raw_path,
            query=split.query,
            headers=list(self.headers.items()),
            body=body,
            match=match,
            source_ip=self.client_address[0],
            stage=api.stage,
            account_id=api.account_id,
        )
        try:
            with api.invocation:
                result = api.handler(event, api.context_factory())
            status, headers, data = proxy_response(result)
        except Exception:
            log.exception("ingest handler failed on %s %s", method, match.resource)
            return self._send(502, [], _json_body({"message": "Internal server error"}), gateway=True)
        return self._send(status, headers, data, request_id=event["requestContext"]["requestId"])

    def _key_ok(self) -> bool:
        given = self.headers.get(API_KEY_HEADER)
        expected = self.server.api.api_key
        return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())

    def _forbidden(self) -> int:
        return self._send(403, [], _json_body({"message": "Forbidden"}), gateway=True)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return None
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise _BodyError(400, "Bad Content-Length")
        length = int(lengths[0])
        if length > MAX_PAYLOAD_BYTES:
            raise _BodyError(413, "Request Too Long")
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise _BodyError(400, "Incomplete request body")
        return data

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BodyError(400, "Bad chunked encoding") from exc
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_PAYLOAD_BYTES:
                raise _BodyError(413, "Request Too Long")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BodyError(400, "Incomplete request body")
            chunks.append(chunk)
            self.rfile.readline(8)

    def _send(
        self,
        status: int,
        headers: list[tuple[str, str]],
        data: bytes,
        *,
        gateway: bool = False,
        request_id: str | None = None,
    ) -> int:
        self.send_response(status)
        names = {name.lower() for name, _ in headers}
        if "content-type" not in names and (gateway or data):
            headers = [*headers, ("Content-Type", "application/json")]
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("x-amzn-RequestId", request_id or str(uuid.uuid4()))
        if gateway and status == 403:
            self.send_header("x-amzn-ErrorType", "ForbiddenException")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return status

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, headers too long...): JSON like every other answer."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # garbage, not HTTP/0.9: answer with a status line
        with contextlib.suppress(OSError):  # the client is gone
            self._send(code, [], _json_body({"message": message or self.responses.get(code, ("Error",))[0]}))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class ApiServer:
    """API Gateway in front of `handler`, on host:port (port 0: a free port)."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        api: ApiServer

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
        # One execution environment: requests are read and answered concurrently, the handler runs one
        # at a time (Powertools' resolver keeps the current event on a module-level object, as Lambda
        # allows: one invocation per environment at a time).
        self.invocation = threading.Lock()
        self._httpd = self._Server((host, port), _RequestHandler)
        self._httpd.api = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="local-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
