"""Cut the instance off the AWS APIs: its instance profile becomes the deny-all isolation profile.

- The member-account stack (iam-execution-role.yml) creates the isolation role and profile ahead of
  time, so isolation normally does not wait for IAM propagation. When they are missing the step creates
  them; a just-created profile is rejected for a while with `InvalidParameterValue`: back off within the
  budget, then retry through the queue.
- `AssociateIamInstanceProfile` fails with `IncorrectState` when a profile is associated: replace the
  association instead (its id from `DescribeIamInstanceProfileAssociations`).
- Associating needs `iam:PassRole` on the isolation role (the member-account role grants exactly that).

Credentials the instance already holds are denied on its prior role (`worker.steps.credentials`); what
remains is in docs/security.md.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import PermanentError, error_code
from shared.models import StepRecord
from worker.consistency import until_consistent
from worker.steps.base import Step, StepContext
from worker.steps.checks import Action, PolicySimulator, outcome, simulate

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

    def run(self, ctx: StepContext) -> StepRecord:
        profile = ctx.settings.ISOLATION_PROFILE_NAME
        current = ctx.instance.state.instance_profile_arn
        if profile_name_of(current) == profile:
            return StepRecord.already(self.name, f"instance profile is {profile}")
        created = self._ensure_profile(ctx)
        outcome = until_consistent(
            lambda: put_profile(ctx, self.name, profile),
            codes=_PROPAGATING,
            budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
            sleep=ctx.sleep,
            what=f"attach instance profile {profile}",
        )
        if created:
            return outcome.model_copy(update={"detail": f"{outcome.detail} (created {profile})"})
        return outcome

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        # AssociateIamInstanceProfile and ReplaceIamInstanceProfileAssociation take no DryRun: simulated.
        settings, target = ctx.settings, ctx.target
        profile, role = settings.ISOLATION_PROFILE_NAME, settings.ISOLATION_ROLE_NAME
        if profile_name_of(ctx.instance.state.instance_profile_arn) == profile:
            return StepRecord.already(self.name, f"instance profile is {profile}")
        iam_arn = f"arn:{ctx.partition}:iam::{target.account_id}:{{}}"
        role_arn, profile_arn = iam_arn.format(f"role/{role}"), iam_arn.format(f"instance-profile/{profile}")
        actions: list[Action] = []
        roles = profile_roles(ctx, profile)
        if roles is None:
            actions += [
                Action("iam:CreateRole", [role_arn], f"create role {role}"),
                Action(
                    "iam:AttachRolePolicy",
                    [role_arn],
                    f"attach AWSDenyAll to {role}",
                    {"iam:PolicyARN": DENY_ALL_POLICY},
                ),
                Action("iam:CreateInstanceProfile", [profile_arn], f"create instance profile {profile}"),
            ]
        else:
            self._check_roles(ctx, roles)
        if not roles:
            actions.append(
                Action("iam:AddRoleToInstanceProfile", [profile_arn], f"add role {role} to {profile}")
            )
        association = current_association(ctx)
        replacing = association is not None
        call = "ec2:ReplaceIamInstanceProfileAssociation" if replacing else "ec2:AssociateIamInstanceProfile"
        what = f"replace {association['IamInstanceProfile'].get('Arn')}" if association else "associate"
        actions += [
            Action(call, [ctx.instance_arn], f"{what} with {profile}"),
            Action(
                "iam:PassRole",
                [role_arn],
                f"pass role {role} to EC2",
                {"iam:PassedToService": "ec2.amazonaws.com"},
            ),
        ]
        return outcome(self.name, simulate(simulator, *actions), "")

    def _ensure_profile(self, ctx: StepContext) -> bool:
        """Make sure the isolation role and profile exist; True when this call created any of them."""
        key = (ctx.target.account_id, ctx.settings.ISOLATION_PROFILE_NAME)
        with _ready_lock:
            if key in _ready:
                return False
        iam = ctx.iam
        profile, role = ctx.settings.ISOLATION_PROFILE_NAME, ctx.settings.ISOLATION_ROLE_NAME
        created = False
        roles = profile_roles(ctx, profile)
        if roles is None:
            created |= _tolerate_exists(
                lambda: iam.create_role(
                    RoleName=role,
                    AssumeRolePolicyDocument=EC2_TRUST_POLICY,
                    Description="ec2-isolation: role of the deny-all isolation instance profile",
                )
            )
            iam.attach_role_policy(RoleName=role, PolicyArn=DENY_ALL_POLICY)
            created |= _tolerate_exists(lambda: iam.create_instance_profile(InstanceProfileName=profile))
            roles = []
        self._check_roles(ctx, roles)
        if not roles:
            # A profile without its role (a crash between two calls, or a hand-made one): complete it.
            _tolerate_exists(
                lambda: iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
            )
            created = True
        with _ready_lock:
            _ready.add(key)
        return created

    def _check_roles(self, ctx: StepContext, roles: list[dict[str, Any]]) -> None:
        """The isolation profile holds the isolation role (or nothing yet), never another one."""
        profile, role = ctx.settings.ISOLATION_PROFILE_NAME, ctx.settings.ISOLATION_ROLE_NAME
        if roles and not any(r.get("RoleName") == role for r in roles):
            names = ", ".join(r.get("RoleName", "?") for r in roles)
            raise PermanentError(
                "IsolationProfileMisconfigured",
                f"instance profile {profile} in {ctx.target.account_id} holds role(s) {names}, not {role}",
            )


def put_profile(ctx: StepContext, step: str, profile: str) -> StepRecord:
    """Give the instance `profile` (step `step`'s outcome): associated when it has none, else in place of
    the one it has."""
    association = current_association(ctx)
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
            association = current_association(ctx)
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


def current_association(ctx: StepContext) -> dict[str, Any] | None:
    """The instance's profile association (associating or associated), if any. Read here rather than
    from DescribeInstances: moto's does not follow a replaced association."""
    associations = ctx.ec2.describe_iam_instance_profile_associations(
        Filters=[
            {"Name": "instance-id", "Values": [ctx.target.instance_id]},
            {"Name": "state", "Values": ["associating", "associated"]},
        ]
    )["IamInstanceProfileAssociations"]
    return associations[0] if associations else None


def _tolerate_exists(call: Any) -> bool:
    """Run a create call; False when the thing exists already (a concurrent worker made it)."""
    try:
        call()
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
        return False
    return True
