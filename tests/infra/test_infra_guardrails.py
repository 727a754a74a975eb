"""guardrails/: the organization's service control policy and tag policy are valid JSON within AWS's
size limits, name only actions that exist (botocore's service models), exempt the StackSet execution
role and the execution role, and name the resources the templates create."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import botocore.session
import pytest
from tests.conftest import ROOT
from tests.infra.resolver import resolve

from local_stack.templates import load_template
from shared.models import ISOLATION_ID_TAG, Source
from worker.steps.network import MANAGED_TAG

GUARDRAILS = ROOT / "guardrails"
#: AWS Organizations' quotas: an SCP 5,120 characters; a tag policy 2,500 (the strictest figure AWS
#: has published; its newer pages say 10,000). Both counted as sent: the README sends them minified.
LIMITS = {"scp.json": 5120, "tag-policy.json": 2500}
#: An IAM action's prefix and the botocore service whose operations it names.
SERVICES = {"iam": "iam", "ec2": "ec2", "events": "events"}
STACKSET_ROLES = (
    "arn:aws:iam::222222222222:role/stacksets-exec-0123456789abcdef",
    "arn:aws:iam::222222222222:role/AWSCloudFormationStackSetExecutionRole",
)
EXECUTION_ROLE = "arn:aws:iam::222222222222:role/ec2-isolation-execution"
ADMIN = "arn:aws:iam::222222222222:role/Admin"


def document(name: str) -> dict[str, Any]:
    return json.loads((GUARDRAILS / name).read_text())


def scp() -> list[dict[str, Any]]:
    return document("scp.json")["Statement"]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def denied(statement: dict[str, Any], action: str, resource: str, context: dict[str, Any]) -> bool:
    """Whether a Deny statement applies (IAM's rules for the operators the SCP uses: conditions ANDed, a
    negated operator on an absent key true, `ForAnyValue` on an absent key false)."""
    if not any(fnmatch.fnmatchcase(action, a) for a in as_list(statement["Action"])):
        return False
    if not any(fnmatch.fnmatchcase(resource, r) for r in as_list(statement["Resource"])):
        return False
    for operator, keys in statement.get("Condition", {}).items():
        for key, expected in keys.items():
            value = context.get(key)
            if operator == "ArnNotLike":
                holds = value is None or not any(fnmatch.fnmatchcase(value, p) for p in as_list(expected))
            elif operator == "ForAnyValue:StringLike":
                holds = value is not None and any(
                    fnmatch.fnmatchcase(v, p) for v in value for p in as_list(expected)
                )
            elif operator == "Null":
                holds = (value is None) is (expected == "true")
            else:
                raise AssertionError(f"no evaluation for {operator}")
            if not holds:
                return False
    return True


def denied_by_scp(action: str, resource: str, context: dict[str, Any]) -> bool:
    return any(denied(statement, action, resource, context) for statement in scp())


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_each_policy_is_json_within_its_size_limit(name: str) -> None:
    minified = json.dumps(document(name), separators=(",", ":"))
    assert len(minified) <= LIMITS[name], len(minified)


def test_every_action_of_the_scp_exists() -> None:
    session = botocore.session.get_session()
    operations = {
        prefix: set(session.get_service_model(svc).operation_names) for prefix, svc in SERVICES.items()
    }
    for statement in scp():
        assert statement["Effect"] == "Deny"
        for action in as_list(statement["Action"]):
            prefix, name = action.split(":", 1)
            matches = [op for op in operations[prefix] if fnmatch.fnmatchcase(op, name)]
            assert matches, f"{action} names no {prefix} action"


def test_the_stackset_and_execution_roles_are_exempt_and_nobody_else() -> None:
    # Every change the SCP forbids, as each kind of principal would make it
    changes = [
        ("iam:UpdateAssumeRolePolicy", "arn:aws:iam::222222222222:role/ec2-isolation-execution", {}),
        ("iam:DetachRolePolicy", "arn:aws:iam::222222222222:role/ec2-isolation-deny-all", {}),
        ("iam:DeleteRole", "arn:aws:iam::222222222222:role/ec2-isolation-forward-eu-west-1", {}),
        ("iam:CreateRole", "arn:aws:iam::222222222222:role/ec2-isolation-deny-all", {}),
        (
            "iam:RemoveRoleFromInstanceProfile",
            "arn:aws:iam::222222222222:instance-profile/ec2-isolation-deny-all",
            {},
        ),
        (
            "events:DisableRule",
            "arn:aws:events:eu-west-1:222222222222:rule/ec2-isolation-forward-tag-eu-west-1",
            {},
        ),
        (
            "events:RemoveTargets",
            "arn:aws:events:eu-west-1:222222222222:rule/ec2-isolation-forward-tamper-eu-west-1",
            {},
        ),
        (
            "ec2:CreateTags",
            "arn:aws:ec2:eu-west-1:222222222222:instance/i-0123456789abcdef0",
            {"aws:TagKeys": [ISOLATION_ID_TAG]},
        ),
        (
            "ec2:DeleteTags",
            "arn:aws:ec2:eu-west-1:222222222222:security-group/sg-0123456789abcdef0",
            {"aws:TagKeys": [MANAGED_TAG]},
        ),
        # DeleteTags without a tag list (every tag goes; aws:TagKeys is absent) on what the service tagged
        (
            "ec2:DeleteTags",
            "arn:aws:ec2:eu-west-1:222222222222:instance/i-0123456789abcdef0",
            {f"aws:ResourceTag/{ISOLATION_ID_TAG}": "iso-1"},
        ),
        (
            "ec2:DeleteTags",
            "arn:aws:ec2:eu-west-1:222222222222:security-group/sg-0123456789abcdef0",
            {f"aws:ResourceTag/{MANAGED_TAG}": "true"},
        ),
    ]
    for action, resource, context in changes:
        # Then an administrator of the member account is denied
        assert denied_by_scp(action, resource, {**context, "aws:PrincipalArn": ADMIN}), (action, resource)
        # And the StackSet execution role and the execution role are not
        for exempt in (*STACKSET_ROLES, EXECUTION_ROLE):
            assert not denied_by_scp(action, resource, {**context, "aws:PrincipalArn": exempt}), (
                exempt,
                action,
            )
    # And every statement but the one guarding the StackSet role itself carries both exemptions
    for statement in scp():
        if statement["Sid"] == "StackSetExecutionRole":
            assert "Condition" not in statement
            continue
        exempt = statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"]
        assert "arn:aws:iam::*:role/ec2-isolation-execution" in exempt
        assert "arn:aws:iam::*:role/stacksets-exec-*" in exempt


def test_what_the_scp_leaves_alone() -> None:
    # Tags of other keys, a tag list without the service's keys, every tag of an untagged instance
    instance = "arn:aws:ec2:eu-west-1:222222222222:instance/i-0123456789abcdef0"
    assert not denied_by_scp("ec2:CreateTags", instance, {"aws:PrincipalArn": ADMIN, "aws:TagKeys": ["team"]})
    assert not denied_by_scp("ec2:DeleteTags", instance, {"aws:PrincipalArn": ADMIN, "aws:TagKeys": ["team"]})
    assert not denied_by_scp("ec2:DeleteTags", instance, {"aws:PrincipalArn": ADMIN})
    # Other roles and rules of the account
    assert not denied_by_scp(
        "iam:PutRolePolicy", "arn:aws:iam::222222222222:role/app", {"aws:PrincipalArn": ADMIN}
    )
    assert not denied_by_scp(
        "events:DisableRule",
        "arn:aws:events:eu-west-1:222222222222:rule/nightly",
        {"aws:PrincipalArn": ADMIN},
    )


def test_nobody_in_a_member_account_rewrites_the_stackset_roles_trust() -> None:
    for role in STACKSET_ROLES:
        for principal in (ADMIN, EXECUTION_ROLE, *STACKSET_ROLES):
            assert denied_by_scp("iam:UpdateAssumeRolePolicy", role, {"aws:PrincipalArn": principal})
            # nor creates a role under its name (the exemption trusts the name)
            assert denied_by_scp("iam:CreateRole", role, {"aws:PrincipalArn": principal})


def test_the_scp_names_what_the_templates_create(sam_template) -> None:
    # Given the member stack as deployed in a region that forwards (default names)
    region = "ap-south-1"
    resources = resolve(
        load_template(ROOT / "iam-execution-role.yml"),
        {
            "WorkerRoleArn": "arn:aws:iam::111111111111:role/w",
            "CentralEventBusArn": "arn:aws:events:eu-west-1:111111111111:event-bus/b",
            "IamRegion": region,
        },
        pseudo={"AWS::Region": region, "AWS::AccountId": "222222222222"},
    )["Resources"]
    forwarder = resolve(
        load_template(ROOT / "regional-forwarder.yml"),
        {
            "TargetEventBusArn": "arn:aws:events:eu-west-1:111111111111:event-bus/b",
            "EnableSecurityHubAction": "true",
        },
        pseudo={"AWS::Region": region, "AWS::AccountId": "111111111111"},
    )["Resources"]
    roles = [
        resources["ExecutionRole"]["Properties"]["RoleName"],
        resources["IsolationRole"]["Properties"]["RoleName"],
        resources["ForwardingRole"]["Properties"]["RoleName"],
        forwarder["ForwardingRole"]["Properties"]["RoleName"],
    ]
    rules = [
        resources[r]["Properties"]["Name"] for r in resources if resources[r]["Type"] == "AWS::Events::Rule"
    ] + [forwarder[r]["Properties"]["Name"] for r in forwarder if forwarder[r]["Type"] == "AWS::Events::Rule"]
    profile = resources["IsolationInstanceProfile"]["Properties"]["InstanceProfileName"]
    # Then the SCP guards each of them
    for role in roles:
        assert denied_by_scp(
            "iam:UpdateAssumeRolePolicy", f"arn:aws:iam::2:role/{role}", {"aws:PrincipalArn": ADMIN}
        )
    assert rules and all(
        denied_by_scp(
            "events:DisableRule", f"arn:aws:events:{region}:2:rule/{rule}", {"aws:PrincipalArn": ADMIN}
        )
        for rule in rules
    ), rules
    assert denied_by_scp(
        "iam:AddRoleToInstanceProfile",
        f"arn:aws:iam::2:instance-profile/{profile}",
        {"aws:PrincipalArn": ADMIN},
    )
    # And the execution role it exempts is the templates' default
    assert (
        resources["ExecutionRole"]["Properties"]["RoleName"]
        == sam_template["Parameters"]["TargetRoleName"]["Default"]
    )
    assert EXECUTION_ROLE.endswith(f"/{resources['ExecutionRole']['Properties']['RoleName']}")


def test_the_tag_policy_allows_exactly_the_values_the_service_writes() -> None:
    tags = document("tag-policy.json")["tags"]
    assert tags["ec2-isolation:source"]["tag_value"]["@@assign"] == [s.value for s in Source]
    assert tags[MANAGED_TAG]["tag_value"]["@@assign"] == ["true"]
    for key, policy in tags.items():
        assert key.startswith("ec2-isolation:") and policy["tag_key"]["@@assign"] == key
