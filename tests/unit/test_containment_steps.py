"""The containment steps with canned AWS answers: the role's deny policy under its lease, the partition of
the instance ARN, and what EC2 refuses for instance-store-backed instances."""

from __future__ import annotations

import json
import threading
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from tests.support.aws import client_error
from tests.support.steps import AnyOrder, MemoryGroups, MemoryLeases, Notebook

from shared.aws import AccountSession
from shared.config import WorkerSettings
from shared.errors import ContainmentIncomplete, RetryableError
from shared.models import NetworkInterfaceState, PriorState, Source, StepStatus, Target
from worker.instance import AttachedVolume, Instance
from worker.steps import StepContext
from worker.steps.checks import PolicySimulator
from worker.steps.credentials import POLICY_NAME, DenyInstanceCredentials, compact_size, policy_document
from worker.steps.instance_state import EnableStopProtection, EnableTerminationProtection, StopOnShutdown

SETTINGS = WorkerSettings(
    TABLE_NAME="t",
    QUEUE_URL="q",
    FOLLOW_UP_QUEUE_URL="f",
    TARGET_ROLE_NAME="r",
    EXEMPTION_TABLE_NAME="e",
    CONSISTENCY_WAIT_SECONDS=1,
)
PROFILE = "arn:aws:iam::111122223333:instance-profile/app"
OTHER = "arn:aws:ec2:eu-west-1:111122223333:instance/i-0aaaaaaaaaaaaaaaa"


def context(
    region: str = "eu-west-1",
    *,
    leases: MemoryLeases | None = None,
    slept: list[float] | None = None,
    root_device_type: str = "ebs",
) -> tuple[StepContext, dict[str, Any]]:
    session = boto3.Session(aws_access_key_id="a", aws_secret_access_key="b", region_name=region)
    clients = {"ec2": session.client("ec2"), "iam": session.client("iam")}
    target = Target(account_id="111122223333", region=region, instance_id="i-0123456789abcdef0")
    state = PriorState(
        vpc_id="vpc-1",
        network_interfaces=[NetworkInterfaceState(id="eni-1", security_group_ids=["sg-1"], vpc_id="vpc-1")],
        instance_profile_arn=PROFILE,
    )
    instance = Instance(
        instance_id=target.instance_id,
        state=state,
        tags={},
        volumes=(AttachedVolume("vol-1", "/dev/xvda", True),),
        root_device_type=root_device_type,
    )
    ctx = StepContext(
        isolation_id="iso-" + "0" * 32,
        source=Source.WEBHOOK,
        target=target,
        instance=instance,
        account=AccountSession(target.account_id, region, session, 2**40, clients),
        settings=SETTINGS,
        prior=state,
        notes=Notebook(),
        leases=leases or MemoryLeases(),
        groups=MemoryGroups(),
        sleep=slept.append if slept is not None else None,
    )
    return ctx, clients


def _profile(iam: AnyOrder) -> None:
    iam.add(
        "GetInstanceProfile",
        {
            "InstanceProfile": {
                "Path": "/",
                "InstanceProfileName": "app",
                "InstanceProfileId": "AIPAEXAMPLEEXAMPLE1",
                "Arn": PROFILE,
                "CreateDate": "2026-01-01T00:00:00Z",
                "Roles": [
                    {
                        "Path": "/",
                        "RoleName": "app",
                        "RoleId": "AROAEXAMPLEEXAMPLE1",
                        "Arn": "arn:aws:iam::111122223333:role/app",
                        "CreateDate": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        },
    )


def _policy(iam: AnyOrder, arns: list[str] | None, *, others: dict[str, Any] | None = None) -> None:
    """The role's deny policy listing `arns` (None: no such policy) and, for a dry run (which counts the
    role's inline policies as IAM does), the listing of its inline policies with its `others`."""
    if arns is None:
        iam.add_error("GetRolePolicy", "NoSuchEntity", 404, {"PolicyName": POLICY_NAME})
    documents = {POLICY_NAME: policy_document(arns)} if arns is not None else {}
    if others is not None:
        documents |= others
        iam.add("ListRolePolicies", {"PolicyNames": list(documents), "IsTruncated": False})
    for name, document in documents.items():
        answer = {"RoleName": "app", "PolicyName": name, "PolicyDocument": json.dumps(document)}
        iam.add("GetRolePolicy", answer, {"RoleName": "app", "PolicyName": name})


def test_the_deny_is_merged_under_the_role_lease_after_waiting_for_it() -> None:
    # Given another instance denied already, and the role's lease held by another worker twice
    leases, slept = MemoryLeases(busy={"app": 2}), []
    ctx, clients = context(leases=leases, slept=slept)
    me = "arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0"
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, [OTHER])  # read under the lease only
    iam.add("PutRolePolicy", {})
    # When the step runs
    outcome = DenyInstanceCredentials().run(ctx)
    # Then it waited (backing off), wrote both instances, remembered the role first, and let the lease go
    iam.assert_all_taken()
    assert iam.called("PutRolePolicy") == [
        {
            "RoleName": "app",
            "PolicyName": POLICY_NAME,
            "PolicyDocument": json.dumps(policy_document(sorted([OTHER, me]))),
        }
    ]
    assert outcome.status is StepStatus.DONE
    assert slept == [0.05, 0.1]
    assert ctx.notes.remembered == [{"role_name": "app"}]  # type: ignore[attr-defined]
    assert leases.taken == ["app"] and leases.held == {}


def test_a_dry_run_reads_the_deny_policy_and_the_other_inline_policies_at_once() -> None:
    # Given a role with its deny policy and another inline policy, and IAM reads that each wait (a few
    # seconds at most) for another read to have begun
    ctx, clients = context()
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, [OTHER], others={"app-s3": {"Version": "2012-10-17", "Statement": []}})
    together, met = threading.Barrier(2, timeout=5), []

    def meet(model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "ListRolePolicies" or (
            model.name == "GetRolePolicy" and params["PolicyName"] == POLICY_NAME
        ):
            try:
                together.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)

    clients["iam"].meta.events.register_first("before-parameter-build.iam", meet)
    # When the step is dry-run (the simulator unavailable)
    ctx.dry_run = True
    outcome = DenyInstanceCredentials().check(ctx, PolicySimulator(clients["iam"], "r", unavailable="x"))
    # Then the deny policy was read while the others were listed (one after the other, the wait runs out)
    assert met == [True, True]
    assert outcome.status is StepStatus.UNVERIFIED
    iam.assert_all_taken()


def test_the_deny_reads_only_its_own_policy_before_it_writes() -> None:
    # Given a role with its deny policy and another inline policy
    ctx, clients = context()
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, [OTHER])
    iam.add("PutRolePolicy", {})
    # When the step runs
    outcome = DenyInstanceCredentials().run(ctx)
    # Then it read its own policy only (IAM refuses a write past the role's limit itself), and says the
    # size of what it wrote
    assert [name for name, _ in iam.calls] == ["GetInstanceProfile", "GetRolePolicy", "PutRolePolicy"]
    assert outcome.status is StepStatus.DONE
    written = iam.called("PutRolePolicy")[0]["PolicyDocument"]
    assert f"2 instance(s), {compact_size(json.loads(written))} characters" in outcome.detail
    iam.assert_all_taken()


def test_a_lease_held_past_the_budget_is_retried_through_the_queue() -> None:
    ctx, clients = context(leases=MemoryLeases(busy={"app": 100}), slept=[])
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    with pytest.raises(RetryableError) as raised:
        DenyInstanceCredentials().run(ctx)
    assert raised.value.code == "RoleLeaseHeld" and raised.value.wait == "in-flight"
    assert iam.called("GetRolePolicy") == []  # nothing read without the lease


def test_an_entry_written_meanwhile_by_another_attempt_is_already() -> None:
    ctx, clients = context()
    me = "arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0"
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, [OTHER, me])  # under the lease: written while this attempt waited for it
    outcome = DenyInstanceCredentials().run(ctx)
    iam.assert_all_taken()
    assert outcome.status is StepStatus.ALREADY
    assert iam.called("PutRolePolicy") == []


def test_the_instance_arn_takes_the_partition_of_the_region() -> None:
    # Given an instance in a China region
    ctx, clients = context("cn-north-1")
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, ["arn:aws-cn:ec2:cn-north-1:111122223333:instance/i-0123456789abcdef0"])
    outcome = DenyInstanceCredentials().run(ctx)
    # Then the condition names it with the aws-cn partition
    assert outcome.status is StepStatus.ALREADY
    assert ctx.instance_arn.startswith("arn:aws-cn:ec2:cn-north-1:")


def test_iam_refusing_the_deny_past_the_roles_limit_is_credentials_not_cut() -> None:
    # Given a role whose other inline policies leave no room: IAM refuses the write (LimitExceeded)
    ctx, clients = context()
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, None)
    iam.add_error("PutRolePolicy", "LimitExceeded", 409)
    # When the step runs
    with pytest.raises(ContainmentIncomplete) as raised:
        DenyInstanceCredentials().run(ctx)
    # Then CredentialsNotCut, naming IAM's limit and its refusal
    iam.assert_all_taken()
    assert raised.value.code == "CredentialsNotCut"
    assert "LimitExceeded" in raised.value.message and "10240" in raised.value.message


def test_other_inline_policies_count_against_the_limit_in_a_dry_run() -> None:
    ctx, clients = context()
    filler = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Action": "s3:X", "Resource": "x" * 10_100}],
    }
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, None, others={"big": filler})
    ctx.dry_run = True
    with pytest.raises(ContainmentIncomplete) as raised:
        DenyInstanceCredentials().check(ctx, PolicySimulator(clients["iam"], "r", unavailable="x"))
    iam.assert_all_taken()
    assert iam.called("PutRolePolicy") == []
    assert raised.value.code == "CredentialsNotCut"


def test_instance_store_backed_instances_cannot_stop() -> None:
    # Given an instance-store-backed instance (EC2 refuses stop and stop protection for it)
    ctx, clients = context(root_device_type="instance-store")
    with Stubber(clients["ec2"]) as ec2:
        # When the steps run: only termination protection calls EC2
        ec2.add_response("describe_instance_attribute", {"DisableApiTermination": {"Value": True}})
        shutdown = StopOnShutdown().run(ctx)
        stop = EnableStopProtection().run(ctx)
        termination = EnableTerminationProtection().run(ctx)
        ec2.assert_no_pending_responses()
    # Then the two it refuses are skipped with the reason
    assert shutdown.status is StepStatus.SKIPPED and "instance-store" in shutdown.detail
    assert stop.status is StepStatus.SKIPPED and "instance-store" in stop.detail
    assert termination.status is StepStatus.ALREADY


def test_a_lease_the_table_will_not_take_back_does_not_undo_the_deny() -> None:
    # Given the service's table throttling every attempt to give the role's lease back
    class Stuck(MemoryLeases):
        def release_role_lease(self, account_id: str, role_name: str, owner: str) -> None:
            raise client_error("ProvisionedThroughputExceededException", "UpdateItem")

    leases, slept = Stuck(), []
    ctx, clients = context(leases=leases, slept=slept)
    iam = AnyOrder(clients["iam"])
    _profile(iam)
    _policy(iam, None)
    iam.add("PutRolePolicy", {})
    # When the step runs
    outcome = DenyInstanceCredentials().run(ctx)
    # Then the deny stands (the lease expires by itself), after a bounded try to give it back
    assert outcome.status is StepStatus.DONE
    assert leases.held and sum(slept) <= 2.0
