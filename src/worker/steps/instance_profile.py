"""Cut the instance off the AWS APIs: its instance profile becomes the deny-all isolation profile; a
release gives it back its prior profile.

- The member-account stack (iam-execution-role.yml) creates the isolation role and profile ahead of
  time, so isolation normally does not wait for IAM propagation. When they are missing the step creates
  them; a just-created profile is rejected for a while with `InvalidParameterValue`: back off within the
  budget, then retry through the queue.
- `AssociateIamInstanceProfile` fails with `IncorrectState` when a profile is associated: replace the
  association instead (its id from `DescribeIamInstanceProfileAssociations`).
- Associating needs `iam:PassRole` on the isolation role (the member-account role grants exactly that).

Credentials the instance already holds are denied on its prior role (`worker.steps.credentials`); what
remains is in docs/security.md.

The inverse, in a release: `restore-instance-profile` associates the prior profile again (in place of the
isolation profile), or removes the isolation profile when the instance had none; when the prior profile
no longer exists, the isolation profile is removed and none associated (`skipped`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import PermanentError, error_code
from shared.models import StepRecord
from worker.consistency import until_consistent
from worker.steps.base import Change, Plan, Step, StepContext
from worker.steps.checks import Action

DENY_ALL_POLICY = "arn:aws:iam::aws:policy/AWSDenyAll"
_PROPAGATING = frozenset({"InvalidParameterValue"})
#: The trust policy of the isolation role: only EC2 may assume it (the member template says the same).
EC2_TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)

# Accounts whose isolation profile is known to exist (warm Lambda): (account, profile name).
_ready: set[tuple[str, str]] = set()
_ready_lock = threading.Lock()


def forget_ready_profiles() -> None:
    with _ready_lock:
        _ready.clear()


def profile_name_of(arn: str | None) -> str | None:
    return arn.rsplit("/", 1)[-1] if arn else None


class SwapInstanceProfile(Step):
    name = "swap-instance-profile"
    permissions = (
        "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:AssociateIamInstanceProfile",
        "ec2:ReplaceIamInstanceProfileAssociation",
        "iam:PassRole",
        "iam:GetInstanceProfile",
        "iam:CreateRole",
        "iam:AttachRolePolicy",
        "iam:CreateInstanceProfile",
        "iam:AddRoleToInstanceProfile",
    )

    def plan(self, ctx: StepContext) -> Plan:
        settings, target = ctx.settings, ctx.target
        profile, role = settings.ISOLATION_PROFILE_NAME, settings.ISOLATION_ROLE_NAME
        if profile_name_of(ctx.instance.state.instance_profile_arn) == profile:
            return Plan.nothing(StepRecord.already(self.name, f"instance profile is {profile}"))
        iam_arn = f"arn:{ctx.partition}:iam::{target.account_id}:{{}}"
        role_arn, profile_arn = iam_arn.format(f"role/{role}"), iam_arn.format(f"instance-profile/{profile}")
        key = (target.account_id, profile)
        with _ready_lock:
            ready = key in _ready and not ctx.dry_run
        # The profile and its role, as they are (known to exist on a warm Lambda: not read again; a dry
        # run reads them).
        roles = [{"RoleName": role}] if ready else profile_roles(ctx, profile)
        changes: list[Change] = []
        if roles is None:
            changes.append(
                Change(
                    f"create role {role}",
                    ctx.iam.create_role,
                    simulated=Action("iam:CreateRole", [role_arn], f"create role {role}"),
                    also=(
                        Action(
                            "iam:AttachRolePolicy",
                            [role_arn],
                            f"attach AWSDenyAll to {role}",
                            {"iam:PolicyARN": DENY_ALL_POLICY},
                        ),
                        Action(
                            "iam:CreateInstanceProfile", [profile_arn], f"create instance profile {profile}"
                        ),
                    ),
                    apply_by=lambda: _create_profile(ctx),
                )
            )
        else:
            self._check_roles(ctx, roles)
        if not roles:
            # A profile without its role (a crash between two calls, or a hand-made one): complete it.
            changes.append(
                Change(
                    f"add role {role} to {profile}",
                    ctx.iam.add_role_to_instance_profile,
                    {"InstanceProfileName": profile, "RoleName": role},
                    simulated=Action(
                        "iam:AddRoleToInstanceProfile", [profile_arn], f"add role {role} to {profile}"
                    ),
                    apply_by=lambda: _tolerate_exists(
                        lambda: ctx.iam.add_role_to_instance_profile(
                            InstanceProfileName=profile, RoleName=role
                        )
                    ),
                )
            )
        association = _current_association(ctx)
        if _profile_of(association) == profile:
            return Plan.nothing(StepRecord.already(self.name, f"instance profile is {profile}"))

        def associate() -> StepRecord:
            with _ready_lock:
                _ready.add(key)
            return _put_profile(ctx, self.name, profile, association, f"attach instance profile {profile}")

        changes.append(_association(ctx, profile, role_arn, association, associate))
        created = f" (created {profile})" if changes[:-1] else ""

        def done(results: list[Any]) -> StepRecord:
            put: StepRecord = results[-1]
            return put.model_copy(update={"detail": f"{put.detail}{created}"}) if created else put

        return Plan.making(done, *changes)

    def _check_roles(self, ctx: StepContext, roles: list[dict[str, Any]]) -> None:
        """The isolation profile holds the isolation role (or nothing yet), never another one."""
        profile, role = ctx.settings.ISOLATION_PROFILE_NAME, ctx.settings.ISOLATION_ROLE_NAME
        if roles and not any(r.get("RoleName") == role for r in roles):
            names = ", ".join(r.get("RoleName", "?") for r in roles)
            raise PermanentError(
                "IsolationProfileMisconfigured",
                f"instance profile {profile} in {ctx.target.account_id} holds role(s) {names}, not {role}",
            )


class RestoreInstanceProfile(Step):
    """The inverse of `SwapInstanceProfile`."""

    name = "restore-instance-profile"
    permissions = (
        "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:AssociateIamInstanceProfile",
        "ec2:ReplaceIamInstanceProfileAssociation",
        "ec2:DisassociateIamInstanceProfile",
        "iam:GetInstanceProfile",
        "iam:PassRole",
    )

    def plan(self, ctx: StepContext) -> Plan:
        isolation = ctx.settings.ISOLATION_PROFILE_NAME
        prior = profile_name_of(ctx.prior.instance_profile_arn)
        association = _current_association(ctx)
        current = _profile_of(association)
        if prior is None or prior == isolation:
            if current != isolation or association is None:
                return Plan.nothing(
                    StepRecord.already(
                        self.name, "the instance had no instance profile, and has no isolation profile"
                    )
                )
            return Plan.making(
                f"removed {isolation} (the instance had no instance profile)",
                _disassociation(ctx, association, isolation),
            )
        if current == prior:
            return Plan.nothing(StepRecord.already(self.name, f"instance profile is {prior}"))
        roles = profile_roles(ctx, prior)
        if roles is None:
            gone = StepRecord.skipped(
                self.name, f"instance profile {prior} no longer exists: {isolation} removed, none associated"
            )
            if association is not None and current == isolation:
                return Plan.making(lambda _: gone, _disassociation(ctx, association, isolation))
            return Plan.nothing(gone)
        role_arn = str(roles[0]["Arn"]) if roles and "Arn" in roles[0] else None
        change = _association(
            ctx,
            prior,
            role_arn,
            association,
            lambda: _put_profile(ctx, self.name, prior, association, f"associate instance profile {prior}"),
        )
        return Plan.making(lambda results: results[0], change)


def _create_profile(ctx: StepContext) -> None:
    """The isolation role (deny-all, only EC2 may assume it) and its instance profile, still without the
    role (`_tolerate_exists`: a concurrent worker made them)."""
    iam = ctx.iam
    profile, role = ctx.settings.ISOLATION_PROFILE_NAME, ctx.settings.ISOLATION_ROLE_NAME
    _tolerate_exists(
        lambda: iam.create_role(
            RoleName=role,
            AssumeRolePolicyDocument=EC2_TRUST_POLICY,
            Description="ec2-isolation: role of the deny-all isolation instance profile",
        )
    )
    iam.attach_role_policy(RoleName=role, PolicyArn=DENY_ALL_POLICY)
    _tolerate_exists(lambda: iam.create_instance_profile(InstanceProfileName=profile))


def _association(
    ctx: StepContext,
    profile: str,
    role_arn: str | None,
    association: dict[str, Any] | None,
    apply_by: Callable[[], StepRecord],
) -> Change:
    """Give the instance `profile`: associated when it has none, else in place of the one it has. Neither
    call takes `DryRun`: a dry run simulates it, with `iam:PassRole` on the profile's role."""
    ec2 = ctx.ec2
    if association is None:
        what, action = f"associate with {profile}", "ec2:AssociateIamInstanceProfile"
        call, params = ec2.associate_iam_instance_profile, {"InstanceId": ctx.target.instance_id}
    else:
        what = f"replace {association['IamInstanceProfile'].get('Arn')} with {profile}"
        action = "ec2:ReplaceIamInstanceProfileAssociation"
        call, params = (
            ec2.replace_iam_instance_profile_association,
            {"AssociationId": association["AssociationId"]},
        )
    passing = (
        ()
        if role_arn is None
        else (
            Action(
                "iam:PassRole",
                [role_arn],
                f"pass role {role_arn.rsplit('/', 1)[-1]} to EC2",
                {"iam:PassedToService": "ec2.amazonaws.com"},
            ),
        )
    )
    return Change(
        what,
        call,
        {"IamInstanceProfile": {"Name": profile}, **params},
        simulated=Action(action, [ctx.instance_arn], what),
        also=passing,
        apply_by=apply_by,
    )


def _disassociation(ctx: StepContext, association: dict[str, Any], profile: str) -> Change:
    # DisassociateIamInstanceProfile takes no DryRun: simulated.
    return Change(
        f"remove {profile}",
        ctx.ec2.disassociate_iam_instance_profile,
        {"AssociationId": association["AssociationId"]},
        simulated=Action("ec2:DisassociateIamInstanceProfile", [ctx.instance_arn], f"remove {profile}"),
    )


def _put_profile(
    ctx: StepContext, step: str, profile: str, association: dict[str, Any] | None, what: str
) -> StepRecord:
    """Give the instance `profile` (step `step`'s outcome), from its association as planned; retried
    (reading the association again) while a just-created profile propagates."""
    planned = [association]

    def attempt() -> StepRecord:
        return _give(ctx, step, profile, planned.pop() if planned else _current_association(ctx))

    return until_consistent(
        attempt,
        codes=_PROPAGATING,
        budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
        sleep=ctx.sleep,
        what=what,
    )


def _give(ctx: StepContext, step: str, profile: str, association: dict[str, Any] | None) -> StepRecord:
    """Associate `profile` when the instance has no association, else replace the one it has."""
    if association is None:
        try:
            ctx.ec2.associate_iam_instance_profile(
                IamInstanceProfile={"Name": profile}, InstanceId=ctx.target.instance_id
            )
            return StepRecord.done(step, f"associated {profile} (the instance had no profile)")
        except ClientError as exc:
            if error_code(exc) != "IncorrectState":
                raise
            # Associated concurrently (or describe lagged): replace whatever is there now.
            association = _current_association(ctx)
            if association is None:
                raise
    previous = association.get("IamInstanceProfile", {}).get("Arn")
    if profile_name_of(previous) == profile:
        return StepRecord.already(step, f"instance profile is {profile}")
    ctx.ec2.replace_iam_instance_profile_association(
        IamInstanceProfile={"Name": profile}, AssociationId=association["AssociationId"]
    )
    return StepRecord.done(step, f"replaced {previous} with {profile}")


def profile_roles(ctx: StepContext, profile: str) -> list[dict[str, Any]] | None:
    """The roles of instance profile `profile` (None: there is no such profile)."""
    try:
        roles = ctx.iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"].get("Roles", [])
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return None
    return list(roles)


def _current_association(ctx: StepContext) -> dict[str, Any] | None:
    """The instance's profile association (associating or associated), if any. Read here rather than
    from DescribeInstances: moto's does not follow a replaced association."""
    associations = ctx.ec2.describe_iam_instance_profile_associations(
        Filters=[
            {"Name": "instance-id", "Values": [ctx.target.instance_id]},
            {"Name": "state", "Values": ["associating", "associated"]},
        ]
    )["IamInstanceProfileAssociations"]
    return associations[0] if associations else None


def _profile_of(association: dict[str, Any] | None) -> str | None:
    return profile_name_of((association or {}).get("IamInstanceProfile", {}).get("Arn"))


def _tolerate_exists(call: Any) -> bool:
    """Run a create call; False when the thing exists already (a concurrent worker made it)."""
    try:
        call()
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
        return False
    return True
