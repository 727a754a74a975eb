"""CloudTrail calls read from AWS's documented event shapes (tests/events/cloudtrail-*.json): which
resources each names, and which calls cannot undo an isolation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.messages import Ignored, InvalidMessage, parse_tamper

pytestmark = pytest.mark.disable_socket

EVENTS = Path(__file__).resolve().parents[1] / "events"
INSTANCE = "i-0123456789abcdef0"
GROUP = "sg-0fedcba9876543210"


def _body(name: str, **request: Any) -> str:
    event = json.loads((EVENTS / name).read_text())
    if request:
        event["detail"]["requestParameters"] = request
    return json.dumps(event)


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("cloudtrail-modify-instance-attribute.json", {"instance_ids": (INSTANCE,)}),
        ("cloudtrail-register-targets.json", {"instance_ids": (INSTANCE,)}),
        ("cloudtrail-attach-instances.json", {"instance_ids": (INSTANCE,)}),
        # its request names the association only: the instance is in the response
        ("cloudtrail-replace-iam-instance-profile-association.json", {"instance_ids": (INSTANCE,)}),
        (
            "cloudtrail-modify-network-interface-attribute.json",
            {"network_interface_ids": ("eni-0a1b2c3d4e5f60718",)},
        ),
        ("cloudtrail-authorize-security-group-ingress.json", {"security_group_ids": (GROUP,)}),
        ("cloudtrail-authorize-security-group-egress.json", {"security_group_ids": (GROUP,)}),
        # the group is in the nested request CloudTrail records for it
        ("cloudtrail-modify-security-group-rules.json", {"security_group_ids": (GROUP,)}),
        ("cloudtrail-create-tags.json", {"instance_ids": (INSTANCE,), "security_group_ids": ()}),
        ("cloudtrail-delete-tags.json", {"instance_ids": (), "security_group_ids": (GROUP,)}),
        # no tag list: every tag removed
        ("cloudtrail-delete-tags-all.json", {"instance_ids": (INSTANCE,)}),
        ("cloudtrail-delete-snapshot.json", {"snapshot_id": "snap-0123456789abcdef0"}),
        ("cloudtrail-delete-role-policy.json", {"role_name": "app", "region": "us-east-1"}),
    ],
)
def test_each_call_names_the_resources_it_touched(name: str, named: dict[str, Any]) -> None:
    # Given a documented CloudTrail event of the call
    call = parse_tamper(_body(name))
    # Then it names the resources of the call, the caller and the event
    for field, value in named.items():
        assert getattr(call, field) == value, field
    assert call.account_id == "222222222222"
    assert call.caller_arn == "arn:aws:sts::222222222222:assumed-role/Admin/jdoe"
    assert call.issuer_arn == "arn:aws:iam::222222222222:role/Admin"
    assert call.trigger["event_id"] == call.event_id and call.trigger["event_name"] == call.event_name


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        # an attribute isolation does not set
        ("cloudtrail-modify-instance-attribute.json", {"instanceId": INSTANCE, "instanceType": {"value": "t3.large"}}),
        ("cloudtrail-modify-network-interface-attribute.json", {"networkInterfaceId": "eni-0a1b2c3d4e5f60718", "sourceDestCheck": {"value": False}}),
        # a role policy the service did not write
        ("cloudtrail-delete-role-policy.json", {"roleName": "app", "policyName": "s3-access"}),
        # tags that are not the service's; CreateTags without a tag list
        ("cloudtrail-create-tags.json", {"resourcesSet": {"items": [{"resourceId": INSTANCE}]}, "tagSet": {"items": [{"key": "Name", "value": "web"}]}}),
        ("cloudtrail-delete-tags.json", {"resourcesSet": {"items": [{"resourceId": GROUP}]}, "tagSet": {"items": [{"key": "Owner"}]}}),
        ("cloudtrail-create-tags.json", {"resourcesSet": {"items": [{"resourceId": INSTANCE}]}}),
    ],
)  # fmt: skip
def test_calls_that_cannot_undo_an_isolation_are_ignored(name: str, parameters: dict[str, Any]) -> None:
    with pytest.raises(Ignored):
        parse_tamper(_body(name, **parameters))


def test_the_attribute_form_of_modify_instance_attribute_is_watched() -> None:
    body = _body(
        "cloudtrail-modify-instance-attribute.json",
        instanceId=INSTANCE,
        attribute="disableApiStop",
        value="false",
    )
    assert parse_tamper(body).instance_ids == (INSTANCE,)


def test_failed_calls_are_ignored() -> None:
    event = json.loads(_body("cloudtrail-register-targets.json"))
    event["detail"]["errorCode"] = "AccessDenied"
    with pytest.raises(Ignored):
        parse_tamper(json.dumps(event))


@pytest.mark.parametrize(
    "body", ["not json", "{}", json.dumps({"source": "aws.guardduty", "detail-type": "GuardDuty Finding"})]
)
def test_anything_else_is_not_a_call(body: str) -> None:
    with pytest.raises(InvalidMessage):
        parse_tamper(body)


def test_a_tag_value_names_no_resource() -> None:
    # Given a member tags its own instance with a value that is an isolated instance's id
    body = _body(
        "cloudtrail-create-tags.json",
        resourcesSet={"items": [{"resourceId": "i-0aaaaaaaaaaaaaaaa"}]},
        tagSet={"items": [{"key": "ec2-isolation:id", "value": INSTANCE}]},
    )
    # Then only the tagged instance is named
    assert parse_tamper(body).instance_ids == ("i-0aaaaaaaaaaaaaaaa",)


def test_a_rule_call_names_the_group_it_changed_not_a_group_its_rule_references() -> None:
    body = _body(
        "cloudtrail-authorize-security-group-ingress.json",
        groupId=GROUP,
        ipPermissions={
            "items": [{"ipProtocol": "-1", "groups": {"items": [{"groupId": "sg-0aaaaaaaaaaaaaaaa"}]}}]
        },
    )
    assert parse_tamper(body).security_group_ids == (GROUP,)
