"""Containment: the isolation security group of each VPC, alone on every network interface.

AWS behaviour this respects:
- groups are found by VPC (`vpc-id` + `group-name` filters), never by `GroupNames`, which only finds
  groups of the default VPC;
- a new group gets allow-all egress (IPv4, and IPv6 in a VPC with an IPv6 CIDR): revoke what
  DescribeSecurityGroups shows, not an assumed shape;
- right after CreateSecurityGroup other calls may answer `InvalidGroup.NotFound` for a while;
- `ModifyInstanceAttribute(Groups=...)` fails on multi-ENI instances: set groups per interface.

A batch contains its instances at once (`worker.batch`): the group of a VPC is found or created by one
thread while the others of that VPC wait for it, and the interfaces of an instance are cut concurrently.
A group created now is described and stripped of its default rules while the interfaces are cut (the
instance is contained once both are done, and the group is cached only once its rules are gone): the
cut does not wait two EC2 round trips more for the first isolation of a VPC.
A worker that knows no group of the account and region yet looks them all up (`groups_by_vpc`) while
DescribeInstances tells it the instances' VPCs: the step then starts from that description instead of a
lookup of its own, one EC2 round trip less before the first cut of an account.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from shared.errors import RetryableError, error_code
from shared.models import TAG_PREFIX, Source, StepRecord
from worker.at_once import begun, each_at_once
from worker.consistency import until_consistent
from worker.steps.base import Step, StepContext
from worker.steps.checks import Check, ec2_dry_run, outcome

MANAGED_TAG = f"{TAG_PREFIX}managed"
_NOT_YET = frozenset({"InvalidGroup.NotFound"})

# Warm-Lambda cache of isolation group ids: (account, region, vpc, group name) -> group id.
_groups: dict[tuple[str, str, str, str], str] = {}
_groups_lock = threading.Lock()
#: One lock per VPC's group: concurrent isolations in one VPC find or create its group once.
_group_locks: dict[tuple[str, str, str, str], threading.Lock] = {}


@dataclass(frozen=True)
class _Revoking:
    """A group created a moment ago whose default rules are being revoked."""

    group_id: str
    #: The revocation (the number of rules revoked), which every cut onto the group waits for.
    rules: Future[int]


#: Groups created by this environment whose default rules are being revoked, by the key of `_groups`,
#: where each goes once its rules are gone (never before: a cached group is used as it is).
_revoking: dict[tuple[str, str, str, str], _Revoking] = {}


def forget_cached_groups() -> None:
    with _groups_lock:
        _groups.clear()
        _group_locks.clear()
        _revoking.clear()


def _revoked(key: tuple[str, str, str, str], group_id: str, rules: Future[int]) -> None:
    """A new group's revocation has ended: the group is cached once its rules are gone; when they could
    not be revoked, the next isolation finds the group and revokes what it has."""
    with _groups_lock:
        _revoking.pop(key, None)
        if rules.exception() is None:
            _groups[key] = group_id


def _group_lock(key: tuple[str, str, str, str]) -> threading.Lock:
    with _groups_lock:
        return _group_locks.setdefault(key, threading.Lock())


def _cache_key(ctx: StepContext, vpc_id: str) -> tuple[str, str, str, str]:
    return (ctx.target.account_id, ctx.target.region, vpc_id, ctx.settings.ISOLATION_SG_NAME)


def knows_groups_of(account_id: str, region: str, name: str) -> bool:
    """True when this environment has the isolation group of some VPC of the account and region cached."""
    with _groups_lock:
        return any(key[:2] == (account_id, region) and key[3] == name for key in _groups)


def groups_by_vpc(ec2: Any, name: str) -> dict[str, dict[str, Any]]:
    """Every isolation group of the region (group name `name`), as described, by VPC (the lowest id where
    a VPC has several, as `EnsureIsolationSecurityGroup` picks). Filtered by name alone: it does not
    need the instances' VPCs, so it can run while they are described."""
    found: dict[str, dict[str, Any]] = {}
    pages = ec2.get_paginator("describe_security_groups").paginate(
        Filters=[{"Name": "group-name", "Values": [name]}]
    )
    for page in pages:
        for group in page["SecurityGroups"]:
            vpc_id = group.get("VpcId", "")
            if vpc_id not in found or group["GroupId"] < found[vpc_id]["GroupId"]:
                found[vpc_id] = group
    return found


class EnsureIsolationSecurityGroup(Step):
    name = "ensure-isolation-sg"
    permissions = (
        "ec2:DescribeSecurityGroups",
        "ec2:CreateSecurityGroup",
        "ec2:CreateTags",
        "ec2:RevokeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupIngress",
    )

    def run(self, ctx: StepContext) -> StepRecord:
        created: list[str] = []
        repaired: list[str] = []
        reused: list[str] = []
        for vpc_id in ctx.instance.state.vpc_ids:
            key = _cache_key(ctx, vpc_id)
            with _group_lock(key):
                with _groups_lock:
                    cached = _groups.get(key) or _revoking.get(key)
                # A tamper repair looks at the group itself: the call may have added a rule to it.
                if cached is not None and ctx.source is not Source.TAMPER:
                    group_id = cached if isinstance(cached, str) else cached.group_id
                    ctx.isolation_groups[vpc_id] = group_id
                    if isinstance(cached, _Revoking):  # created a moment ago by a batch-mate
                        ctx.revoking[group_id] = cached.rules
                    reused.append(f"{group_id} ({vpc_id})")
                    continue
                group_id, revoking, revoked = self._ensure(ctx, vpc_id)
                ctx.isolation_groups[vpc_id] = group_id
                with _groups_lock:
                    if revoking is None:
                        _groups[key] = group_id
                    else:
                        _revoking[key] = _Revoking(group_id, revoking)
                        ctx.revoking[group_id] = revoking
                if revoking is not None:
                    revoking.add_done_callback(partial(_revoked, key, group_id))
            label = f"{group_id} ({vpc_id})"
            if revoking is not None:
                created.append(f"{label}, its default rules revoked with the cut")
            elif revoked:
                repaired.append(f"{label}, {revoked} stray rule(s) revoked")
            else:
                reused.append(label)
        parts = (
            [f"created {', '.join(created)}"] * bool(created)
            + [f"repaired {', '.join(repaired)}"] * bool(repaired)
            + [f"in place {', '.join(reused)}"] * bool(reused)
        )
        detail = "; ".join(parts)
        return (
            StepRecord.done(self.name, detail)
            if created or repaired
            else StepRecord.already(self.name, detail)
        )

    def _ensure(self, ctx: StepContext, vpc_id: str) -> tuple[str, Future[int] | None, int]:
        """(group id, the revocation of its default rules when created now, stray rules revoked)"""
        # The region's groups as this invocation looked them up (a VPC absent there had none); else a
        # lookup of this VPC's.
        seen = ctx.groups_seen
        group = seen.get(vpc_id) if seen is not None else self._find(ctx, vpc_id)
        if group is None:
            group_id = self._create(ctx, vpc_id)
            if group_id is not None:
                return group_id, begun(lambda: self._strip_new(ctx, group_id)), 0
            # Another worker created it a moment ago: use theirs.
            group = self._consistently(ctx, lambda: self._find_or_raise(ctx, vpc_id), f"group of {vpc_id}")
        return group["GroupId"], None, self._strip(ctx, group)

    def _find(self, ctx: StepContext, vpc_id: str) -> dict[str, Any] | None:
        groups = ctx.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": [ctx.settings.ISOLATION_SG_NAME]},
            ]
        )["SecurityGroups"]
        return min(groups, key=lambda g: g["GroupId"]) if groups else None

    def _describe(self, ctx: StepContext, group_id: str) -> dict[str, Any]:
        return ctx.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]

    def _create(self, ctx: StepContext, vpc_id: str) -> str | None:
        """Create the VPC's group: its id, or None when another worker has just created it."""
        try:
            return str(ctx.ec2.create_security_group(**_creation(ctx, vpc_id))["GroupId"])
        except ClientError as exc:
            if error_code(exc) != "InvalidGroup.Duplicate":
                raise
            return None

    def _strip_new(self, ctx: StepContext, group_id: str) -> int:
        """Revoke the default rules AWS gave a new group (described once it is visible)."""
        group = self._consistently(ctx, lambda: self._describe(ctx, group_id), f"new group {group_id}")
        return self._strip(ctx, group)

    def _consistently(self, ctx: StepContext, call: Any, what: str) -> dict[str, Any]:
        return until_consistent(
            call,
            codes=_NOT_YET,
            budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
            sleep=ctx.sleep,
            what=what,
        )

    def _find_or_raise(self, ctx: StepContext, vpc_id: str) -> dict[str, Any]:
        group = self._find(ctx, vpc_id)
        if group is None:
            raise ClientError(
                {"Error": {"Code": "InvalidGroup.NotFound", "Message": "not visible yet"}},
                "DescribeSecurityGroups",
            )
        return group

    def _strip(self, ctx: StepContext, group: dict[str, Any]) -> int:
        """Revoke every rule the group has, ingress and egress, IPv4 and IPv6."""
        revoked = 0
        for rules, revoke in _rule_sets(ctx, group):
            permissions = [_as_request(rule) for rule in rules]

            def call(permissions: list[dict[str, Any]] = permissions, revoke: Any = revoke) -> None:
                try:
                    revoke(GroupId=group["GroupId"], IpPermissions=permissions)
                except ClientError as exc:
                    if error_code(exc) != "InvalidPermission.NotFound":  # gone already: fine
                        raise

            until_consistent(
                call,
                codes=_NOT_YET,
                budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
                sleep=ctx.sleep,
                what=f"revoke rules of {group['GroupId']}",
            )
            revoked += sum(_rule_count(rule) for rule in rules)
        return revoked

    def check(self, ctx: StepContext) -> StepRecord:
        checks: list[Check] = []
        settled: list[str] = []
        for vpc_id in ctx.instance.state.vpc_ids:
            group = self._find(ctx, vpc_id)
            if group is None:
                checks.append(
                    ec2_dry_run(
                        f"create the isolation group of {vpc_id}",
                        ctx.ec2.create_security_group,
                        **_creation(ctx, vpc_id),
                    )
                )
                continue
            ctx.isolation_groups[vpc_id] = group["GroupId"]
            rule_sets = _rule_sets(ctx, group)
            for rules, revoke in rule_sets:
                count = sum(_rule_count(rule) for rule in rules)
                checks.append(
                    ec2_dry_run(
                        f"revoke {count} rule(s) of {group['GroupId']} ({vpc_id})",
                        revoke,
                        GroupId=group["GroupId"],
                        IpPermissions=[_as_request(rule) for rule in rules],
                    )
                )
            if not rule_sets:
                settled.append(f"{group['GroupId']} ({vpc_id})")
        return outcome(self.name, checks, f"in place {', '.join(settled)}" if settled else "")


class SwapSecurityGroups(Step):
    name = "swap-security-groups"
    permissions = ("ec2:ModifyNetworkInterfaceAttribute",)

    def run(self, ctx: StepContext) -> StepRecord:
        changed: list[str] = []
        unchanged: list[str] = []
        state = ctx.instance.state
        cuts: list[tuple[str, str, str]] = []
        for interface in state.network_interfaces:
            vpc_id = state.vpc_of(interface)
            group_id = ctx.isolation_groups[vpc_id]
            if interface.security_group_ids == [group_id]:
                unchanged.append(interface.id)
                continue
            cuts.append((interface.id, vpc_id, group_id))
            changed.append(f"{interface.id} [{', '.join(interface.security_group_ids) or '-'}] -> {group_id}")
        # Every interface at once: the last cut, not the sum of them, is when the instance is contained.
        # A group created by this containment loses its default rules meanwhile (ensure-isolation-sg
        # began their revocation): the instance is contained once both are done.
        each_at_once(lambda cut: self._set(ctx, *cut), cuts)
        revoked = "".join(
            f"; {rules.result()} default rule(s) of the new group {group_id} revoked"
            for group_id, rules in ctx.revoking.items()
        )
        if changed:
            tail = f"; already isolated: {', '.join(unchanged)}" if unchanged else ""
            return StepRecord.done(self.name, "; ".join(changed) + tail + revoked)
        detail = f"only the isolation group on {', '.join(unchanged)}"
        return (
            StepRecord.done(self.name, detail + revoked) if revoked else StepRecord.already(self.name, detail)
        )

    def check(self, ctx: StepContext) -> StepRecord:
        checks: list[Check] = []
        settled: list[str] = []
        state = ctx.instance.state
        for interface in state.network_interfaces:
            group_id = ctx.isolation_groups.get(state.vpc_of(interface))
            if group_id is not None and interface.security_group_ids == [group_id]:
                settled.append(interface.id)
                continue
            # The VPC's group does not exist yet (ensure-isolation-sg would create it): EC2 authorises
            # the same kinds of resource with the interface's own groups.
            groups = [group_id] if group_id is not None else interface.security_group_ids
            checks.append(
                ec2_dry_run(
                    f"put {group_id or 'the new isolation group'} alone on {interface.id}",
                    ctx.ec2.modify_network_interface_attribute,
                    NetworkInterfaceId=interface.id,
                    Groups=groups,
                )
            )
        return outcome(
            self.name, checks, f"only the isolation group on {', '.join(settled)}" if settled else ""
        )

    def _set(self, ctx: StepContext, eni_id: str, vpc_id: str, group_id: str) -> None:
        def call() -> None:
            ctx.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id, Groups=[group_id])

        try:
            until_consistent(
                call,
                codes=_NOT_YET,
                budget_seconds=ctx.settings.CONSISTENCY_WAIT_SECONDS,
                sleep=ctx.sleep,
                what=f"ModifyNetworkInterfaceAttribute {eni_id}",
            )
        except RetryableError:
            # The cached group may have been deleted behind our back: find or create it afresh next time.
            with _groups_lock:
                _groups.pop(_cache_key(ctx, vpc_id), None)
            raise


def _creation(ctx: StepContext, vpc_id: str) -> dict[str, Any]:
    """CreateSecurityGroup's parameters for the VPC's isolation group (tagged managed on creation)."""
    return {
        "GroupName": ctx.settings.ISOLATION_SG_NAME,
        "Description": "ec2-isolation: no ingress, no egress. Do not add rules.",
        "VpcId": vpc_id,
        "TagSpecifications": [
            {"ResourceType": "security-group", "Tags": [{"Key": MANAGED_TAG, "Value": "true"}]}
        ],
    }


def _rule_sets(ctx: StepContext, group: dict[str, Any]) -> list[tuple[list[dict[str, Any]], Any]]:
    """The group's egress and ingress rules (those it has), each with the call that revokes them."""
    return [
        (rules, revoke)
        for rules, revoke in (
            (group.get("IpPermissionsEgress", []), ctx.ec2.revoke_security_group_egress),
            (group.get("IpPermissions", []), ctx.ec2.revoke_security_group_ingress),
        )
        if rules
    ]


def _as_request(rule: dict[str, Any]) -> dict[str, Any]:
    """A described rule as a revoke request accepts it (descriptions and ids dropped)."""
    request: dict[str, Any] = {"IpProtocol": rule["IpProtocol"]}
    for key in ("FromPort", "ToPort"):
        if key in rule:
            request[key] = rule[key]
    if rule.get("IpRanges"):
        request["IpRanges"] = [{"CidrIp": r["CidrIp"]} for r in rule["IpRanges"]]
    if rule.get("Ipv6Ranges"):
        request["Ipv6Ranges"] = [{"CidrIpv6": r["CidrIpv6"]} for r in rule["Ipv6Ranges"]]
    if rule.get("PrefixListIds"):
        request["PrefixListIds"] = [{"PrefixListId": p["PrefixListId"]} for p in rule["PrefixListIds"]]
    if rule.get("UserIdGroupPairs"):
        request["UserIdGroupPairs"] = [
            {k: v for k, v in pair.items() if k in ("GroupId", "UserId", "VpcId", "VpcPeeringConnectionId")}
            for pair in rule["UserIdGroupPairs"]
        ]
    return request


def _rule_count(rule: dict[str, Any]) -> int:
    return max(
        1,
        len(rule.get("IpRanges", []))
        + len(rule.get("Ipv6Ranges", []))
        + len(rule.get("PrefixListIds", []))
        + len(rule.get("UserIdGroupPairs", [])),
    )
