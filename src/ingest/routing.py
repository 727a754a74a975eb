"""The API's routes, declared once: `ingest.app` dispatches on them and `ingest.openapi` documents them.

A route names its method and resource (as the template declares them: API Gateway passes the resource
in the proxy event, so dispatch is a lookup), the models its inputs must satisfy (body, query string,
headers) and the answers it can give. `read` turns a proxy event into the route's validated inputs or
raises `Invalid` with pydantic's errors, each located (`body`, `query`, `header`, `path`) the way
`ingest.rules` tells them. This is all the routing a handler of five routes needs: no framework on the
cold-start path (the OpenAPI machinery is imported only to write the document, never by the handler).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ingest.body_guard import header, parse


@dataclass(frozen=True)
class Answer:
    """One status a route can answer, and the model of its body."""

    description: str
    model: type[BaseModel]


@dataclass(frozen=True)
class Request:
    """A route's validated inputs and the proxy event they came from."""

    event: Mapping[str, Any]
    path: Mapping[str, str]
    body: Any = None
    query: Any = None
    headers: Any = None


@dataclass(frozen=True)
class Response:
    status_code: int
    body: str
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status_code: int, body: Mapping[str, Any]) -> Response:
        return cls(status_code, json.dumps(body))

    def proxy(self) -> dict[str, Any]:
        """The Lambda proxy response API Gateway expects."""
        headers = {"Content-Type": self.content_type, **self.headers}
        return {
            "statusCode": self.status_code,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "body": self.body,
            "isBase64Encoded": False,
        }


@dataclass(frozen=True)
class Route:
    method: str
    #: As in the template, e.g. `/isolations/{isolation_id}`.
    resource: str
    handler: Callable[[Request], Response]
    summary: str = ""
    description: str | None = None
    answers: Mapping[int, Answer] = field(default_factory=dict)
    body: type[BaseModel] | None = None
    #: False: a request without a body is read as an empty object (every field optional).
    body_required: bool = True
    body_examples: tuple[Mapping[str, Any], ...] = ()
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    #: Path parameters and what they are.
    path: Mapping[str, str] = field(default_factory=dict)
    #: In the OpenAPI document (the status page is not part of the API).
    documented: bool = True


class Invalid(Exception):
    """Inputs that break the route's models: pydantic's errors, located."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid input(s)")
        self.errors = errors


class UnsupportedContentType(Exception):
    pass


def find(routes: tuple[Route, ...], event: Mapping[str, Any]) -> Route | None:
    method, resource = event.get("httpMethod"), event.get("resource")
    return next((route for route in routes if (route.method, route.resource) == (method, resource)), None)


def read(route: Route, event: Mapping[str, Any]) -> Request:
    """The route's inputs from a proxy event whose body `body_guard.screen` passed."""
    errors: list[dict[str, Any]] = []
    inputs: dict[str, Any] = {"event": event, "path": dict(event.get("pathParameters") or {})}
    if route.body is not None:
        body = _body(event)
        if body is None and not route.body_required:
            body = {}
        inputs["body"] = _validated(route.body, body, "body", errors)
    if route.query is not None:
        query = dict(event.get("queryStringParameters") or {})
        inputs["query"] = _validated(route.query, query, "query", errors)
    if route.headers is not None:
        inputs["headers"] = _validated(route.headers, _headers(route.headers, event), "header", errors)
    if errors:
        raise Invalid(errors)
    return Request(**inputs)


def _body(event: Mapping[str, Any]) -> Any:
    content_type = header(event, "content-type").strip()
    if content_type and not content_type.startswith("application/json"):
        raise UnsupportedContentType(content_type)
    text = event.get("body")
    return None if text is None else parse(text)


def _validated(model: type[BaseModel], value: Any, where: str, errors: list[dict[str, Any]]) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            errors.append({**error, "loc": (where, *error["loc"])})
        return None


def _headers(model: type[BaseModel], event: Mapping[str, Any]) -> dict[str, str]:
    """The headers the model names (by alias; header names are case-insensitive)."""
    names = {(info.alias or name).lower(): info.alias or name for name, info in model.model_fields.items()}
    return {
        names[key.lower()]: value
        for key, value in (event.get("headers") or {}).items()
        if key.lower() in names and isinstance(value, str)
    }
