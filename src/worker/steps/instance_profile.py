"""Cut the instance off the AWS APIs: its instance profile becomes the deny-all isolation profile.

- The member-account stack (iam-execution-role.yml) creates the isolation role and profile ahead of
  time, so isolation normally does not wait for IAM propagation. When they are missing the step creates
  them; a just-created profile is rejected for a while with `InvalidParameterValue`: back off within the
  budget, then retry through the queue.
- `AssociateIamInstanceProfile` fails with `IncorrectState` when a profile is associated: replace the
  association instead (its id from `DescribeIamInstanceProfileAssociations`).
- Associating needs `iam:PassRole` on the isolation role (the member-account role grants exactly that).

Credentials the instance already holds stay valid until they expire: see the README.
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
            lambda: self._attach(ctx, profile),
            codes=_PROPAGATING,
            budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
            sleep=ctx.sleep,
            what=f"attach instance profile {profile}",
        )
        if created:
            return outcome.model_copy(update={"detail": f"{outcome.detail} (created {profile})"})
        return outcome

    def _attach(self, ctx: StepContext, profile: str) -> StepRecord:
        association = self._association(ctx)
        if association is None:
            try:
                ctx.ec2.associate_iam_instance_profile(
                    IamInstanceProfile={"Name": profile}, InstanceId=ctx.target.instance_id
                )
                return StepRecord.done(self.name, f"associated {profile} (the instance had no profile)")
            except ClientError as exc:
                if error_code(exc) != "IncorrectState":
                    raise
                # Associated concurrently (or describe lagged): replace whatever is there now.
                association = self._association(ctx)
                if association is None:
                    raise
        previous = association.get("IamInstanceProfile", {}).get("Arn")
        if profile_name_of(previous) == profile:
            return StepRecord.already(self.name, f"instance profile is {profile}")
        ctx.ec2.replace_iam_instance_profile_association(
            IamInstanceProfile={"Name": profile}, AssociationId=association["AssociationId"]
        )
        return StepRecord.done(self.name, f"replaced {previous} with {profile}")

    def _association(self, ctx: StepContext) -> dict[str, Any] | None:
        return current_association(ctx)

    def _ensure_profile(self, ctx: StepContext) -> bool:
        """Make sure the isolation role and profile exist; True when this call created any of them."""
        key = (ctx.target.account_id, ctx.settings.ISOLATION_PROFILE_NAME)
        with _ready_lock:
            if key in _ready:
                return False
        iam = ctx.iam
        profile, role = ctx.settings.ISOLATION_PROFILE_NAME, ctx.settings.ISOLATION_ROLE_NAME
        created = False
        try:
            roles = iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"].get("Roles", [])
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            roles = None
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
        if roles and not any(r.get("RoleName") == role for r in roles):
            names = ", ".join(r.get("RoleName", "?") for r in roles)
            raise PermanentError(
                "IsolationProfileMisconfigured",
                f"instance profile {profile} in {ctx.target.account_id} holds role(s) {names}, not {role}",
            )
        if not roles:
            # A profile without its role (a crash between two calls, or a hand-made one): complete it.
            _tolerate_exists(
                lambda: iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
            )
            created = True
        with _ready_lock:
            _ready.add(key)
        return created


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
