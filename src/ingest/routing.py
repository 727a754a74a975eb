"""The API's routes, declared once: `ingest.app` dispatches on them and `ingest.openapi` documents them.

A route names its method and resource (as the template declares them: API Gateway passes the resource
in the proxy event, so dispatch is a lookup), the models its inputs must satisfy (body, query string,
headers) and the answers it can give. `read` turns a proxy event into the route's validated inputs or
raises `Invalid` with pydantic's errors, each located (`body`, `query`, `header`, `path`) the way
`ingest.rules` tells them. This is all the routing a handler of a few routes needs: no framework on the
cold-start path (the OpenAPI machinery is imported only to write the document, never by the handler).

Query strings are as strict as bodies, for every route by the same rule: a route takes exactly the
parameters its `query` model declares (none without one), each once. A parameter it does not take is an
`unknown_parameter` error (with the name it probably meant, when one is close), a repeated one a
`repeated_parameter` error: a responder's script that misspells `instance_id` must not act on every
instance's list, and `?status=FAILED&status=ISOLATED` must not quietly mean the last one.
"""

from __future__ import annotations

import difflib
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
    #: None: the answer has no body (204).
    model: type[BaseModel] | None


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
    #: Rules on the body beyond its model's that need the deployment (the regions it admits): run on the
    #: parsed body with the model, so that every fault is listed at once. pydantic-shaped errors.
    body_rules: Callable[[Mapping[str, Any]], list[dict[str, Any]]] | None = None
    #: The query string's parameters; a route without one takes none.
    query: type[BaseModel] | None = None
    #: Rules on the query string beyond its model's (parameters that go together, a cursor): run on the
    #: parameters the route takes with the model, so that every fault is listed at once. pydantic-shaped
    #: errors whose messages are written (`ingest.rules.TOLD`).
    query_rules: Callable[[Mapping[str, Any]], list[dict[str, Any]]] | None = None
    headers: type[BaseModel] | None = None
    #: Path parameters and what they are.
    path: Mapping[str, str] = field(default_factory=dict)
    #: In the OpenAPI document (the status page is not part of the API).
    documented: bool = True
    #: What an input of this route must be, where it differs from `ingest.rules.EXPECTED`.
    expected: Mapping[str, str] = field(default_factory=dict)
    #: What a page takes in the URL's fragment (which never reaches a server), never in its query: one
    #: given in the query is refused saying where it goes.
    fragment: tuple[str, ...] = ()


class Invalid(Exception):
    """Inputs that break the route's models: pydantic's errors, located, and what the route's inputs
    must be where it differs from the usual (`Route.expected`)."""

    def __init__(self, errors: list[dict[str, Any]], expected: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{len(errors)} invalid input(s)")
        self.errors = errors
        self.expected = dict(expected or {})


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
        if route.body_rules is not None and isinstance(body, Mapping):
            errors.extend({**error, "loc": ("body", *error["loc"])} for error in route.body_rules(body))
    query = _query(route, event, errors)
    if route.query is not None:
        inputs["query"] = _validated(route.query, query, "query", errors)
    if route.query_rules is not None:
        errors.extend({**error, "loc": ("query", *error["loc"])} for error in route.query_rules(query))
    if route.headers is not None:
        inputs["headers"] = _validated(route.headers, _headers(route.headers, event), "header", errors)
    if errors:
        raise Invalid(errors, route.expected)
    return Request(**inputs)


def _body(event: Mapping[str, Any]) -> Any:
    content_type = header(event, "content-type").strip()
    if content_type and not content_type.startswith("application/json"):
        raise UnsupportedContentType(content_type)
    text = event.get("body")
    return None if text is None else parse(text)


def parameters(route: Route) -> dict[str, str]:
    """The query parameters `route` takes, by the name a caller uses, each with the name the model
    gives it in code (`next` is `cursor`)."""
    if route.query is None:
        return {}
    return {info.alias or name: name for name, info in route.query.model_fields.items()}


def _query(route: Route, event: Mapping[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The query parameters the route takes, each given once; an error for every other one.

    API Gateway passes both maps: `queryStringParameters` keeps the last value of a repeated name,
    `multiValueQueryStringParameters` every value (an event without it is read from the first)."""
    single = event.get("queryStringParameters") or {}
    multi = event.get("multiValueQueryStringParameters") or {name: [value] for name, value in single.items()}
    taken = parameters(route)
    query: dict[str, Any] = {}
    for name, values in multi.items():
        if name not in taken:
            errors.append(_unknown_parameter(route, name, taken))
        elif isinstance(values, list) and len(values) > 1:
            errors.append(
                {
                    "type": "repeated_parameter",
                    "loc": ("query", name),
                    "msg": f"{name} is given {len(values)} times: give it once",
                }
            )
        else:
            given = values[0] if isinstance(values, list) and values else values
            query[name] = single.get(name, given)
    return query


def _unknown_parameter(route: Route, name: str, taken: Mapping[str, str]) -> dict[str, Any]:
    where = f"{route.method} {route.resource}"
    if not taken:
        fragment = f"; give it in the fragment: {route.resource}#{name}=..." if name in route.fragment else ""
        return {
            "type": "unknown_parameter",
            "loc": ("query", name),
            "msg": f"{json.dumps(name)} is not a query parameter: {where} takes none{fragment}",
        }
    meant = _closest(name, taken)
    hint = f"; did you mean {json.dumps(meant)}?" if meant else ""
    return {
        "type": "unknown_parameter",
        "loc": ("query", name),
        "msg": f"{json.dumps(name)} is not a query parameter of {where} (it takes {', '.join(taken)}){hint}",
        "ctx": {"meant": meant} if meant else {},
    }


def _closest(name: str, taken: Mapping[str, str]) -> str | None:
    """The parameter `name` was probably meant as: the same but for case, the name the code gives it
    (`cursor` for `next`), or the closest spelling."""
    folded = name.strip().lower()
    for given, in_code in taken.items():
        if folded in (given.lower(), in_code.lower()):
            return given
    close = difflib.get_close_matches(folded, [given.lower() for given in taken], n=1, cutoff=0.6)
    return next((given for given in taken if close and given.lower() == close[0]), None)


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
