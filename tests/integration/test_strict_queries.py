"""Query strings are as strict as bodies, on every route by one rule (docs/api.md): a parameter a route
does not take, misspelt or made up, is a 422 naming it (with the name it was probably meant as), a
parameter given twice is a 422 too, and a refused request lists every fault at once and changes nothing.
Before, `GET /isolations?instance=i-...` (for `instance_id`) and `?Status=FAILED` answered every
instance's isolations, of every status: a responder's script could act on the wrong list."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from tests.conftest import MEMBER_ACCOUNT, MEMBER_REGION, Stack
from tests.support.events import api_event

pytestmark = pytest.mark.disable_socket

INSTANCE = "i-0123456789abcdef0"
OTHER = "i-0fedcba9876543210"
VALID: dict[str, Any] = {"instance_id": INSTANCE, "account_id": MEMBER_ACCOUNT, "region": MEMBER_REGION}


def isolate(stack: Stack, instance_id: str) -> str:
    status, body = stack.api("POST", "/isolate", body={**VALID, "instance_id": instance_id})
    assert status == 202, body
    return str(body["isolation_id"])


def errors_by_field(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert isinstance(body["message"], str) and body["message"], body
    return {error["field"]: error for error in body["errors"]}


@pytest.mark.parametrize(
    ("given", "value", "meant"),
    [
        ("instance", INSTANCE, "instance_id"),
        ("Status", "FAILED", "status"),
        ("instanceId", INSTANCE, "instance_id"),
        ("INSTANCE_ID", INSTANCE, "instance_id"),
        ("cursor", "abc", "next"),
        ("limt", "5", "limit"),
        ("acount_id", MEMBER_ACCOUNT, "account_id"),
    ],
)
def test_a_misspelt_list_parameter_is_a_422_naming_it_and_the_name_meant(
    stack: Stack, given: str, value: str, meant: str
) -> None:
    # Given isolations of two instances
    isolate(stack, INSTANCE)
    isolate(stack, OTHER)

    # When the list is asked for with a misspelt parameter
    status, body = stack.api("GET", "/isolations", query={given: value})

    # Then 422 naming it, saying which parameters the route takes and which one was probably meant;
    # no list comes back
    assert status == 422, body
    error = errors_by_field(body)[given]
    assert error["type"] == "unknown_parameter", error
    assert f'did you mean "{meant}"?' in error["message"], error
    assert "instance_id, account_id, status, limit, next" in error["message"], error
    assert "items" not in body


def test_a_made_up_parameter_is_named_without_a_guess(stack: Stack) -> None:
    status, body = stack.api("GET", "/isolations", query={"sort": "desc"})

    assert status == 422, body
    error = errors_by_field(body)["sort"]
    assert error["type"] == "unknown_parameter" and "did you mean" not in error["message"], error


def test_a_repeated_parameter_is_a_422_not_its_last_value(stack: Stack) -> None:
    # Given isolations of two instances
    isolate(stack, INSTANCE)
    isolate(stack, OTHER)

    # When one parameter is given twice (API Gateway keeps the last in queryStringParameters)
    status, body = stack.api("GET", "/isolations", query=[("instance_id", OTHER), ("instance_id", INSTANCE)])

    # Then 422 naming it: neither value is picked silently
    assert status == 422, body
    error = errors_by_field(body)["instance_id"]
    assert error["type"] == "repeated_parameter" and "2 times" in error["message"], error


def test_every_fault_of_a_query_is_listed_at_once(stack: Stack) -> None:
    # When a query has a misspelt parameter, a bad limit and a repeated status
    status, body = stack.api(
        "GET", "/isolations", query=[("instance", INSTANCE), ("limit", "0"), ("status", "A"), ("status", "B")]
    )

    # Then each is named in one answer
    assert status == 422, body
    faults = errors_by_field(body)
    assert {name: error["type"] for name, error in faults.items()} == {
        "instance": "unknown_parameter",
        "limit": "greater_than_equal",
        "status": "repeated_parameter",
    }
    assert re.fullmatch(r"invalid request: instance, limit, status", body["message"]), body


@pytest.mark.parametrize(
    ("query", "faults"),
    [
        # a misspelt parameter and a cursor this API never answered
        ([("Status", "FAILED"), ("next", "zz")], {"Status": "unknown_parameter", "next": "invalid_cursor"}),
        # a bad status and a cursor this API never answered
        ([("status", "BOGUS"), ("next", "zz")], {"status": "enum", "next": "invalid_cursor"}),
        # account_id without instance_id, and a bad status
        ([("account_id", MEMBER_ACCOUNT), ("status", "BOGUS")], {"account_id": "misplaced", "status": "enum"}),
        # a malformed instance_id, and status beside it (which goes only without instance_id)
        ([("instance_id", "i-x"), ("status", "FAILED")], {"instance_id": "string_pattern_mismatch",
                                                           "status": "misplaced"}),
    ],
    ids=["misspelt-and-cursor", "status-and-cursor", "account-alone-and-status", "instance-and-status"],
)  # fmt: skip
def test_faults_of_parameters_together_are_listed_with_the_others(
    stack: Stack, query: list[tuple[str, str]], faults: dict[str, str]
) -> None:
    # When a query breaks a rule of one parameter and a rule of parameters together (or a cursor)
    status, body = stack.api("GET", "/isolations", query=query)

    # Then one answer names every fault, not the first kind found
    assert status == 422, body
    assert {name: error["type"] for name, error in errors_by_field(body).items()} == faults, body
    assert "items" not in body


def test_a_parameter_named_like_a_location_is_named_as_given(stack: Stack) -> None:
    # (pydantic's error locations start with "query" or "body": a parameter may have either name)
    status, body = stack.api("GET", "/isolations", query={"query": "x", "body": "y"})

    assert status == 422, body
    assert set(errors_by_field(body)) == {"query", "body"}


def test_a_query_on_a_route_that_takes_none_changes_nothing(stack: Stack) -> None:
    # When an isolation is asked for with a query parameter (POST /isolate takes none)
    status, body = stack.api("POST", "/isolate", body=VALID, query={"dry_run": "true"})

    # Then 422 naming it, saying the route takes none, and nothing is recorded or queued
    assert status == 422, body
    error = errors_by_field(body)["dry_run"]
    assert error["type"] == "unknown_parameter", error
    assert "POST /isolate takes none" in error["message"], error
    assert stack.queued() == 0
    status, listed = stack.api("GET", "/isolations")
    assert (status, listed["items"]) == (200, [])


def test_a_query_on_a_release_releases_nothing(stack: Stack) -> None:
    # Given an isolation
    isolation_id = isolate(stack, INSTANCE)
    before = stack.api("GET", f"/isolations/{isolation_id}")

    # When its release is asked for with a query parameter
    status, body = stack.api("POST", f"/isolations/{isolation_id}/release", query={"force": "1"})

    # Then 422 naming it, and the record is unchanged (not RELEASING, not refused as QUEUED: refused first)
    assert status == 422, body
    assert errors_by_field(body)["force"]["type"] == "unknown_parameter"
    assert stack.api("GET", f"/isolations/{isolation_id}") == before


def test_every_route_refuses_a_parameter_it_does_not_take(stack: Stack) -> None:
    # Given every route the API serves, as declared (a route added later is covered the same way)
    from ingest.app import ROUTES, handle
    from ingest.routing import parameters

    for route in ROUTES:
        path = re.sub(r"\{[^}]+\}", "iso-" + "0" * 32, route.resource)
        # When it is called with a parameter it does not take
        event = api_event(route.method, path, query={"zz_not_a_parameter": "1"})
        response = handle(event)

        # Then 422 naming that parameter, before anything else is looked at (no AWS call was needed)
        assert response.status_code == 422, (route.resource, response.body)
        assert '"field": "zz_not_a_parameter"' in response.body, (route.resource, response.body)
        assert "zz_not_a_parameter" not in parameters(route)


@pytest.mark.parametrize("name", ["key", "isolation"])
def test_the_pages_key_or_isolation_in_the_query_string_is_pointed_at_the_fragment(
    stack: Stack, name: str
) -> None:
    # When a responder opens the status page with the key (or an isolation) in the query string, where
    # it reaches the server, instead of the fragment, where it never does
    from ingest.app import handle

    response = handle(api_event("GET", "/console", query={name: "k"}))

    # Then 422 naming it, saying where it goes
    assert response.status_code == 422, response.body
    error = errors_by_field(json.loads(response.body))[name]
    assert error["type"] == "unknown_parameter", error
    assert f"give it in the fragment: /console#{name}=" in error["message"], error


def test_a_bad_account_and_an_unknown_region_are_both_reported(stack: Stack) -> None:
    # When a request has a malformed account id and a region of the right form that is not a region
    status, body = stack.api(
        "POST", "/isolate", body={**VALID, "account_id": 111122223333, "region": "eu-wset-1"}
    )

    # Then both are named in one answer
    assert status == 422, body
    faults = errors_by_field(body)
    assert {name: error["type"] for name, error in faults.items()} == {
        "account_id": "string_type",
        "region": "unknown_region",
    }
    assert body["message"] == "invalid request: account_id, region"
    assert stack.queued() == 0


def test_an_event_with_only_the_multi_value_map_is_read_the_same(stack: Stack) -> None:
    # Given an isolation, and an event that carries the query in multiValueQueryStringParameters only
    isolation_id = isolate(stack, INSTANCE)
    isolate(stack, OTHER)
    event = api_event("GET", "/isolations", query={"instance_id": INSTANCE})
    event["queryStringParameters"] = None

    # When it is handled
    from ingest.app import handle

    response = handle(event)

    # Then the filter holds: only that instance's isolation
    assert response.status_code == 200, response.body
    assert [item["isolation_id"] for item in json.loads(response.body)["items"]] == [isolation_id]
