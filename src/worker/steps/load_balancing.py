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

The inverses, in a release, once the network is back (before, the instance would fail the health checks
and be replaced): `rejoin-load-balancers` registers it again with the target groups and classic load
balancers of the prior state; `rejoin-auto-scaling-group` attaches it to its group again when the group
still exists and has room (attaching raises the group's desired capacity by one).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import RetryableError, error_code
from shared.models import StepRecord, TargetGroupTarget
from worker.steps.base import Change, Plan, Step, StepContext
from worker.steps.checks import Action
from worker.steps.release import ReleaseContext, release_outcome

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

    def plan(self, ctx: StepContext) -> Plan:
        # Its Auto Scaling group (and lifecycle state), target group registrations and classic load
        # balancers.
        group, state = self._group(ctx)
        registrations, balancers = self._registrations(ctx), self._classic(ctx)
        prior: dict[str, Any] = {
            "autoscaling_group": group,
            "target_groups": registrations,
            "load_balancers": balancers,
        }
        target = ctx.target
        where = f"arn:{ctx.partition}:{{}}:{target.region}:{target.account_id}:{{}}"
        changes: list[Change] = []
        done: list[str] = []
        if group is not None and not state.startswith(_LEAVING):
            # (The group's ARN holds an id DescribeAutoScalingInstances does not give: `*` stands for it.)
            arn = where.format("autoscaling", f"autoScalingGroup:*:autoScalingGroupName/{group}")
            detach = {
                "InstanceIds": [target.instance_id],
                "AutoScalingGroupName": group,
                "ShouldDecrementDesiredCapacity": False,
            }
            changes.append(
                Change(
                    f"detach from {group}",
                    ctx.account.client("autoscaling").detach_instances,
                    detach,
                    simulated=Action("autoscaling:DetachInstances", [arn], f"detach from {group}"),
                    apply_by=partial(_detach, ctx, detach),
                )
            )
            done.append(f"detached from {group} (desired capacity kept)")
        if registrations:
            arns = list(dict.fromkeys(r.arn for r in registrations))
            names = ", ".join(arn.rsplit(":", 1)[-1] for arn in arns)
            elbv2 = ctx.account.client("elbv2")
            changes.append(
                Change(
                    f"deregister from {names}",
                    elbv2.deregister_targets,
                    simulated=Action(
                        "elasticloadbalancing:DeregisterTargets", arns, f"deregister from {names}"
                    ),
                    apply_by=partial(
                        _each_not_registered_fine, elbv2.deregister_targets, _deregistrations(registrations)
                    ),
                )
            )
            done.extend(f"deregistered {_label(r, 'from')}" for r in registrations)
        if balancers:
            elb = ctx.account.client("elb")
            instances = [{"InstanceId": target.instance_id}]
            changes.append(
                Change(
                    f"deregister from classic load balancer(s) {', '.join(balancers)}",
                    elb.deregister_instances_from_load_balancer,
                    simulated=Action(
                        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
                        [where.format("elasticloadbalancing", f"loadbalancer/{b}") for b in balancers],
                        f"deregister from classic load balancer(s) {', '.join(balancers)}",
                    ),
                    apply_by=partial(
                        _each_not_registered_fine,
                        elb.deregister_instances_from_load_balancer,
                        [{"LoadBalancerName": b, "Instances": instances} for b in balancers],
                    ),
                )
            )
            done.extend(f"deregistered from classic load balancer {b}" for b in balancers)
        if not changes:
            return Plan.nothing(self._nothing_to_do(ctx, group, state), **prior)
        return Plan.making("; ".join(done), *changes, **prior)

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

    def _classic(self, ctx: StepContext) -> list[str]:
        """Classic load balancers that list the instance."""
        names: list[str] = []
        paginator = ctx.account.client("elb").get_paginator("describe_load_balancers")
        for page in paginator.paginate():
            for balancer in page["LoadBalancerDescriptions"]:
                if any(i.get("InstanceId") == ctx.target.instance_id for i in balancer.get("Instances", [])):
                    names.append(balancer["LoadBalancerName"])
        return names


class RejoinLoadBalancers(Step):
    """The inverse, in a release: registered again with the target groups and classic load balancers of
    the prior state, once the network is back (it would fail their health checks before)."""

    name = "rejoin-load-balancers"
    permissions = (
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    )

    def plan(self, ctx: StepContext) -> Plan:
        registrations = ctx.prior.target_groups or []
        balancers = ctx.prior.load_balancers or []
        if not registrations and not balancers:
            return Plan.nothing(
                StepRecord.skipped(self.name, "registered with no load balancer before its isolation")
            )
        if isinstance(ctx, ReleaseContext) and not ctx.network_back:
            return Plan.nothing(
                StepRecord.skipped(
                    self.name, "the network is not back: not registered (it would fail its health checks)"
                )
            )
        changes: list[Change] = []
        already: list[str] = []
        skipped: list[str] = []
        elbv2 = ctx.account.client("elbv2")
        for registration in registrations:
            label = _label(registration, "in")
            gone = f"{label}: the target group no longer exists"
            try:
                if self._registered(ctx, registration):
                    already.append(f"{label} registered")
                    continue
            except ClientError as exc:
                if error_code(exc) != "TargetGroupNotFound":
                    raise
                skipped.append(gone)
                continue
            params = {"TargetGroupArn": registration.arn, "Targets": [_target(registration)]}
            changes.append(
                Change(
                    f"register {label}",
                    elbv2.register_targets,
                    params,
                    simulated=Action(
                        "elasticloadbalancing:RegisterTargets", [registration.arn], f"register {label}"
                    ),
                    apply_by=partial(
                        _made_unless_gone, elbv2.register_targets, params, f"registered {label}", gone
                    ),
                )
            )
        elb = ctx.account.client("elb")
        target = ctx.target
        for balancer in balancers:
            try:
                (described,) = elb.describe_load_balancers(LoadBalancerNames=[balancer])[
                    "LoadBalancerDescriptions"
                ]
            except ClientError as exc:
                if error_code(exc) not in ("LoadBalancerNotFound", "AccessPointNotFound"):
                    raise
                skipped.append(f"classic load balancer {balancer} no longer exists")
                continue
            registered = f"registered with classic load balancer {balancer}"
            if any(i.get("InstanceId") == target.instance_id for i in described.get("Instances", [])):
                already.append(registered)
                continue
            params = {"LoadBalancerName": balancer, "Instances": [{"InstanceId": target.instance_id}]}
            arn = f"arn:{ctx.partition}:elasticloadbalancing:{target.region}:{target.account_id}:loadbalancer/{balancer}"
            changes.append(
                Change(
                    f"register with classic load balancer {balancer}",
                    elb.register_instances_with_load_balancer,
                    params,
                    simulated=Action(
                        "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
                        [arn],
                        f"register with classic load balancer {balancer}",
                    ),
                    apply_by=partial(
                        _made_unless_gone, elb.register_instances_with_load_balancer, params, registered, None
                    ),
                )
            )
        if not changes:
            return Plan.nothing(release_outcome(self.name, [], already, skipped))

        def outcome(results: list[Any]) -> StepRecord:
            made = [text for ok, text in results if ok]
            gone = [text for ok, text in results if not ok]
            return release_outcome(self.name, made, already, [*skipped, *gone])

        return Plan.making(outcome, *changes)

    def _registered(self, ctx: StepContext, registration: TargetGroupTarget) -> bool:
        health = ctx.account.client("elbv2").describe_target_health(TargetGroupArn=registration.arn)
        return any(
            d["Target"]["Id"] == registration.id
            and (registration.port is None or d["Target"].get("Port") == registration.port)
            and d.get("TargetHealth", {}).get("State") not in ("draining", "unused")
            for d in health["TargetHealthDescriptions"]
        )


class RejoinAutoScalingGroup(Step):
    """The inverse, in a release: attached to its Auto Scaling group again, once the network is back (its
    health check would replace it before), when the group still exists and has room (attaching raises
    the group's desired capacity by one)."""

    name = "rejoin-auto-scaling-group"
    permissions = (
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:AttachInstances",
    )

    def plan(self, ctx: StepContext) -> Plan:
        group = ctx.prior.autoscaling_group
        if not group:
            return Plan.nothing(
                StepRecord.skipped(self.name, "in no Auto Scaling group before its isolation")
            )
        if isinstance(ctx, ReleaseContext) and not ctx.network_back:
            return Plan.nothing(
                StepRecord.skipped(
                    self.name,
                    f"the network is not back: not attached to {group} (its health check would replace it)",
                )
            )
        autoscaling = ctx.account.client("autoscaling")
        target = ctx.target
        found = autoscaling.describe_auto_scaling_instances(InstanceIds=[target.instance_id])[
            "AutoScalingInstances"
        ]
        if found:
            now, state = str(found[0]["AutoScalingGroupName"]), str(found[0].get("LifecycleState", ""))
            if state.startswith(_LEAVING):
                # AWS keeps a detached instance Detaching for the deregistration delay (300 s by default).
                raise RetryableError(
                    "StillDetaching", f"the instance is still {state} from {now}: attaching it again later"
                )
            if now == group:
                return Plan.nothing(StepRecord.already(self.name, f"in {group} ({state})"))
            return Plan.nothing(
                StepRecord.skipped(self.name, f"in Auto Scaling group {now} now: not moved to {group}")
            )
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        if not groups:
            return Plan.nothing(StepRecord.skipped(self.name, f"Auto Scaling group {group} no longer exists"))
        size, maximum = len(groups[0].get("Instances", [])), int(groups[0]["MaxSize"])
        if size >= maximum:
            return Plan.nothing(
                StepRecord.skipped(
                    self.name,
                    f"Auto Scaling group {group} is full ({size} of at most {maximum} instances): not attached",
                )
            )
        desired = int(groups[0]["DesiredCapacity"])
        arn = str(groups[0].get("AutoScalingGroupARN") or "") or (
            f"arn:{ctx.partition}:autoscaling:{target.region}:{target.account_id}:"
            f"autoScalingGroup:*:autoScalingGroupName/{group}"
        )
        return Plan.making(
            f"attached to {group} (desired capacity {desired} -> {desired + 1})",
            Change(
                f"attach to {group}",
                autoscaling.attach_instances,
                {"InstanceIds": [target.instance_id], "AutoScalingGroupName": group},
                simulated=Action("autoscaling:AttachInstances", [arn], f"attach to {group}"),
            ),
        )


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


def _detach(ctx: StepContext, params: dict[str, Any]) -> None:
    try:
        ctx.account.client("autoscaling").detach_instances(**params)
    except ClientError as exc:
        # Detached since we looked (AWS: "... is not part of Auto Scaling group ..."): fine.
        if error_code(exc) != "ValidationError" or "not part of" not in str(exc):
            raise


def _deregistrations(registrations: list[TargetGroupTarget]) -> list[dict[str, Any]]:
    """DeregisterTargets' parameters for each registration."""
    return [{"TargetGroupArn": r.arn, "Targets": [_target(r)]} for r in registrations]


def _each_not_registered_fine(call: Any, each: list[dict[str, Any]]) -> None:
    """`call` with each set of parameters, in order; "not registered" is fine (the detach got there first)."""
    for params in each:
        try:
            call(**params)
        except ClientError as exc:
            if error_code(exc) not in _NOT_REGISTERED:
                raise


def _made_unless_gone(call: Any, params: dict[str, Any], made: str, gone: str | None) -> tuple[bool, str]:
    """`call(**params)`: (True, `made`); or, when the target group is gone meanwhile (`gone` given),
    (False, `gone`)."""
    try:
        call(**params)
    except ClientError as exc:
        if gone is None or error_code(exc) != "TargetGroupNotFound":
            raise
        return False, gone
    return True, made


def _label(registration: TargetGroupTarget, joined: str) -> str:
    """`i-0...:80 from my-targets` (`joined` "from", "in")."""
    port = f":{registration.port}" if registration.port is not None else ""
    return f"{registration.id}{port} {joined} {registration.arn.rsplit(':', 1)[-1]}"


def _target(registration: TargetGroupTarget) -> dict[str, Any]:
    target: dict[str, Any] = {"Id": registration.id}
    if registration.port is not None:
        target["Port"] = registration.port
    if registration.availability_zone is not None:
        target["AvailabilityZone"] = registration.availability_zone
    return target
