"""The OpenAPI document: the committed docs/openapi.json is what the code generates, and it is complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from ingest.openapi import document

pytestmark = pytest.mark.disable_socket

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
ROUTES = {
    ("post", "/isolate"),
    ("get", "/isolations/{isolation_id}"),
    ("get", "/isolations"),
    ("post", "/isolations/{isolation_id}/release"),
    ("post", "/exemptions"),
    ("get", "/exemptions"),
    ("delete", "/exemptions/{exemption_id}"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return dict(json.loads(document()))


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method, path): op for path, ops in doc["paths"].items() for method, op in ops.items()}


def schema_of(answer: dict[str, Any]) -> str | None:
    """The model of the answer's body (None: it has none)."""
    if "content" not in answer:
        return None
    return str(answer["content"]["application/json"]["schema"]["$ref"]).rsplit("/", 1)[1]


def test_the_committed_document_is_the_generated_one() -> None:
    # Given the document the code generates
    # Then docs/openapi.json holds exactly it (after changing the API, run `make openapi`)
    assert COMMITTED.read_text() == document(), "docs/openapi.json is stale: run `make openapi`"


def test_the_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate(doc)


def test_every_route_needs_the_api_key(doc: dict[str, Any]) -> None:
    # Then one scheme, the x-api-key header, applies to the whole API
    assert doc["components"]["securitySchemes"] == {
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}
    }
    assert doc["security"] == [{"apiKey": []}]
    assert all("403" in op["responses"] for op in operations(doc).values())


@pytest.mark.parametrize(
    ("route", "answers"),
    [
        (
            ("post", "/isolate"),
            {"200": "Accepted", "202": "Accepted"}
            | dict.fromkeys(("400", "403", "409", "413", "415", "422", "429", "503"), "ErrorBody"),
        ),
        (
            ("get", "/isolations/{isolation_id}"),
            # (422: a query parameter, which this route does not take)
            {"200": "IsolationRecord"} | dict.fromkeys(("403", "404", "422", "429", "503"), "ErrorBody"),
        ),
        (
            ("get", "/isolations"),
            {"200": "IsolationPage"} | dict.fromkeys(("400", "403", "422", "429", "503"), "ErrorBody"),
        ),
        (
            ("post", "/exemptions"),
            {"201": "Exemption", "409": "ExemptionRefused"}
            | dict.fromkeys(("400", "403", "413", "415", "422", "429", "503"), "ErrorBody"),
        ),
        (
            ("get", "/exemptions"),
            {"200": "ExemptionList"} | dict.fromkeys(("403", "422", "429", "503"), "ErrorBody"),
        ),
        (
            ("delete", "/exemptions/{exemption_id}"),
            {"204": None} | dict.fromkeys(("403", "404", "422", "429", "503"), "ErrorBody"),
        ),
    ],
)
def test_every_answer_is_documented_with_its_body(
    doc: dict[str, Any], route: tuple[str, str], answers: dict[str, str]
) -> None:
    # Given a route
    responses = operations(doc)[route]["responses"]

    # Then each status it can answer is there, described, with the model of its body
    assert {code: schema_of(answer) for code, answer in responses.items()} == answers
    assert all(answer["description"] for answer in responses.values())


def test_the_error_body_is_the_one_the_api_answers(doc: dict[str, Any]) -> None:
    # Then errors are {message, errors: [{field, type, message}]}, not Powertools' {detail: [...]}
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["message"]
    assert set(schemas["ErrorBody"]["properties"]) == {"message", "errors"}
    assert set(schemas["FieldError"]["required"]) == {"field", "type", "message"}
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas)


def test_only_the_api_routes_are_documented(doc: dict[str, Any]) -> None:
    assert set(operations(doc)) == ROUTES


def test_the_document_speaks_for_itself(doc: dict[str, Any]) -> None:
    # Then it refers to no document outside the repository
    assert "CONTRACT" not in json.dumps(doc)
