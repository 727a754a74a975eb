"""The served API answers as docs/openapi.json says: schemathesis generates requests from the committed
document and checks every answer against it (status documented for the route, body matching that
answer's schema, JSON, never a 5xx), through `ec2-isolation serve --seed-demo` as a client reaches it.
The records of a real isolation, and of a failed one, are checked against the document too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from local_stack.demo_org import DemoOrg
from tests.e2e.helpers import serve_demo

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(120)]

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
STARTUP_SECONDS = 90
#: Examples per operation (three operations): every documented answer is reached in about 10 s.
EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: Methods a route does not have, sent to see the answer: all of schemathesis' but TRACE and QUERY, which
#: the local stack's HTTP server does not implement (it answers 501 where API Gateway answers 403).
UNEXPECTED_METHODS = ["get", "put", "post", "delete", "options", "patch"]

schema = schemathesis.openapi.from_path(
    DOCUMENT,
    config=schemathesis.config.SchemathesisConfig.from_dict(
        {"phases": {"coverage": {"unexpected-methods": UNEXPECTED_METHODS}}}
    ),
)


@dataclass
class Api:
    url: str
    key: str
    demo: DemoOrg

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, self.url + path, headers={"x-api-key": self.key}, timeout=30, **kwargs
        )


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    with serve_demo(STARTUP_SECONDS) as served:
        yield Api(served.url, served.key, served.demo)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_the_documented_one(case: schemathesis.Case, api: Api) -> None:
    # Given a request generated from the committed document, with the key
    # When it is sent to the served API
    # Then the answer is one the document gives for the route, as the document says it
    case.call_and_validate(base_url=api.url, headers={"x-api-key": api.key}, checks=CHECKS)


def _finished(api: Api, isolation_id: str) -> requests.Response:
    deadline = time.monotonic() + 30
    while True:
        response = api.call("GET", f"/isolations/{isolation_id}")
        if response.json()["status"] not in ("QUEUED", "IN_PROGRESS") or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


@pytest.mark.parametrize(("label", "status"), [("web-2", "ISOLATED"), (None, "FAILED")])
def test_a_record_and_its_history_are_as_documented(api: Api, label: str | None, status: str) -> None:
    # Given an isolation of a demo instance, or of an instance that does not exist
    if label is None:
        target = {"instance_id": "i-0000000000000dead", "account_id": "111122223333", "region": "eu-west-1"}
    else:
        instance = api.demo.instance(label, 0)
        target = {
            "instance_id": instance.instance_id,
            "account_id": instance.account_id,
            "region": instance.region,
        }
    accepted = api.call("POST", "/isolate", json={**target, "reason": "conformance"})
    schema["/isolate"]["POST"].validate_response(accepted)

    # When it has ended, its record and the instance's history are read
    record = _finished(api, accepted.json()["isolation_id"])
    history = api.call("GET", "/isolations", params={"instance_id": target["instance_id"]})

    # Then both are what the document says (the record with its steps, prior state or error)
    assert record.json()["status"] == status, record.json()
    schema["/isolations/{isolation_id}"]["GET"].validate_response(record)
    schema["/isolations"]["GET"].validate_response(history)
    assert history.json()["items"][0] == record.json()
