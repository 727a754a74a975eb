"""The step catalogue: the phases of an isolation, each an ordered tuple of steps.

`CONTAINMENT` ends with the network cut (`contained_at` is set with it); `FOLLOW_UP` runs after it.
`required_permissions()` is what the member-account role must grant (tests/infra checks
iam-execution-role.yml against it in both directions).
"""

from __future__ import annotations

from worker import instance
from worker.steps import instance_profile, instance_state, network
from worker.steps.base import Step, StepContext

__all__ = ["CONTAINMENT", "FOLLOW_UP", "PLAN", "Step", "StepContext", "forget_caches", "required_permissions"]

#: Containment: the network cut, first and fast.
CONTAINMENT: tuple[type[Step], ...] = (network.EnsureIsolationSecurityGroup, network.SwapSecurityGroups)
#: Then the API cut and evidence.
FOLLOW_UP: tuple[type[Step], ...] = (
    instance_profile.SwapInstanceProfile,
    instance_state.EnableTerminationProtection,
    instance_state.TagInstance,
)
#: The order of an isolation.
PLAN: tuple[type[Step], ...] = CONTAINMENT + FOLLOW_UP


def required_permissions() -> frozenset[str]:
    """Every IAM action the worker calls in a target account."""
    actions = set(instance.PERMISSIONS)
    for step in PLAN:
        actions.update(step.permissions)
    return frozenset(actions)


def forget_caches() -> None:
    """Forget warm-Lambda caches (isolation groups, ready profiles): tests, and the local stack."""
    network.forget_cached_groups()
    instance_profile.forget_ready_profiles()
