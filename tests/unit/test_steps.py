"""Steps with botocore Stubber: for an isolation step the exact request is the behaviour."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from tests.support.steps import MemoryGroups, MemoryLeases, Notebook

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
    TABLE_NAME="t",
    QUEUE_URL="q",
    FOLLOW_UP_QUEUE_URL="f",
    TARGET_ROLE_NAME="r",
    EXEMPTION_TABLE_NAME="e",
    CONSISTENCY_WAIT_SECONDS=5,
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
        groups=MemoryGroups(),
        sleep=(slept.append if slept is not None else None),
    )


MANAGED = [{"Key": "ec2-isolation:managed", "Value": "true"}]


def test_the_isolation_group_is_the_one_the_table_names_checked_by_id(clients: dict[str, Any]) -> None:
    # Given the service's table names a clean isolation group for the instance's VPC (and the member may
    # have made groups named like it: they are never looked up)
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-app",))))
    ctx.groups.known("vpc-1", "sg-iso", account_id=TARGET.account_id, region=TARGET.region)
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response(
            "describe_security_groups",
            {
                "SecurityGroups": [
                    {
                        "GroupId": "sg-iso",
                        "GroupName": "ec2-isolation-x",
                        "VpcId": "vpc-1",
                        "IpPermissions": [],
                        "IpPermissionsEgress": [],
                        "Tags": MANAGED,
                    }
                ]
            },
            expected_params={"GroupIds": ["sg-iso"]},
        )
        # When the step runs, and its check of the group ends (the cut waits for it)
        outcome = EnsureIsolationSecurityGroup().run(ctx)
        checked = ctx.revoking["sg-iso"].result(timeout=5)
        # Then the group was described by id (never by name or tag) and nothing changed
        ec2.assert_no_pending_responses()
    assert outcome.status is StepStatus.ALREADY
    assert ctx.isolation_groups == {"vpc-1": "sg-iso"}
    assert (checked.revoked, checked.retagged, checked.summary()) == (0, False, "")


def test_a_known_group_with_a_rule_and_no_tag_is_retagged_then_stripped(clients: dict[str, Any]) -> None:
    # Given the table's group of the VPC, whose managed tag someone removed and to which they added egress
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-app",))))
    ctx.groups.known("vpc-1", "sg-iso", account_id=TARGET.account_id, region=TARGET.region)
    egress = [{"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response(
            "describe_security_groups",
            {"SecurityGroups": [{"GroupId": "sg-iso", "IpPermissions": [], "IpPermissionsEgress": egress}]},
            expected_params={"GroupIds": ["sg-iso"]},
        )
        # (the tag first: the member role revokes rules of tagged groups only)
        ec2.add_response("create_tags", {}, expected_params={"Resources": ["sg-iso"], "Tags": MANAGED})
        ec2.add_response(
            "revoke_security_group_egress",
            {"Return": True},
            expected_params={"GroupId": "sg-iso", "IpPermissions": egress},
        )
        # When the step runs and its check ends
        EnsureIsolationSecurityGroup().run(ctx)
        checked = ctx.revoking["sg-iso"].result(timeout=5)
        ec2.assert_no_pending_responses()
    # Then the check says what it put right
    assert (
        checked.summary() == "1 rule(s) found on sg-iso revoked, tag ec2-isolation:managed of sg-iso restored"
    )


def test_new_group_is_claimed_named_after_the_claim_and_loses_every_default_rule(
    clients: dict[str, Any],
) -> None:
    # Given no isolation group yet in an IPv6 VPC
    ctx = context(clients, facts(eni("eni-1", "vpc-6", ("sg-app",))))
    egress = [
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    ]
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response(
            "create_security_group",
            {"GroupId": "sg-new"},
            expected_params={
                "GroupName": ANY,
                "Description": "ec2-isolation: no ingress, no egress. Do not add rules.",
                "VpcId": "vpc-6",
                "TagSpecifications": [{"ResourceType": "security-group", "Tags": MANAGED}],
            },
        )
        ec2.add_response(
            "describe_security_groups",
            {
                "SecurityGroups": [
                    {"GroupId": "sg-new", "IpPermissions": [], "IpPermissionsEgress": egress, "Tags": MANAGED}
                ]
            },
            expected_params={"GroupIds": ["sg-new"]},
        )
        ec2.add_response(
            "revoke_security_group_egress",
            {"Return": True},
            expected_params={"GroupId": "sg-new", "IpPermissions": egress},
        )
        # When the step runs, and its revocation of the new group's rules ends (the cut waits for it)
        outcome = EnsureIsolationSecurityGroup().run(ctx)
        checked = ctx.revoking["sg-new"].result(timeout=5)
        ec2.assert_no_pending_responses()
    # Then the VPC was claimed first, the group was created under the claimed name and its id recorded,
    # and IPv4 and IPv6 egress were revoked as described
    [claim] = ctx.groups.group_claims(TARGET.account_id, TARGET.region).values()
    assert claim.name.startswith("ec2-isolation-") and claim.group_id == "sg-new"
    assert outcome.status is StepStatus.DONE
    assert ctx.isolation_groups == {"vpc-6": "sg-new"}
    assert checked.revoked == 2 and checked.new


def test_a_claim_whose_group_never_came_is_taken_over_by_its_exact_name(clients: dict[str, Any]) -> None:
    # Given another worker claimed the VPC and its group exists under the claimed name, but the worker
    # died before recording its id
    slept: list[float] = []
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ("sg-app",))), slept)
    ctx.groups.claim_group(TARGET.account_id, TARGET.region, "vpc-1", "ec2-isolation-theirs")
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_client_error("create_security_group", "InvalidGroup.Duplicate")
        ec2.add_response(
            "describe_security_groups",
            {"SecurityGroups": [{"GroupId": "sg-theirs", "IpPermissions": [], "IpPermissionsEgress": []}]},
            expected_params={
                "Filters": [
                    {"Name": "vpc-id", "Values": ["vpc-1"]},
                    {"Name": "group-name", "Values": ["ec2-isolation-theirs"]},
                ]
            },
        )
        ec2.add_response(
            "describe_security_groups",
            {
                "SecurityGroups": [
                    {"GroupId": "sg-theirs", "IpPermissions": [], "IpPermissionsEgress": [], "Tags": MANAGED}
                ]
            },
            expected_params={"GroupIds": ["sg-theirs"]},
        )
        EnsureIsolationSecurityGroup().run(ctx)
        ctx.revoking["sg-theirs"].result(timeout=5)
        ec2.assert_no_pending_responses()
    # Then it waited for the claim a while, then found the group by the claimed name (filters, never
    # GroupNames) and recorded it: no second group
    assert ctx.isolation_groups == {"vpc-1": "sg-theirs"}
    assert ctx.groups.group_claims(TARGET.account_id, TARGET.region)["vpc-1"].group_id == "sg-theirs"
    assert 0 < sum(slept) <= 4


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


def test_a_plan_is_on_record_before_its_change_once_and_only_where_the_procedure_keeps_plans(
    clients: dict[str, Any],
) -> None:
    # Given an isolation whose record keeps plans, and an instance without termination protection
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ())))
    ctx.planned = frozenset()
    notes: Notebook = ctx.notes
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("describe_instance_attribute", {"DisableApiTermination": {"Value": False}})
        ec2.add_response("modify_instance_attribute", {})
        # When the step's plan is noted (as its phase does ahead), then the step applies it
        plan = EnableTerminationProtection().plan(ctx)
        ctx.note_plans({EnableTerminationProtection: plan})
        outcome = EnableTerminationProtection().run(ctx, plan)
        ec2.assert_no_pending_responses()

    # Then the prior value and the planned step were written once, before the change, and the step is done
    assert notes.remembered == [{"termination_protection": False}]
    assert notes.planned == ["enable-termination-protection"]
    assert outcome.status is StepStatus.DONE

    # And a step whose change is on record elsewhere (the group's claim), or a procedure that keeps no
    # plans (a release, a dry run), puts no step on record as planned
    ctx.planned = frozenset()
    with Stubber(clients["ec2"]):
        ctx.note_plans({EnsureIsolationSecurityGroup: EnsureIsolationSecurityGroup().plan(ctx)})
    ctx.planned = None
    ctx.note_plans({TagInstance: TagInstance().plan(ctx)})
    assert notes.planned == ["enable-termination-protection"]


def test_a_change_an_earlier_attempt_planned_and_recorded_no_outcome_of_is_done_when_found_in_place(
    clients: dict[str, Any],
) -> None:
    # Given an attempt that planned termination protection, turned it on and died before its outcome
    ctx = context(clients, facts(eni("eni-1", "vpc-1", ())))
    ctx.planned = ctx.planned_earlier = frozenset({"enable-termination-protection"})
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("describe_instance_attribute", {"DisableApiTermination": {"Value": True}})
        # When the retry finds it in place
        outcome = EnableTerminationProtection().run(ctx)

    # Then it records it done, by the earlier attempt; a change nobody planned found in place is `already`
    assert outcome.status is StepStatus.DONE
    assert "made by an earlier attempt" in outcome.detail
    ctx.planned_earlier = frozenset()
    with Stubber(clients["ec2"]) as ec2:
        ec2.add_response("describe_instance_attribute", {"DisableApiTermination": {"Value": True}})
        assert EnableTerminationProtection().run(ctx).status is StepStatus.ALREADY
