"""The API's OpenAPI document, generated from the routes (`ingest.app.ROUTES`) and their models.

`docs/openapi.json` is this document, committed (`make openapi` writes it; a test fails when it drifts).
Only `make openapi` and the tests import this module: the handler never builds the document.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from ingest.app import ROUTES
from ingest.routing import Answer, Route

API_KEY_HEADER = "x-api-key"
REF = "#/components/schemas/{model}"
#: The shared models' descriptions, in words for the API's readers (the models' docstrings are written
#: for the code's).
SCHEMA_DESCRIPTIONS = {
    "IsolationRequest": "Body of POST /isolate. Unknown fields are rejected.",
    "IsolationRecord": "Everything one isolation did and found, updated after every step (docs/record.md).",
}
DESCRIPTION = (
    "Isolate a potentially compromised EC2 instance in any account of the AWS Organization, and read "
    "back the record of everything that was done. Every route needs the API key in `x-api-key`; "
    "docs/api.md is the reference."
)


def document() -> str:
    """The OpenAPI document as JSON text (what `docs/openapi.json` holds)."""
    routes = [route for route in ROUTES if route.documented]
    bodies: set[tuple[type[BaseModel], JsonSchemaMode]] = {
        (route.body, "validation") for route in routes if route.body is not None
    }
    answers: set[tuple[type[BaseModel], JsonSchemaMode]] = {
        (answer.model, "serialization")
        for route in routes
        for answer in route.answers.values()
        if answer.model is not None
    }
    models = sorted(bodies | answers, key=lambda pair: pair[0].__name__)
    _, components = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = components.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.resource, {})[route.method.lower()] = _operation(route, schemas)
    for name, description in SCHEMA_DESCRIPTIONS.items():
        schemas[name]["description"] = description
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "ec2-isolation", "description": DESCRIPTION, "version": "1"},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": _referenced(paths, schemas),
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}},
        },
        "security": [{"apiKey": []}],
    }
    return json.dumps(doc, indent=2) + "\n"


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary}
    if route.description:
        operation["description"] = route.description
    parameters = [
        {"name": name, "in": "path", "required": True, "description": text, "schema": {"type": "string"}}
        for name, text in route.path.items()
    ]
    for model, where in ((route.query, "query"), (route.headers, "header")):
        if model is not None:
            parameters += _parameters(model, where, schemas)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schema: dict[str, Any] = {"$ref": REF.format(model=route.body.__name__)}
        if route.body_examples:
            schema["examples"] = list(route.body_examples)
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    operation["responses"] = {str(code): _response(answer) for code, answer in sorted(route.answers.items())}
    return operation


def _response(answer: Answer) -> dict[str, Any]:
    if answer.model is None:  # no body (204)
        return {"description": answer.description}
    return {
        "description": answer.description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=answer.model.__name__)}}},
    }


def _parameters(model: type[BaseModel], where: str, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """One parameter per field of a query or header model (its types go to the components)."""
    schema = model.model_json_schema(ref_template=REF, by_alias=True)
    schemas.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": where,
            "required": name in required,
            "description": field.get("description", ""),
            "schema": field,
        }
        for name, field in schema["properties"].items()
    ]


def _referenced(paths: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """The component schemas the paths refer to, directly or through each other."""
    wanted: set[str] = set()
    pending: list[Any] = [paths]
    while pending:
        for name in re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(pending.pop())):
            if name not in wanted:
                wanted.add(name)
                pending.append(schemas[name])
    return {name: schemas[name] for name in sorted(wanted)}
