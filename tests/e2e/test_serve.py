"""`ec2-isolation serve --seed-demo` in a subprocess, used as a person would: HTTP in, EC2 state out."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from local_stack.demo_org import DemoOrg
from tests.e2e.helpers import Served, assert_isolated, demo_on, free_port, member_clients

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(120)]

STARTUP_SECONDS = 90
TERMINAL = ("ISOLATED", "FAILED", "SKIPPED")


@dataclass
class Server:
    served: Served
    url: str
    api_key: str
    aws_endpoint: str
    demo: DemoOrg

    def request(
        self, method: str, path: str, body: bytes | str | dict[str, Any] | None = None, **headers: str
    ) -> tuple[int, dict[str, str], Any]:
        data = (
            json.dumps(body).encode()
            if isinstance(body, dict)
            else body.encode()
            if isinstance(body, str)
            else body
        )
        all_headers = {"x-api-key": self.api_key, "content-type": "application/json"}
        all_headers.update({name.replace("_", "-"): value for name, value in headers.items()})
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={k: v for k, v in all_headers.items() if v}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                status, answer_headers, text = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, text = error.code, dict(error.headers), error.read()
        return status, answer_headers, json.loads(text)  # every answer is JSON

    def table_items(self) -> int:
        dynamodb = boto3.client("dynamodb")
        # (the isolation table: the stack's exemption table is another)
        (table,) = [
            name
            for name in dynamodb.list_tables()["TableNames"]
            if name.startswith("ec2-isolation-local") and "IsolationTable" in name
        ]
        return int(dynamodb.scan(TableName=table, Select="COUNT")["Count"])


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port()
    api_key = secrets.token_hex(16)
    served = Served("--host", "127.0.0.1", "--port", str(port), "--api-key", api_key, "--seed-demo")
    try:
        endpoint_line = served.wait_for_line("aws endpoint: ", STARTUP_SECONDS)
        ready = served.wait_for_line("ready on ", STARTUP_SECONDS)
        assert ready == f"ready on http://127.0.0.1:{port}"
        endpoint = endpoint_line.split()[2]
        with demo_on(endpoint) as demo:
            yield Server(served, f"http://127.0.0.1:{port}", api_key, endpoint, demo)
    finally:
        served.stop(signal.SIGKILL if served.process.poll() is None else signal.SIGTERM)


def test_the_banner_is_the_first_thing_printed(server: Server) -> None:
    # (seeding the demo is the stack's own work: no function log line comes before the banner)
    banner = next(i for i, line in enumerate(server.served.lines) if line.startswith("aws endpoint: "))
    before = [line for line in server.served.lines[:banner] if line.lstrip().startswith("{")]
    assert before == []


def _follow(server: Server, isolation_id: str, timeout: float = 30) -> tuple[list[str], dict[str, Any]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        status, _, record = server.request("GET", f"/isolations/{isolation_id}")
        assert status == 200, record
        if not seen or seen[-1] != record["status"]:
            seen.append(record["status"])
        if record["status"] in TERMINAL or time.monotonic() > deadline:
            return seen, record
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("label", "account"),
    [("web-1", 0), ("ipv6-1", 1), ("no-profile", 0)],
    ids=["two-enis-with-profile", "ipv6-vpc", "no-profile"],
)
def test_webhook_isolates_instance(server: Server, label: str, account: int) -> None:
    # Given a running demo instance with two network interfaces
    instance = server.demo.instance(label, account)
    assert len(instance.eni_ids) == 2

    # When a responder asks for its isolation over HTTP
    status, headers, body = server.request(
        "POST",
        "/isolate",
        {
            "instance_id": instance.instance_id,
            "account_id": instance.account_id,
            "region": instance.region,
            "reason": "e2e",
            "requested_by": "pytest",
        },
    )

    # Then it is accepted and queued, readable at once, and ends ISOLATED with its steps
    assert status == 202, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["status"] == "QUEUED"
    assert body["status_url"] == f"/isolations/{body['isolation_id']}"
    seen, record = _follow(server, body["isolation_id"])
    order = ["QUEUED", "IN_PROGRESS", "ISOLATED"]
    assert seen[-1] == "ISOLATED", (seen, record)
    assert all(state in order for state in seen) and seen == sorted(seen, key=order.index), seen
    assert [step["name"] for step in record["steps"]][:2] == ["ensure-isolation-sg", "swap-security-groups"]
    assert record["reason"] == "e2e" and record["requested_by"] == "pytest"

    # And the instance is isolated in its account
    assert_isolated(instance, record, source="webhook")
    status, _, listing = server.request("GET", f"/isolations?instance_id={instance.instance_id}")
    assert status == 200 and listing["items"][0]["isolation_id"] == record["isolation_id"]


@pytest.mark.parametrize("key", [None, "wrong-key"], ids=["missing-key", "wrong-key"])
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/isolate"), ("GET", "/isolations?instance_id=i-12345678")]
)
def test_api_key_is_required(server: Server, key: str | None, method: str, path: str) -> None:
    # Given a request without the right x-api-key
    body = {"instance_id": "i-12345678", "account_id": "111122223333", "region": "eu-west-1"}

    # When it is sent
    status, headers, answer = server.request(
        method, path, body if method == "POST" else None, x_api_key=key or ""
    )

    # Then API Gateway's answer: 403, JSON, saying what is wrong with the key
    assert status == 403
    assert headers["Content-Type"] == "application/json"
    problem = "wrong" if key else "missing"
    message = f"Forbidden: x-api-key is {problem}"
    assert answer == {
        "message": message,
        "errors": [{"field": "x-api-key", "type": problem, "message": message}],
    }


def test_unknown_route_is_a_json_403(server: Server) -> None:
    # When a path the API does not define is requested (with or without the key)
    status, _, answer = server.request("GET", "/admin")
    status_without_key, _, _ = server.request("DELETE", "/isolate", x_api_key="")

    # Then API Gateway's answer for an undefined resource or method, in the API's one error shape, as
    # the template's gateway response gives it
    assert status == 403
    assert answer["message"].startswith("no such route or method"), answer
    assert [(e["field"], e["type"]) for e in answer["errors"]] == [("path", "missing_authentication_token")]
    assert status_without_key == 403


BAD_BODIES = {
    "malformed-json": b'{"instance_id": "i-',
    "unknown-field": None,  # filled in with the demo instance
    "bad-instance-id": None,
    "not-utf8": b'{"instance_id": "\xff\xfe"}',
    "over-10-KiB": None,
    "json-array": b"[]",
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_body_is_a_json_4xx_and_nothing_is_queued(server: Server, case: str) -> None:
    # Given a demo instance that nothing else isolates, and a broken request naming it
    instance = server.demo.instance("web-3", 1)
    valid = {
        "instance_id": instance.instance_id,
        "account_id": instance.account_id,
        "region": instance.region,
    }
    bodies = {
        "unknown-field": json.dumps({**valid, "force": True}).encode(),
        "bad-instance-id": json.dumps({**valid, "instance_id": "i-XYZ"}).encode(),
        "over-10-KiB": json.dumps({**valid, "reason": "x" * 11_000}).encode(),
    }
    items_before = server.table_items()

    # When it is posted
    status, headers, answer = server.request("POST", "/isolate", bodies.get(case) or BAD_BODIES[case])

    # Then a 4xx with a JSON message, and nothing recorded or enqueued
    assert 400 <= status < 500, (status, answer)
    assert headers["Content-Type"].startswith("application/json")
    assert isinstance(answer.get("message"), str) and answer["message"]
    time.sleep(0.5)  # a message sent by mistake would be picked up by the worker by now
    status, _, listing = server.request("GET", f"/isolations?instance_id={instance.instance_id}")
    assert status == 200 and listing["items"] == []
    assert server.table_items() == items_before
    ec2, _ = member_clients(instance)
    tags = ec2.describe_instances(InstanceIds=[instance.instance_id])["Reservations"][0]["Instances"][0][
        "Tags"
    ]
    assert not [tag for tag in tags if tag["Key"].startswith("ec2-isolation:")]


def test_unknown_isolation_is_a_json_404(server: Server) -> None:
    for isolation_id in ("iso-" + "0" * 32, "nope", "%22%3Cscript%3E"):
        status, _, answer = server.request("GET", f"/isolations/{isolation_id}")
        assert status == 404 and "message" in answer


def test_openapi_document_is_served(server: Server) -> None:
    status, _, document = server.request("GET", "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    assert {"/isolate", "/isolations", "/isolations/{isolation_id}"} <= set(document["paths"])


def test_a_port_in_use_says_how_to_choose_another() -> None:
    # Given a port something else listens on
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # When the local stack is served there
        served = Served("--host", "127.0.0.1", "--port", str(port))
        code = served.process.wait(60)
        served.stop()

    # Then it exits 1 at once, saying how to pick another port
    output = "\n".join(served.lines)
    assert code == 1, output
    assert f"port {port} is taken" in output and "--port N" in output and "make run PORT=N" in output


def test_sigterm_stops_cleanly(server: Server) -> None:
    # Runs last in this module: the server stops here.
    # When the process gets SIGTERM
    code = server.served.stop(signal.SIGTERM, timeout=20)

    # Then it exits 0 without a traceback
    output = "\n".join(server.served.lines)
    assert code == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
