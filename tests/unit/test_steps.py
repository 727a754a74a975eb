"""Steps with botocore Stubber: for an isolation step the exact request is the behaviour."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from tests.support.steps import MemoryLeases, Notebook

from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.errors import RetryableError
from shared.models import NetworkInterfaceState, PriorState, Source, StepStatus, Target
from worker.instance import Instance
from worker.steps import forget_caches
from worker.steps.instance_profile import SwapInstanceProfile
from worker.steps.instance_state import EnableTerminationProtection, TagInstance
from worker.steps.network import EnsureIsolationSecurityGroup, SwapSecurityGroups

TARGET = Target(account_id="111122223333", region="eu-west-1", instance_id="i-0123456789abcdef0")
SETTINGS = WorkerSettings(
    TABLE_NAME="t", QUEUE_URL="q", FOLLOW_UP_QUEUE_URL="f", TARGET_ROLE_NAME="r", CONSISTENCY_WAIT_SECONDS=5
)


def eni(eni_id: str, vpc_id: str, groups: tuple[str, ...]) -> NetworkInterfaceState:
    return NetworkInterfaceState(id=eni_id, vpc_id=vpc_id, security_group_ids=list(groups))


def facts(
    *interfaces: NetworkInterfaceState, profile: str | None = None, tags: dict[str, str] | None = None
) -> Instance:
    return Instance(
        instance_id=TARGET.instance_id,
        state=PriorState(
            vpc_id=interfaces[0].vpc_id or "",
            network_interfaces=list(interfaces),
            instance_profile_arn=profile,
        ),
        tags=tags or {},
    )


@pytest.fixture(autouse=True)
def _cold() -> None:
    forget_caches()


@pytest.fixture
def clients() -> dict[str, Any]:
    session = boto3.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name="eu-west-1")
    return {"ec2": session.client("ec2"), "iam": session.client("iam")}


def context(clients: dict[str, Any], instance: Instance, slept: list[float] | None = None) -> Any:
    from worker.steps import StepContext

    account = AccountSession(TARGET.account_id, TARGET.region, boto3.Session(), 2**40, dict(clients))
    return StepContext(
        isolation_id="iso-" + "0" * 32,
        source=Source.WEBHOOK,
        target=TARGET,
        instance=instance,
        account=account,
        settings=SETTINGS,
        prior=instance.state,
        notes=Notebook(),
        leases=MemoryLeases(),
        sleep=(slept.append if slept is not None else None),
    )


def test_isolation_group_is_looked_up_by_vpc_filter_never_by_group_names(clients: dict[str, Any]) -> None:
    # Given an existing, clean isolation group in the instance's VPC
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-app",))))
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response(
            "describe_security_groups",
            {
                "SecurityGroups": [
                    {
                        "GroupId": "sg-iso",
                        "GroupName": "ec2-isolation",
                        "VpcId": "vpc-1",
                        "IpPermissions": [],
                        "IpPermissionsEgress": [],
                    }
                ]
            },
            expected_params={
                "Filters": [
                    {"Name": "vpc-id", "Values": ["vpc-1"]},
                    {"Name": "group-name", "Values": ["ec2-isolation"]},
                ]
            },
        )
        # When the step runs
        outcome = EnsureIsolationSecurityGroup().run(ctx)
        # Then it found it with filters (GroupNames only works in the default VPC) and changed nothing
        ec2.assert_no_pending_responses()
    assert outcome.status is StepStatus.ALREADY
    assert ctx.isolation_groups == {"vpc-1": "sg-iso"}


def test_new_group_loses_every_egress_rule_it_was_created_with(clients: dict[str, Any]) -> None:
    # Given no isolation group yet in an IPv6 VPC
    ctx = context(clients, facts(eni("eni-1", "vpc-6", ("sg-app",))))
    egress = [
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    ]
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("describe_security_groups", {"SecurityGroups": []})
        ec2.add_response(
            "create_security_group",
            {"GroupId": "sg-new"},
            expected_params={
                "GroupName": "ec2-isolation",
                "Description": "ec2-isolation: no ingress, no egress. Do not add rules.",
                "VpcId": "vpc-6",
                "TagSpecifications": [
                    {
                        "ResourceType": "security-group",
                        "Tags": [{"Key": "ec2-isolation:managed", "Value": "true"}],
                    }
                ],
            },
        )
        ec2.add_response(
            "describe_security_groups",
            {"SecurityGroups": [{"GroupId": "sg-new", "IpPermissions": [], "IpPermissionsEgress": egress}]},
            expected_params={"GroupIds": ["sg-new"]},
        )
        ec2.add_response(
            "revoke_security_group_egress",
            {"Return": True},
            expected_params={"GroupId": "sg-new", "IpPermissions": egress},
        )
        # When the step runs, and its revocation of the new group's rules ends (the cut waits for it)
        outcome = EnsureIsolationSecurityGroup().run(ctx)
        revoked = ctx.revoking["sg-new"].result(timeout=5)
        ec2.assert_no_pending_responses()
    # Then the group exists with IPv4 and IPv6 egress revoked as described
    assert outcome.status is StepStatus.DONE
    assert ctx.isolation_groups == {"vpc-6": "sg-new"}
    assert revoked == 2


def test_concurrent_creation_uses_the_other_workers_group(clients: dict[str, Any]) -> None:
    # Given another worker creates the group between our lookup and our create
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-app",))))
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("describe_security_groups", {"SecurityGroups": []})
        ec2.add_client_error("create_security_group", "InvalidGroup.Duplicate")
        ec2.add_response(
            "describe_security_groups",
            {"SecurityGroups": [{"GroupId": "sg-theirs", "IpPermissions": [], "IpPermissionsEgress": []}]},
        )
        outcome = EnsureIsolationSecurityGroup().run(ctx)
    # Then theirs is used: no duplicate group
    assert ctx.isolation_groups == {"vpc-1": "sg-theirs"}
    assert outcome.status is StepStatus.ALREADY


def test_every_interface_gets_only_the_isolation_group_one_call_each(clients: dict[str, Any]) -> None:
    # Given three interfaces, one already isolated
    instance = facts(
        eni("eni-1", "vpc-1", ("sg-a", "sg-b")),
        eni("eni-2", "vpc-1", ("sg-iso",)),
        eni("eni-3", "vpc-1", ()),
    )
    ctx = context(clients, instance)
    ctx.isolation_groups["vpc-1"] = "sg-iso"
    with Stubber(clients["ec2"]) as ec2:
        for eni_id in ("eni-1", "eni-3"):
            ec2.add_response(
                "modify_network_interface_attribute",
                {},
                expected_params={"NetworkInterfaceId": eni_id, "Groups": ["sg-iso"]},
            )
        outcome = SwapSecurityGroups().run(ctx)
        ec2.assert_no_pending_responses()
    assert outcome.status is StepStatus.DONE
    assert "eni-2" in outcome.detail


def test_interfaces_in_two_vpcs_each_get_their_vpcs_group(clients: dict[str, Any]) -> None:
    # Given an instance with interfaces in two VPCs (multi-VPC ENI attachment)
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-a",)), eni("eni-2", "vpc-2", ("sg-b",))))
    ctx.isolation_groups.update({"vpc-1": "sg-iso1", "vpc-2": "sg-iso2"})
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response(
            "modify_network_interface_attribute",
            {},
            expected_params={"NetworkInterfaceId": "eni-1", "Groups": ["sg-iso1"]},
        )
        ec2.add_response(
            "modify_network_interface_attribute",
            {},
            expected_params={"NetworkInterfaceId": "eni-2", "Groups": ["sg-iso2"]},
        )
        SwapSecurityGroups().run(ctx)
        ec2.assert_no_pending_responses()


def test_group_not_found_beyond_the_budget_is_retryable(clients: dict[str, Any]) -> None:
    # Given EC2 keeps answering InvalidGroup.NotFound
    slept: list[float] = []
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-a",))), slept)
    ctx.isolation_groups["vpc-1"] = "sg-iso"
    with Stubber(clients["ec2"]) as ec2:
        for _ in range(10):
            ec2.add_client_error("modify_network_interface_attribute", "InvalidGroup.NotFound")
        # Then the step gives the retry to the queue once the budget is spent
        with pytest.raises(RetryableError) as raised:
            SwapSecurityGroups().run(ctx)
    assert raised.value.code == "InvalidGroup.NotFound"
    assert sum(slept) <= SETTINGS.CONSISTENCY_WAIT_SECONDS


def test_profile_is_replaced_when_one_is_associated(clients: dict[str, Any]) -> None:
    # Given an instance with an application profile, and the isolation profile ready
    ctx = context(
        clients,
        facts(eni("eni-1", "vpc-1", ()), profile="arn:aws:iam::111122223333:instance-profile/app"),
    )
    with Stubber(clients["iam"]) as iam, Stubber(clients["ec2"]) as ec2:
        iam.add_response(
            "get_instance_profile",
            {
                "InstanceProfile": {
                    "Path": "/",
                    "InstanceProfileName": "ec2-isolation-deny-all",
                    "InstanceProfileId": "AIPAEXAMPLE12345",
                    "Arn": "arn:aws:iam::111122223333:instance-profile/ec2-isolation-deny-all",
                    "CreateDate": "2026-01-01T00:00:00Z",
                    "Roles": [
                        {
                            "Path": "/",
                            "RoleName": "ec2-isolation-deny-all",
                            "RoleId": "AROAEXAMPLE123456",
                            "Arn": "arn:aws:iam::111122223333:role/ec2-isolation-deny-all",
                            "CreateDate": "2026-01-01T00:00:00Z",
                        }
                    ],
                }
            },
            expected_params={"InstanceProfileName": "ec2-isolation-deny-all"},
        )
        ec2.add_response(
            "describe_iam_instance_profile_associations",
            {
                "IamInstanceProfileAssociations": [
                    {
                        "AssociationId": "iip-assoc-1",
                        "InstanceId": TARGET.instance_id,
                        "IamInstanceProfile": {"Arn": "arn:aws:iam::111122223333:instance-profile/app"},
                        "State": "associated",
                    }
                ]
            },
            expected_params={
                "Filters": [
                    {"Name": "instance-id", "Values": [TARGET.instance_id]},
                    {"Name": "state", "Values": ["associating", "associated"]},
                ]
            },
        )
        ec2.add_response(
            "replace_iam_instance_profile_association",
            {},
            expected_params={
                "IamInstanceProfile": {"Name": "ec2-isolation-deny-all"},
                "AssociationId": "iip-assoc-1",
            },
        )
        outcome = SwapInstanceProfile().run(ctx)
        ec2.assert_no_pending_responses()
    assert outcome.status is StepStatus.DONE
    assert "replaced arn:aws:iam::111122223333:instance-profile/app" in outcome.detail


def test_profile_already_isolation_makes_no_call(clients: dict[str, Any]) -> None:
    ctx = context(
        clients,
        facts(
            eni("eni-1", "vpc-1", ()),
            profile="arn:aws:iam::111122223333:instance-profile/ec2-isolation-deny-all",
        ),
    )
    with Stubber(clients["iam"]), Stubber(clients["ec2"]):  # any call would fail: nothing is stubbed
        outcome = SwapInstanceProfile().run(ctx)
    assert outcome.status is StepStatus.ALREADY


def test_associate_racing_another_association_falls_back_to_replace(clients: dict[str, Any]) -> None:
    # Given no profile when described, but one associated by the time we associate (IncorrectState)
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ())))
    from worker.steps.instance_profile import _ready

    _ready.add((TARGET.account_id, "ec2-isolation-deny-all"))
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("describe_iam_instance_profile_associations", {"IamInstanceProfileAssociations": []})
        ec2.add_client_error("associate_iam_instance_profile", "IncorrectState")
        ec2.add_response(
            "describe_iam_instance_profile_associations",
            {
                "IamInstanceProfileAssociations": [
                    {
                        "AssociationId": "iip-assoc-2",
                        "IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/other"},
                    }
                ]
            },
        )
        ec2.add_response(
            "replace_iam_instance_profile_association",
            {},
            expected_params={
                "IamInstanceProfile": {"Name": "ec2-isolation-deny-all"},
                "AssociationId": "iip-assoc-2",
            },
        )
        outcome = SwapInstanceProfile().run(ctx)
        ec2.assert_no_pending_responses()
    assert outcome.status is StepStatus.DONE


def test_termination_protection_checked_before_set(clients: dict[str, Any]) -> None:
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ())))
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response(
            "describe_instance_attribute",
            {"DisableApiTermination": {"Value": False}},
            expected_params={"InstanceId": TARGET.instance_id, "Attribute": "disableApiTermination"},
        )
        ec2.add_response(
            "modify_instance_attribute",
            {},
            expected_params={"InstanceId": TARGET.instance_id, "DisableApiTermination": {"Value": True}},
        )
        assert EnableTerminationProtection().run(ctx).status is StepStatus.DONE
        ec2.add_response("describe_instance_attribute", {"DisableApiTermination": {"Value": True}})
        assert EnableTerminationProtection().run(ctx).status is StepStatus.ALREADY
        ec2.assert_no_pending_responses()


def test_tags_all_carry_the_prefix(clients: dict[str, Any]) -> None:
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ())))
    sent: list[dict[str, Any]] = []
    clients["ec2"].meta.events.register(
        "before-parameter-build.ec2.CreateTags", lambda params, **_: sent.append(params)
    )
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("create_tags", {})
        TagInstance().run(ctx)
    keys = [tag["Key"] for tag in sent[0]["Tags"]]
    assert sorted(keys) == ["ec2-isolation:at", "ec2-isolation:id", "ec2-isolation:source"]
    assert sent[0]["Resources"] == [TARGET.instance_id]
