"""GET /isolations without an instance: every instance's isolations, newest first, a page at a time,
from an index (never a scan), with a cursor that cannot be forged into reading anything else."""

from __future__ import annotations

import base64
import json

import pytest
from tests.conftest import Stack
from tests.integration.test_worker import isolate, request_isolation
from tests.support.aws import Member, counting


def listing(stack: Stack, **query: str) -> tuple[int, dict]:
    return stack.api("GET", "/isolations", query=query)


@pytest.fixture
def five(stack: Stack, member: Member) -> list[str]:
    """Five isolations of four instances, oldest first: three ISOLATED, one FAILED, one QUEUED."""
    vpc = member.vpc()
    ids = [isolate(stack, member, member.instance(vpc))["isolation_id"] for _ in range(3)]
    ids.append(isolate(stack, member, "i-0000000000000000f")["isolation_id"])
    ids.append(request_isolation(stack, member, member.instance(vpc)))
    return ids


def test_newest_first_across_instances(stack: Stack, five: list[str]) -> None:
    # When the list is read with no parameter
    with counting() as calls:
        status, page = listing(stack)
    # Then every isolation is there, newest first, on one page, read from the index without a write
    assert status == 200 and [r["isolation_id"] for r in page["items"]] == five[::-1]
    assert page["next"] is None
    assert set(calls.calls) == {"dynamodb.Query"}


def test_pages_follow_each_other_without_gaps_or_repeats(stack: Stack, five: list[str]) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        query = {"limit": "2", **({"next": cursor} if cursor else {})}
        status, page = listing(stack, **query)
        assert status == 200 and len(page["items"]) <= 2
        seen.extend(r["isolation_id"] for r in page["items"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == five[::-1]


def test_status_filter(stack: Stack, five: list[str]) -> None:
    status, page = listing(stack, status="FAILED")
    assert status == 200 and [r["isolation_id"] for r in page["items"]] == [five[3]]
    status, page = listing(stack, status="ISOLATED", limit="2")
    assert [r["isolation_id"] for r in page["items"]] == [five[2], five[1]] and page["next"]
    status, rest = listing(stack, status="ISOLATED", limit="2", next=page["next"])
    assert [r["isolation_id"] for r in rest["items"]] == [five[0]] and rest["next"] is None


@pytest.mark.parametrize(
    ("query", "field", "code"),
    [
        ({"limit": "0"}, "limit", 422),
        ({"limit": "101"}, "limit", 422),
        ({"limit": "ten"}, "limit", 422),
        ({"status": "isolated"}, "status", 422),
        ({"status": "RELEASE"}, "status", 422),
        ({"next": "not a cursor"}, "next", 400),
        ({"next": base64.urlsafe_b64encode(b'{"before": "pk"}').decode()}, "next", 400),
        ({"next": base64.urlsafe_b64encode(b'{"before": "instance#111122223333"}').decode()}, "next", 400),
        ({"next": base64.urlsafe_b64encode(b"[1, 2]").decode()}, "next", 400),
        ({"instance_id": "i-0123456789abcdef0", "status": "FAILED"}, "status", 422),
        ({"instance_id": "i-0123456789abcdef0", "limit": "5"}, "limit", 422),
        ({"account_id": "111122223333"}, "account_id", 422),
    ],
)
def test_bad_parameters_are_named(stack: Stack, query: dict[str, str], field: str, code: int) -> None:
    status, body = listing(stack, **query)
    assert status == code, body
    assert field in [error["field"] for error in body["errors"]]


def test_a_forged_cursor_only_moves_the_position(stack: Stack, five: list[str]) -> None:
    # Given a well-formed cursor made up by a caller, placed after the third isolation
    _, everything = listing(stack)
    third = everything["items"][2]
    forged = base64.urlsafe_b64encode(
        json.dumps({"before": f"{third['created_at']}#{third['isolation_id']}"}).encode()
    ).decode()
    # When it is passed back
    status, page = listing(stack, next=forged)
    # Then it reads what the list itself would give after that record: records, nothing else
    assert status == 200 and [r["isolation_id"] for r in page["items"]] == five[::-1][3:]
