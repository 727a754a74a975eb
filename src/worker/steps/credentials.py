"""Cut the credentials the instance already holds: temporary credentials it took from its role (IMDS)
stay valid for hours after the profile swap, and they are what an attacker steals first. Its inverse in
a release, `remove-credentials-deny`, takes the instance out of the role's deny policy again (under the
same lease; the policy is deleted with its last entry).

IAM evaluates policies on every request, so a deny on the instance's *prior* role takes effect within
seconds. The deny is conditioned on `ec2:SourceInstanceARN` (present on requests signed with an
instance's role credentials, naming that instance): only this instance's sessions die; every other
instance on the role keeps working. Never a role-wide revoke (`aws:TokenIssueTime`).

Fleets share roles. One policy per instance would run into IAM's aggregate limit of 10,240 characters
of inline policies per role at about 45 instances; one policy per role listing its isolated instances
holds about 135 (some 74 characters per instance ARN), but its read-modify-write must be serialized
(IAM has no conditional write): the role's lease in the service's table (`shared.store.role_leases`).
Past the limit IAM refuses the write (`LimitExceeded`: the step reads only its own policy, not the
role's others) and the record ends FAILED `CredentialsNotCut`, every other step done; a dry run, which
writes nothing, counts the role's inline policies as IAM does.
"""

from __future__ import annotations

import fnmatch
import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import ContainmentIncomplete, error_code
from shared.models import StepRecord
from shared.observability import logger
from worker import consistency
from worker.at_once import both_at_once, each_at_once
from worker.steps.base import Change, Plan, Step, StepContext
from worker.steps.checks import Action
from worker.steps.instance_profile import profile_name_of, profile_roles

#: The inline policy on a role that denies its isolated instances' sessions.
POLICY_NAME = "ec2-isolation-deny-isolated-instances"
#: "No such role or policy", as IAM says it.
_GONE = frozenset({"NoSuchEntity"})
#: IAM's limit on a role's inline policies together, whitespace not counted.
INLINE_POLICY_LIMIT = 10_240
CONDITION_KEY = "ec2:SourceInstanceARN"
#: How long one worker may hold a role's lease: the worker's timeout, which no holder outlives (a holder
#: that died frees it after this). Holders normally give it back within a second.
ROLE_LEASE_SECONDS = 60.0
#: How long giving the lease back may be retried when the service's table throttles.
RELEASE_BUDGET_SECONDS = 2.0
FIRST_WAIT_SECONDS = 0.05
MAX_WAIT_SECONDS = 1.0
#: Roles never written, beside the worker's own and the isolation role (path and name, as in the member
#: role's explicit Deny): AWS-reserved, service-linked, Organizations' and StackSets' and Control Tower's.
GUARDED_ROLES = (
    "aws-reserved/*",
    "aws-service-role/*",
    "OrganizationAccountAccessRole",
    "stacksets-exec-*",
    "AWSControlTower*",
    "service-role/AWSControlTower*",
)


class DenyInstanceCredentials(Step):
    name = "deny-instance-credentials"
    #: iam:PutRolePolicy is granted only while the member template's CutInstanceCredentials is on.
    write_permissions = ("iam:PutRolePolicy",)
    permissions = ("iam:GetInstanceProfile", "iam:ListRolePolicies", "iam:GetRolePolicy", *write_permissions)
    one_writer_per_role = True

    def plan(self, ctx: StepContext) -> Plan:
        """The role whose deny policy would list the instance, or why there is nothing to do. The policy
        itself is read under the role's lease, when the change is made (`_deny`)."""
        profile = self._profile(ctx)
        if isinstance(profile, StepRecord):
            return Plan.nothing(profile)
        role = self._role(ctx, profile)
        if role is None:
            return Plan.nothing(StepRecord.skipped(self.name, f"instance profile {profile} holds no role"))
        name, path, arn = role["RoleName"], role.get("Path", "/"), role["Arn"]
        if path.startswith("/aws-service-role/"):
            skipped = StepRecord.skipped(self.name, f"role {name} is service-linked: it cannot be changed")
            return Plan.nothing(skipped, role_name=name)
        if self._protected(ctx, name, path, arn):
            skipped = StepRecord.skipped(self.name, f"role {name} is protected: the service never changes it")
            return Plan.nothing(skipped, role_name=name)
        instance = ctx.instance_arn
        if ctx.dry_run:
            settled = self._merged(ctx, name, instance)
            if settled is not None:
                return Plan.nothing(settled, role_name=name)
        what = f"deny the sessions of {instance} on role {name} ({POLICY_NAME})"
        change = Change(
            what,
            ctx.iam.put_role_policy,
            simulated=Action("iam:PutRolePolicy", [arn], what),
            apply_by=partial(self._deny, ctx, name, instance),
        )
        return Plan.making(_outcome_of_the_change, change, role_name=name)

    def _deny(self, ctx: StepContext, name: str, instance: str) -> StepRecord:
        """Add the instance to the role's deny policy, under the role's lease: `already` when it is listed."""
        with _role_lease(ctx, name):
            # Read under the lease only (another worker may have added some): one IAM round trip less
            # than a look before the lease too, on the path of every isolation of an instance with a role.
            # Only the deny policy: IAM itself refuses a write past its limit on the role's inline policies
            # (LimitExceeded), so the others are not read on this path.
            denied = _denied_instances(ctx, name)
            if instance in denied:
                return StepRecord.already(self.name, f"sessions of {instance} denied on role {name}")
            document = policy_document(sorted({*denied, instance}))
            try:
                ctx.iam.put_role_policy(
                    RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(document)
                )
            except ClientError as exc:
                if error_code(exc) != "LimitExceeded":
                    raise
                raise _not_cut(name, f"IAM refused it: {exc}") from exc
        return StepRecord.done(
            self.name,
            f"sessions of {instance} denied on role {name} ({POLICY_NAME}: {len(denied) + 1} instance(s), "
            f"{compact_size(document)} characters)",
        )

    def _merged(self, ctx: StepContext, role: str, instance: str) -> StepRecord | None:
        """A dry run's look at the role: `already` when its deny policy lists the instance; raises when
        the role's inline policies have no room for it (a dry run makes no write IAM could refuse, so it
        counts them as IAM does)."""
        denied, others = _inline_policies(ctx, role)
        if instance in denied:
            return StepRecord.already(self.name, f"sessions of {instance} denied on role {role}")
        size = others + compact_size(policy_document(sorted({*denied, instance})))
        if size > INLINE_POLICY_LIMIT:
            raise _not_cut(role, f"its inline policies would need {size} characters")
        return None

    def _profile(self, ctx: StepContext) -> str | StepRecord:
        """The instance profile whose role would be changed, or why there is nothing to do."""
        if not ctx.settings.CUT_INSTANCE_CREDENTIALS:
            return StepRecord.skipped(self.name, "turned off (CutInstanceCredentials=false)")
        profile = profile_name_of(ctx.prior.instance_profile_arn)
        if profile is None:
            return StepRecord.skipped(self.name, "the instance had no instance profile: no role credentials")
        if profile == ctx.settings.ISOLATION_PROFILE_NAME:
            return StepRecord.skipped(
                self.name, f"the prior instance profile is the isolation profile {profile}: nothing to deny"
            )
        return profile

    def _role(self, ctx: StepContext, profile: str) -> dict[str, Any] | None:
        roles = profile_roles(ctx, profile)
        if roles is None:
            raise ContainmentIncomplete(
                "CredentialsNotCut", f"instance profile {profile} no longer exists: its role cannot be found"
            )
        return roles[0] if roles else None

    def _protected(self, ctx: StepContext, name: str, path: str, arn: str) -> bool:
        settings = ctx.settings
        if name in (settings.TARGET_ROLE_NAME, settings.ISOLATION_ROLE_NAME):
            return True
        if any(fnmatch.fnmatchcase(arn, pattern) for pattern in settings.PROTECTED_ROLE_ARNS):
            return True
        qualified = f"{path.strip('/')}/{name}" if path.strip("/") else name
        return any(fnmatch.fnmatchcase(qualified, pattern) for pattern in GUARDED_ROLES)


class RemoveCredentialsDeny(Step):
    """The inverse, in a release: the instance's entry taken out of its role's deny policy, under the
    role's lease (the policy is deleted with its last entry)."""

    name = "remove-credentials-deny"
    #: Granted only while the member template's CutInstanceCredentials is on (as the deny's own write).
    write_permissions = ("iam:PutRolePolicy", "iam:DeleteRolePolicy")
    permissions = ("iam:GetInstanceProfile", "iam:GetRolePolicy", *write_permissions)

    def plan(self, ctx: StepContext) -> Plan:
        role = ctx.prior.role_name or self._role_of_profile(ctx)
        if isinstance(role, StepRecord):
            return Plan.nothing(role)
        instance = ctx.instance_arn
        if instance not in _denied_instances(ctx, role):
            return Plan.nothing(_not_denied(self.name, instance, role))
        if not ctx.settings.CUT_INSTANCE_CREDENTIALS:
            return Plan.nothing(
                StepRecord.skipped(
                    self.name,
                    f"CutInstanceCredentials=false: the worker may not change role {role}; remove "
                    f"{instance} from its {POLICY_NAME} policy by hand",
                )
            )
        what = f"take {instance} out of {POLICY_NAME} on role {role}"
        arn = f"arn:{ctx.partition}:iam::{ctx.target.account_id}:role/{role}"
        change = Change(
            what,
            ctx.iam.put_role_policy,
            simulated=Action("iam:PutRolePolicy", [arn], what),
            also=(Action("iam:DeleteRolePolicy", [arn], f"delete {POLICY_NAME} on role {role}"),),
            apply_by=partial(self._remove, ctx, role, instance),
        )
        return Plan.making(_outcome_of_the_change, change)

    def _remove(self, ctx: StepContext, role: str, instance: str) -> StepRecord:
        with _role_lease(ctx, role):
            denied = _denied_instances(ctx, role)  # again, under the lease
            if instance not in denied:
                return _not_denied(self.name, instance, role)
            rest = sorted(denied - {instance})
            try:
                if rest:
                    ctx.iam.put_role_policy(
                        RoleName=role,
                        PolicyName=POLICY_NAME,
                        PolicyDocument=json.dumps(policy_document(rest)),
                    )
                else:
                    ctx.iam.delete_role_policy(RoleName=role, PolicyName=POLICY_NAME)
            except ClientError as exc:
                if error_code(exc) not in _GONE:
                    raise
                return StepRecord.skipped(self.name, f"role {role} or its deny policy no longer exists")
        left = f"{len(rest)} instance(s) still denied" if rest else f"{POLICY_NAME} deleted"
        return StepRecord.done(self.name, f"sessions of {instance} no longer denied on role {role} ({left})")

    def _role_of_profile(self, ctx: StepContext) -> str | StepRecord:
        """An older record without `role_name`: the role of the prior profile, as it is now."""
        profile = profile_name_of(ctx.prior.instance_profile_arn)
        if profile is None or profile == ctx.settings.ISOLATION_PROFILE_NAME:
            return StepRecord.skipped(self.name, "the instance had no instance profile: no deny to remove")
        try:
            roles = ctx.iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"].get(
                "Roles", []
            )
        except ClientError as exc:
            if error_code(exc) not in _GONE:
                raise
            return StepRecord.skipped(
                self.name, f"instance profile {profile} no longer exists: no role to change"
            )
        if not roles:
            return StepRecord.skipped(self.name, f"instance profile {profile} holds no role")
        return str(roles[0]["RoleName"])


def _not_denied(step: str, instance: str, role: str) -> StepRecord:
    return StepRecord.already(step, f"sessions of {instance} not denied on role {role}")


def _outcome_of_the_change(results: list[Any]) -> StepRecord:
    """The outcome the one change found under the role's lease (`done`, or `already`: another worker
    made it first)."""
    (outcome,) = results
    assert isinstance(outcome, StepRecord)
    return outcome


def policy_document(instance_arns: list[str]) -> dict[str, Any]:
    """Deny everything to sessions of the listed instances."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyIsolatedInstances",
                "Effect": "Deny",
                "Action": "*",
                "Resource": "*",
                "Condition": {"ArnEquals": {CONDITION_KEY: instance_arns}},
            }
        ],
    }


_INSTANCE_ARN = re.compile(r"^arn:aws[a-z-]*:ec2:[a-z0-9-]+:[0-9]{12}:instance/i-[0-9a-f]{8}([0-9a-f]{9})?$")


def is_credentials_deny(policy_name: str, document: Any) -> bool:
    """Whether an inline policy is the one this step writes (`policy_document`): named `ec2-isolation*`,
    every statement a Deny of everything to sessions of listed instances (`ArnEquals` on
    `ec2:SourceInstanceARN`, instance ARNs only). Anything else the execution role writes is not the
    service's doing (the guardrail events report it)."""
    if not policy_name.startswith("ec2-isolation") or not isinstance(document, dict):
        return False
    statements = document.get("Statement")
    statements = [statements] if isinstance(statements, dict) else statements
    if not isinstance(statements, list) or not statements:
        return False
    return all(_denies_instance_sessions(statement) for statement in statements)


def _denies_instance_sessions(statement: Any) -> bool:
    if not isinstance(statement, dict) or set(statement) - {
        "Sid",
        "Effect",
        "Action",
        "Resource",
        "Condition",
    }:
        return False
    condition = statement.get("Condition")
    if (
        statement.get("Effect") != "Deny"
        or statement.get("Action") != "*"
        or statement.get("Resource") != "*"
    ):
        return False
    if not isinstance(condition, dict) or set(condition) != {"ArnEquals"}:
        return False
    keys = condition["ArnEquals"]
    if not isinstance(keys, dict) or [k.lower() for k in keys] != [CONDITION_KEY.lower()]:
        return False
    (arns,) = keys.values()
    arns = arns if isinstance(arns, list) else [arns]
    return bool(arns) and all(isinstance(arn, str) and _INSTANCE_ARN.match(arn) for arn in arns)


def compact_size(document: Any) -> int:
    """A policy's size as IAM counts it (whitespace outside strings not counted)."""
    return len(json.dumps(document, separators=(",", ":")))


def _document(ctx: StepContext, role: str, policy: str) -> Any:
    document = ctx.iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else document


def _denied_instances(ctx: StepContext, role: str) -> set[str]:
    """The instances the role's deny policy lists now."""
    try:
        document = _document(ctx, role, POLICY_NAME)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return set()
    statements = document.get("Statement", [])
    arns: set[str] = set()
    for statement in statements if isinstance(statements, list) else [statements]:
        for key, values in statement.get("Condition", {}).get("ArnEquals", {}).items():
            if key.lower() == CONDITION_KEY.lower():
                arns.update(values if isinstance(values, list) else [values])
    return arns


def _inline_policies(ctx: StepContext, role: str) -> tuple[set[str], int]:
    """The instances the role's deny policy lists, and the size of its other inline policies (they share
    IAM's limit), read at once (a dry run's answer comes one IAM round trip sooner)."""
    return both_at_once(lambda: _denied_instances(ctx, role), lambda: _others_size(ctx, role))


def _others_size(ctx: StepContext, role: str) -> int:
    names: list[str] = []
    for page in ctx.iam.get_paginator("list_role_policies").paginate(RoleName=role):
        names.extend(name for name in page["PolicyNames"] if name != POLICY_NAME)
    return sum(each_at_once(lambda name: compact_size(_document(ctx, role, name)), names))


def _not_cut(role: str, why: str) -> ContainmentIncomplete:
    return ContainmentIncomplete(
        "CredentialsNotCut",
        f"role {role} has no room for another instance in {POLICY_NAME} ({why}; IAM allows "
        f"{INLINE_POLICY_LIMIT} characters of inline policy per role): the instance's credentials stay valid "
        "until they expire",
    )


@contextmanager
def _role_lease(ctx: StepContext, role: str) -> Iterator[None]:
    """Hold the role's lease while its deny policy is read, extended and written back."""
    owner = uuid.uuid4().hex
    account = ctx.target.account_id
    consistency.wait_for(
        lambda: ctx.leases.take_role_lease(account, role, owner, seconds=ROLE_LEASE_SECONDS),
        budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
        first_delay=FIRST_WAIT_SECONDS,
        max_delay=MAX_WAIT_SECONDS,
        sleep=ctx.sleep,
        code="RoleLeaseHeld",
        message=lambda waited: (
            f"another isolation is changing role {role}'s deny policy (waited {waited:.1f}s)"
        ),
    )
    try:
        yield
    finally:
        _release(ctx, role, owner)


def _release(ctx: StepContext, role: str, owner: str) -> None:
    """Give the lease back; if the table will not have it, it expires (what the step did stands)."""
    try:
        consistency.retry_own_table(
            lambda: ctx.leases.release_role_lease(ctx.target.account_id, role, owner),
            budget_seconds=RELEASE_BUDGET_SECONDS,
            sleep=ctx.sleep,
            what=f"giving back the lease of role {role}",
        )
    except Exception:
        logger.exception("role lease not given back: it expires", extra={"role": role})
