"""The API's OpenAPI document, generated from the routes and their answer models.

`docs/openapi.json` is this document, committed (`make openapi` writes it; a test fails when it drifts).
Built on demand, never at import: Powertools' OpenAPI models take tens of milliseconds to import, which
a cold start of the handler should not pay.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

from ingest.app import app

API_KEY_HEADER = "x-api-key"
#: The shared models' descriptions, in words for the API's readers (the models' docstrings are written
#: for the code's).
SCHEMA_DESCRIPTIONS = {
    "IsolationRequest": "Body of POST /isolate. Unknown fields are rejected.",
    "IsolationRecord": "Everything one isolation did and found, updated after every step (docs/record.md).",
}
_POWERTOOLS_422 = "#/components/schemas/HTTPValidationError"
DESCRIPTION = (
    "Isolate a potentially compromised EC2 instance in any account of the AWS Organization, and read "
    "back the record of everything that was done. Every route needs the API key in `x-api-key`; "
    "docs/api.md is the reference."
)


def document() -> str:
    """The OpenAPI document as JSON text (what `docs/openapi.json` holds)."""
    generated = app.get_openapi_json_schema(
        title="ec2-isolation",
        version="1",
        description=DESCRIPTION,
        security_schemes={"apiKey": APIKey(name=API_KEY_HEADER, in_=APIKeyIn.header)},
        security=[{"apiKey": []}],
    )
    doc = _without_powertools_defaults(json.loads(generated))
    for name, description in SCHEMA_DESCRIPTIONS.items():
        doc["components"]["schemas"][name]["description"] = description
    return json.dumps(doc, indent=2) + "\n"


def _without_powertools_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """Powertools gives every route a 422 of its own shape (`HTTPValidationError`) and adds that shape to
    the components; this API answers every error with `ErrorBody`, and declares its 422s itself. Drop
    those answers, then every component schema nothing refers to."""
    for operation in (op for ops in doc["paths"].values() for op in ops.values()):
        operation["responses"] = {
            code: answer
            for code, answer in operation["responses"].items()
            if _POWERTOOLS_422 not in json.dumps(answer)
        }
    schemas = doc["components"]["schemas"]
    wanted: set[str] = set()
    pending: list[Any] = [doc["paths"]]
    while pending:
        for name in re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(pending.pop())):
            if name not in wanted:
                wanted.add(name)
                pending.append(schemas[name])
    doc["components"]["schemas"] = {name: schemas[name] for name in sorted(wanted)}
    return doc
