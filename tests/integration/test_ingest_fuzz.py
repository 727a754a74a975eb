"""Property-based fuzzing of the ingest API (issue 4): hypothesis drives real API Gateway REST proxy
events through `ingest.app.lambda_handler`, against one moto stack per test function.

Every answer is checked against invariants (never a 5xx, always JSON, a 4xx changes nothing and names a
field, a 202 makes exactly one record and one message) and against an oracle written from the contract
(the API's rules): the request is accepted if and only if the body is a UTF-8 JSON object of at most
10 KiB whose fields follow the rules (the region one of the aws partition's), sent as JSON, with a
well-formed Idempotency-Key if any.

Reproducible: `derandomize=True` fixes the examples per test, and no example database is written.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.loaders import create_loader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import MEMBER_ACCOUNT, MEMBER_REGION, OTHER_ACCOUNT, Stack
from tests.support.aws import Faults
from tests.support.events import api_event, lambda_context

pytestmark = pytest.mark.disable_socket

#: Examples per test; five tests, so over 1,000 generated cases in all.
EXAMPLES = {"json": 250, "fields": 300, "bytes": 200, "headers": 250, "routes": 200}


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


# --- the oracle: the API's rules, written independently of src/ ------------------------------------

MAX_BODY = 10 * 1024
REQUIRED = ("instance_id", "account_id", "region")
OPTIONAL_LIMITS = {"reason": 1024, "requested_by": 256}
PATTERNS = {
    "instance_id": re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?", re.ASCII),
    "account_id": re.compile(r"[0-9]{12}", re.ASCII),
    "region": re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]", re.ASCII),
}


#: The regions an isolation may target: the aws partition's, as botocore's data lists them.
REGIONS = frozenset(
    name
    for partition in create_loader().load_data("partitions")["partitions"]
    if partition["id"] == "aws"
    for name in partition["regions"]
    if PATTERNS["region"].fullmatch(name)
)


def matches(name: str, value: Any) -> bool:
    return isinstance(value, str) and PATTERNS[name].fullmatch(value) is not None


def region_known(value: Any) -> bool:
    return matches("region", value) and value in REGIONS


def conforms(value: Any) -> bool:
    """A request body that follows every rule of POST /isolate."""
    if not isinstance(value, dict) or set(value) - {*REQUIRED, *OPTIONAL_LIMITS}:
        return False
    if not all(name in value and matches(name, value[name]) for name in REQUIRED):
        return False
    if not region_known(value["region"]):
        return False
    return all(
        value.get(name) is None or (isinstance(value[name], str) and len(value[name]) <= limit)
        for name, limit in OPTIONAL_LIMITS.items()
    )


class _Invalid(Exception):
    pass


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise _Invalid("duplicate key")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise _Invalid(name)


def parse_body(data: bytes) -> tuple[bool, Any]:
    """(True, value) for a body that is strict UTF-8 JSON (no duplicate keys, no NaN/Infinity)."""
    try:
        return True, json.loads(
            data.decode("utf-8"), object_pairs_hook=_strict_object, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError, _Invalid):
        return False, None


def json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return True  # no (or an empty) header: the body is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def canonical(request: dict[str, Any]) -> str:
    return json.dumps({name: request.get(name) for name in (*REQUIRED, *OPTIONAL_LIMITS)}, sort_keys=True)


# --- the probe: one stack, every call checked ----------------------------------------------------


class Probe:
    """One stack, every call checked; a model of what the API has promised so far.

    (A plain class: hypothesis prints dataclasses field by field, and this one holds a whole stack.)
    """

    def __init__(self, stack: Stack, faults: Faults) -> None:
        self.stack = stack
        self.faults = faults
        self.cases = 0
        self.statuses: Counter[int] = Counter()
        #: (account, region, instance) → the isolation in flight (nothing ends during a fuzz run)
        self.active: dict[tuple[str, str, str], str] = {}
        #: Idempotency-Key → (canonical body, first answer)
        self.keys: dict[str, tuple[str, tuple[int, dict[str, Any]]]] = {}
        self.known_ids: list[str] = []
        self._state: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"Probe(cases={self.cases}, statuses={dict(self.statuses)})"

    def state(self) -> tuple[int, int, int]:
        """(record items, all items, messages on the queue)."""
        pks: list[str] = []
        params: dict[str, Any] = {"TableName": self.stack.table_name, "ProjectionExpression": "pk"}
        while True:
            page = self.stack.store.client.scan(**params)
            pks.extend(item["pk"]["S"] for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sum(pk.startswith("iso-") for pk in pks), len(pks), self.stack.queued()

    def call(self, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Invoke the handler and check the invariants that hold for every request."""
        from ingest.app import lambda_handler

        before = self._state or self.state()
        sends_before = self.faults.calls["sqs.SendMessage"]
        response = lambda_handler(event, lambda_context())
        self.cases += 1
        status = int(response["statusCode"])
        self.statuses[status] += 1
        after = self._state = self.state()
        sent = self.faults.calls["sqs.SendMessage"] - sends_before
        where = f"{event['httpMethod']} {event['path']} → {status} {response.get('body')!r:.300}"

        # Never a 5xx for client input, and every body is a JSON object, labelled as JSON
        assert status < 500, where
        body = json.loads(response["body"])
        assert isinstance(body, dict), where
        content_types = [
            *(v for k, v in (response.get("headers") or {}).items() if k.lower() == "content-type"),
            *(
                v
                for k, values in (response.get("multiValueHeaders") or {}).items()
                if k.lower() == "content-type"
                for v in values
            ),
        ]
        assert content_types and all(ct.startswith("application/json") for ct in content_types), where

        records, items, queued = (a - b for a, b in zip(after, before, strict=True))
        if 400 <= status < 500:
            # A rejected request changes nothing: no record, no slot, no key, no message
            assert (records, items, queued, sent) == (0, 0, 0, 0), where
            # ... and every 4xx has the API's one error shape: what is at fault is named
            assert isinstance(body.get("message"), str) and body["message"], where
            errors = body.get("errors")
            assert isinstance(errors, list) and errors, where
            assert all(isinstance(e, dict) and isinstance(e.get("field"), str) for e in errors), where
            assert all(isinstance(e.get("type"), str) and isinstance(e.get("message"), str) for e in errors)
            assert any(e["field"] for e in errors), where
        elif status == 202:
            # Accepted: exactly one new record, readable and QUEUED, and exactly one message
            assert (records, queued, sent) == (1, 1, 1), where
            assert body["status"] == "QUEUED" and body["status_url"] == f"/isolations/{body['isolation_id']}"
            record = self.stack.store.get(body["isolation_id"])
            assert record is not None and record.status.value == "QUEUED", where
            self.known_ids.append(body["isolation_id"])
        elif status == 200 and event["httpMethod"] == "POST":
            # Joined an isolation in flight: nothing new
            assert body.get("deduplicated") is True, where
            assert (records, queued, sent) == (0, 0, 0), where
        else:
            assert status == 200, where
            assert (records, items, queued, sent) == (0, 0, 0, 0), where
        return status, body

    def post(
        self,
        data: bytes | None,
        *,
        headers: dict[str, str] | None = None,
        as_base64: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """POST /isolate with exactly these bytes and headers, then the contract's oracle."""
        event = make_event("POST", "/isolate", data, headers=headers, as_base64=as_base64)
        status, body = self.call(event)
        self.expect(data, headers or {}, status, body)
        return status, body

    def expect(self, data: bytes | None, headers: dict[str, str], status: int, body: dict[str, Any]) -> None:
        """What the API's rules say this request gets."""
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        key = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
        where = f"{data!r:.200} {headers} → {status} {body}"
        size_ok = data is None or len(data) <= MAX_BODY
        parsed_ok, value = parse_body(data) if data else (False, None)

        if not size_ok:
            assert status in (413, 415), where
            return
        if not json_media_type(content_type):
            assert status == 415, where
            return
        if not (parsed_ok and conforms(value)) or (key is not None and not 1 <= len(key) <= 128):
            assert status in (400, 422), where
            return

        target = (value["account_id"], value["region"], value["instance_id"])
        if key is not None and key in self.keys:
            first_body, first_answer = self.keys[key]
            if first_body == canonical(value):
                assert (status, body) == first_answer, where  # the first answer, replayed
            else:
                assert status == 409, where
                assert "idempotency-key" in {e["field"].lower() for e in body["errors"]}, where
            return
        if target in self.active:
            assert status == 200, where
            assert body["isolation_id"] == self.active[target] and body["deduplicated"] is True, where
        else:
            assert status == 202, where
            self.active[target] = body["isolation_id"]
            record = self.stack.store.get(body["isolation_id"])
            assert record is not None
            assert (record.account_id, record.region, record.instance_id) == target, where
            assert (record.reason, record.requested_by) == (value.get("reason"), value.get("requested_by"))
        if key is not None:
            self.keys[key] = (canonical(value), (status, body))


def make_event(
    method: str,
    path: str,
    data: bytes | None,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    as_base64: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST proxy event with exactly these headers (plus the API key). Bodies that are
    not UTF-8 arrive base64-encoded, as API Gateway sends binary; `as_base64` forces that."""
    event = api_event(method, path, body=data, query=query)
    sent = {"x-api-key": "test-key", **(headers or {})}
    event["headers"] = sent
    event["multiValueHeaders"] = {k: [v] for k, v in sent.items()}
    if as_base64 and data is not None:
        event["body"] = base64.b64encode(data).decode()
        event["isBase64Encoded"] = True
    return event


@pytest.fixture
def probe(stack: Stack, faults: Faults, figures: Any, request: pytest.FixtureRequest) -> Iterator[Probe]:
    faults.count()
    checked = Probe(stack, faults)
    # Seed: an isolation already in flight, so dedup and the status routes have something to find
    checked.post(json.dumps(POOL_REQUESTS[0]).encode(), headers={"content-type": "application/json"})
    yield checked
    summary = ", ".join(f"{code}: {n}" for code, n in sorted(checked.statuses.items()))
    figures(
        "fuzz: ingest handler, real API Gateway events",
        f"{request.node.name}: {checked.cases} cases ({summary})",
    )


# --- strategies -------------------------------------------------------------------------------------

INSTANCES = ["i-0123456789abcdef0", "i-0a1b2c3d", "i-00000000000000001"]
POOL_REQUESTS = [
    {"instance_id": instance, "account_id": account, "region": MEMBER_REGION}
    for instance in INSTANCES
    for account in (MEMBER_ACCOUNT, OTHER_ACCOUNT)
]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)

valid_instance = st.one_of(
    st.sampled_from(INSTANCES), st.from_regex(r"i-[0-9a-f]{8}([0-9a-f]{9})?", fullmatch=True)
)
valid_account = st.one_of(
    st.sampled_from([MEMBER_ACCOUNT, OTHER_ACCOUNT]), st.from_regex(r"[0-9]{12}", fullmatch=True)
)
valid_region = st.one_of(st.sampled_from([MEMBER_REGION, "us-east-1"]), st.sampled_from(sorted(REGIONS)))
VALID_VALUES = {"instance_id": valid_instance, "account_id": valid_account, "region": valid_region}
#: Names with the form of a region that are not one of the partition's (typos, other partitions, made up).
unknown_regions = st.one_of(
    st.sampled_from(["eu-wset-1", "us-gov-west-1", "cn-north-1", "aws-global", "xx-" + "a" * 145 + "-1"]),
    st.from_regex(r"[a-z]{2}(-[a-z]{1,9}){1,2}-[0-9]", fullmatch=True),
)

UNICODE_DIGITS = "٠١٢٣٤٥٦٧٨٩०१२३४५६७८९０１２３４５６７８９"


def near_misses(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value, broken the ways people and attackers break them."""

    def unicode_digit(value: str, index: int) -> str:
        positions = [i for i, ch in enumerate(value) if ch.isdigit()]
        if not positions:
            return value + "١"
        at = positions[index % len(positions)]
        return value[:at] + UNICODE_DIGITS[int(value[at]) + 10 * (index % 3)] + value[at + 1 :]

    return st.one_of(
        valid.map(str.upper),
        valid.map(lambda v: v + "\n"),
        valid.map(lambda v: " " + v),
        valid.map(lambda v: v[:-1]),
        valid.map(lambda v: v + "0"),
        st.builds(unicode_digit, valid, st.integers(0, 30)),
    )


def field_value(name: str) -> st.SearchStrategy[Any]:
    if name == "region":
        return st.one_of(valid_region, valid_region, near_misses(valid_region), unknown_regions, json_scalars)
    if name in VALID_VALUES:
        valid = VALID_VALUES[name]
        return st.one_of(valid, valid, near_misses(valid), json_scalars, json_values)
    limit = OPTIONAL_LIMITS[name]
    return st.one_of(
        st.none(),
        st.text(max_size=40),
        st.integers(limit - 2, limit + 2).map(lambda n: "x" * n),
        st.integers(limit - 1, limit + 1).map(lambda n: "é" * n),
        json_scalars,
    )


def optional_value(name: str) -> st.SearchStrategy[Any]:
    limit = OPTIONAL_LIMITS[name]
    return st.one_of(
        st.none(),
        st.text(max_size=40),
        st.integers(limit - 2, limit).map(lambda n: "x" * n),
        st.integers(limit - 1, limit).map(lambda n: "é" * n),
    )


@st.composite
def request_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Conforming requests, requests with one field broken, missing or unknown, and free mixes."""
    mode = draw(st.sampled_from(["valid", "one-broken", "one-broken", "mix"]))
    body: dict[str, Any] = {}
    if mode == "mix":
        for name in (*REQUIRED, *OPTIONAL_LIMITS):
            if draw(st.integers(0, 3)):
                body[name] = draw(field_value(name))
    else:
        body = {name: draw(VALID_VALUES[name]) for name in REQUIRED}
        for name in OPTIONAL_LIMITS:
            if draw(st.booleans()):
                body[name] = draw(optional_value(name))
    if mode == "one-broken":
        name = draw(st.sampled_from([*REQUIRED, *OPTIONAL_LIMITS, "unknown"]))
        if name == "unknown":
            extra = draw(st.sampled_from(["steps", "reasons", "Instance_id", "instanceId", "", "__proto__"]))
            body[extra] = draw(json_scalars)
        elif draw(st.integers(0, 3)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(field_value(name))
    return body


content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "APPLICATION/JSON",
            "application/merge-patch+json",
            "application/vnd.api+json",
            "application/problem+json; charset=utf-8",
            " application/json ",
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/xml",
            "application/jsonx",
            "json",
            "",
        ]
    ),
    st.text(max_size=40),
)
idempotency_keys = st.one_of(
    st.sampled_from(["ticket-1", "ticket-2", "ticket-3"]),
    st.text(min_size=1, max_size=128),
    st.just(""),
    st.integers(129, 140).map(lambda n: "k" * n),
    st.just("k" * 128),
)


# --- the properties ----------------------------------------------------------------------------------


@fuzz_settings(EXAMPLES["json"])
@given(value=json_values, ensure_ascii=st.booleans())
def test_arbitrary_json_bodies(probe: Probe, value: Any, ensure_ascii: bool) -> None:
    # Given any JSON value at all (NaN and Infinity included, as Python would write them)
    data = json.dumps(value, ensure_ascii=ensure_ascii).encode()

    # When it is posted
    # Then the invariants hold, and it is accepted only if it is a conforming request
    probe.post(data, headers={"content-type": "application/json"})


@fuzz_settings(EXAMPLES["fields"])
@given(
    body=st.one_of(request_dicts(), st.lists(request_dicts(), min_size=1, max_size=2)),
    ensure_ascii=st.booleans(),
)
def test_request_fields_valid_and_invalid(probe: Probe, body: Any, ensure_ascii: bool) -> None:
    # Given a request with each field valid, broken, missing or unknown (sometimes wrapped in an array)
    data = json.dumps(body, ensure_ascii=ensure_ascii).encode()

    # When it is posted
    # Then it is accepted exactly when every field follows its rule; else a 4xx naming a field
    probe.post(data, headers={"content-type": "application/json"})


def _encodings(request: dict[str, Any], encoding: str) -> bytes:
    text = json.dumps({**request, "reason": "café ☕"}, ensure_ascii=False)
    return text.encode(encoding, errors="replace")


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda head, n: head + b"x" * n, st.binary(max_size=40), st.integers(MAX_BODY - 60, MAX_BODY + 60)
    ),
    st.builds(
        _encodings,
        st.sampled_from(POOL_REQUESTS),
        st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig", "utf-8"]),
    ),
    st.builds(
        lambda request, cut: json.dumps(request).encode()[:cut],
        st.sampled_from(POOL_REQUESTS),
        st.integers(0, 120),
    ),
    st.builds(
        lambda request, tail: json.dumps(request).encode() + tail,
        st.sampled_from(POOL_REQUESTS),
        st.binary(max_size=8),
    ),
    st.builds(
        lambda depth, request: b"[" * depth + json.dumps(request).encode() + b"]" * depth,
        st.one_of(st.sampled_from([1, 2, 31, 32, 33]), st.integers(0, 80)),
        st.sampled_from(POOL_REQUESTS),
    ),
)


@fuzz_settings(EXAMPLES["bytes"])
@given(data=raw_bodies, as_base64=st.booleans())
def test_random_bytes_bodies(probe: Probe, data: bytes, as_base64: bool) -> None:
    # Given random bytes, truncated or padded JSON, other encodings, deep arrays, bodies around 10 KiB,
    # sent as text or (as API Gateway does for binary) base64
    # When they are posted
    # Then the invariants hold, and only a conforming UTF-8 JSON object is accepted
    probe.post(data, headers={"content-type": "application/json"}, as_base64=as_base64)


@fuzz_settings(EXAMPLES["headers"])
@given(
    request=st.sampled_from(POOL_REQUESTS),
    reason=st.sampled_from([None, "first", "second"]),
    valid=st.integers(0, 5),
    content_type=st.one_of(st.none(), content_types),
    header_name=st.sampled_from(["content-type", "Content-Type", "CONTENT-TYPE"]),
    key=st.one_of(st.none(), idempotency_keys),
    key_name=st.sampled_from(["Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"]),
)
def test_random_headers(
    probe: Probe,
    request: dict[str, Any],
    reason: str | None,
    valid: int,
    content_type: str | None,
    header_name: str,
    key: str | None,
    key_name: str,
) -> None:
    # Given a request from a small pool (so keys and instances repeat), mostly valid, with any content
    # type and any Idempotency-Key
    body = {**request, "reason": reason} if valid else {**request, "instance_id": "i-bad"}
    headers = {}
    if content_type is not None:
        headers[header_name] = content_type
    if key is not None:
        headers[key_name] = key

    # When it is posted
    # Then JSON media types are read as JSON and others refused (415); a repeated key replays the first
    # answer or, with another body, is a 409; a key out of bounds is a 422 and is not remembered
    probe.post(json.dumps(body).encode(), headers=headers)


path_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40)
#: The query parameters each route takes (docs/api.md); a route not here takes none.
TAKES = {
    ("GET", "/isolations"): {"instance_id", "account_id", "status", "limit", "next"},
    ("GET", "/exemptions"): {"account_id"},
}
ROUTES = {("POST", "/isolate"), ("GET", "/isolations"), ("GET", "/isolations/{isolation_id}"),
          ("POST", "/isolations/{isolation_id}/release"), ("GET", "/console"), ("POST", "/exemptions"),
          ("GET", "/exemptions"), ("DELETE", "/exemptions/{exemption_id}")}  # fmt: skip
#: Names a person might type for them: near misses, other cases, and the real ones.
query_names = st.one_of(
    st.sampled_from(
        ["instance", "Status", "instanceId", "INSTANCE_ID", "limit ", "cursor", "status", "next"]
    ),
    st.sampled_from(["limit", "account_id", "instance_id", "account", "page", "", "query", "body"]),
    st.text(max_size=12),
)
query_values = st.one_of(
    st.sampled_from([*INSTANCES, MEMBER_ACCOUNT, OTHER_ACCOUNT, "", "i-01", "١١١١٢٢٢٢٣٣٣٣"]),
    valid_instance,
    valid_account,
    st.text(max_size=20),
)


@st.composite
def routes(draw: st.DrawFn, known: list[str]) -> tuple[str, str, dict[str, str] | None]:
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]))
    kind = draw(st.sampled_from(["record", "record", "history", "history", "other"]))
    query: dict[str, str] | None = None
    if kind == "record":
        segment = draw(
            st.one_of(
                st.sampled_from(known) if known else st.just("iso-" + "0" * 32),
                st.from_regex(r"iso-[0-9a-f]{32}", fullmatch=True),
                st.sampled_from(
                    ["x", "..", "iso-", "instance#111122223333#eu-west-1#i-0a1b2c3d", "idempotency#00"]
                ),
                path_text,
            )
        )
        path = f"/isolations/{segment}"
        query = draw(
            st.one_of(st.none(), st.none(), st.dictionaries(query_names, st.text(max_size=8), max_size=2))
        )
    elif kind == "history":
        path = "/isolations"
        query = draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries({}, optional={"instance_id": query_values, "account_id": query_values}),
                st.dictionaries(query_names, query_values, max_size=3),
            )
        )
    else:
        path = draw(
            st.one_of(
                st.sampled_from(
                    ["/", "/isolate", "/isolate/", "/isolations/", "/isolations/a/b", "/openapi.json"]
                ),
                path_text.map(lambda text: "/" + text),
            )
        )
    return method, path, query


@fuzz_settings(EXAMPLES["routes"])
@given(data=st.data())
def test_random_routes_and_methods(probe: Probe, data: st.DataObject) -> None:
    # Given any method on any path, with any query (sometimes a real isolation id)
    method, path, query = data.draw(routes(list(probe.known_ids)))
    event = make_event(method, path, None, query=query)

    # When it is called
    status, body = probe.call(event)

    # Then a parameter a route does not take is a 422 naming each (before anything is looked up)
    route = (method, event["resource"])
    unknown = set(query or {}) - TAKES.get(route, set())
    if route in ROUTES and unknown:
        assert status == 422, (route, query, body)
        named = {error["field"] for error in body["errors"] if error["type"] == "unknown_parameter"}
        assert named == {name or "query" for name in unknown}, (query, body)
        return
    # And only the contract's routes answer 2xx, with what they promise (a trailing slash is ignored)
    path = path.rstrip("/") or "/"
    if method == "GET" and path.startswith("/isolations/") and path[len("/isolations/") :] in probe.known_ids:
        assert status == 200 and body["isolation_id"] == path.rsplit("/", 1)[1], (path, body)
    elif method == "GET" and path == "/isolations":
        instance = (query or {}).get("instance_id")
        account = (query or {}).get("account_id")
        if instance is None and account is None:  # every instance's isolations, a page
            assert status == 200, (query, body)
            items = body["items"]
            assert len(items) <= 50 and "next" in body
            assert [i["created_at"] for i in items] == sorted((i["created_at"] for i in items), reverse=True)
        elif matches("instance_id", instance) and (account is None or matches("account_id", account)):
            assert status == 200, (query, body)
            items = body["items"]
            assert len(items) <= 50
            assert all(item["instance_id"] == instance for item in items)
            assert all(account is None or item["account_id"] == account for item in items)
            assert [i["created_at"] for i in items] == sorted((i["created_at"] for i in items), reverse=True)
        else:
            assert status in (400, 422), (query, body)
    elif method == "POST" and path == "/isolate":
        assert status in (400, 422), body  # no body
    else:
        assert status == 404, (method, path, body)
