"""The step catalogue, in the order the runner walks it: network first.

Importing this package registers every step. `required_permissions()` is what the member-account role
must grant (tests/infra checks iam-execution-role.yml against it).
"""

from __future__ import annotations

from worker import instance
from worker.steps import instance_profile, instance_state, network
from worker.steps.base import CATALOGUE, Step, StepContext, StepOutcome

__all__ = ["CATALOGUE", "PLAN", "Step", "StepContext", "StepOutcome", "forget_caches", "required_permissions"]

#: The order of an isolation: containment (the network cut) first, then the API cut, then evidence.
PLAN: tuple[type[Step], ...] = (
    network.EnsureIsolationSecurityGroup,
    network.SwapSecurityGroups,
    instance_profile.SwapInstanceProfile,
    instance_state.EnableTerminationProtection,
    instance_state.TagInstance,
)
if set(PLAN) != set(CATALOGUE):  # pragma: no cover - a registered step left out of the plan
    raise RuntimeError("every registered step must be in PLAN")


def required_permissions() -> frozenset[str]:
    """Every IAM action the worker calls in a target account."""
    actions = set(instance.PERMISSIONS)
    for step in CATALOGUE:
        actions.update(step.permissions)
    return frozenset(actions)


def forget_caches() -> None:
    """Forget warm-Lambda caches (isolation groups, ready profiles): tests, and the local stack."""
    network.forget_cached_groups()
    instance_profile.forget_ready_profiles()
