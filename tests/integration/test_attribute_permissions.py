"""The member role lets the steps read and write exactly the instance attributes they use: every
`DescribeInstanceAttribute` and `ModifyInstanceAttribute` call of an isolation, its dry run and its
release, recorded as botocore sends it, is allowed by iam-execution-role.yml's `ec2:Attribute`
condition, and the attributes no step touches (userData above all) are not. moto evaluates no IAM
condition: the check evaluates the template's statements on the calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.client
import pytest
from tests.conftest import ROOT, Stack
from tests.infra.resolver import resolve
from tests.integration.test_release import release
from tests.integration.test_worker import isolate
from tests.support.aws import Member

from local_stack.templates import load_template

ATTRIBUTE_CALLS = ("DescribeInstanceAttribute", "ModifyInstanceAttribute")
#: ModifyInstanceAttribute's structured parameters and the attribute each sets (the `Attribute` form
#: names it itself).
PARAMETER_ATTRIBUTES = {
    "DisableApiTermination": "disableApiTermination",
    "DisableApiStop": "disableApiStop",
    "BlockDeviceMappings": "blockDeviceMapping",
    "InstanceInitiatedShutdownBehavior": "instanceInitiatedShutdownBehavior",
    "UserData": "userData",
    "InstanceType": "instanceType",
    "SourceDestCheck": "sourceDestCheck",
    "Groups": "groupSet",
    "Kernel": "kernel",
    "Ramdisk": "ramdisk",
}


def attribute_of(params: dict[str, Any]) -> str:
    if "Attribute" in params:
        return str(params["Attribute"])
    [name] = [PARAMETER_ATTRIBUTES[p] for p in params if p in PARAMETER_ATTRIBUTES]
    return name


@pytest.fixture
def attribute_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Every (operation, attribute) the worker sends while the test runs."""
    calls: list[tuple[str, str]] = []
    send = botocore.client.BaseClient._make_api_call

    def recording(self: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation in ATTRIBUTE_CALLS:
            calls.append((operation, attribute_of(params)))
            # EC2 may name the attribute of a parameter form after the parameter: allowed too
            calls.extend((operation, name) for name in params if name in PARAMETER_ATTRIBUTES)
        return send(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    yield calls


def allowed(operation: str, attribute: str) -> bool:
    """Whether the execution role's Allow statements grant `operation` on an instance for `attribute`
    (`StringEqualsIgnoreCaseIfExists` on `ec2:Attribute`: the key present, its value must be listed, in
    any case)."""
    role = resolve(load_template(ROOT / "iam-execution-role.yml"), {"WorkerRoleArn": WORKER_ROLE})[
        "Resources"
    ]["ExecutionRole"]
    for policy in role["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if statement["Effect"] != "Allow" or f"ec2:{operation}" not in actions:
                continue
            condition = statement.get("Condition", {})
            assert set(condition) <= {"StringEqualsIgnoreCaseIfExists"}, condition
            listed = condition.get("StringEqualsIgnoreCaseIfExists", {}).get("ec2:Attribute")
            if listed is None or attribute.lower() in {value.lower() for value in listed}:
                return True
    return False


WORKER_ROLE = "arn:aws:iam::111111111111:role/ec2-isolation-WorkerFunctionRole-ABC123"


def test_every_attribute_the_steps_use_is_allowed_and_no_other(
    stack: Stack, member: Member, attribute_calls: list[tuple[str, str]]
) -> None:
    # Given an instance checked by a dry run, isolated and released (every attribute call the steps make)
    vpc = member.vpc()
    instance = member.instance(vpc)
    assert isolate(stack, member, instance, dry_run=True)["status"] == "CHECKED"
    isolated = isolate(stack, member, instance)
    assert isolated["status"] == "ISOLATED"
    assert release(stack, isolated["isolation_id"])["status"] == "RELEASED"

    # Then each of those calls is allowed by the member role, whatever its form
    used = set(attribute_calls)
    assert {operation for operation, _ in used} == set(ATTRIBUTE_CALLS), used
    assert {attribute for _, attribute in used} >= {
        "instanceInitiatedShutdownBehavior",
        "disableApiTermination",
        "disableApiStop",
        "blockDeviceMapping",
    }
    for operation, attribute in used:
        assert allowed(operation, attribute), (operation, attribute)
    # And reading or changing an attribute no step uses is not
    for operation in ATTRIBUTE_CALLS:
        for attribute in ("userData", "instanceType", "kernel", "ramdisk", "sourceDestCheck", "groupSet"):
            assert not allowed(operation, attribute), (operation, attribute)
