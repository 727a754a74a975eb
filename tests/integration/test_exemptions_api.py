"""POST /exemptions, GET /exemptions, DELETE /exemptions/{exemption_id} through the ingest handler, on
the table template.yaml declares; and the `EC2 Isolation Exemption` events each change puts on the bus."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from tests.conftest import MEMBER_ACCOUNT, OTHER_ACCOUNT, STACK_REGION, Stack

from shared.exemptions import Exemption
from shared.store.exemptions import ExemptionStore, active_key

INSTANCE = "i-0123456789abcdef0"
OTHER_INSTANCE = "i-0fedcba9876543210"


def later(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def body(**fields: Any) -> dict[str, Any]:
    return {
        "account_id": MEMBER_ACCOUNT,
        "instance_id": INSTANCE,
        "reason": "load test of the payment service",
        "expires_at": later(days=7),
        **fields,
    }


def exemption_store() -> ExemptionStore:
    import os

    return ExemptionStore(
        os.environ["EXEMPTION_TABLE_NAME"], client=boto3.client("dynamodb", region_name=STACK_REGION)
    )


@pytest.fixture
def exemption_events(stack: Stack) -> Any:
    """The exemption events put on the stack's bus, read from a queue a rule feeds."""
    events = boto3.client("events", region_name=STACK_REGION)
    url = stack.sqs.create_queue(QueueName="exemption-events")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="exemptions",
        EventBusName="ec2-isolation-test",
        EventPattern=json.dumps({"source": ["ec2-isolation"], "detail-type": ["EC2 Isolation Exemption"]}),
    )
    events.put_targets(
        Rule="exemptions", EventBusName="ec2-isolation-test", Targets=[{"Id": "q", "Arn": arn}]
    )

    def received() -> list[dict[str, Any]]:
        found = []
        while messages := stack.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                found.append(json.loads(message["Body"]))
                stack.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return found

    return received


def test_an_exemption_is_created_listed_and_announced(stack: Stack, exemption_events: Any) -> None:
    # Given a valid request
    request = body(requested_by="soc-oncall@example.com")

    # When it is posted
    status, created = stack.api("POST", "/exemptions", body=request)

    # Then it is created with an id, as asked
    assert status == 201, created
    assert created["exemption_id"].startswith("exm-") and len(created["exemption_id"]) == 36
    assert set(created) == {
        "exemption_id",
        "account_id",
        "instance_id",
        "reason",
        "expires_at",
        "created_at",
        "requested_by",
    }
    assert created["account_id"] == MEMBER_ACCOUNT and created["instance_id"] == INSTANCE
    assert created["reason"] == request["reason"] and created["requested_by"] == "soc-oncall@example.com"
    assert created["expires_at"] == request["expires_at"].replace("Z", ".000Z")

    # And it is listed, with and without the account
    for query in ({}, {"account_id": MEMBER_ACCOUNT}):
        status, listed = stack.api("GET", "/exemptions", query=query)
        assert status == 200 and listed == {"items": [created]}
    status, listed = stack.api("GET", "/exemptions", query={"account_id": OTHER_ACCOUNT})
    assert status == 200 and listed == {"items": []}

    # And an event on the stack's bus tells of it
    [event] = exemption_events()
    assert event["source"] == "ec2-isolation" and event["detail-type"] == "EC2 Isolation Exemption"
    assert event["detail"] == {**created, "change": "created"}


def test_deployed_the_creator_is_the_callers_authenticated_arn(stack: Stack) -> None:
    # Given a SigV4-signed request (API Gateway fills in the caller's ARN) that names someone else
    caller = "arn:aws:sts::123456789012:assumed-role/SocResponder/alice"

    # When it is posted
    status, created = stack.api("POST", "/exemptions", body=body(requested_by="bob"), user_arn=caller)

    # Then the exemption names the caller
    assert status == 201 and created["requested_by"] == caller


@pytest.mark.parametrize(
    ("fields", "field", "kind"),
    [
        ({"account_id": "12345678901"}, "account_id", "string_pattern_mismatch"),
        ({"account_id": 111122223333}, "account_id", "string_type"),
        ({"instance_id": "i-XYZ"}, "instance_id", "string_pattern_mismatch"),
        ({"instance_id": "sg-0123456789abcdef0"}, "instance_id", "string_pattern_mismatch"),
        ({"reason": ""}, "reason", "string_too_short"),
        ({"reason": "x" * 1025}, "reason", "string_too_long"),
        ({"reason": None}, "reason", "string_type"),
        ({"requested_by": "x" * 257}, "requested_by", "string_too_long"),
        ({"expires_at": "next tuesday"}, "expires_at", "iso8601_utc"),
        ({"expires_at": "2099-01-01"}, "expires_at", "iso8601_utc"),
        ({"expires_at": "2026-01-01T00:00:00"}, "expires_at", "iso8601_utc"),
        ({"expires_at": "2026-01-01T00:00:00+02:00"}, "expires_at", "iso8601_utc"),
        ({"expires_at": 1798761600}, "expires_at", "string_type"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "expires_in_past"),
        ({"expires_at": "LATER_91"}, "expires_at", "expires_too_late"),
        ({"dry_run": True}, "dry_run", "extra_forbidden"),
    ],
)
def test_every_bad_field_is_named_and_nothing_is_stored(
    stack: Stack, exemption_events: Any, fields: dict[str, Any], field: str, kind: str
) -> None:
    # Given a request with one bad field
    if fields.get("expires_at") == "LATER_91":
        fields = {"expires_at": later(days=90, hours=1)}

    # When it is posted
    status, answer = stack.api("POST", "/exemptions", body=body(**fields))

    # Then it is refused, naming the field, in the API's one error shape
    assert status == 422, answer
    assert set(answer) == {"message", "errors"}
    assert [(error["field"], error["type"]) for error in answer["errors"]] == [(field, kind)]
    assert field in answer["message"] and answer["errors"][0]["message"]
    # And nothing is stored or announced
    assert stack.api("GET", "/exemptions")[1] == {"items": []}
    assert exemption_store().active_for(MEMBER_ACCOUNT, INSTANCE) is None
    assert exemption_events() == []


@pytest.mark.parametrize("missing", ["account_id", "instance_id", "reason", "expires_at"])
def test_every_required_field_is_named_when_missing(stack: Stack, missing: str) -> None:
    request = body()
    del request[missing]
    status, answer = stack.api("POST", "/exemptions", body=request)
    assert status == 422
    assert [(error["field"], error["type"]) for error in answer["errors"]] == [(missing, "missing")]


def test_ninety_days_ahead_is_allowed(stack: Stack) -> None:
    status, created = stack.api("POST", "/exemptions", body=body(expires_at=later(days=89, hours=23)))
    assert status == 201, created


def test_a_body_that_is_not_json_is_refused(stack: Stack) -> None:
    status, answer = stack.api("POST", "/exemptions", body="{not json")
    assert status == 400 and set(answer) >= {"message"}
    assert stack.api("GET", "/exemptions")[1] == {"items": []}


def test_a_second_exemption_of_an_instance_is_refused_naming_the_first(
    stack: Stack, exemption_events: Any
) -> None:
    # Given an instance with an active exemption
    _, first = stack.api("POST", "/exemptions", body=body())
    exemption_events()

    # When a second one is asked for
    status, answer = stack.api("POST", "/exemptions", body=body(reason="another"))

    # Then it is refused, naming the first; nothing changes
    assert status == 409, answer
    assert answer["exemption_id"] == first["exemption_id"]
    assert first["exemption_id"] in answer["message"]
    assert answer["errors"][0]["field"] == "instance_id"
    assert stack.api("GET", "/exemptions")[1] == {"items": [first]}
    assert exemption_events() == []

    # And another instance of the account can be exempted
    status, _ = stack.api("POST", "/exemptions", body=body(instance_id=OTHER_INSTANCE))
    assert status == 201


def test_two_racing_creations_make_one_exemption(stack: Stack) -> None:
    # Given two requests for the same instance, each past the other's read (the write decides)
    store = exemption_store()
    from shared.exemptions import ExemptionRequest
    from shared.store.exemptions import AlreadyExempt

    request = ExemptionRequest.model_validate(body())
    first, second = Exemption.of(request, requested_by=None), Exemption.of(request, requested_by=None)

    # When both are written
    outcomes = [store.create(first), store.create(second)]

    # Then one is created and the other names it
    assert outcomes[0] == first
    assert isinstance(outcomes[1], AlreadyExempt) and outcomes[1].exemption == first
    assert store.get(second.exemption_id) is None


def test_a_deleted_exemption_is_kept_with_who_and_when(stack: Stack, exemption_events: Any) -> None:
    # Given an active exemption
    _, created = stack.api("POST", "/exemptions", body=body())
    exemption_events()
    caller = "arn:aws:sts::123456789012:assumed-role/SocResponder/alice"

    # When it is deleted
    status, answer = stack.api("DELETE", f"/exemptions/{created['exemption_id']}", user_arn=caller)

    # Then it is no longer listed, nor the instance's active one
    assert status == 204 and answer == {}
    assert stack.api("GET", "/exemptions")[1] == {"items": []}
    assert exemption_store().active_for(MEMBER_ACCOUNT, INSTANCE) is None
    # And it is kept, saying who deleted it and when
    kept = exemption_store().get(created["exemption_id"])
    assert kept is not None and kept.served().model_dump() == created
    assert kept.deleted_by == caller and kept.deleted_at
    # And an event tells of it
    [event] = exemption_events()
    assert event["detail"] == {
        **created,
        "deleted_at": kept.deleted_at,
        "deleted_by": caller,
        "change": "deleted",
    }

    # And deleting it again changes nothing
    status, _ = stack.api("DELETE", f"/exemptions/{created['exemption_id']}")
    assert status == 204
    assert exemption_store().get(created["exemption_id"]) == kept
    assert exemption_events() == []

    # And the instance can be exempted again
    status, again = stack.api("POST", "/exemptions", body=body())
    assert status == 201 and again["exemption_id"] != created["exemption_id"]


@pytest.mark.parametrize(
    "exemption_id",
    ["exm-0123456789abcdef0123456789abcdef", "exm-nope", "iso-0123456789abcdef0123456789abcdef"],
)
def test_deleting_an_unknown_exemption_is_404(stack: Stack, exemption_id: str) -> None:
    status, answer = stack.api("DELETE", f"/exemptions/{exemption_id}")
    assert status == 404 and answer["message"] == "exemption not found"
    assert [(error["field"], error["type"]) for error in answer["errors"]] == [("exemption_id", "not_found")]


def test_an_exemption_id_never_reaches_another_item(stack: Stack) -> None:
    # Given an active exemption: its instance's active item has a key of its own
    _, created = stack.api("POST", "/exemptions", body=body())

    # When that key is passed as an id
    status, _ = stack.api("DELETE", f"/exemptions/{active_key(MEMBER_ACCOUNT, INSTANCE)}")

    # Then it is unknown, and the exemption stands
    assert status == 404
    assert stack.api("GET", "/exemptions")[1] == {"items": [created]}


def test_an_expired_exemption_is_omitted_kept_and_replaceable(stack: Stack) -> None:
    # Given an exemption that has expired (written as it was, a week ago)
    store = exemption_store()
    expired = Exemption(
        exemption_id="exm-" + "a" * 32,
        account_id=MEMBER_ACCOUNT,
        instance_id=INSTANCE,
        reason="last week's test",
        expires_at=(datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        created_at=(datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
    )
    assert store.create(expired) == expired

    # Then it is not listed, and not the instance's active one
    assert stack.api("GET", "/exemptions")[1] == {"items": []}
    assert store.active_for(MEMBER_ACCOUNT, INSTANCE) is None

    # And a new exemption of the instance is created; the expired one is kept and can still be deleted
    status, created = stack.api("POST", "/exemptions", body=body())
    assert status == 201
    assert store.get(expired.exemption_id) is not None
    assert stack.api("DELETE", f"/exemptions/{expired.exemption_id}")[0] == 204
    # (its deletion leaves the newer one active)
    assert stack.api("GET", "/exemptions")[1] == {"items": [created]}
    kept = store.get(expired.exemption_id)
    assert kept is not None and kept.deleted_at


def test_an_unknown_query_parameter_is_refused(stack: Stack) -> None:
    status, answer = stack.api("GET", "/exemptions", query={"acount_id": MEMBER_ACCOUNT})
    assert status == 422 and answer["errors"][0]["field"] == "acount_id"
    assert (
        answer["errors"][0]["type"] == "unknown_parameter" and "account_id" in answer["errors"][0]["message"]
    )
    status, answer = stack.api("GET", "/exemptions", query={"account_id": "1234"})
    assert status == 422 and answer["errors"][0]["field"] == "account_id"


def test_exemptions_are_not_isolation_records(stack: Stack) -> None:
    # Given an exemption
    stack.api("POST", "/exemptions", body=body())

    # Then no isolation query reads it as a record
    assert stack.api("GET", "/isolations")[1]["items"] == []
    assert stack.api("GET", "/isolations", query={"instance_id": INSTANCE})[1]["items"] == []
