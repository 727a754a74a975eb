"""Out of Auto Scaling and load balancers: once the network is cut the load balancer's health checks
fail, and the Auto Scaling group terminates the instance (termination protection does not stop Auto
Scaling), its disks and memory with it.

- `DetachInstances` with `ShouldDecrementDesiredCapacity=false`: the group keeps its capacity by
  launching a replacement (a group at its minimum is fine). An instance left `Detaching` for the
  deregistration delay counts as detached: nothing waits for it.
- Detaching deregisters the instance from the group's own load balancers in AWS, but not from target
  groups or load balancers it was registered with some other way, and moto deregisters nothing: every
  classic load balancer listing the instance and every ELBv2 target group that has it as a target is
  deregistered explicitly ("not registered" is fine: the detach got there first).
- There is no reverse lookup from an instance to its target groups: the account's target groups are
  listed once per region and cached in the warm worker; each candidate's targets are read
  (DescribeTargetHealth). `instance` target groups of the instance's VPCs match its id; `ip` target
  groups (which may sit outside the VPC, `AvailabilityZone: all`) match any IPv4 or IPv6 address of any
  of its interfaces.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import error_code
from shared.models import StepRecord, TargetGroupTarget
from worker.steps.base import Step, StepContext
from worker.steps.checks import Action, PolicySimulator, outcome, simulate

#: How long a warm worker trusts its list of an account's target groups.
TARGET_GROUPS_TTL_SECONDS = 300.0
#: Lifecycle states of an instance on its way out of its group: detached as far as isolation goes.
_LEAVING = ("Detaching", "Detached")
#: "Not registered" as ELBv2 and the classic load balancer say it.
_NOT_REGISTERED = frozenset({"InvalidTarget", "InvalidInstance"})


@dataclass(frozen=True)
class TargetGroup:
    arn: str
    vpc_id: str | None
    target_type: str


_target_groups: dict[tuple[str, str], tuple[float, list[TargetGroup]]] = {}
_target_groups_lock = threading.Lock()


def forget_target_groups() -> None:
    with _target_groups_lock:
        _target_groups.clear()


class LeaveAutoScalingAndLoadBalancers(Step):
    name = "leave-auto-scaling-and-load-balancers"
    permissions = (
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DetachInstances",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:DeregisterTargets",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
    )

    def prior(self, ctx: StepContext) -> dict[str, Any]:
        found = ctx.read[self.name] = self._found(ctx)
        group, _state, registrations, balancers = found
        return {"autoscaling_group": group, "target_groups": registrations, "load_balancers": balancers}

    def _found(self, ctx: StepContext) -> tuple[str | None, str, list[TargetGroupTarget], list[str]]:
        """Its Auto Scaling group (and lifecycle state), target group registrations and classic load
        balancers: as read ahead for this run (`prior`; taken, a later run reads again), or read now."""
        if self.name in ctx.read:
            found: tuple[str | None, str, list[TargetGroupTarget], list[str]] = ctx.read.pop(self.name)
            return found
        group, state = self._group(ctx)
        return group, state, self._registrations(ctx), self._classic(ctx)

    def run(self, ctx: StepContext) -> StepRecord:
        group, state, registrations, balancers = self._found(ctx)
        ctx.remember(autoscaling_group=group, target_groups=registrations, load_balancers=balancers)
        done: list[str] = []
        if group is not None and not state.startswith(_LEAVING):
            self._detach(ctx, group)
            done.append(f"detached from {group} (desired capacity kept)")
        for registration in registrations:
            self._deregister_target(ctx, registration)
            port = f":{registration.port}" if registration.port is not None else ""
            done.append(f"deregistered {registration.id}{port} from {registration.arn.rsplit(':', 1)[-1]}")
        for balancer in balancers:
            _tolerate_not_registered(
                lambda balancer=balancer: ctx.account.client("elb").deregister_instances_from_load_balancer(
                    LoadBalancerName=balancer, Instances=[{"InstanceId": ctx.target.instance_id}]
                )
            )
            done.append(f"deregistered from classic load balancer {balancer}")
        if done:
            return StepRecord.done(self.name, "; ".join(done))
        return self._nothing_to_do(ctx, group, state)

    def check(self, ctx: StepContext, simulator: PolicySimulator) -> StepRecord:
        group, state, registrations, balancers = self._found(ctx)
        ctx.remember(autoscaling_group=group, target_groups=registrations, load_balancers=balancers)
        target = ctx.target
        where = f"arn:{ctx.partition}:{{}}:{target.region}:{target.account_id}:{{}}"
        actions: list[Action] = []
        if group is not None and not state.startswith(_LEAVING):
            # (The group's ARN holds an id DescribeAutoScalingInstances does not give: `*` stands for it.)
            arn = where.format("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{group}")
            actions.append(Action("autoscaling:DetachInstances", [arn], f"detach from {group}"))
        if registrations:
            arns = list(dict.fromkeys(r.arn for r in registrations))
            names = ", ".join(arn.rsplit(":", 1)[-1] for arn in arns)
            actions.append(Action("elasticloadbalancing:DeregisterTargets", arns, f"deregister from {names}"))
        if balancers:
            arns = [where.format("elasticloadbalancing", f"loadbalancer/{b}") for b in balancers]
            actions.append(
                Action(
                    "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
                    arns,
                    f"deregister from classic load balancer(s) {', '.join(balancers)}",
                )
            )
        if not actions:
            return self._nothing_to_do(ctx, group, state)
        return outcome(self.name, simulate(simulator, *actions), "")

    def _nothing_to_do(self, ctx: StepContext, group: str | None, state: str) -> StepRecord:
        prior = ctx.prior
        if prior.autoscaling_group or prior.target_groups or prior.load_balancers:
            leaving = f" ({group}: {state})" if group else ""
            return StepRecord.already(self.name, f"in no Auto Scaling group or load balancer{leaving}")
        return StepRecord.skipped(self.name, "in no Auto Scaling group, registered with no load balancer")

    def _group(self, ctx: StepContext) -> tuple[str | None, str]:
        found = ctx.account.client("autoscaling").describe_auto_scaling_instances(
            InstanceIds=[ctx.target.instance_id]
        )["AutoScalingInstances"]
        if not found:
            return None, ""
        return str(found[0]["AutoScalingGroupName"]), str(found[0].get("LifecycleState", ""))

    def _detach(self, ctx: StepContext, group: str) -> None:
        try:
            ctx.account.client("autoscaling").detach_instances(
                InstanceIds=[ctx.target.instance_id],
                AutoScalingGroupName=group,
                ShouldDecrementDesiredCapacity=False,
            )
        except ClientError as exc:
            # Detached since we looked (AWS: "... is not part of Auto Scaling group ..."): fine.
            if error_code(exc) != "ValidationError" or "not part of" not in str(exc):
                raise

    def _registrations(self, ctx: StepContext) -> list[TargetGroupTarget]:
        """Every registration of the instance (not already draining) in the account's target groups."""
        elbv2 = ctx.account.client("elbv2")
        vpcs = set(ctx.instance.state.vpc_ids)
        found: list[TargetGroupTarget] = []
        for group in _groups_of(ctx):
            if group.target_type == "instance" and group.vpc_id in vpcs:
                ids = {ctx.target.instance_id}
            elif group.target_type == "ip":
                ids = set(ctx.instance.addresses)
            else:  # lambda and alb targets are never an instance
                continue
            try:
                health = elbv2.describe_target_health(TargetGroupArn=group.arn)["TargetHealthDescriptions"]
            except ClientError as exc:
                if error_code(exc) != "TargetGroupNotFound":
                    raise
                forget_target_groups()  # deleted since it was listed
                continue
            for description in health:
                target = description["Target"]
                if target["Id"] in ids and description.get("TargetHealth", {}).get("State") != "draining":
                    found.append(
                        TargetGroupTarget(
                            arn=group.arn,
                            id=target["Id"],
                            port=target.get("Port"),
                            availability_zone=target.get("AvailabilityZone"),
                        )
                    )
        return found

    def _deregister_target(self, ctx: StepContext, registration: TargetGroupTarget) -> None:
        target: dict[str, Any] = {"Id": registration.id}
        if registration.port is not None:
            target["Port"] = registration.port
        if registration.availability_zone is not None:
            target["AvailabilityZone"] = registration.availability_zone
        _tolerate_not_registered(
            lambda: ctx.account.client("elbv2").deregister_targets(
                TargetGroupArn=registration.arn, Targets=[target]
            )
        )

    def _classic(self, ctx: StepContext) -> list[str]:
        """Classic load balancers that list the instance."""
        names: list[str] = []
        paginator = ctx.account.client("elb").get_paginator("describe_load_balancers")
        for page in paginator.paginate():
            for balancer in page["LoadBalancerDescriptions"]:
                if any(i.get("InstanceId") == ctx.target.instance_id for i in balancer.get("Instances", [])):
                    names.append(balancer["LoadBalancerName"])
        return names


def _groups_of(ctx: StepContext) -> list[TargetGroup]:
    """The account's target groups in the region (cached in the warm worker)."""
    key = (ctx.target.account_id, ctx.target.region)
    with _target_groups_lock:
        cached = _target_groups.get(key)
    if cached is not None and time.monotonic() - cached[0] < TARGET_GROUPS_TTL_SECONDS:
        return cached[1]
    groups: list[TargetGroup] = []
    for page in ctx.account.client("elbv2").get_paginator("describe_target_groups").paginate():
        groups.extend(
            TargetGroup(
                arn=g["TargetGroupArn"], vpc_id=g.get("VpcId"), target_type=g.get("TargetType", "instance")
            )
            for g in page["TargetGroups"]
        )
    with _target_groups_lock:
        _target_groups[key] = (time.monotonic(), groups)
    return groups


def _tolerate_not_registered(call: Any) -> None:
    try:
        call()
    except ClientError as exc:
        if error_code(exc) not in _NOT_REGISTERED:
            raise
