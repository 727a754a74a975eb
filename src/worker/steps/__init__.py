"""The step catalogue: the phases of an isolation, each an ordered tuple of steps.

`CONTAINMENT` is the network cut (`contained_at` is set with it), run for every instance of a batch at
once. `HOLD` runs in the same invocation right after every cut of the batch: what an attacker or Auto
Scaling can beat us to (the instance's credentials denied on its role; the instance out of Auto Scaling
and its load balancers, before the failing health checks get it replaced). `FOLLOW_UP` is everything
else (the API cut, protection, evidence, labels): it runs later, from the isolation's own message on the
follow-up queue, so that it never delays another instance's containment.
`RELEASE` undoes an isolation from the record's prior state, in the order that reopens least first (the
instance never comes back online with deny-all credentials, and never rejoins its Auto Scaling group
before it can pass the group's health check): the prior instance profile, the credentials deny taken
out, the prior security groups, the load balancers, the Auto Scaling group (once the network is back),
the instance attributes, the labels. Each step of an isolation and its inverse live in one module (the
release-wide context in `worker.steps.release`).

A step plans (`worker.steps.base`): its plan is applied (`run`) or, in a dry run, checked (`check`,
`worker.steps.checks`). `required_permissions()` is what the member-account role must grant
(tests/infra checks iam-execution-role.yml against it in both directions): the steps' actions, and a
dry run's permission simulator.
"""

from __future__ import annotations

from worker import instance
from worker.steps import (
    checks,
    credentials,
    evidence,
    instance_profile,
    instance_state,
    load_balancing,
    network,
)
from worker.steps.base import Step, StepContext

__all__ = [
    "CONTAINMENT",
    "FOLLOW_UP",
    "HOLD",
    "PLAN",
    "RELEASE",
    "Step",
    "StepContext",
    "forget_caches",
    "required_permissions",
]

#: Containment: the network cut, first and fast.
CONTAINMENT: tuple[type[Step], ...] = (network.EnsureIsolationSecurityGroup, network.SwapSecurityGroups)
#: Right after every cut of the batch, in the same invocation: the stolen credentials, Auto Scaling and
#: load balancers.
HOLD: tuple[type[Step], ...] = (
    credentials.DenyInstanceCredentials,
    load_balancing.LeaveAutoScalingAndLoadBalancers,
)
#: From the follow-up queue: the API cut, protection, evidence, labels.
FOLLOW_UP: tuple[type[Step], ...] = (
    instance_profile.SwapInstanceProfile,
    instance_state.StopOnShutdown,
    instance_state.KeepVolumes,
    instance_state.EnableStopProtection,
    instance_state.EnableTerminationProtection,
    evidence.SnapshotVolumes,
    instance_state.TagInstance,
)
#: The order of an isolation.
PLAN: tuple[type[Step], ...] = CONTAINMENT + HOLD + FOLLOW_UP
#: The order of a release (contract: what reopens least first).
RELEASE: tuple[type[Step], ...] = (
    instance_profile.RestoreInstanceProfile,
    credentials.RemoveCredentialsDeny,
    network.RestoreSecurityGroups,
    load_balancing.RejoinLoadBalancers,
    load_balancing.RejoinAutoScalingGroup,
    instance_state.RestoreInstanceAttributes,
    instance_state.UntagInstance,
)


def required_permissions() -> frozenset[str]:
    """Every IAM action the worker calls in a target account."""
    actions = set(instance.PERMISSIONS) | set(checks.PERMISSIONS)
    for step in PLAN + RELEASE:
        actions.update(step.permissions)
    return frozenset(actions)


def forget_caches() -> None:
    """Forget warm-Lambda caches (isolation groups, ready profiles, target groups): tests, local stack."""
    network.forget_cached_groups()
    instance_profile.forget_ready_profiles()
    load_balancing.forget_target_groups()
