"""The release steps: an isolation undone from the record's `prior_state`, in the order that reopens
least first (the instance never comes back online with deny-all credentials, and never rejoins its Auto
Scaling group before it can pass the group's health check):

1. `restore-instance-profile`: the prior profile associated again (the isolation profile removed when
   there was none);
2. `remove-credentials-deny`: the instance's entry taken out of its role's deny policy (under the role's
   lease, like the credentials step; the policy is deleted with its last entry);
3. `restore-security-groups`: each interface still attached gets its prior groups;
4. `rejoin-load-balancers`: registered again with its target groups and classic load balancers;
5. `rejoin-auto-scaling-group`: attached to its group again, once the network is back, when the group
   still exists and has room (attaching raises the group's desired capacity by one);
6. `restore-instance-attributes`: shutdown behaviour, stop and termination protection,
   `DeleteOnTermination`;
7. `untag-instance`: `ec2-isolation:id`, `:at`, `:source` removed, `ec2-isolation:released-at` added.

Each checks before it acts (`already`), and skips with the reason what no longer exists (an interface
detached since, a deleted group, role, profile or load balancer) or what the record does not know (an
older record without the newer prior-state fields restores what it has). Snapshots are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import RetryableError, error_code
from shared.models import StepRecord, TargetGroupTarget
from worker.steps.base import Step, StepContext

#: Auto Scaling lifecycle states of an instance on its way out of a group.
_LEAVING = ("Detaching", "Detached")


@dataclass
class ReleaseContext(StepContext):
    """A step context for the release: `prior` is the record's prior state, `instance` the instance now."""

    #: Some interface has its prior groups again (done or already): the instance can pass a health check.
    network_back: bool = False


class Notes:
    """A release writes no prior state and no evidence: its steps' outcomes are its record."""

    def remember(self, prior: dict[str, Any]) -> None:
        raise AssertionError("a release step never writes the prior state")

    def keep_evidence(self, evidence: Any) -> None:
        raise AssertionError("a release step never takes evidence")

    def asking_snapshots(self, at: str) -> None:
        raise AssertionError("a release step never takes evidence")

    def will_ask_snapshots(self, at: str) -> None:
        raise AssertionError("a release step never takes evidence")


def _outcome(name: str, done: list[str], already: list[str], skipped: list[str]) -> StepRecord:
    detail = "; ".join([*done, *already, *skipped])
    if done:
        return StepRecord.done(name, detail)
    if already:
        return StepRecord.already(name, detail)
    return StepRecord.skipped(name, detail)


class RestoreSecurityGroups(Step):
    name = "restore-security-groups"
    permissions = ("ec2:DescribeSecurityGroups", "ec2:ModifyNetworkInterfaceAttribute")

    def run(self, ctx: StepContext) -> StepRecord:
        attached = {i.id: i.security_group_ids for i in ctx.instance.state.network_interfaces}
        wanted = sorted({g for i in ctx.prior.network_interfaces for g in i.security_group_ids})
        existing = self._existing(ctx, wanted)
        done: list[str] = []
        already: list[str] = []
        skipped: list[str] = []
        for interface in ctx.prior.network_interfaces:
            if interface.id not in attached:
                skipped.append(f"{interface.id} is no longer attached to the instance: left as it is")
                continue
            groups = [g for g in interface.security_group_ids if g in existing]
            gone = [g for g in interface.security_group_ids if g not in existing]
            if not groups:
                skipped.append(
                    f"{interface.id}: its groups {', '.join(gone) or '-'} no longer exist: isolation group kept"
                )
                continue
            missing = f" ({', '.join(gone)} no longer exist)" if gone else ""
            if sorted(attached[interface.id]) == sorted(groups):
                already.append(f"{interface.id} has [{', '.join(groups)}]{missing}")
                continue
            ctx.ec2.modify_network_interface_attribute(NetworkInterfaceId=interface.id, Groups=groups)
            done.append(f"{interface.id} -> [{', '.join(groups)}]{missing}")
        if isinstance(ctx, ReleaseContext):
            ctx.network_back = bool(done or already)
        return _outcome(self.name, done, already, skipped)

    def _existing(self, ctx: StepContext, group_ids: list[str]) -> set[str]:
        if not group_ids:
            return set()
        found: set[str] = set()
        paginator = ctx.ec2.get_paginator("describe_security_groups")
        for page in paginator.paginate(Filters=[{"Name": "group-id", "Values": group_ids}]):
            found.update(g["GroupId"] for g in page["SecurityGroups"])
        return found


class RejoinLoadBalancers(Step):
    name = "rejoin-load-balancers"
    permissions = (
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    )

    def run(self, ctx: StepContext) -> StepRecord:
        registrations = ctx.prior.target_groups or []
        balancers = ctx.prior.load_balancers or []
        if not registrations and not balancers:
            return StepRecord.skipped(self.name, "registered with no load balancer before its isolation")
        if isinstance(ctx, ReleaseContext) and not ctx.network_back:
            return StepRecord.skipped(
                self.name, "the network is not back: not registered (it would fail its health checks)"
            )
        done: list[str] = []
        already: list[str] = []
        skipped: list[str] = []
        for registration in registrations:
            label = _label(registration)
            try:
                if self._registered(ctx, registration):
                    already.append(f"{label} registered")
                    continue
                ctx.account.client("elbv2").register_targets(
                    TargetGroupArn=registration.arn, Targets=[_target(registration)]
                )
            except ClientError as exc:
                if error_code(exc) != "TargetGroupNotFound":
                    raise
                skipped.append(f"{label}: the target group no longer exists")
                continue
            done.append(f"registered {label}")
        elb = ctx.account.client("elb")
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
            if any(i.get("InstanceId") == ctx.target.instance_id for i in described.get("Instances", [])):
                already.append(f"registered with classic load balancer {balancer}")
                continue
            elb.register_instances_with_load_balancer(
                LoadBalancerName=balancer, Instances=[{"InstanceId": ctx.target.instance_id}]
            )
            done.append(f"registered with classic load balancer {balancer}")
        return _outcome(self.name, done, already, skipped)

    def _registered(self, ctx: StepContext, registration: TargetGroupTarget) -> bool:
        health = ctx.account.client("elbv2").describe_target_health(TargetGroupArn=registration.arn)
        return any(
            d["Target"]["Id"] == registration.id
            and (registration.port is None or d["Target"].get("Port") == registration.port)
            and d.get("TargetHealth", {}).get("State") not in ("draining", "unused")
            for d in health["TargetHealthDescriptions"]
        )


class RejoinAutoScalingGroup(Step):
    name = "rejoin-auto-scaling-group"
    permissions = (
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:AttachInstances",
    )

    def run(self, ctx: StepContext) -> StepRecord:
        group = ctx.prior.autoscaling_group
        if not group:
            return StepRecord.skipped(self.name, "in no Auto Scaling group before its isolation")
        if isinstance(ctx, ReleaseContext) and not ctx.network_back:
            return StepRecord.skipped(
                self.name,
                f"the network is not back: not attached to {group} (its health check would replace it)",
            )
        autoscaling = ctx.account.client("autoscaling")
        found = autoscaling.describe_auto_scaling_instances(InstanceIds=[ctx.target.instance_id])[
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
                return StepRecord.already(self.name, f"in {group} ({state})")
            return StepRecord.skipped(self.name, f"in Auto Scaling group {now} now: not moved to {group}")
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        if not groups:
            return StepRecord.skipped(self.name, f"Auto Scaling group {group} no longer exists")
        size, maximum = len(groups[0].get("Instances", [])), int(groups[0]["MaxSize"])
        if size >= maximum:
            return StepRecord.skipped(
                self.name,
                f"Auto Scaling group {group} is full ({size} of at most {maximum} instances): not attached",
            )
        desired = int(groups[0]["DesiredCapacity"])
        autoscaling.attach_instances(InstanceIds=[ctx.target.instance_id], AutoScalingGroupName=group)
        return StepRecord.done(
            self.name, f"attached to {group} (desired capacity {desired} -> {desired + 1})"
        )


def _label(registration: TargetGroupTarget) -> str:
    port = f":{registration.port}" if registration.port is not None else ""
    return f"{registration.id}{port} in {registration.arn.rsplit(':', 1)[-1]}"


def _target(registration: TargetGroupTarget) -> dict[str, Any]:
    target: dict[str, Any] = {"Id": registration.id}
    if registration.port is not None:
        target["Port"] = registration.port
    if registration.availability_zone is not None:
        target["AvailabilityZone"] = registration.availability_zone
    return target
