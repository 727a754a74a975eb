"""iam-execution-role.yml: the member-account role grants exactly what the worker's steps call, each
action as narrowly as AWS allows; and the two templates and the code agree on names."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

#: Actions that support no resource-level permission: the only ones granted on "*".
DESCRIBE_ACTIONS = {
    "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeIamInstanceProfileAssociations",
    "ec2:DescribeSnapshots",
    "autoscaling:DescribeAutoScalingInstances",
    "autoscaling:DescribeAutoScalingGroups",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeLoadBalancers",
}
ACCOUNT = "123456789012"  # the resolver's default AWS::AccountId
REGION = "us-east-1"  # and AWS::Region
WORKER_ROLE_ARN = "arn:aws:iam::111111111111:role/ec2-isolation-WorkerFunctionRole-ABC123"
#: Every optional capability on: the role then grants every action of the catalogue.
EVERYTHING_ON = {"CutInstanceCredentials": "true", "SnapshotVolumes": "true", "SnapshotLockDays": "7"}
#: Snapshot ARNs carry no account.
SNAPSHOTS = "arn:aws:ec2:*::snapshot/*"


def _execution_statements(stack: dict[str, Any], helpers) -> list[dict[str, Any]]:
    return list(helpers.policy_statements(stack["Resources"]["ExecutionRole"]))


def _allows(stack: dict[str, Any], helpers) -> list[dict[str, Any]]:
    return [s for s in _execution_statements(stack, helpers) if s["Effect"] == "Allow"]


def _granting(statements: list[dict[str, Any]], action: str, helpers) -> list[dict[str, Any]]:
    return [s for s in statements if action in helpers.as_list(s["Action"])]


def test_role_grants_exactly_the_step_catalogue(member_stack, helpers) -> None:
    # Given the worker's step catalogue, each step declaring the actions it calls, and the forwarding
    # audit's reads (guardrail.audit.PERMISSIONS: the one change of contract here)
    from guardrail.audit import PERMISSIONS
    from worker.steps import required_permissions

    required = set(required_permissions()) | set(PERMISSIONS)
    # When the member template's execution role is read, every optional capability on
    granted = helpers.actions_of(member_stack(**EVERYTHING_ON)["Resources"]["ExecutionRole"])
    # Then it grants every action a step calls, and nothing else
    assert granted - required == set(), "granted but no step calls it"
    assert required - granted == set(), "a step calls it but the role does not grant it"


def _switches() -> list[tuple[str, str, tuple[str, ...]]]:
    from worker.steps.credentials import DenyInstanceCredentials, RemoveCredentialsDeny
    from worker.steps.evidence import SnapshotVolumes

    credentials = DenyInstanceCredentials.write_permissions + RemoveCredentialsDeny.write_permissions
    return [
        ("CutInstanceCredentials", "false", credentials),
        ("SnapshotVolumes", "false", SnapshotVolumes.write_permissions + SnapshotVolumes.lock_permissions),
        ("SnapshotLockDays", "0", SnapshotVolumes.lock_permissions),
    ]


@pytest.mark.parametrize(
    ("parameter", "off", "index"), [(p, o, i) for i, (p, o, _) in enumerate(_switches())]
)
def test_a_capability_turned_off_takes_exactly_its_actions_away(
    member_stack, helpers, parameter: str, off: str, index: int
) -> None:
    # Given every capability on, then one turned off
    removed = set(_switches()[index][2])
    everything = helpers.actions_of(member_stack(**EVERYTHING_ON)["Resources"]["ExecutionRole"])
    without = helpers.actions_of(
        member_stack(**{**EVERYTHING_ON, parameter: off})["Resources"]["ExecutionRole"]
    )
    # Then exactly that capability's actions are gone
    assert everything - without == removed


def test_defaults_cut_credentials_and_snapshot_without_a_lock(member_stack, helpers) -> None:
    granted = helpers.actions_of(member_stack()["Resources"]["ExecutionRole"])
    assert {"iam:PutRolePolicy", "ec2:CreateSnapshots"} <= granted
    assert "ec2:LockSnapshot" not in granted


def test_role_policies_are_written_only_where_no_guard_denies_it(member_stack, helpers) -> None:
    # Given the member role with protected roles named
    protected = f"arn:aws:iam::{ACCOUNT}:role/payments-*"
    statements = _execution_statements(member_stack(ProtectedRoleArns=protected), helpers)
    # Then PutRolePolicy is allowed on the account's roles ...
    (put,) = [
        s
        for s in statements
        if s["Effect"] == "Allow" and "iam:PutRolePolicy" in helpers.as_list(s["Action"])
    ]
    assert put["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/*"
    # ... and explicitly denied, with DeleteRolePolicy, on every role that must never change
    denies = [
        s for s in statements if s["Effect"] == "Deny" and "iam:PutRolePolicy" in helpers.as_list(s["Action"])
    ]
    assert all(
        set(helpers.as_list(s["Action"])) - {"iam:PassRole"} == {"iam:PutRolePolicy", "iam:DeleteRolePolicy"}
        for s in denies
    )
    denied = {resource for s in denies for resource in helpers.as_list(s["Resource"])}
    role = f"arn:aws:iam::{ACCOUNT}:role/"
    assert denied == {
        role + "ec2-isolation-execution",
        role + "ec2-isolation-deny-all",
        role + "aws-reserved/*",
        role + "aws-service-role/*",
        role + "OrganizationAccountAccessRole",
        role + "stacksets-exec-*",
        role + "AWSControlTower*",
        role + "service-role/AWSControlTower*",
        protected,
    }
    # And without protected roles, no empty resource is left in a Deny
    assert all(
        resource
        for s in _execution_statements(member_stack(), helpers)
        for resource in helpers.as_list(s["Resource"])
    )


def test_the_worker_never_writes_what_the_role_denies() -> None:
    # The worker skips (rather than fails on) every role the member role guards
    from worker.steps.credentials import GUARDED_ROLES

    assert set(GUARDED_ROLES) == {
        "aws-reserved/*",
        "aws-service-role/*",
        "OrganizationAccountAccessRole",
        "stacksets-exec-*",
        "AWSControlTower*",
        "service-role/AWSControlTower*",
    }


def test_snapshots_are_tagged_only_on_creation(member_stack, helpers) -> None:
    statements = _allows(member_stack(**EVERYTHING_ON), helpers)
    (create,) = _granting(statements, "ec2:CreateSnapshots", helpers)
    assert SNAPSHOTS in create["Resource"]
    (lock,) = _granting(statements, "ec2:LockSnapshot", helpers)
    assert lock["Resource"] == SNAPSHOTS


def test_only_describe_actions_have_star_resources(member_stack, helpers) -> None:
    for statement in _allows(member_stack(**EVERYTHING_ON), helpers):
        actions = set(helpers.as_list(statement["Action"]))
        assert not any("*" in action for action in actions)
        if statement["Resource"] == "*" or "*" in helpers.as_list(statement["Resource"]):
            assert actions <= DESCRIBE_ACTIONS, statement.get("Sid")
        else:
            assert not actions & DESCRIBE_ACTIONS, statement.get("Sid")


def test_every_other_resource_is_in_this_account(member_stack, helpers) -> None:
    for statement in _execution_statements(member_stack(**EVERYTHING_ON), helpers):
        for resource in helpers.as_list(statement["Resource"]):
            if resource not in ("*", SNAPSHOTS):
                assert resource.split(":")[4] == ACCOUNT, resource


@pytest.mark.parametrize("external_id", ["", "incident-response-7f3a"])
def test_only_the_worker_role_may_assume_it(member_stack, external_id: str) -> None:
    # Given the member template with and without an external id
    role = member_stack(ExternalId=external_id)["Resources"]["ExecutionRole"]["Properties"]
    # Then its one trust statement names the worker's role, for sts:AssumeRole
    (statement,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"AWS": WORKER_ROLE_ARN}
    assert statement["Action"] == "sts:AssumeRole"
    # And the external id is required when set
    if external_id:
        assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": external_id}}
    else:
        assert "Condition" not in statement
    assert role["RoleName"] == "ec2-isolation-execution"
    assert role["MaxSessionDuration"] >= 3600  # the worker asks for one-hour sessions


def test_security_groups_are_created_and_emptied_only_with_the_managed_tag(member_stack, helpers) -> None:
    statements = _execution_statements(member_stack(), helpers)
    groups = f"arn:aws:ec2:*:{ACCOUNT}:security-group/*"
    # CreateSecurityGroup: in any VPC, but the new group must carry the managed tag
    by_resource = {s["Resource"]: s for s in _granting(statements, "ec2:CreateSecurityGroup", helpers)}
    assert set(by_resource) == {f"arn:aws:ec2:*:{ACCOUNT}:vpc/*", groups}
    assert by_resource[groups]["Condition"] == {
        "StringEquals": {"aws:RequestTag/ec2-isolation:managed": "true"}
    }
    # Revoking rules: only on groups that carry it
    for action in ("ec2:RevokeSecurityGroupEgress", "ec2:RevokeSecurityGroupIngress"):
        (statement,) = _granting(statements, action, helpers)
        assert statement["Resource"] == groups
        assert statement["Condition"] == {"StringEquals": {"aws:ResourceTag/ec2-isolation:managed": "true"}}


def _decides(
    statements: list[dict[str, Any]], action: str, resource: str, context: dict[str, Any], as_list: Any
) -> bool:
    """Whether `statements` allow the request, as IAM decides for one identity policy: an explicit Deny
    wins, else an Allow whose action, resource and every condition match. Only the operators these
    statements use are known (another one fails the test rather than guess). A key absent from the
    request: a positive operator is false; `ForAllValues` is true (no value to check)."""

    def matches(pattern: str, value: str) -> bool:
        return fnmatch.fnmatchcase(value, pattern)

    def holds(operator: str, key: str, expected: Any) -> bool:
        wanted = [str(v) for v in (expected if isinstance(expected, list) else [expected])]
        present = context.get(key)
        if operator == "Null":
            return (present is None) == (wanted == ["true"])
        if operator.startswith("ForAllValues:"):
            compare = matches if operator.endswith("StringLike") else str.__eq__
            return all(any(compare(w, v) for w in wanted) for v in present or [])
        if present is None:
            return False
        if operator in ("StringEquals", "ArnEquals"):
            return str(present) in wanted
        if operator in ("StringLike", "ArnLike"):
            return any(matches(w, str(present)) for w in wanted)
        raise AssertionError(f"the evaluator does not know {operator}")

    def applies(statement: dict[str, Any]) -> bool:
        return (
            any(matches(a, action) for a in as_list(statement["Action"]))
            and any(matches(r, resource) for r in as_list(statement["Resource"]))
            and all(
                holds(operator, key, expected)
                for operator, block in statement.get("Condition", {}).items()
                for key, expected in block.items()
            )
        )

    relevant = [s for s in statements if applies(s)]
    return not any(s["Effect"] == "Deny" for s in relevant) and any(s["Effect"] == "Allow" for s in relevant)


def test_the_role_repairs_its_own_group_after_its_tag_was_removed_and_nothing_more(
    member_stack, helpers
) -> None:
    # Given the member role's statements, and the service's group from which someone removed the tag
    statements = _execution_statements(member_stack(**EVERYTHING_ON), helpers)
    group = f"arn:aws:ec2:eu-west-1:{ACCOUNT}:security-group/sg-0123456789abcdef0"
    untagged: dict[str, Any] = {}
    tagged = {"aws:ResourceTag/ec2-isolation:managed": "true"}
    managed = {"aws:RequestTag/ec2-isolation:managed": "true", "aws:TagKeys": ["ec2-isolation:managed"]}

    def may(action: str, context: dict[str, Any]) -> bool:
        return _decides(statements, action, group, context, helpers.as_list)

    # Then its rules cannot be revoked as it is (AWS answers UnauthorizedOperation) ...
    assert not may("ec2:RevokeSecurityGroupEgress", untagged)
    assert not may("ec2:RevokeSecurityGroupIngress", untagged)
    # ... but the repair can: the managed tag written again, then the rules revoked
    assert may("ec2:CreateTags", {**untagged, **managed})
    assert may("ec2:RevokeSecurityGroupEgress", tagged)
    assert may("ec2:RevokeSecurityGroupIngress", tagged)
    # And the role writes no other tag on a group: another key, another value, or one more key
    assert not may("ec2:CreateTags", {"aws:RequestTag/Name": "x", "aws:TagKeys": ["Name"]})
    assert not may(
        "ec2:CreateTags",
        {"aws:RequestTag/ec2-isolation:managed": "false", "aws:TagKeys": ["ec2-isolation:managed"]},
    )
    assert not may(
        "ec2:CreateTags",
        {
            **managed,
            "aws:RequestTag/ec2-isolation:id": "iso-x",
            "aws:TagKeys": ["ec2-isolation:managed", "ec2-isolation:id"],
        },
    )
    # ... removes no tag of a group, and authorizes no rule on one
    assert not may("ec2:DeleteTags", {**tagged, "aws:TagKeys": ["ec2-isolation:managed"]})
    assert not may("ec2:AuthorizeSecurityGroupEgress", tagged)
    assert not may("ec2:AuthorizeSecurityGroupIngress", tagged)


def test_tags_are_written_only_on_create_or_under_the_service_prefix(member_stack, helpers) -> None:
    statements = _granting(_allows(member_stack(), helpers), "ec2:CreateTags", helpers)
    conditions = {s["Resource"]: s["Condition"] for s in statements}
    assert conditions == {
        f"arn:aws:ec2:*:{ACCOUNT}:security-group/*": {
            "StringEquals": {"aws:RequestTag/ec2-isolation:managed": "true"},
            "ForAllValues:StringEquals": {"aws:TagKeys": ["ec2-isolation:managed"]},
        },
        SNAPSHOTS: {"StringEquals": {"ec2:CreateAction": "CreateSnapshots"}},
        f"arn:aws:ec2:*:{ACCOUNT}:instance/*": {
            "ForAllValues:StringLike": {"aws:TagKeys": ["ec2-isolation:*"]}
        },
    }


#: The credentials step reads any profile and role policy, and writes role policies (guarded by Denies).
CREDENTIALS_ACTIONS = {
    "iam:GetInstanceProfile",
    "iam:ListRolePolicies",
    "iam:GetRolePolicy",
    "iam:PutRolePolicy",
    "iam:DeleteRolePolicy",
}


def test_iam_actions_touch_only_the_isolation_role_and_profile(member_stack, helpers) -> None:
    stack = member_stack(IsolationRoleName="ir-deny", IsolationProfileName="ir-deny-profile")
    statements = _allows(stack, helpers)
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/ir-deny"
    profile_arn = f"arn:aws:iam::{ACCOUNT}:instance-profile/ir-deny-profile"
    for statement in statements:
        actions = helpers.as_list(statement["Action"])
        if not any(a.startswith("iam:") for a in actions):
            continue
        assert all(a.startswith("iam:") for a in actions)
        if actions == ["iam:PassRole"]:
            continue  # below
        if set(actions) <= CREDENTIALS_ACTIONS:
            assert statement["Resource"] in (
                f"arn:aws:iam::{ACCOUNT}:role/*",
                f"arn:aws:iam::{ACCOUNT}:instance-profile/*",
            ), statement
            continue
        if actions == ["iam:GetRole"]:
            # The forwarding audit reads the execution role's own trust policy, nobody else's.
            assert statement["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/ec2-isolation-execution", statement
            continue
        if actions == ["iam:SimulatePrincipalPolicy"]:
            # A dry run simulates the execution role's own permissions, nobody else's.
            assert statement["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/ec2-isolation-execution", statement
            continue
        assert statement["Resource"] in (role_arn, profile_arn), statement
    # PassRole: the isolation role, and (a release) any role of the account, to EC2 only ...
    passes = _granting(statements, "iam:PassRole", helpers)
    assert sorted(s["Resource"] for s in passes) == [f"arn:aws:iam::{ACCOUNT}:role/*", role_arn]
    for pass_role in passes:
        assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    (attach,) = _granting(statements, "iam:AttachRolePolicy", helpers)
    assert attach["Condition"] == {"ArnEquals": {"iam:PolicyARN": "arn:aws:iam::aws:policy/AWSDenyAll"}}
    for action in ("iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile"):
        assert [s["Resource"] for s in _granting(statements, action, helpers)] == [profile_arn]


def test_isolation_profile_holds_a_deny_all_role(member_stack) -> None:
    resources = member_stack()["Resources"]
    role = resources["IsolationRole"]["Properties"]
    assert role["RoleName"] == "ec2-isolation-deny-all"
    assert role["ManagedPolicyArns"] == ["arn:aws:iam::aws:policy/AWSDenyAll"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ec2.amazonaws.com"}
    profile = resources["IsolationInstanceProfile"]["Properties"]
    assert profile == {"InstanceProfileName": "ec2-isolation-deny-all", "Roles": [{"Ref": "IsolationRole"}]}
    assert set(member_stack()["Outputs"]) == {"ExecutionRoleArn", "IsolationInstanceProfileArn"}


HOME = "eu-west-1"
IAM_RESOURCES = {"ExecutionRole", "IsolationRole", "IsolationInstanceProfile"}
FORWARDING = {
    "ForwardingRole",
    "TagForwardingRule",
    "TamperForwardingRule",
    "ForwardingDeadLetterQueue",
    "ForwardingDeadLetterQueuePolicy",
    "ForwardingDeadLetterAlarm",
}
#: The forwarding rules, by logical id, and the kind in their fixed name (`ec2-isolation-forward-<kind>-<region>`).
FORWARDING_RULES = {
    "TagForwardingRule": "tag",
    "TamperForwardingRule": "tamper",
    "GuardrailForwardingRule": "guardrail",
}


@pytest.mark.parametrize(
    ("bus", "region", "forwards"),
    [
        ("", HOME, False),
        (f"arn:aws:events:{HOME}:111111111111:event-bus/ec2-isolation", HOME, True),
        (f"arn:aws:events:{HOME}:111111111111:event-bus/ec2-isolation", "ap-south-1", True),
        # the security account in another region: forwarded too, one hop to the home region's bus
        (f"arn:aws:events:{HOME}:{ACCOUNT}:event-bus/ec2-isolation", "ap-south-1", True),
        # the security account's home region: the stack's own default-bus rules see the events
        (f"arn:aws:events:{HOME}:{ACCOUNT}:event-bus/ec2-isolation", HOME, False),
    ],
)
def test_every_region_forwards_to_the_stacks_bus_except_the_stacks_own_account_and_region(
    member_template, helpers, bus: str, region: str, forwards: bool
) -> None:
    # Given the member template deployed in `region` of this account
    from tests.infra.resolver import resolve

    resources = resolve(
        member_template,
        {"WorkerRoleArn": WORKER_ROLE_ARN, "CentralEventBusArn": bus, "IamRegion": HOME},
        pseudo={"AWS::Region": region},
    )["Resources"]
    # Then the tag and tamper rules, their role and dead-letter queue exist where they must forward only
    assert set(resources) >= FORWARDING if forwards else not FORWARDING & set(resources)
    if forwards:
        # named with the region, as guardrail events, the forwarding audit and the SCP name them
        assert resources["ForwardingRole"]["Properties"]["RoleName"] == f"ec2-isolation-forward-{region}"
        for rule, kind in FORWARDING_RULES.items():
            assert resources[rule]["Properties"]["Name"] == f"ec2-isolation-forward-{kind}-{region}"
            (target,) = resources[rule]["Properties"]["Targets"]
            assert target["Arn"] == bus and resources[rule]["Properties"]["EventBusName"] == "default"
            assert target["RoleArn"] == {"Fn::GetAtt": ["ForwardingRole", "Arn"]}
            assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["ForwardingDeadLetterQueue", "Arn"]}}
        (statement,) = helpers.policy_statements(resources["ForwardingRole"])
        assert statement == {"Effect": "Allow", "Action": "events:PutEvents", "Resource": bus}


@pytest.mark.parametrize("region", [HOME, "us-east-1", "ap-south-1"])
def test_named_iam_resources_exist_in_iam_region_only(member_template, region: str) -> None:
    # Given the member template as a StackSet deploys it to every region, IamRegion the home one
    from tests.infra.resolver import resolve

    stack = resolve(
        member_template,
        {
            "WorkerRoleArn": WORKER_ROLE_ARN,
            "IamRegion": HOME,
            "CentralEventBusArn": f"arn:aws:events:{HOME}:111111111111:event-bus/b",
        },
        pseudo={"AWS::Region": region},
    )
    resources = stack["Resources"]
    # Then the named roles and profile (and their outputs) are in that region only, the rules everywhere
    assert (set(resources) >= IAM_RESOURCES) is (region == HOME)
    assert (IAM_RESOURCES & set(resources) == set()) is (region != HOME)
    assert bool(stack["Outputs"]) is (region == HOME)
    assert set(resources) >= FORWARDING
    # And nothing else in the template is named but the forwarding role, with its region
    named = {n for n, r in resources.items() if {"RoleName", "InstanceProfileName"} & set(r["Properties"])}
    assert named - {"ForwardingRole"} <= IAM_RESOURCES
    assert resources["ForwardingRole"]["Properties"]["RoleName"] == f"ec2-isolation-forward-{region}"


# --- the templates and the code agree -----------------------------------------------------------------


def test_member_and_central_templates_agree_on_names(sam_template, member_template) -> None:
    central, members = sam_template["Parameters"], member_template["Parameters"]
    assert central["TargetRoleName"]["Default"] == members["RoleName"]["Default"]
    assert central["ExternalId"]["Default"] == members["ExternalId"]["Default"] == ""
    for name in ("IsolationRoleName", "IsolationProfileName"):
        assert central[name]["Default"] == members[name]["Default"], name


def test_worker_settings_defaults_match_the_templates(sam_template, member_template) -> None:
    from shared.config import WorkerSettings

    fields = WorkerSettings.model_fields
    parameters = member_template["Parameters"]
    assert fields["ISOLATION_ROLE_NAME"].default == parameters["IsolationRoleName"]["Default"]
    assert fields["ISOLATION_PROFILE_NAME"].default == parameters["IsolationProfileName"]["Default"]
    # The capabilities the worker uses are the ones the member role grants, by default and by name
    central = sam_template["Parameters"]
    for parameter, setting in (
        ("CutInstanceCredentials", "CUT_INSTANCE_CREDENTIALS"),
        ("SnapshotVolumes", "SNAPSHOT_VOLUMES"),
        ("SnapshotLockDays", "SNAPSHOT_LOCK_DAYS"),
        ("ProtectedRoleArns", "PROTECTED_ROLE_ARNS"),
    ):
        for key in ("Default", "AllowedPattern", "AllowedValues"):
            assert central[parameter].get(key) == parameters[parameter].get(key), (parameter, key)
        default = WorkerSettings.model_validate(
            {
                "TABLE_NAME": "t",
                "QUEUE_URL": "q",
                "FOLLOW_UP_QUEUE_URL": "f",
                "TARGET_ROLE_NAME": "r",
                "EXEMPTION_TABLE_NAME": "e",
                setting: str(central[parameter]["Default"]),
            }
        )
        assert getattr(default, setting) == fields[setting].default, setting


def test_the_managed_tag_of_the_conditions_is_the_one_the_worker_writes() -> None:
    from worker.steps.network import MANAGED_TAG

    assert MANAGED_TAG == "ec2-isolation:managed"


@pytest.mark.parametrize(
    ("function", "settings_class"),
    [
        ("IngestFunction", "IngestSettings"),
        ("WorkerFunction", "WorkerSettings"),
        ("FollowUpFunction", "WorkerSettings"),
        ("GuardrailFunction", "GuardrailSettings"),
        ("AuditFunction", "AuditSettings"),
    ],
)
def test_function_environment_fits_its_settings(deployed, function: str, settings_class: str) -> None:
    # Given the environment the template gives a function (defaults resolved)
    import shared.config as config

    env = deployed()["Resources"][function]["Properties"]["Environment"]["Variables"]  # Globals merged in
    settings = getattr(config, settings_class)
    # Then every variable it sets is a setting of the function (or a library's: Powertools, pydantic), ...
    libraries = ("POWERTOOLS_", "PYDANTIC_")
    unknown = {k for k in env if k not in settings.model_fields and not k.startswith(libraries)}
    assert unknown == set()
    # ... and every required setting is set
    required = {name for name, field in settings.model_fields.items() if field.is_required()}
    assert required <= set(env)


def test_prior_roles_are_passed_back_to_ec2_except_the_guarded_and_protected_ones(
    member_stack, helpers
) -> None:
    # Given the member role with protected roles named
    protected = f"arn:aws:iam::{ACCOUNT}:role/payments-*"
    statements = _execution_statements(member_stack(ProtectedRoleArns=protected), helpers)
    # Then PassRole is denied on every role the credentials step never writes but the isolation role
    # (which every isolation passes), and on the protected ones
    denied = {
        resource
        for s in statements
        if s["Effect"] == "Deny" and "iam:PassRole" in helpers.as_list(s["Action"])
        for resource in helpers.as_list(s["Resource"])
    }
    role = f"arn:aws:iam::{ACCOUNT}:role/"
    assert denied == {
        role + "ec2-isolation-execution",
        role + "aws-reserved/*",
        role + "aws-service-role/*",
        role + "OrganizationAccountAccessRole",
        role + "stacksets-exec-*",
        role + "AWSControlTower*",
        role + "service-role/AWSControlTower*",
        protected,
    }
    # And the worker can create or fill no instance profile but the isolation one: it can only pass a
    # role some existing profile holds
    for action in ("iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile"):
        assert [s["Resource"] for s in _granting(_allows(member_stack(), helpers), action, helpers)] == [
            f"arn:aws:iam::{ACCOUNT}:instance-profile/ec2-isolation-deny-all"
        ]


def test_an_event_that_cannot_be_forwarded_is_dead_lettered_and_alarmed(member_stack, helpers) -> None:
    # Given the member template in a region that forwards
    resources = member_stack(CentralEventBusArn=f"arn:aws:events:{HOME}:111111111111:event-bus/b")[
        "Resources"
    ]
    # Then only this region's forwarding rules (by their fixed names) may dead-letter to its queue
    allows = [
        s
        for s in helpers.policy_statements(resources["ForwardingDeadLetterQueuePolicy"])
        if s["Effect"] == "Allow"
    ]
    assert allows == [
        {
            "Sid": "AllowForwardingRulesDeadLetters",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["ForwardingDeadLetterQueue", "Arn"]},
            "Condition": {
                "ArnLike": {
                    "aws:SourceArn": f"arn:aws:events:{REGION}:{ACCOUNT}:rule/ec2-isolation-forward-*-{REGION}"
                }
            },
        }
    ]
    for rule in FORWARDING_RULES:
        name = resources[rule]["Properties"]["Name"]
        assert fnmatch.fnmatchcase(
            f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{name}",
            allows[0]["Condition"]["ArnLike"]["aws:SourceArn"],
        )
    # And an alarm fires on the first message in it
    alarm = resources["ForwardingDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["ForwardingDeadLetterQueue", "QueueName"]}}
    ]
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (0, "GreaterThanThreshold")
    with_topic = member_stack(
        CentralEventBusArn=f"arn:aws:events:{HOME}:111111111111:event-bus/b",
        AlarmTopicArn="arn:aws:sns:eu-west-1:111111111111:oncall",
    )["Resources"]["ForwardingDeadLetterAlarm"]["Properties"]
    assert with_topic["AlarmActions"] == ["arn:aws:sns:eu-west-1:111111111111:oncall"]


def test_the_audit_reads_only_the_forwarding_rules_and_its_own_trust(member_stack, helpers) -> None:
    # Given the forwarding audit's reads, and the session policy it narrows its member sessions to
    import json

    from guardrail.audit import PERMISSIONS, SESSION_POLICY

    statements = _allows(member_stack(), helpers)
    rules = f"arn:aws:events:*:{ACCOUNT}:rule/ec2-isolation-forward-*"
    for action in ("events:DescribeRule", "events:ListTargetsByRule"):
        assert [s["Resource"] for s in _granting(statements, action, helpers)] == [rules]
    # Then its sessions may do nothing else, whatever the role grants
    assert json.loads(SESSION_POLICY)["Statement"] == [
        {"Effect": "Allow", "Action": list(PERMISSIONS), "Resource": "*"}
    ]


@pytest.mark.parametrize(
    ("template", "parameters"),
    [
        (
            "iam-execution-role.yml",
            {
                "WorkerRoleArn": WORKER_ROLE_ARN,
                "CentralEventBusArn": f"arn:aws:events:{HOME}:111111111111:event-bus/b",
            },
        ),
        (
            "regional-forwarder.yml",
            {
                "TargetEventBusArn": f"arn:aws:events:{HOME}:111111111111:event-bus/b",
                "EnableSecurityHubAction": "true",
            },
        ),
    ],
)
def test_every_forwarding_rule_is_named_for_its_region_and_dead_letters(
    template: str, parameters: dict[str, str]
) -> None:
    # Given every rule of a template that forwards to the stack's bus, deployed in a region
    from tests.infra.resolver import resolve

    from local_stack.templates import load_template

    root = Path(__file__).resolve().parents[2]
    region = "ap-south-1"
    resources = resolve(load_template(root / template), parameters, pseudo={"AWS::Region": region})[
        "Resources"
    ]
    rules = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Events::Rule"}
    assert rules
    for name, rule in rules.items():
        # Then it has the fixed name guardrail events, the audit and the SCP know it by
        assert fnmatch.fnmatchcase(rule["Name"], f"ec2-isolation-forward-*-{region}"), name
        # And an event it cannot deliver goes to a dead-letter queue (with an alarm), never dropped unseen
        for target in rule["Targets"]:
            assert target["DeadLetterConfig"] == {
                "Arn": {"Fn::GetAtt": ["ForwardingDeadLetterQueue", "Arn"]}
            }, name
    assert resources["ForwardingDeadLetterAlarm"]["Properties"]["Dimensions"][0]["Value"] == {
        "Fn::GetAtt": ["ForwardingDeadLetterQueue", "QueueName"]
    }
